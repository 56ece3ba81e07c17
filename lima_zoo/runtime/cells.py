"""Points -> the backbone's cells in numpy: voxels (cylindrical or cartesian) or range-image pixels,
the preprocessing contract of ``lima_zoo.voxelize`` and ``lima_zoo.range_view`` without torch.

The arithmetic is the engine's, step for step and in the same precision (float64 grid positions
and angles, then floor), so the cells, their order (sorted by [batch, i, j, k]), each cell's first
point and the point -> cell map equal the PyTorch path's; the tests compare them on real scans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import PreprocessConfig, RangeImageConfig
from .kernel_maps import Keys, unique_first

__all__ = ["Cells", "voxelize", "count_voxels", "range_project", "input_columns"]


@dataclass
class Cells:
    """One batch of cells, as ``lima_zoo.voxelize.Voxels`` holds it, in numpy.

    coords: (M, 4) int32 [batch, i, j, k] sorted (range images: [batch, row, col, 0]).
    feats: (M, C) float32 the first point's columns. inverse: (N,) int64 each point's cell row.
    point_feats: (N, C) float32 every point's columns (point-output backbones).
    grid: (N, 4) float32 [batch, gi, gj, gk] every point's position in voxel units (SPVCNN).
    """

    coords: np.ndarray
    feats: np.ndarray
    inverse: np.ndarray
    point_feats: np.ndarray | None = None
    grid: np.ndarray | None = None


def input_columns(pts: np.ndarray, cfg: PreprocessConfig, b: int) -> np.ndarray:
    """Scan ``b``'s (N, >=3) points -> (N, cfg.use_dim) float32 model inputs (a missing intensity reads 0)."""
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"scan {b}: expected (N, >=3) points, got shape {pts.shape}")
    if cfg.use_dim == 4 and pts.shape[1] < 4:
        pts = np.concatenate([pts[:, :3], np.zeros((len(pts), 1), pts.dtype)], axis=1)
    return np.ascontiguousarray(pts[:, : cfg.use_dim], dtype=np.float32)


def _positions(xyz: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(N, 3) xyz -> (N, 3) float64 positions in voxel units, unshifted."""
    p = xyz.astype(np.float64)
    if cfg.voxel_type == "cylindrical":
        rho = np.hypot(p[:, 0], p[:, 1])
        phi = np.arctan2(p[:, 1], p[:, 0]) * (180.0 / math.pi)
        p = np.stack([rho, phi, p[:, 2]], axis=1)
    return p / np.asarray(cfg.voxel_size, dtype=np.float64)


def _grid_positions(xyz: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    pos = _positions(xyz, cfg)
    cells = np.floor(pos).astype(np.int64)
    if len(cells):
        low = cells.min(axis=0)
        cells -= low
        pos = pos - low.astype(np.float64)
    return pos, cells


def count_voxels(scans: list[np.ndarray], cfg: PreprocessConfig, chunk: int = 1 << 20, limit: int | None = None) -> int:
    """The number of voxels :func:`voxelize` would make of ``scans``, counted ``chunk`` points at a
    time in two passes (the scan's lowest cell, then the keys), recomputing the cells so that only
    one chunk's live at a time: memory grows with the voxels, not the points (the check before
    voxelizing a huge map). With ``limit``, counting stops once the count passes it (the answer is
    then some number above ``limit``)."""

    def cells_of(pts: np.ndarray, start: int) -> np.ndarray:
        return np.floor(_positions(pts[start : start + chunk, :3], cfg)).astype(np.int64)

    total = 0
    for pts in scans:
        if not len(pts):
            continue
        starts = range(0, len(pts), chunk)
        low, high = None, None
        for start in starts:
            c = cells_of(pts, start)
            low = c.min(axis=0) if low is None else np.minimum(low, c.min(axis=0))
            high = c.max(axis=0) if high is None else np.maximum(high, c.max(axis=0))
        extent = high - low + 1
        if float(np.prod(extent.astype(np.float64))) >= 2**62:
            raise ValueError(f"coordinate range too large to pack into int64 keys (extent {extent.tolist()} voxels)")
        seen = np.empty(0, dtype=np.int64)
        for start in starts:
            c = cells_of(pts, start) - low
            seen = np.union1d(seen, (c[:, 0] * extent[1] + c[:, 1]) * extent[2] + c[:, 2])
            if limit is not None and total + len(seen) > limit:
                return total + len(seen)
        total += len(seen)
    return total


def voxelize(scans: list[np.ndarray], cfg: PreprocessConfig, keep_points: bool = False) -> Cells:
    """(N_b, >=3) float32 scans (intensity in ``cfg.intensity_scale``) -> one batch of voxels; scan b
    gets batch index b. ``keep_points``: also every point's columns and grid position."""
    cells, feats, grids = [], [], []
    for b, pts in enumerate(scans):
        cols = input_columns(pts, cfg, b)
        pos, cell = _grid_positions(pts[:, :3], cfg)
        batch = np.full((len(pts), 1), b, dtype=np.int64)
        cells.append(np.concatenate([batch, cell], axis=1))
        feats.append(cols)
        if keep_points:
            grids.append(np.concatenate([batch.astype(np.float64), pos], axis=1).astype(np.float32))
    all_cells, all_feats = np.concatenate(cells), np.concatenate(feats)
    inverse, first = unique_first(Keys(all_cells, margin=0).keys)
    out = Cells(all_cells[first].astype(np.int32), np.ascontiguousarray(all_feats[first]), inverse)
    if keep_points:
        out.point_feats, out.grid = all_feats, np.concatenate(grids)
        # float32 rounding can carry a position just below an integer up onto it: clamp it into its cell
        cell = all_cells[:, 1:].astype(np.float32)
        out.grid[:, 1:] = np.minimum(np.maximum(out.grid[:, 1:], cell), np.nextafter(cell + 1, cell))
    return out


def range_pixels(xyz: np.ndarray, cfg: RangeImageConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) xyz -> (rows, cols) int64 pixels of the range image seen from ``cfg.origin``."""
    p = xyz.astype(np.float64) - np.asarray(cfg.origin, dtype=np.float64)
    depth = np.sqrt((p * p).sum(axis=1))
    yaw = -np.arctan2(p[:, 1], p[:, 0])
    pitch = np.arcsin(np.clip(p[:, 2] / np.maximum(depth, 1e-12), -1.0, 1.0))
    up, down = math.radians(cfg.fov_up), math.radians(cfg.fov_down)
    cols = np.floor(0.5 * (yaw / math.pi + 1.0) * cfg.width)
    rows = np.floor((up - pitch) / (up - down) * cfg.height)
    return np.clip(rows, 0, cfg.height - 1).astype(np.int64), np.clip(cols, 0, cfg.width - 1).astype(np.int64)


def range_project(scans: list[np.ndarray], cfg: PreprocessConfig) -> Cells:
    """Scans -> one batch of occupied range-image pixels [batch, row, col, 0] (FRNet's cells)."""
    image = cfg.range_image
    if image is None:
        raise ValueError("range_project needs preprocess.range_image (the range image's size and field of view)")
    pixels, feats = [], []
    for b, pts in enumerate(scans):
        cols = input_columns(pts, cfg, b)
        row, col = range_pixels(pts[:, :3], image)
        pixels.append(np.stack([np.full_like(row, b), row, col, np.zeros_like(row)], axis=1))
        feats.append(cols)
    all_pixels, all_feats = np.concatenate(pixels), np.concatenate(feats)
    keys = (all_pixels[:, 0] * image.height + all_pixels[:, 1]) * image.width + all_pixels[:, 2]
    inverse, first = unique_first(keys)
    return Cells(
        all_pixels[first].astype(np.int32), np.ascontiguousarray(all_feats[first]), inverse, point_feats=all_feats
    )

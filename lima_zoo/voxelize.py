"""Points -> voxels (cylindrical or cartesian) and the point -> voxel inverse map.

A voxel's feature is the (x, y, z, intensity) of its first point (lowest input index), as in the
SuperFlow / LiMA lineage. Voxels come out sorted by (batch, i, j, k), the order the sparse engine
is fastest on. Grid indices are computed in float64 so boundaries do not depend on the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import PreprocessConfig
from .sparse.kmap import CoordinateKeys, unique_first

__all__ = ["Voxels", "voxelize", "grid_indices", "grid_positions", "input_columns"]


@dataclass
class Voxels:
    """Voxelized batch.

    coords: (M, 4) int32 [batch, i, j, k], non-negative, sorted.
    feats: (M, C) float32, the first point's input columns.
    inverse: (N,) int64, voxel row of every input point (all scans concatenated, in input order).
    point_feats: (N, C) float32, every point's input columns (for point-voxel backbones).
    grid: (N, 4) float32 [batch, gi, gj, gk], every point's position in voxel units with the cells'
        shift, so ``floor(grid) == coords[inverse]`` (sparse/points.py interpolates with it).
    """

    coords: torch.Tensor
    feats: torch.Tensor
    inverse: torch.Tensor
    point_feats: torch.Tensor | None = None
    grid: torch.Tensor | None = None

    @property
    def num_points(self) -> int:
        return int(self.inverse.shape[0])


def grid_indices(xyz: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, 3) float xyz -> (N, 3) int64 grid cells, shifted so the minimum is 0 per scan."""
    return grid_positions(xyz, cfg)[1]


def grid_positions(xyz: torch.Tensor, cfg: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) float xyz -> (positions (N, 3) float64 in voxel units, cells (N, 3) int64), both
    shifted by the scan's lowest cell, so ``floor(positions) == cells`` and the minimum cell is 0."""
    p = xyz.to(torch.float64)
    size = torch.tensor(cfg.voxel_size, dtype=torch.float64, device=xyz.device)
    if cfg.voxel_type == "cylindrical":
        rho = torch.hypot(p[:, 0], p[:, 1])
        phi = torch.atan2(p[:, 1], p[:, 0]) * (180.0 / math.pi)  # degrees in [-180, 180]
        p = torch.stack([rho, phi, p[:, 2]], dim=1)
    pos = p / size
    cells = torch.floor(pos).to(torch.int64)
    if len(cells):
        low = cells.min(dim=0).values
        cells -= low
        pos = pos - low.to(torch.float64)
    return pos, cells


def input_columns(pts: torch.Tensor, cfg: PreprocessConfig, b: int) -> torch.Tensor:
    """Scan ``b``'s (N, >=3) points -> (N, cfg.use_dim) float32 model inputs; a missing intensity
    column reads as 0 (the model still gets its 4 inputs). Any other shape is a ValueError."""
    if pts.dim() != 2 or pts.shape[1] < 3:
        raise ValueError(f"scan {b}: expected (N, >=3) points, got shape {tuple(pts.shape)}")
    if cfg.use_dim == 4 and pts.shape[1] < 4:
        pts = torch.cat([pts[:, :3], pts.new_zeros(len(pts), 1)], dim=1)
    return pts[:, : cfg.use_dim].to(torch.float32)


def voxelize(scans: list[torch.Tensor], cfg: PreprocessConfig, keep_points: bool = False) -> Voxels:
    """Voxelize scans into one sparse batch.

    Args:
        scans: (N_b, >=3) float tensors (x, y, z[, intensity, ...]); intensity already in the scale
            ``cfg.intensity_scale`` says. Scan b gets batch index b.
        cfg: the voxelization (cylindrical or cartesian, voxel size) the model was trained with.
        keep_points: also return every point's columns and grid position (Voxels.point_feats / .grid).

    Returns:
        Voxels: (M, C) features and (M, 4) int32 [batch, i, j, k] coordinates of the occupied
        voxels, and ``inverse`` (N,), each point's voxel row.
    """
    device = scans[0].device
    cells, feats, grids = [], [], []
    for b, pts in enumerate(scans):
        cols = input_columns(pts, cfg, b)
        batch = torch.full((len(pts), 1), b, dtype=torch.int64, device=device)
        pos, cell = grid_positions(pts[:, :3], cfg)
        cells.append(torch.cat([batch, cell], dim=1))
        feats.append(cols)
        if keep_points:
            grids.append(torch.cat([batch.to(torch.float64), pos], dim=1).to(torch.float32))
    all_cells = torch.cat(cells)
    all_feats = torch.cat(feats)
    inverse, first = unique_first(CoordinateKeys(all_cells, margin=0).keys)
    vox = Voxels(all_cells[first].to(torch.int32), all_feats[first].contiguous(), inverse)
    if keep_points:
        vox.point_feats, vox.grid = all_feats, torch.cat(grids)
        # float32 rounding can carry a position just below an integer up onto it: clamp it into its cell
        cell = all_cells[:, 1:].to(torch.float32)
        vox.grid[:, 1:] = torch.minimum(torch.maximum(vox.grid[:, 1:], cell), torch.nextafter(cell + 1, cell))
    return vox

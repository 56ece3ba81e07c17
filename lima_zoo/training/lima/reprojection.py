"""Re-projection memory: current points read the 2-D teacher feature maps of past frames.

The paper's bank holds "historical 2D features". Per past frame of a stream a ``ViewEntry`` keeps each
camera's teacher token map (fp16), its intrinsics, its global -> camera pose and a coarse depth image
(z-buffer) of that frame's own LiDAR seen from that camera. A current point (global xyz of the
un-augmented scan) is projected into every remembered camera, the token map is sampled bilinearly at
its pixel, the views of one past frame are aggregated as cross-view aggregation does (normalised mean
of normalised samples) and the frames are pooled (mean, optionally weighted by recency, or max).

Unlike matching 3-D cells against past LiDAR points (``propagation.py``), this gives a past feature to
every current point that a past camera saw, also where the past scan's rings left gaps. Two checks
keep the samples honest, both against the past frame's z-buffer (its LiDAR depth per image cell,
the nearest return in the cell; tolerance ``tol(d) = abs_tol + rel_tol * d``):

- occlusion: reject a sample when the past frame saw a surface in front of the point
  (``d > zmin + tol``): the past pixel shows the occluder, not the point;
- free space (the moving-object guard, ``check="agreement"``): also reject it when the past frame
  saw nothing at the point's depth along that ray -- the cell's nearest return lies beyond
  ``d + tol`` or the cell holds no return. The point's location was then empty space: whatever is
  there now (a car that drove in, a walking pedestrian) moved since, and the past pixel shows the
  background behind it. A static point passes, because the past scan saw the same surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.frame import Frame
from ..datasets.pairing import CameraView, PixelPairs, project_points
from .cross_view import aggregate_views, sample_pixel_features

__all__ = ["ViewEntry", "view_entry", "zbuffer", "depth_check", "reproject", "CHECKS"]

CHECKS = ("none", "occlusion", "agreement")


@dataclass
class ViewEntry:
    """One past frame's cameras: maps (C, D, h, w) teacher tokens; world_to_camera (C, 4, 4) and
    intrinsic (C, 3, 3) float64; sizes [(W, H)] per camera; depth (C, gh, gw) float32 nearest LiDAR
    return per image cell (inf where the cell holds none); cell_px: the cell's side in pixels."""

    maps: torch.Tensor
    world_to_camera: torch.Tensor
    intrinsic: torch.Tensor
    sizes: list[tuple[int, int]]
    depth: torch.Tensor
    cell_px: list[float]
    frame: tuple[int, int]  # (sequence, position)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.maps, self.world_to_camera, self.intrinsic, self.depth))


def zbuffer(pairs: PixelPairs, sizes: list[tuple[int, int]], cells: int) -> tuple[torch.Tensor, list[float]]:
    """A frame's own (point, camera) pairs -> (C, gh, gw) nearest depth per cell (inf = no return),
    with ``cells`` square cells across each image's width; and each camera's cell side in pixels."""
    cell_px = [w / cells for w, _ in sizes]
    gh = max(int(np.ceil(h / c)) for (_, h), c in zip(sizes, cell_px))
    depth = torch.full((len(sizes), gh, cells), torch.inf, device=pairs.depth.device)
    if len(pairs.point):
        row, col = _cell_of(pairs, cell_px, gh, cells)
        flat = (pairs.camera * gh + row) * cells + col
        depth.view(-1).scatter_reduce_(0, flat, pairs.depth.float(), "amin")
    return depth, cell_px


def _cell_of(pairs: PixelPairs, cell_px: list[float], gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,) row and column of the z-buffer cell each pair's pixel falls in."""
    side = torch.tensor(cell_px, dtype=torch.float32, device=pairs.uv.device)[pairs.camera]
    return (pairs.uv[:, 1] / side).long().clamp(0, gh - 1), (pairs.uv[:, 0] / side).long().clamp(0, gw - 1)


def view_entry(
    frame: Frame,
    maps: torch.Tensor,
    pairs: PixelPairs,
    cells: int,
    key: tuple[int, int],
    dtype: torch.dtype = torch.float16,
) -> ViewEntry:
    """The bank entry of ``frame``: its cameras' token maps (C, D, h, w), poses and z-buffers (from
    the frame's own point-pixel pairs)."""
    sizes = [(c.width, c.height) for c in frame.cameras]
    w2c = torch.stack(
        [torch.from_numpy(np.linalg.inv(c.ego_to_global @ c.camera_to_ego)) for c in frame.cameras]
    ).double()
    # the bank keeps its entries on the CPU (its memory is the host's); reproject moves what it reads
    intr = torch.stack([torch.as_tensor(c.intrinsic, dtype=torch.float64, device="cpu") for c in frame.cameras])
    depth, cell_px = zbuffer(pairs, sizes, cells)
    return ViewEntry(maps.detach().to("cpu", dtype).contiguous(), w2c, intr, sizes, depth, cell_px, key)


def depth_check(pairs: PixelPairs, entry: ViewEntry, check: str, abs_tol: float, rel_tol: float) -> torch.Tensor:
    """(P,) bool: samples that pass ``check`` against the entry's z-buffer."""
    if check == "none" or not len(pairs.point):
        return torch.ones(len(pairs.point), dtype=torch.bool)
    row, col = _cell_of(pairs, entry.cell_px, *entry.depth.shape[1:])
    zmin = entry.depth[pairs.camera, row, col]
    tol = abs_tol + rel_tol * pairs.depth
    ok = pairs.depth <= zmin + tol  # nothing nearer than the point along this ray (empty cell: inf)
    if check == "agreement":
        ok &= pairs.depth >= zmin - tol  # ... and the past scan saw a surface at the point's depth
    return ok


def _select(pairs: PixelPairs, keep: torch.Tensor) -> PixelPairs:
    return PixelPairs(pairs.point[keep], pairs.camera[keep], pairs.uv[keep], pairs.depth[keep])


def reproject(
    xyz: torch.Tensor,
    memory: list[ViewEntry],
    check: str = "agreement",
    abs_tol: float = 0.5,
    rel_tol: float = 0.1,
    pool: str = "mean",
    recency: float = 1.0,
    view_range: float = 0.0,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Current global xyz (N, 3) -> pooled past features (N, D) (None without memory), has (N,) bool
    (some past frame's camera saw the point and passed the check) and frames (N,) int64 (how many).

    ``recency``: a frame k steps back weighs ``recency ** (k - 1)`` in the mean (1 = equal weights).
    ``view_range`` > 0: a sample seen at depth d weighs ``exp(-d / view_range)`` among its frame's views.
    """
    if check not in CHECKS:
        raise ValueError(f"unknown re-projection check {check!r}; choose from {', '.join(CHECKS)}")
    n = len(xyz)
    frames = torch.zeros(n, dtype=torch.int64, device=xyz.device)
    acc = None
    for age, entry in enumerate(reversed(memory), start=1):
        views = [
            CameraView(str(c), entry.intrinsic[c], entry.world_to_camera[c], w, h)
            for c, (w, h) in enumerate(entry.sizes)
        ]
        pairs = project_points(xyz, views)
        pairs = _select(pairs, depth_check(pairs, entry, check, abs_tol, rel_tol))
        if not len(pairs.point):
            continue
        feats = sample_pixel_features(entry.maps.float(), pairs, entry.sizes)
        weights = torch.exp(-pairs.depth / view_range) if view_range > 0 else None
        unified, seen = aggregate_views(n, pairs, feats, weights)
        if pool == "mean":
            contrib = unified * (recency ** (age - 1))
            acc = contrib if acc is None else acc + contrib
        else:
            vals = torch.where(seen[:, None], unified, torch.tensor(-torch.inf))
            acc = vals if acc is None else torch.maximum(acc, vals)
        frames += seen.long()
    has = frames > 0
    if acc is None:
        return None, has, frames
    pooled = F.normalize(torch.where(has[:, None], acc, torch.zeros_like(acc)), dim=1)
    return pooled, has, frames

"""Points <-> voxels for point-voxel networks (SPVCNN): the point branch's two moves.

Points carry float grid positions in stride-1 voxel units, ``grid`` (N, 4) [batch, gx, gy, gz]
(the position divided by the voxel size, shifted like the integer cells, so ``floor(grid)`` is a
point's voxel). At tensor stride ``s`` the voxel of level coordinate ``k`` sits at ``k * s``:

- ``voxelize_mean``: every point's feature averaged into the voxel it falls in at stride ``s``;
- ``devoxelize``: each point reads the 8 voxels of the stride-``s`` level around ``grid / s``
  (``floor`` and ``floor + 1`` per axis) with trilinear weights; absent voxels get weight 0 and the
  rest are renormalised, so a point alone in its cell reads that cell's feature.

This is the SPVNAS / torchsparse convention (voxel corners, not centres, at the integer
positions), so converted checkpoints see the features they were trained on. The look-ups use the
tensor's cached coordinate keys; the weights depend on coordinates only and are cached per stride.
Gathers and ``index_add_`` keep both directions differentiable and deterministic on the CPU.
"""

from __future__ import annotations

import torch

from .tensor import SparseTensor

__all__ = ["PointFeatures", "voxelize_mean", "devoxelize", "voxel_rows", "corner_rows"]

_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.int64)


class PointFeatures:
    """Per-point features (N, C) with their grid positions (N, 4) float and cached look-ups."""

    def __init__(self, feats: torch.Tensor, grid: torch.Tensor, cache: dict | None = None):
        self.feats, self.grid = feats, grid
        self.cache = {} if cache is None else cache  # ("cell", s) -> rows; ("corners", s) -> (rows, weights)

    def with_feats(self, feats: torch.Tensor) -> "PointFeatures":
        return PointFeatures(feats, self.grid, self.cache)


def _level_cells(grid: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) int64 [b, cell at stride] and (N, 3) float positions in level units."""
    pos = grid[:, 1:] / stride
    cells = torch.cat([grid[:, :1].round().to(torch.int64), torch.floor(pos).to(torch.int64)], dim=1)
    return cells, pos


def voxel_rows(points: PointFeatures, x: SparseTensor) -> torch.Tensor:
    """(N,) int64: the row of ``x`` (at its stride) that each point falls in."""
    key = ("cell", x.stride)
    if key not in points.cache:
        cells, _ = _level_cells(points.grid, x.stride)
        rows = x.cache.coordinate_keys(x.stride).lookup(x.cache.coordinate_keys(x.stride).pack(cells))
        if bool((rows < 0).any()):
            raise ValueError(
                f"{int((rows < 0).sum())} point(s) fall outside the voxels at stride {x.stride}: the points are not "
                "the ones voxelized"
            )
        points.cache[key] = rows
    return points.cache[key]


def voxelize_mean(points: PointFeatures, x: SparseTensor) -> SparseTensor:
    """The mean of the point features in each voxel of ``x``: a tensor on ``x``'s coordinates (M, C)."""
    rows = voxel_rows(points, x)
    total = points.feats.new_zeros(x.num_voxels, points.feats.shape[1]).index_add_(0, rows, points.feats)
    count = torch.bincount(rows, minlength=x.num_voxels).clamp_(min=1).to(total.dtype)
    return SparseTensor.derived(total / count[:, None], x)


def corner_rows(points: PointFeatures, x: SparseTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's 8 surrounding voxel rows of ``x`` (N, 8) int64 (absent: 0) and trilinear weights
    (N, 8) float32 (absent: 0, the rest renormalised to sum to 1); cached per stride."""
    key = ("corners", x.stride)
    if key not in points.cache:
        cells, pos = _level_cells(points.grid, x.stride)
        keys = x.cache.coordinate_keys(x.stride)
        corners = _CORNERS.to(cells.device)
        near = cells[:, None, :].repeat(1, 8, 1)
        near[:, :, 1:] += corners
        rows = keys.lookup(keys.pack(near.reshape(-1, 4))).reshape(-1, 8)
        frac = (pos - torch.floor(pos)).to(torch.float32)[:, None, :]  # (N, 1, 3)
        weights = torch.where(corners.bool(), frac, 1 - frac).prod(dim=2)  # (N, 8) trilinear
        weights = weights * (rows >= 0)
        weights = weights / (weights.sum(dim=1, keepdim=True) + 1e-8)
        points.cache[key] = (rows.clamp(min=0), weights)
    return points.cache[key]


def devoxelize(x: SparseTensor, points: PointFeatures) -> torch.Tensor:
    """(N, C) features of ``x`` read at every point: trilinear over the 8 surrounding voxels."""
    rows, weights = corner_rows(points, x)
    weights = weights.to(x.feats.dtype)
    out = x.feats[rows[:, 0]] * weights[:, :1]
    for k in range(1, 8):  # one corner at a time, accumulated in place: (N, C) of memory, not (N, 8, C)
        out.addcmul_(x.feats[rows[:, k]], weights[:, k : k + 1])
    return out

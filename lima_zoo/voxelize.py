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

__all__ = ["Voxels", "voxelize", "grid_indices"]


@dataclass
class Voxels:
    """Voxelized batch.

    coords: (M, 4) int32 [batch, i, j, k], non-negative, sorted.
    feats: (M, C) float32, the first point's input columns.
    inverse: (N,) int64, voxel row of every input point (all scans concatenated, in input order).
    """

    coords: torch.Tensor
    feats: torch.Tensor
    inverse: torch.Tensor


def grid_indices(xyz: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, 3) float xyz -> (N, 3) int64 grid cells, shifted so the minimum is 0 per scan."""
    p = xyz.to(torch.float64)
    size = torch.tensor(cfg.voxel_size, dtype=torch.float64, device=xyz.device)
    if cfg.voxel_type == "cylindrical":
        rho = torch.hypot(p[:, 0], p[:, 1])
        phi = torch.atan2(p[:, 1], p[:, 0]) * (180.0 / math.pi)  # degrees in [-180, 180]
        p = torch.stack([rho, phi, p[:, 2]], dim=1)
    cells = torch.floor(p / size).to(torch.int64)
    if len(cells):
        cells -= cells.min(dim=0).values
    return cells


def voxelize(scans: list[torch.Tensor], cfg: PreprocessConfig) -> Voxels:
    """Voxelize scans into one sparse batch.

    scans: list of (N_b, >=3) float tensors (x, y, z[, intensity, ...]); intensity already in the
        scale ``cfg.intensity_scale`` says. Scan b gets batch index b.
    """
    device = scans[0].device
    cells, feats = [], []
    for b, pts in enumerate(scans):
        if pts.dim() != 2 or pts.shape[1] < 3:
            raise ValueError(f"scan {b}: expected (N, >=3) points, got shape {tuple(pts.shape)}")
        if cfg.use_dim == 4 and pts.shape[1] < 4:
            # No intensity column: the model still gets 4 inputs, intensity 0.
            pts = torch.cat([pts[:, :3], pts.new_zeros(len(pts), 1)], dim=1)
        batch = torch.full((len(pts), 1), b, dtype=torch.int64, device=device)
        cells.append(torch.cat([batch, grid_indices(pts[:, :3], cfg)], dim=1))
        feats.append(pts[:, : cfg.use_dim].to(torch.float32))
    all_cells = torch.cat(cells)
    all_feats = torch.cat(feats)
    inverse, first = unique_first(CoordinateKeys(all_cells, margin=0).keys)
    return Voxels(all_cells[first].to(torch.int32), all_feats[first].contiguous(), inverse)

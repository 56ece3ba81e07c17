"""Points -> range-image pixels (the frustums a range-view backbone such as FRNet groups points by).

Each point falls in the pixel of its azimuth (column) and inclination (row), as
:class:`~lima_zoo.config.RangeImageConfig` defines; the points of one pixel form its frustum. The
result is a :class:`~lima_zoo.voxelize.Voxels` whose cells are the occupied pixels, [batch, row,
col, 0], sorted, with the inverse map and every point's own columns, so the encoder, trainer and
heads handle a range-view batch as they handle a voxel one. Angles are computed in float64 so a
pixel boundary does not depend on the input dtype.
"""

from __future__ import annotations

import math

import torch

from .config import PreprocessConfig, RangeImageConfig
from .sparse.kmap import unique_first
from .voxelize import Voxels, input_columns

__all__ = ["range_pixels", "range_project"]


def range_pixels(xyz: torch.Tensor, cfg: RangeImageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) xyz -> (rows (N,), cols (N,)) int64 pixels of a ``cfg.height`` x ``cfg.width`` image,
    seen from ``cfg.origin`` (the sensor's position in the points' frame).

    A point at the sensor itself (range 0) gets pitch 0: the horizon row of the forward column.
    """
    p = xyz.to(torch.float64) - torch.tensor(cfg.origin, dtype=torch.float64, device=xyz.device)
    depth = torch.linalg.vector_norm(p, dim=1)
    yaw = -torch.atan2(p[:, 1], p[:, 0])  # [-pi, pi]: 0 straight ahead, positive to the right
    pitch = torch.asin((p[:, 2] / depth.clamp_min(1e-12)).clamp(-1.0, 1.0))
    up, down = math.radians(cfg.fov_up), math.radians(cfg.fov_down)
    cols = torch.floor(0.5 * (yaw / math.pi + 1.0) * cfg.width)
    rows = torch.floor((up - pitch) / (up - down) * cfg.height)
    return rows.clamp_(0, cfg.height - 1).to(torch.int64), cols.clamp_(0, cfg.width - 1).to(torch.int64)


def range_project(scans: list[torch.Tensor], cfg: PreprocessConfig) -> Voxels:
    """Project scans into one batch of range-image pixels.

    scans: list of (N_b, >=3) float tensors (x, y, z[, intensity, ...]) in the sensor frame,
        intensity in ``cfg.intensity_scale``; scan b gets batch index b.
    Returns Voxels with coords (M, 4) int32 [batch, row, col, 0] of the occupied pixels, sorted;
    feats (M, C) the first point's columns; inverse (N,) each point's pixel row; point_feats (N, C)
    every point's columns (grid stays None: a range-view backbone reads pixels, not voxel units).
    """
    image = cfg.range_image
    if image is None:
        raise ValueError("range_project needs preprocess.range_image (the range image's size and field of view)")
    pixels, feats = [], []
    for b, pts in enumerate(scans):
        cols = input_columns(pts, cfg, b)
        row, col = range_pixels(pts[:, :3], image)
        pixels.append(torch.stack([torch.full_like(row, b), row, col, torch.zeros_like(row)], dim=1))
        feats.append(cols)
    all_pixels, all_feats = torch.cat(pixels), torch.cat(feats)
    keys = (all_pixels[:, 0] * image.height + all_pixels[:, 1]) * image.width + all_pixels[:, 2]
    inverse, first = unique_first(keys)
    return Voxels(all_pixels[first].to(torch.int32), all_feats[first].contiguous(), inverse, point_feats=all_feats)

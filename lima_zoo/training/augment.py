"""Student-side augmentation (after pairing, so targets stay attached to their points).

Random flips of x and y, a rotation about z and an isotropic scale, as SuperFlow/ScaLR train with.
"""

from __future__ import annotations

import math

import torch

from .config import AugmentConfig

__all__ = ["augment_points"]


def augment_points(points: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(N, C) points (x, y, z first, in the LiDAR frame) -> augmented copy; other columns unchanged."""
    out = points.clone()
    xyz = out[:, :3].double()
    # the draws come from the CPU generator (the same on every device); the matrix is built where the points are
    f64 = {"dtype": torch.float64, "device": points.device}
    m = torch.eye(3, **f64)
    if cfg.flip:
        flips = torch.rand(2, generator=gen) < 0.5
        m = torch.diag(torch.tensor([-1.0 if flips[0] else 1.0, -1.0 if flips[1] else 1.0, 1.0], **f64)) @ m
    if cfg.rotate:
        t = float(torch.rand((), generator=gen)) * 2 * math.pi
        c, s = math.cos(t), math.sin(t)
        m = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], **f64) @ m
    lo, hi = cfg.scale
    m = m * (lo + (hi - lo) * float(torch.rand((), generator=gen)))
    out[:, :3] = (xyz @ m.T).to(out.dtype)
    return out

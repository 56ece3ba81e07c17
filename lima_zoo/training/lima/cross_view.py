"""Cross-view aggregation: one unified target per LiDAR point from every camera that sees it.

Per (point, camera) pair the teacher feature is sampled bilinearly at the projected pixel (the same
as upsampling the patch grid to the image and reading the pixel, but cheaper), L2-normalised, then
averaged over the point's cameras and normalised again. A point in an overlap zone is pulled to
one target instead of two view-dependent ones; a point no camera sees has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..datasets.pairing import PixelPairs

__all__ = ["sample_pixel_features", "aggregate_views"]


def sample_pixel_features(
    feature_maps: torch.Tensor, pairs: PixelPairs, image_sizes: list[tuple[int, int]]
) -> torch.Tensor:
    """feature_maps (C, D, h, w) per camera; pairs with pixel uv in each camera's original (W, H)
    image -> (P, D) features, bilinear, in pair order."""
    out = feature_maps.new_zeros(len(pairs.point), feature_maps.shape[1])
    for c, (w, h) in enumerate(image_sizes):
        sel = torch.nonzero(pairs.camera == c).squeeze(1)
        if not len(sel):
            continue
        uv = pairs.uv[sel].to(feature_maps)
        # Pixel centres: u in [-0.5, W-0.5] spans the image; align_corners=False maps that to [-1, 1].
        # Border padding: within half a patch of the edge, use the edge token rather than fade to 0.
        grid = torch.stack([(uv[:, 0] + 0.5) / w * 2 - 1, (uv[:, 1] + 0.5) / h * 2 - 1], 1).view(1, -1, 1, 2)
        out[sel] = (
            F.grid_sample(feature_maps[c : c + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
            .view(feature_maps.shape[1], -1)
            .T
        )
    return out


def aggregate_views(
    num_points: int, pairs: PixelPairs, features: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair features (P, D) -> unified (N, D) L2-normalised targets and valid (N,) bool.

    weights (P,): per-pair weights (None = plain mean of the normalised features).
    """
    f = F.normalize(features.float(), dim=1)
    if weights is not None:
        f = f * weights[:, None].to(f)
    summed = f.new_zeros(num_points, f.shape[1]).index_add_(0, pairs.point.to(f.device), f)
    count = torch.bincount(pairs.point, minlength=num_points).to(f.device)
    valid = count > 0
    return F.normalize(summed, dim=1), valid


def centre_weights(pairs: PixelPairs, image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(P,) weights in (0, 1]: 1 at an image's centre, falling linearly towards its corners."""
    wh = torch.tensor(image_sizes, dtype=torch.float32)[pairs.camera]
    d = ((pairs.uv - wh / 2) / (wh / 2)).norm(dim=1) / (2**0.5)
    return (1.0 - d).clamp_min(0.05)

"""FRNet's range-view graph inputs: one range_project batch -> one feed dict per scan (numpy).

Inputs (one scan per run; :func:`range_feeds` splits a batch, and BatchNorm in eval mode treats
scans independently, so a batch run scan by scan gives the same features):

* ``point_feats`` (N, C_in) float32 — every point's columns (x, y, z[, intensity]).
* ``inverse`` (N,) int64 — each point's row of ``pixels``.
* ``pixels`` (M, 4) int64 — the occupied pixels [0, row, col, 0] (range_view.range_project).
* ``teacher_space`` () bool — as for MinkUNet.

Output ``features``: (N, 96) backbone features (or the L2-normalised head output), one per point.
"""

from __future__ import annotations

import numpy as np
import torch

from ..voxelize import Voxels

__all__ = ["RANGE_INPUT_NAMES", "range_feeds"]

RANGE_INPUT_NAMES = ["point_feats", "inverse", "pixels", "teacher_space"]


def range_feeds(vox: Voxels) -> list[dict[str, np.ndarray]]:
    """A range_project batch -> one feed dict per scan (``pixels`` with batch index 0), in batch order.

    The points of scan b are contiguous (range_project concatenates the scans), as are its pixels
    (sorted by batch first).
    """
    coords = vox.coords.to(torch.int64).cpu()
    inverse = vox.inverse.to(torch.int64).cpu()
    feats = vox.point_feats.float().cpu()
    scans = int(coords[-1, 0]) + 1
    pixel_ends = torch.bincount(coords[:, 0], minlength=scans).cumsum(0).tolist()
    point_ends = torch.bincount(coords[inverse, 0], minlength=scans).cumsum(0).tolist()
    feeds, p0, q0 = [], 0, 0
    for p1, q1 in zip(pixel_ends, point_ends):
        pixels = coords[p0:p1].clone()
        pixels[:, 0] = 0
        feeds.append(
            {"point_feats": feats[q0:q1].numpy(), "inverse": (inverse[q0:q1] - p0).numpy(), "pixels": pixels.numpy()}
        )
        p0, q0 = p1, q1
    return feeds

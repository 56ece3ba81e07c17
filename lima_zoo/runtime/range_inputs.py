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

from .cells import Cells

__all__ = ["RANGE_INPUT_NAMES", "range_feeds"]

RANGE_INPUT_NAMES = ["point_feats", "inverse", "pixels", "teacher_space"]


def range_feeds(cells: Cells) -> list[dict[str, np.ndarray]]:
    """A range_project batch -> one feed dict per scan (``pixels`` with batch index 0), in batch order.

    The points of scan b are contiguous (range_project concatenates the scans), as are its pixels
    (sorted by batch first).
    """
    coords = cells.coords.astype(np.int64)
    inverse = cells.inverse.astype(np.int64)
    feats = np.ascontiguousarray(cells.point_feats, dtype=np.float32)
    scans = int(coords[-1, 0]) + 1
    pixel_ends = np.cumsum(np.bincount(coords[:, 0], minlength=scans)).tolist()
    point_ends = np.cumsum(np.bincount(coords[inverse, 0], minlength=scans)).tolist()
    feeds, p0, q0 = [], 0, 0
    for p1, q1 in zip(pixel_ends, point_ends):
        pixels = coords[p0:p1].copy()
        pixels[:, 0] = 0
        feeds.append({"point_feats": feats[q0:q1], "inverse": inverse[q0:q1] - p0, "pixels": pixels})
        p0, q0 = p1, q1
    return feeds

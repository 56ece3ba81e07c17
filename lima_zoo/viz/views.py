"""What a picture of per-point features shows, as arrays: colours, similarity, and the two views.

Pure numpy, no plotting library: ``figure.py`` draws these. A view is a raster the points are
splatted into, so a 130k-point scan renders in well under a second and the same scan always gives
the same pixels (no marker overlap order left to a plotting library).

* bird's-eye view (BEV): x forward / y left seen from above, ``metres_per_pixel`` square cells;
  where several points fall into one pixel the highest one wins (roofs over the ground).
* range view: azimuth (columns, 0 deg = +x, increasing to the left as seen from above, like y) by
  elevation (rows, up is up); where several points fall into one pixel the nearest one wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["cosine_similarity", "nearest_point", "View", "bev_view", "range_view"]


def cosine_similarity(features: np.ndarray, query: int) -> np.ndarray:
    """(N, D) features, query row -> (N,) cosine similarity to that row, in [-1, 1] (NaN rows NaN)."""
    f = features.astype(np.float64)
    q = f[query]
    if not np.isfinite(q).all():
        raise ValueError(f"the query point {query} has no features (NaN row)")
    norms = np.linalg.norm(f, axis=1) * max(np.linalg.norm(q), 1e-12)
    return np.clip(f @ q / np.maximum(norms, 1e-12), -1.0, 1.0)


def nearest_point(xyz: np.ndarray, target: tuple[float, float, float]) -> int:
    """Row of the point nearest to ``target`` (x, y, z in the scan's frame, metres)."""
    d = np.square(xyz[:, :3] - np.asarray(target, dtype=np.float64)).sum(axis=1)
    return int(np.nanargmin(d))


@dataclass
class View:
    """A raster of the points: ``pixel`` (N, 2) int [row, col] of every point (-1 where outside),
    ``winner`` (H, W) the point drawn at each pixel (-1 where none), ``extent`` (left, right,
    bottom, top) in the view's axis units for ``imshow``."""

    pixel: np.ndarray
    winner: np.ndarray
    extent: tuple[float, float, float, float]
    xlabel: str
    ylabel: str

    def paint(self, colours: np.ndarray, background: float = 1.0, grow: int = 1) -> np.ndarray:
        """(N, 3) float colours in [0, 1] -> (H, W, 3) image; empty pixels ``background``.
        grow: empty pixels next to a drawn one take its colour (that many times), so single
        points and thin beam rings stay visible at screen resolution."""
        winner = self.winner.copy()
        for _ in range(grow):
            winner = _grow(winner)
        img = np.full((*winner.shape, 3), background, dtype=np.float32)
        hit = winner >= 0
        img[hit] = colours[winner[hit]]
        return img


def _grow(winner: np.ndarray) -> np.ndarray:
    """Fill each empty pixel from its first drawn 4-neighbour (below, above, right, left)."""
    out = winner.copy()
    for axis, step in ((0, 1), (0, -1), (1, 1), (1, -1)):
        shifted = np.roll(winner, step, axis=axis)
        edge = [slice(None)] * 2
        edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
        shifted[tuple(edge)] = -1  # no wrap-around
        fill = (out < 0) & (shifted >= 0)
        out[fill] = shifted[fill]
    return out


def _splat(
    rows: np.ndarray, cols: np.ndarray, priority: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel keeps the point of highest ``priority`` (ties: the later row). -> (pixel, winner)."""
    h, w = shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & np.isfinite(priority)
    pixel = np.where(inside[:, None], np.stack([rows, cols], axis=1), -1)
    idx = np.flatnonzero(inside)
    order = idx[np.argsort(priority[idx], kind="stable")]  # ascending: the last write wins
    winner = np.full(h * w, -1, dtype=np.int64)
    winner[rows[order] * w + cols[order]] = order
    return pixel, winner.reshape(h, w)


def bev_view(
    xyz: np.ndarray, half_extent: float | None = None, metres_per_pixel: float | None = None, max_pixels: int = 900
) -> View:
    """Bird's-eye view centred on the sensor. half_extent: metres shown either side (default: the
    98th percentile of the horizontal range, at least 5 m), at most ``max_pixels`` across."""
    x, y, z = xyz[:, 0].astype(np.float64), xyz[:, 1].astype(np.float64), xyz[:, 2].astype(np.float64)
    if half_extent is None:
        r = np.hypot(x, y)
        r = r[np.isfinite(r)]
        half_extent = max(float(np.percentile(r, 98)) if len(r) else 5.0, 5.0)
    if metres_per_pixel is None:
        metres_per_pixel = max(2 * half_extent / max_pixels, 0.05)
    n = int(np.ceil(2 * half_extent / metres_per_pixel))
    # Row 0 is the top of the picture: +x (forward) up, +y (left) to the left.
    rows = np.floor((half_extent - x) / metres_per_pixel)
    cols = np.floor((half_extent - y) / metres_per_pixel)
    pixel, winner = _splat(_safe(rows), _safe(cols), z, (n, n))
    extent = (half_extent, -half_extent, -half_extent, half_extent)  # y from +h (left) to -h, x from -h to +h
    return View(pixel, winner, extent, "y (m, left +)", "x (m, forward +)")


def range_view(xyz: np.ndarray, width: int = 1024, height: int = 64) -> View:
    """Azimuth x elevation image over the scan's own elevation span."""
    x, y, z = xyz[:, 0].astype(np.float64), xyz[:, 1].astype(np.float64), xyz[:, 2].astype(np.float64)
    dist = np.sqrt(x * x + y * y + z * z)
    az = np.degrees(np.arctan2(y, x))  # -180..180, + to the left
    el = np.degrees(np.arctan2(z, np.hypot(x, y)))
    ok = np.isfinite(el)
    lo, hi = (float(el[ok].min()), float(el[ok].max())) if ok.any() else (-1.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 1.0, hi + 1.0
    cols = np.floor((180.0 - az) / 360.0 * width)
    rows = np.floor((hi - el) / (hi - lo) * (height - 1e-9))
    pixel, winner = _splat(_safe(rows), _safe(cols), -dist, (height, width))  # the nearest point wins
    return View(pixel, winner, (180.0, -180.0, lo, hi), "azimuth (deg, left +)", "elevation (deg)")


def _safe(v: np.ndarray) -> np.ndarray:
    """Float pixel coordinates to int64, NaN/Inf to -1 (outside)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(np.isfinite(v), v, -1).astype(np.int64)

"""One nuScenes-like LiDAR scan of a simple street, ray-cast analytically (numpy only).

For tests and benchmarks that need realistic voxel structure (surfaces, not a random cloud) without
a dataset: a 32-beam spinning sensor 1.84 m above a ground plane, building facades on both sides,
parked cars as boxes, poles. ~1090 azimuth steps x 32 beams -> ~35k returns, as a nuScenes sweep.
"""

from __future__ import annotations

import numpy as np

__all__ = ["street_scan"]


def _ray_box(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance along each ray (M, 3) to an axis-aligned box, inf where missed (slab method)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1 = (lo - origin) * inv
        t2 = (hi - origin) * inv
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (tmax >= np.maximum(tmin, 0.0)) & (tmin > 0)
    return np.where(hit, tmin, np.inf)


def street_scan(seed: int = 0, beams: int = 32, azimuth_steps: int = 1090, max_range: float = 70.0) -> np.ndarray:
    """(N, 5) float32 points: x, y, z, intensity (0-255), ring — nuScenes ``.pcd.bin`` columns.

    Frame: sensor at the origin, x forward along the street, z up, ground at z = -1.84.
    """
    rng = np.random.default_rng(seed)
    elev = np.deg2rad(np.linspace(-30.67, 10.67, beams))
    azim = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False) + rng.uniform(0, 2 * np.pi / azimuth_steps)
    e, a = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    ring = np.repeat(np.arange(beams), azimuth_steps)
    origin = np.zeros(3)

    # Surfaces: (distance per ray, intensity) — ground, two facades, cars, poles.
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 2] < 0, -1.84 / dirs[:, 2], np.inf)
    left, right = rng.uniform(9, 14), rng.uniform(9, 14)
    surfaces = [(t_ground, 20.0)]
    surfaces.append((_ray_box(origin, dirs, np.array([-80, left, -1.84]), np.array([80, left + 10, 14])), 60.0))
    surfaces.append((_ray_box(origin, dirs, np.array([-80, -right - 10, -1.84]), np.array([80, -right, 11])), 55.0))
    for _ in range(14):  # parked cars along both kerbs, a few in the lanes
        x0 = rng.uniform(-60, 60)
        side = rng.choice([-1, 1])
        y0 = side * rng.uniform(3.5, 7.0)
        if abs(x0) < 6 and abs(y0) < 4:
            continue
        lo = np.array([x0, y0 - 0.9, -1.84])
        surfaces.append((_ray_box(origin, dirs, lo, lo + np.array([4.5, 1.8, 1.5])), 120.0))
    for x0 in np.arange(-60, 61, 15.0):  # street lamps on both kerbs
        for y0 in (left - 1.0, -right + 1.0):
            lo = np.array([x0, y0, -1.84])
            surfaces.append((_ray_box(origin, dirs, lo, lo + np.array([0.2, 0.2, 7.0])), 200.0))

    for _ in range(30):  # tree crowns: rough blobs of small boxes (many distinct voxels)
        c = np.array([rng.uniform(-50, 50), rng.choice([-1, 1]) * rng.uniform(6, 9), rng.uniform(2, 4)])
        for _ in range(6):
            lo = c + rng.normal(0, 0.8, 3)
            surfaces.append((_ray_box(origin, dirs, lo, lo + rng.uniform(0.3, 1.0, 3)), 35.0))
    dist = np.stack([s[0] for s in surfaces], axis=1)
    which = dist.argmin(axis=1)
    t = dist[np.arange(len(dirs)), which]
    keep = np.isfinite(t) & (t < max_range) & (t > 1.0)
    t = t[keep] + rng.normal(0, 0.02, keep.sum())  # 2 cm range noise
    xyz = dirs[keep] * t[:, None]
    base = np.array([s[1] for s in surfaces])[which[keep]]
    intensity = np.clip(base * rng.uniform(0.7, 1.3, len(base)) * np.exp(-t / 80.0), 0, 255)
    return np.column_stack([xyz, intensity, ring[keep]]).astype(np.float32)

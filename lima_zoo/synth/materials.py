"""Surface materials of the synthetic world: labels in three datasets, LiDAR reflectivity, appearance.

Every surface the sensors can hit is one material. Its row says which nuScenes-lidarseg category,
SemanticKITTI raw id and Waymo class it is, how strongly it returns a laser pulse, and how it looks
to a camera. Appearance carries class information the way real photos do: procedural texture,
per-object colour variation and shading, never a flat label colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Material", "MATERIALS", "M", "label_tables", "shade"]


@dataclass(frozen=True)
class Material:
    name: str
    nuscenes: int  # raw lidarseg index (see lima_zoo.labels.NUSCENES_CATEGORIES)
    kitti: int  # SemanticKITTI raw id (99 = other-object, ignored)
    waymo: int  # Waymo Open class id (0 = undefined, ignored)
    reflectivity: float  # 0-1, scales the 0-255 LiDAR intensity
    colour: tuple[float, float, float]  # base RGB in 0-1 when the object carries no colour of its own
    texture: str  # how _texture() varies the colour over the surface


MATERIALS = (
    Material("none", 0, 0, 0, 0.0, (0, 0, 0), "flat"),
    Material("road", 24, 40, 18, 0.10, (0.30, 0.30, 0.32), "asphalt"),
    Material("lane_marking", 24, 60, 19, 0.75, (0.88, 0.88, 0.85), "flat"),
    Material("sidewalk", 26, 48, 22, 0.25, (0.62, 0.60, 0.57), "tiles"),
    Material("terrain", 27, 72, 21, 0.30, (0.36, 0.50, 0.20), "grass"),
    Material("other_flat", 25, 44, 20, 0.20, (0.52, 0.47, 0.40), "gravel"),
    Material("building", 28, 50, 14, 0.35, (0.60, 0.50, 0.42), "facade"),
    Material("vegetation", 30, 70, 15, 0.40, (0.20, 0.42, 0.14), "leaves"),
    Material("trunk", 30, 71, 16, 0.30, (0.35, 0.24, 0.15), "bark"),
    Material("pole", 28, 80, 10, 0.45, (0.35, 0.36, 0.38), "flat"),
    Material("sign", 28, 81, 8, 0.95, (0.80, 0.10, 0.10), "sign"),
    Material("barrier", 9, 51, 0, 0.50, (0.80, 0.80, 0.78), "stripes"),
    Material("cone", 12, 99, 11, 0.90, (0.95, 0.45, 0.05), "cone"),
    Material("car", 17, 10, 1, 0.60, (0.5, 0.5, 0.5), "paint"),
    Material("glass", 17, 10, 1, 0.15, (0.08, 0.10, 0.13), "glass"),
    Material("truck", 23, 18, 2, 0.55, (0.85, 0.85, 0.80), "paint"),
    Material("pedestrian", 2, 30, 7, 0.30, (0.3, 0.3, 0.4), "cloth"),
    Material("skin", 2, 30, 7, 0.30, (0.80, 0.62, 0.50), "flat"),
)
M = {m.name: i for i, m in enumerate(MATERIALS)}


def label_tables() -> dict[str, np.ndarray]:
    """Material id -> raw label in each dataset: {"nuscenes", "kitti", "waymo"} int64 arrays."""
    return {k: np.array([getattr(m, k) for m in MATERIALS], dtype=np.int64) for k in ("nuscenes", "kitti", "waymo")}


def _hash(*cells: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (no state, any array shape)."""
    acc = np.zeros(np.broadcast(*cells).shape, dtype=np.float64)
    for c, k in zip(cells, (12.9898, 78.233, 37.719)):
        acc = acc + np.asarray(c, dtype=np.float64) * k
    return np.modf(np.abs(np.sin(acc) * 43758.5453))[0]


def _texture(mat: np.ndarray, base: np.ndarray, p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Modulate base colours (N, 3) by a per-material pattern of world point p (N, 3); u (N,) is the
    coordinate along the surface (road arc length, facade position) used by striped patterns."""
    col = base.copy()
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    tex = np.array([MATERIALS[i].texture for i in range(len(MATERIALS))])[mat]

    def where(kind: str) -> np.ndarray:
        return tex == kind

    sel = where("asphalt")
    col[sel] *= (0.9 + 0.2 * _hash(np.floor(x[sel] * 4), np.floor(y[sel] * 4)))[:, None]
    sel = where("tiles")
    grout = (np.abs(np.modf(x[sel])[0]) < 0.05) | (np.abs(np.modf(y[sel])[0]) < 0.05)
    col[sel] *= np.where(grout, 0.6, 0.95 + 0.1 * _hash(np.floor(x[sel]), np.floor(y[sel])))[:, None]
    sel = where("grass")
    n = _hash(np.floor(x[sel] * 3), np.floor(y[sel] * 3))
    col[sel] = col[sel] * (0.75 + 0.5 * n)[:, None] + np.outer(
        _hash(np.floor(x[sel] / 4), np.floor(y[sel] / 4)) * 0.12, [0.5, 0.2, 0]
    )
    sel = where("gravel")
    col[sel] *= (0.8 + 0.4 * _hash(np.floor(x[sel] * 10), np.floor(y[sel] * 10)))[:, None]
    sel = where("facade")  # window grid: dark panes every 3 m along the wall and every 3 m up
    win = (np.modf(np.abs(u[sel]) / 3.0)[0] > 0.35) & (np.modf(z[sel] / 3.0)[0] > 0.4) & (z[sel] > 1.0)
    col[sel] = np.where(
        win[:, None], np.array([0.16, 0.20, 0.26]), col[sel] * (0.92 + 0.08 * _hash(np.floor(z[sel] * 5))[:, None])
    )
    sel = where("leaves")
    n = _hash(np.floor(x[sel] * 6), np.floor(y[sel] * 6), np.floor(z[sel] * 6))
    col[sel] *= (0.55 + 0.9 * n)[:, None]
    sel = where("bark")
    col[sel] *= (0.8 + 0.3 * _hash(np.floor(z[sel] * 8)))[:, None]
    sel = where("stripes")  # red/white warning stripes every 0.5 m
    red = np.modf(np.abs(u[sel]) / 1.0)[0] < 0.5
    col[sel] = np.where(red[:, None], np.array([0.75, 0.12, 0.10]), col[sel])
    sel = where("cone")  # white reflective band around the middle
    band = (np.modf(z[sel])[0] > 0.35) & (np.modf(z[sel])[0] < 0.5) & (z[sel] < 1.0)
    col[sel] = np.where(band[:, None], np.array([0.95, 0.95, 0.95]), col[sel])
    sel = where("glass")
    col[sel] += 0.15 * _hash(np.floor(z[sel] * 20))[:, None]
    sel = where("cloth")
    col[sel] *= (0.85 + 0.3 * _hash(np.floor(z[sel] * 4)))[:, None]
    return col


SUN = np.array([0.35, 0.25, 0.90]) / np.linalg.norm([0.35, 0.25, 0.90])
SKY_ZENITH = np.array([0.35, 0.55, 0.85])
SKY_HORIZON = np.array([0.80, 0.85, 0.90])


def shade(
    mat: np.ndarray,
    colour: np.ndarray,
    p: np.ndarray,
    normal: np.ndarray,
    u: np.ndarray,
    dist: np.ndarray,
    dirs: np.ndarray,
) -> np.ndarray:
    """Camera RGB in 0-1 for hits (material (N,), object colour (N, 3) or NaN for the material's own,
    point (N, 3), unit normal (N, 3), surface coordinate (N,), distance (N,)) and sky where mat == 0."""
    base = np.array([m.colour for m in MATERIALS])[mat]
    own = ~np.isnan(colour[:, 0])
    base[own] = colour[own]
    col = _texture(mat, base, p, u)
    lambert = np.abs(normal @ SUN)  # two-sided: boxes seen from inside never happen, planes are thin
    col = col * (0.45 + 0.6 * lambert)[:, None]
    fog = np.exp(-dist / 180.0)[:, None]
    sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.clip(dirs[:, 2:3] * 3.0, 0, 1)
    col = col * fog + sky * (1 - fog)
    return np.clip(np.where((mat == 0)[:, None], sky, col), 0, 1)

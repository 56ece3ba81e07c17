"""Ray casting against the world: ground plane, oriented boxes, ellipsoids (numpy, vectorised per solid).

Each sensor is a grid of rays (a pinhole camera's pixels or a spinning LiDAR's range image). For every
solid only the rays in its screen-space window are tested — the window of its bounding sphere —
so a frame costs about (rays + covered pixels), like rasterising, not rays x solids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import Primitives, World

__all__ = ["Hits", "PinholeGrid", "SphericalGrid", "cast"]


@dataclass
class Hits:
    """Per ray: distance t (R,) (inf = sky), material (R,), colour (R, 3) (NaN = material's own),
    normal (R, 3), object id (R,) (-1 = ground/sky), surface coordinate u (R,)."""

    t: np.ndarray
    mat: np.ndarray
    colour: np.ndarray
    normal: np.ndarray
    obj: np.ndarray
    u: np.ndarray


class PinholeGrid:
    """Rays through pixel centres (u = column, v = row) of an OpenCV camera at ``origin`` whose
    camera -> global rotation is ``rot`` (3, 3)."""

    def __init__(self, K: np.ndarray, width: int, height: int, rot: np.ndarray, origin: np.ndarray):
        self.K, self.width, self.height, self.rot, self.origin = K, width, height, rot, origin
        v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
        cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        cam /= np.linalg.norm(cam, axis=1, keepdims=True)
        self.dirs = cam @ rot.T

    def candidates(self, centre: np.ndarray, radius: float) -> np.ndarray:
        c = (centre - self.origin) @ self.rot  # sphere centre in camera coordinates
        if c[2] - radius < 0.05:  # straddles or is behind the image plane: test whole image if in front at all
            return np.arange(len(self.dirs)) if c[2] + radius > 0 else np.empty(0, np.int64)
        z = c[2] - radius
        u = self.K[0, 0] * (np.array([c[0] - radius, c[0] + radius]) / z) + self.K[0, 2]
        v = self.K[1, 1] * (np.array([c[1] - radius, c[1] + radius]) / z) + self.K[1, 2]
        c0, c1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())), self.width - 1)
        r0, r1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())), self.height - 1)
        if c0 > c1 or r0 > r1:
            return np.empty(0, np.int64)
        rows, cols = np.arange(r0, r1 + 1), np.arange(c0, c1 + 1)
        return (rows[:, None] * self.width + cols[None, :]).ravel()


class SphericalGrid:
    """A spinning LiDAR's rays: ``inclinations`` (H,) rows x ``azimuths`` (W,) columns in the sensor
    frame (x forward, y left, z up), turned into the global frame by ``rot`` (3, 3) at ``origin``."""

    def __init__(self, inclinations: np.ndarray, azimuths: np.ndarray, rot: np.ndarray, origin: np.ndarray):
        self.inclinations, self.azimuths, self.rot, self.origin = inclinations, azimuths, rot, origin
        e, a = np.meshgrid(inclinations, azimuths, indexing="ij")
        self.local = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
        self.dirs = self.local @ rot.T

    def candidates(self, centre: np.ndarray, radius: float) -> np.ndarray:
        c = (centre - self.origin) @ self.rot
        dist = np.linalg.norm(c)
        if dist <= radius * 1.01:
            return np.arange(len(self.dirs))
        half = np.arcsin(radius / dist) + 1e-3
        az, el = np.arctan2(c[1], c[0]), np.arcsin(c[2] / dist)
        cols = np.nonzero(np.abs((self.azimuths - az + np.pi) % (2 * np.pi) - np.pi) <= half)[0]
        rows = np.nonzero(np.abs(self.inclinations - el) <= half)[0]
        return (rows[:, None] * len(self.azimuths) + cols[None, :]).ravel()


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def cast(world: World, prims: Primitives, grid: PinholeGrid | SphericalGrid, max_range: float = 200.0) -> Hits:
    """Nearest surface along every ray of ``grid`` (solids at one instant, ground from ``world``)."""
    o, dirs = grid.origin, grid.dirs
    n = len(dirs)
    t = np.full(n, np.inf)
    kind = np.zeros(n, np.int64)  # 0 sky, 1 ground, 2 box, 3 ellipsoid
    which = np.full(n, -1, np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(dirs[:, 2] < -1e-9, -o[2] / dirs[:, 2], np.inf)
    ground = tg < max_range
    t[ground], kind[ground] = tg[ground], 1

    for i in range(len(prims.box_centre)):
        centre, half, yaw = prims.box_centre[i], prims.box_half[i], prims.box_yaw[i]
        idx = grid.candidates(centre, float(np.linalg.norm(half)))
        if not len(idx):
            continue
        r = _rot_z(yaw)
        ol, dl = (o - centre) @ r, dirs[idx] @ r  # into the box frame (rotate by -yaw)
        inv = 1.0 / np.where(np.abs(dl) < 1e-12, 1e-12, dl)  # axis-parallel rays: huge finite slopes, no NaN
        lo, hi = (-half - ol) * inv, (half - ol) * inv
        near, far = np.minimum(lo, hi), np.maximum(lo, hi)
        tmin = np.maximum(np.maximum(near[:, 0], near[:, 1]), near[:, 2])
        tmax = np.minimum(np.minimum(far[:, 0], far[:, 1]), far[:, 2])
        hit = (tmin <= tmax) & (tmin > 1e-6) & (tmin < t[idx])
        idx = idx[hit]
        t[idx], kind[idx], which[idx] = tmin[hit], 2, i

    for i in range(len(prims.ell_centre)):
        centre, radii = prims.ell_centre[i], prims.ell_radii[i]
        idx = grid.candidates(centre, float(radii.max()))
        if not len(idx):
            continue
        oe, de = (o - centre) / radii, dirs[idx] / radii
        a, b, c = (de * de).sum(1), 2 * (de @ oe), oe @ oe - 1.0
        disc = b * b - 4 * a * c
        with np.errstate(invalid="ignore"):
            th = (-b - np.sqrt(disc)) / (2 * a)
        hit = (disc >= 0) & (th > 1e-6) & (th < t[idx])
        idx = idx[hit]
        t[idx], kind[idx], which[idx] = th[hit], 3, i

    p = o + dirs * np.where(np.isfinite(t), t, 0.0)[:, None]
    mat = np.zeros(n, np.int64)
    colour = np.full((n, 3), np.nan)
    normal = np.zeros((n, 3))
    obj = np.full(n, -1, np.int64)
    u = np.zeros(n)

    g = kind == 1
    mat[g], u[g] = world.ground(p[g, :2])
    normal[g] = (0.0, 0.0, 1.0)

    bx = np.nonzero(kind == 2)[0]
    if len(bx):
        j = which[bx]
        cy, sy = np.cos(prims.box_yaw[j]), np.sin(prims.box_yaw[j])
        rel = p[bx] - prims.box_centre[j]
        local = np.stack([cy * rel[:, 0] + sy * rel[:, 1], -sy * rel[:, 0] + cy * rel[:, 1], rel[:, 2]], 1)
        face = np.argmax(np.abs(local) / prims.box_half[j], axis=1)  # the face the hit lies on
        nl = np.zeros_like(local)
        nl[np.arange(len(bx)), face] = np.sign(local[np.arange(len(bx)), face])
        normal[bx] = np.stack([cy * nl[:, 0] - sy * nl[:, 1], sy * nl[:, 0] + cy * nl[:, 1], nl[:, 2]], 1)
        u[bx] = np.where(face == 0, local[:, 1], local[:, 0])  # horizontal coordinate along the hit face
        mat[bx], colour[bx], obj[bx] = prims.box_mat[j], prims.box_colour[j], prims.box_obj[j]

    el = np.nonzero(kind == 3)[0]
    if len(el):
        j = which[el]
        nrm = (p[el] - prims.ell_centre[j]) / prims.ell_radii[j] ** 2
        normal[el] = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
        mat[el], colour[el], obj[el] = prims.ell_mat[j], prims.ell_colour[j], prims.ell_obj[j]
    return Hits(t, mat, colour, normal, obj, u)

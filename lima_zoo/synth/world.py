"""The procedural driving world: a road with a turn, what stands beside it, and what moves on it.

Deterministic by seed. Coordinates are the scene's global frame (metres, z up, ground at z = 0).
The road is a chain of pieces (straight, arc, straight) parametrised by arc length s; lateral
offset d is positive to the left of the driving direction. Everything is placed in (s, d), so
buildings follow the bend and cars drive along it. Solids are oriented boxes (yaw about z) and
axis-aligned ellipsoids; the ground's class comes from (s, d).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .materials import M

__all__ = [
    "Road",
    "Primitives",
    "World",
    "make_world",
    "scene_seed",
    "is_val_scene",
    "ROAD_HALF_WIDTH",
    "SIDEWALK_WIDTH",
]

ROAD_HALF_WIDTH = 5.5  # two 3.5 m lanes plus a 2 m parking strip on each side
SIDEWALK_WIDTH = 3.0
LANE_CENTRE = 1.75  # ego and traffic drive on the right: d = -1.75


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass
class Road:
    """Pieces (x0, y0, heading0, length, curvature) laid end to end from arc length ``s_start``."""

    pieces: list[tuple[float, float, float, float, float]]
    s_start: float

    @classmethod
    def build(cls, lengths_curvatures: list[tuple[float, float]], s_start: float) -> "Road":
        pieces, x, y, h = [], 0.0, 0.0, 0.0
        # The first piece starts behind the origin so that s = 0 is at (0, 0) heading +x.
        x, y = s_start, 0.0
        for length, k in lengths_curvatures:
            pieces.append((x, y, h, length, k))
            x, y, h = cls._at(x, y, h, k, np.float64(length))
        return cls(pieces, s_start)

    @staticmethod
    def _at(x0: float, y0: float, h0: float, k: float, s: np.ndarray):
        if abs(k) < 1e-12:
            return x0 + s * np.cos(h0), y0 + s * np.sin(h0), h0 + 0 * s
        h = h0 + k * s
        return x0 + (np.sin(h) - np.sin(h0)) / k, y0 - (np.cos(h) - np.cos(h0)) / k, h

    @property
    def length(self) -> float:
        return float(sum(p[3] for p in self.pieces))

    def pose(self, s: np.ndarray, d: np.ndarray | float = 0.0):
        """Arc length s (N,) and lateral offset d -> x (N,), y (N,), heading (N,)."""
        s = np.atleast_1d(np.asarray(s, dtype=np.float64)) - self.s_start
        starts = np.cumsum([0.0] + [p[3] for p in self.pieces[:-1]])
        piece = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(self.pieces) - 1)
        x, y, h = np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)
        for i, (x0, y0, h0, _, k) in enumerate(self.pieces):  # beyond either end the road runs on
            sel = piece == i
            x[sel], y[sel], h[sel] = self._at(x0, y0, h0, k, s[sel] - starts[i])
        d = np.broadcast_to(np.asarray(d, dtype=np.float64), s.shape)
        return x - d * np.sin(h), y + d * np.cos(h), h

    def locate(self, xy: np.ndarray):
        """Points (N, 2) -> arc length s (N,), signed lateral offset d (N,) of the nearest road point."""
        best = np.full(len(xy), np.inf)
        s_out, d_out = np.zeros(len(xy)), np.zeros(len(xy))
        offset = self.s_start
        for x0, y0, h0, length, k in self.pieces:
            q = xy - np.array([x0, y0])
            if abs(k) < 1e-12:
                s = np.clip(q @ np.array([np.cos(h0), np.sin(h0)]), 0, length)
            else:
                cx, cy = -np.sin(h0) / k, np.cos(h0) / k  # centre relative to the piece start
                wx, wy = q[:, 0] - cx, q[:, 1] - cy
                h = np.arctan2(wx, -wy) if k > 0 else np.arctan2(-wx, wy)
                s = np.clip(_wrap(h - h0 - k * length / 2) / k + length / 2, 0, length)
            px, py, ph = self._at(x0, y0, h0, k, s)
            dx, dy = xy[:, 0] - px, xy[:, 1] - py
            dist = np.hypot(dx, dy)
            better = dist < best
            best[better] = dist[better]
            s_out[better] = offset + s[better]
            d_out[better] = (-dx * np.sin(ph) + dy * np.cos(ph))[better]
            offset += length
        return s_out, d_out


@dataclass
class Primitives:
    """Solids at one instant. Boxes: centre (B, 3), half size (B, 3), yaw (B,); ellipsoids: centre
    (E, 3), radii (E, 3). Each has a material (int), a colour (3,) or NaN, and an object id."""

    box_centre: np.ndarray
    box_half: np.ndarray
    box_yaw: np.ndarray
    box_mat: np.ndarray
    box_colour: np.ndarray
    box_obj: np.ndarray
    ell_centre: np.ndarray
    ell_radii: np.ndarray
    ell_mat: np.ndarray
    ell_colour: np.ndarray
    ell_obj: np.ndarray


@dataclass
class _Solid:
    kind: str  # "box" | "ell"
    centre: np.ndarray  # in the owner's frame (x along its heading, z up)
    size: np.ndarray  # half size or radii
    yaw: float
    mat: int
    colour: np.ndarray


@dataclass
class _Object:
    solids: list[_Solid]
    s0: float  # arc length at t = 0
    d: float  # lateral offset
    speed: float = 0.0  # m/s along the road (negative: oncoming)
    yaw_offset: float = 0.0  # extra yaw relative to the road heading
    static_xy: np.ndarray | None = None  # off-road statics placed by (s, d) once


@dataclass
class World:
    road: Road
    objects: list[_Object] = field(default_factory=list)
    ego_speed: float = 8.0
    ego_s0: float = 0.0

    def ego_pose(self, t: np.ndarray):
        """Ego x, y, yaw at times t (N,) in seconds: driving the right lane at constant speed."""
        return self.road.pose(self.ego_s0 + self.ego_speed * np.asarray(t, dtype=np.float64), -LANE_CENTRE)

    def ground(self, xy: np.ndarray):
        """Ground material (N,) and arc length (N,) for ground points (N, 2)."""
        s, d = self.road.locate(xy)
        a = np.abs(d)
        mat = np.full(len(xy), M["terrain"])
        zone = np.floor(s / 25.0) * 2 + (d > 0)  # alternate grass and gravel lots per 25 m and side
        lot = np.modf(np.abs(np.sin(zone * 12.9898) * 43758.5453))[0] < 0.35
        mat[lot] = M["other_flat"]
        mat[a < ROAD_HALF_WIDTH + SIDEWALK_WIDTH] = M["sidewalk"]
        mat[a < ROAD_HALF_WIDTH] = M["road"]
        centre_dash = (np.abs(d) < 0.08) & (np.modf(np.abs(s) / 6.0)[0] < 0.5)
        edge = np.abs(a - (ROAD_HALF_WIDTH - 2.0)) < 0.08
        mat[(a < ROAD_HALF_WIDTH) & (centre_dash | edge)] = M["lane_marking"]
        return mat, s

    def primitives(self, t: float) -> Primitives:
        """All solids at time t (seconds) in the global frame."""
        rows: dict[str, list] = {"box": [], "ell": []}
        for oid, obj in enumerate(self.objects):
            x, y, h = self.road.pose(np.array([obj.s0 + obj.speed * t]), obj.d)
            yaw = float(h[0]) + obj.yaw_offset
            c, s_ = np.cos(yaw), np.sin(yaw)
            for sol in obj.solids:
                cx = x[0] + c * sol.centre[0] - s_ * sol.centre[1]
                cy = y[0] + s_ * sol.centre[0] + c * sol.centre[1]
                rows[sol.kind].append(
                    (np.array([cx, cy, sol.centre[2]]), sol.size, yaw + sol.yaw, sol.mat, sol.colour, oid)
                )

        def stack(r: list, i: int, shape: tuple, dtype=np.float64):
            return np.array([v[i] for v in r], dtype=dtype).reshape(shape)

        b, e = rows["box"], rows["ell"]
        return Primitives(
            stack(b, 0, (-1, 3)),
            stack(b, 1, (-1, 3)),
            stack(b, 2, (-1,)),
            stack(b, 3, (-1,), np.int64),
            stack(b, 4, (-1, 3)),
            stack(b, 5, (-1,), np.int64),
            stack(e, 0, (-1, 3)),
            stack(e, 1, (-1, 3)),
            stack(e, 3, (-1,), np.int64),
            stack(e, 4, (-1, 3)),
            stack(e, 5, (-1,), np.int64),
        )


_NAN3 = np.full(3, np.nan)


def _box(cx, cy, cz, hx, hy, hz, mat, colour=_NAN3, yaw=0.0) -> _Solid:
    return _Solid(
        "box", np.array([cx, cy, cz], float), np.array([hx, hy, hz], float), yaw, M[mat], np.asarray(colour, float)
    )


def _car(rng: np.random.Generator) -> list[_Solid]:
    paint = rng.choice(
        [[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1], [0.5, 0.5, 0.55], [0.2, 0.45, 0.3]]
    )
    paint = np.clip(np.asarray(paint) + rng.normal(0, 0.04, 3), 0, 1)
    length, width = rng.uniform(4.0, 4.9), rng.uniform(1.7, 1.95)
    return [
        _box(0, 0, 0.65, length / 2, width / 2, 0.45, "car", paint),
        _box(-0.2, 0, 1.3, length * 0.28, width / 2 - 0.08, 0.22, "glass"),
    ]


def _truck(rng: np.random.Generator) -> list[_Solid]:
    body = np.clip(np.array([0.9, 0.9, 0.85]) * rng.uniform(0.7, 1.0) + rng.normal(0, 0.05, 3), 0, 1)
    return [
        _box(-1.0, 0, 1.8, 3.0, 1.25, 1.4, "truck", body),
        _box(2.9, 0, 1.3, 0.9, 1.2, 0.95, "truck", body * 0.8),
        _box(3.4, 0, 1.75, 0.45, 1.1, 0.35, "glass"),
    ]


def _pedestrian(rng: np.random.Generator) -> list[_Solid]:
    cloth = rng.uniform(0.05, 0.6, 3)
    height = rng.uniform(1.55, 1.9)
    return [
        _box(0, 0, (height - 0.25) / 2, 0.18, 0.25, (height - 0.25) / 2, "pedestrian", cloth),
        _Solid("ell", np.array([0, 0, height - 0.12]), np.array([0.11, 0.11, 0.13]), 0.0, M["skin"], _NAN3),
    ]


def _tree(rng: np.random.Generator) -> list[_Solid]:
    trunk_h, crown = rng.uniform(1.8, 3.0), rng.uniform(1.3, 2.4)
    green = np.clip(np.array([0.2, 0.42, 0.14]) * rng.uniform(0.7, 1.3, 3), 0, 1)
    return [
        _box(0, 0, trunk_h / 2, 0.15, 0.15, trunk_h / 2, "trunk"),
        _Solid(
            "ell",
            np.array([0, 0, trunk_h + crown * 0.8]),
            np.array([crown, crown, crown * 1.1]),
            0.0,
            M["vegetation"],
            green,
        ),
    ]


def make_world(seed: int, duration: float) -> World:
    """A world for a drive of ``duration`` seconds; everything the ego can see along it is populated."""
    rng = np.random.default_rng(seed)
    ego_speed = rng.uniform(6.0, 10.0)
    straight = rng.uniform(8.0, 25.0)
    turn = rng.choice([-1, 1]) * np.deg2rad(rng.uniform(35, 90))
    radius = rng.uniform(18.0, 30.0)
    tail = ego_speed * duration + 80.0
    road = Road.build(
        [(60.0 + straight, 0.0), (abs(turn) * radius, turn / abs(turn) / radius), (tail, 0.0)], s_start=-60.0
    )
    world = World(road, ego_speed=ego_speed, ego_s0=0.0)
    s_end = road.s_start + road.length
    objs = world.objects

    def clear_of_road(s: float, d: float, half_len: float, half_wid: float, yaw_off: float = 0.0) -> bool:
        x, y, h = road.pose(np.array([s]), d)
        yaw = h[0] + yaw_off
        corners = [(a * half_len, b * half_wid) for a in (-1, 1) for b in (-1, 1)] + [(0, 0)]
        pts = np.array(
            [[x[0] + np.cos(yaw) * u - np.sin(yaw) * v, y[0] + np.sin(yaw) * u + np.cos(yaw) * v] for u, v in corners]
        )
        _, dd = road.locate(pts)
        return bool(np.all(np.abs(dd) > ROAD_HALF_WIDTH + SIDEWALK_WIDTH + 0.3) and np.all(np.sign(dd) == np.sign(d)))

    for side in (-1, 1):
        s = road.s_start
        while s < s_end:  # buildings with gaps, set back from the sidewalk
            length = rng.uniform(8, 24)
            if rng.random() < 0.8:
                depth, height = rng.uniform(8, 14), rng.uniform(5, 18)
                d = side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH + rng.uniform(1.0, 6.0) + depth / 2)
                if clear_of_road(s + length / 2, d, length / 2, depth / 2):
                    facade = np.clip(
                        rng.choice([[0.62, 0.36, 0.28], [0.75, 0.70, 0.60], [0.55, 0.55, 0.55], [0.85, 0.80, 0.70]])
                        + rng.normal(0, 0.04, 3),
                        0,
                        1,
                    )
                    objs.append(
                        _Object(
                            [_box(0, 0, height / 2, length / 2, depth / 2, height / 2, "building", facade)],
                            s + length / 2,
                            d,
                        )
                    )
            s += length + rng.uniform(0, 6)
        s = road.s_start + rng.uniform(0, 10)
        while s < s_end:  # street furniture on the sidewalk
            d_kerb = side * (ROAD_HALF_WIDTH + 0.4)
            pole = [_box(0, 0, 3.5, 0.1, 0.1, 3.5, "pole")]
            if rng.random() < 0.4:
                pole.append(_box(0, 0, 2.6, 0.04, 0.35, 0.35, "sign", yaw=0.0))
            objs.append(_Object(pole, s, d_kerb))
            s += rng.uniform(12, 25)
        s = road.s_start + rng.uniform(0, 8)
        while s < s_end:  # trees on the outer sidewalk edge / verge
            if rng.random() < 0.7:
                objs.append(_Object(_tree(rng), s, side * (ROAD_HALF_WIDTH + SIDEWALK_WIDTH + rng.uniform(0.5, 2.0))))
            s += rng.uniform(6, 14)
        s = road.s_start + rng.uniform(0, 12)
        while s < s_end:  # parked cars and trucks in the parking strip
            if rng.random() < 0.55:
                truck = rng.random() < 0.15
                objs.append(
                    _Object(_truck(rng) if truck else _car(rng), s, side * (ROAD_HALF_WIDTH - 1.0), yaw_offset=0.0)
                )
            s += rng.uniform(7, 11)
        for _ in range(int(rng.integers(1, 3))):  # a row of barriers or a cluster of cones at the kerb
            s = rng.uniform(road.s_start + 20, s_end - 20)
            if rng.random() < 0.5:
                solids = [_box(i * 2.1, 0, 0.45, 1.0, 0.25, 0.45, "barrier") for i in range(int(rng.integers(3, 7)))]
                objs.append(_Object(solids, s, side * (ROAD_HALF_WIDTH + 0.3)))
            else:
                solids = [
                    _box(i * 1.5, rng.normal(0, 0.1), 0.35, 0.17, 0.17, 0.35, "cone")
                    for i in range(int(rng.integers(3, 7)))
                ]
                objs.append(_Object(solids, s, side * (ROAD_HALF_WIDTH - 2.4)))
        for _ in range(int(rng.integers(3, 8))):  # pedestrians walking along the sidewalk
            speed = rng.choice([-1, 1]) * rng.uniform(0.9, 1.6)
            d = side * (ROAD_HALF_WIDTH + rng.uniform(0.8, SIDEWALK_WIDTH - 0.6))
            objs.append(
                _Object(
                    _pedestrian(rng), rng.uniform(road.s_start + 10, s_end - 10), d, speed, 0.0 if speed > 0 else np.pi
                )
            )
    for _ in range(int(rng.integers(2, 5))):  # oncoming traffic in the left lane
        objs.append(_Object(_car(rng), rng.uniform(20, s_end - 10), LANE_CENTRE, -rng.uniform(6, 12), np.pi))
    for _ in range(int(rng.integers(1, 3))):  # traffic ahead in the ego lane, slightly faster than the ego
        objs.append(_Object(_car(rng), rng.uniform(15, 40), -LANE_CENTRE, ego_speed + rng.uniform(0.5, 2.0)))
    return world


def scene_seed(seed: int, scene: int) -> int:
    """The world seed of one scene: every scene is its own place, reproducible from (seed, scene)."""
    return int.from_bytes(hashlib.sha256(f"lima-zoo-world|{seed}|{scene}".encode()).digest()[:4], "little")


def is_val_scene(scene: int) -> bool:
    """Every fourth scene (3, 7, 11, ...) is validation; the split is by sequence, never by frame."""
    return scene % 4 == 3

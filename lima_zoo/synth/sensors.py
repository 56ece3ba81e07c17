"""Sensor rigs of the synthetic world and their rendering: a spinning LiDAR's range image and cameras.

Rigs follow the real vehicles' layouts: nuScenes (32-beam LIDAR_TOP at 1.84 m, six cameras with their
yaws and ~64 deg horizontal field of view, leaving narrow blind wedges between the front-side and
back-side cameras), SemanticKITTI (64-beam HDL-64E at 1.73 m, the left colour camera) and Waymo
(64-beam TOP, five cameras). Cameras fire at their own timestamps; the caller passes the ego pose
and solids of that instant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import MATERIALS, M, label_tables, shade
from .raycast import PinholeGrid, SphericalGrid, cast
from .world import World

__all__ = [
    "LidarSpec",
    "CameraSpec",
    "LidarScan",
    "CameraImage",
    "NUSCENES_LIDAR",
    "KITTI_LIDAR",
    "WAYMO_LIDAR",
    "nuscenes_cameras",
    "kitti_camera",
    "waymo_cameras",
    "ego_matrix",
    "scan_lidar",
    "render_camera",
]


@dataclass(frozen=True)
class LidarSpec:
    inclinations: tuple[float, ...]  # radians, row 0 = highest beam
    azimuth_steps: int
    translation: tuple[float, float, float]  # sensor position in the ego frame
    max_range: float = 80.0
    yaw: float = 0.0  # mounting yaw of the sensor frame relative to the ego frame (radians)

    @property
    def rotation(self) -> np.ndarray:
        """Sensor -> ego rotation (3, 3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _beams(top_deg: float, bottom_deg: float, n: int) -> tuple[float, ...]:
    return tuple(np.deg2rad(np.linspace(top_deg, bottom_deg, n)).tolist())


NUSCENES_LIDAR = LidarSpec(_beams(10.67, -30.67, 32), 1084, (0.94, 0.0, 1.84))
KITTI_LIDAR = LidarSpec(_beams(2.0, -24.8, 64), 1024, (0.76, 0.0, 1.73))
WAYMO_LIDAR = LidarSpec(_beams(2.4, -17.6, 64), 1000, (1.43, 0.0, 2.18), max_range=75.0, yaw=0.12)


@dataclass(frozen=True)
class CameraSpec:
    name: str
    yaw: float  # radians, optical axis heading in the ego frame (0 = forward, + = left)
    translation: tuple[float, float, float]
    hfov: float  # radians
    width: int
    height: int
    time_offset: float  # seconds after the LiDAR timestamp

    @property
    def intrinsic(self) -> np.ndarray:
        f = self.width / 2 / np.tan(self.hfov / 2)
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    @property
    def rotation(self) -> np.ndarray:
        """Camera (OpenCV: x right, y down, z forward) -> ego rotation (3, 3)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[s, 0, c], [-c, 0, s], [0, -1.0, 0]])


def nuscenes_cameras(scale: float = 0.25) -> list[CameraSpec]:
    """The six nuScenes cameras at ``scale`` x 1600x900, in the order the cameras fire."""
    w, h, fov = round(1600 * scale), round(900 * scale), np.deg2rad(64.0)
    rows = [
        ("CAM_FRONT", 0, (1.70, 0.0, 1.51)),
        ("CAM_FRONT_RIGHT", -55, (1.55, -0.49, 1.50)),
        ("CAM_BACK_RIGHT", -125, (1.03, -0.48, 1.56)),
        ("CAM_BACK", 180, (0.03, 0.0, 1.57)),
        ("CAM_BACK_LEFT", 125, (1.04, 0.48, 1.56)),
        ("CAM_FRONT_LEFT", 55, (1.52, 0.49, 1.51)),
    ]
    return [CameraSpec(n, np.deg2rad(y), t, fov, w, h, 0.008 * i) for i, (n, y, t) in enumerate(rows)]


def kitti_camera(scale: float = 0.5) -> CameraSpec:
    """KITTI's left colour camera (image_2), 1242x375 at ``scale``; fired with the scan."""
    return CameraSpec(
        "image_2", 0.0, (1.03, 0.06, 1.65), np.deg2rad(81.0), round(1242 * scale), round(375 * scale), 0.0
    )


def waymo_cameras(scale: float = 0.25) -> list[CameraSpec]:
    """Waymo's five cameras (FRONT=1, FRONT_LEFT=2, FRONT_RIGHT=3, SIDE_LEFT=4, SIDE_RIGHT=5)."""
    w, h, fov = round(1920 * scale), round(1280 * scale), np.deg2rad(50.0)
    ws = round(886 * scale)
    rows = [
        ("FRONT", 0, w, h),
        ("FRONT_LEFT", 45, w, h),
        ("FRONT_RIGHT", -45, w, h),
        ("SIDE_LEFT", 90, w, ws),
        ("SIDE_RIGHT", -90, w, ws),
    ]
    return [CameraSpec(n, np.deg2rad(y), (1.5, 0.0, 2.1), fov, ww, hh, 0.0) for n, y, ww, hh in rows]


def ego_matrix(world: World, t: float) -> np.ndarray:
    """Ego -> global (4, 4) at time t: on the road, ground at z = 0."""
    x, y, yaw = (v[0] for v in world.ego_pose(np.array([t])))
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, 0], [0, 0, 0, 1.0]])


@dataclass
class LidarScan:
    """Range image of one sweep: range (H, W) metres (0 = no return), intensity (H, W) 0-255, material
    (H, W), instance (H, W) (object id + 1 for cars, trucks and pedestrians, else 0); points in the
    sensor frame (x forward, y left, z up) are range x ``dirs``."""

    range: np.ndarray
    intensity: np.ndarray
    material: np.ndarray
    instance: np.ndarray
    dirs: np.ndarray  # (H, W, 3) unit ray directions in the sensor frame

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """xyz (N, 3), intensity (N,), ring (N,), material (N,), instance (N,) of every return, row-major."""
        keep = self.range > 0
        rows = np.broadcast_to(np.arange(self.range.shape[0])[:, None], self.range.shape)
        xyz = self.dirs[keep] * self.range[keep][:, None].astype(np.float64)
        return xyz, self.intensity[keep], rows[keep], self.material[keep], self.instance[keep]


_THINGS = [M[n] for n in ("car", "glass", "truck", "pedestrian", "skin")]


def scan_lidar(
    world: World, t: float, spec: LidarSpec, rng: np.random.Generator, azimuths: np.ndarray | None = None
) -> LidarScan:
    """Ray-cast one sweep at time t (the whole sweep at one instant); 2 cm range noise."""
    ego = ego_matrix(world, t)
    origin = ego[:3, :3] @ np.asarray(spec.translation) + ego[:3, 3]
    if azimuths is None:  # column 0 looks backwards and azimuth decreases along a row, as in Waymo range images
        azimuths = np.pi - (np.arange(spec.azimuth_steps) + 0.5) / spec.azimuth_steps * 2 * np.pi
    grid = SphericalGrid(np.asarray(spec.inclinations), azimuths, ego[:3, :3] @ spec.rotation, origin)
    hits = cast(world, world.primitives(t), grid, spec.max_range)
    shape = (len(spec.inclinations), len(azimuths))
    ok = np.isfinite(hits.t) & (hits.t < spec.max_range) & (hits.t > 1.0) & (hits.mat > 0)
    rng_m = np.where(ok, hits.t + rng.normal(0, 0.02, len(hits.t)), 0.0)
    cos_inc = np.abs((hits.normal * grid.dirs).sum(1))
    refl = np.array([m.reflectivity for m in MATERIALS])[hits.mat]
    inten = np.clip(
        255 * refl * (0.4 + 0.6 * cos_inc) * rng.uniform(0.85, 1.15, len(ok)) * np.exp(-hits.t.clip(0, 200) / 120),
        0,
        255,
    )
    thing = np.isin(hits.mat, _THINGS) & ok
    return LidarScan(
        rng_m.reshape(shape).astype(np.float32),
        np.where(ok, inten, 0).reshape(shape).astype(np.float32),
        np.where(ok, hits.mat, 0).reshape(shape),
        np.where(thing, hits.obj + 1, 0).reshape(shape),
        grid.local.reshape(*shape, 3),
    )


@dataclass
class CameraImage:
    """rgb (H, W, 3) uint8; label (H, W) uint8 nuScenes raw category at each pixel (0 = sky);
    depth (H, W) float32 metres along the optical axis (inf = sky)."""

    rgb: np.ndarray
    label: np.ndarray
    depth: np.ndarray


_NUSCENES_OF_MATERIAL = label_tables()["nuscenes"]


def render_camera(world: World, t: float, spec: CameraSpec, ego: np.ndarray | None = None) -> CameraImage:
    """Render ``spec`` at time t (its own timestamp): ray-cast every pixel centre, shade, label."""
    ego = ego_matrix(world, t) if ego is None else ego
    rot = ego[:3, :3] @ spec.rotation
    origin = ego[:3, :3] @ np.asarray(spec.translation) + ego[:3, 3]
    grid = PinholeGrid(spec.intrinsic, spec.width, spec.height, rot, origin)
    hits = cast(world, world.primitives(t), grid)
    rgb = shade(
        hits.mat,
        hits.colour,
        origin + grid.dirs * np.where(np.isfinite(hits.t), hits.t, 0)[:, None],
        hits.normal,
        hits.u,
        np.where(np.isfinite(hits.t), hits.t, 1e9),
        grid.dirs,
    )
    depth = hits.t * (grid.dirs @ rot[:, 2])
    hw = (spec.height, spec.width)
    return CameraImage(
        (rgb * 255 + 0.5).astype(np.uint8).reshape(*hw, 3),
        _NUSCENES_OF_MATERIAL[hits.mat].astype(np.uint8).reshape(hw),
        depth.astype(np.float32).reshape(hw),
    )

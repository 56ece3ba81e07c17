"""Write the synthetic world as Waymo Open Dataset v2 parquet components (pyarrow).

Per segment: lidar (TOP range image [H, W, 4]: range, intensity, elongation, no-label-zone),
lidar_segmentation ([H, W, 2]: instance, class), lidar_calibration (extrinsic, beam inclinations),
vehicle_pose, camera_image (JPEG + the vehicle pose at the image's time) and camera_calibration (five
cameras, Waymo's camera frame: x forward, y left, z up). The range image is ray-cast in Waymo's own
column layout, so the official range-image formula recovers the points exactly. Scenes split by
sequence: every fourth goes to validation/.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from .materials import label_tables
from .parallel import run_scenes
from .sensors import WAYMO_LIDAR, CameraSpec, ego_matrix, render_camera, scan_lidar, waymo_cameras
from .world import World, is_val_scene, make_world, scene_seed

__all__ = ["write_waymo", "waymo_azimuths", "camera_extrinsic", "FRAME_PERIOD"]

FRAME_PERIOD = 0.1  # s, 10 Hz
_WAYMO_OF_MAT = label_tables()["waymo"]
_CAMERA_IDS = {"FRONT": 1, "FRONT_LEFT": 2, "FRONT_RIGHT": 3, "SIDE_LEFT": 4, "SIDE_RIGHT": 5}
# Waymo camera frame (x forward, y left, z up) -> OpenCV camera frame (x right, y down, z forward).
WAYMO_TO_OPENCV = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def waymo_azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    """Sensor-frame azimuth of every range-image column, by the official formula."""
    az_corr = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    return ((width - np.arange(width) - 0.5) / width * 2 - 1) * np.pi - az_corr


def camera_extrinsic(cam: CameraSpec) -> np.ndarray:
    """Camera (Waymo axes) -> vehicle (4, 4)."""
    m = np.eye(4)
    m[:3, :3] = cam.rotation @ WAYMO_TO_OPENCV
    m[:3, 3] = cam.translation
    return m


def _lidar_extrinsic() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = WAYMO_LIDAR.rotation, WAYMO_LIDAR.translation
    return m


def _write_table(path: Path, rows: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.table(rows), tmp)


def _segment(root: Path, seed: int, sc: int, frames: int, image_scale: float) -> str:
    from PIL import Image

    world: World = make_world(scene_seed(seed, sc), frames * FRAME_PERIOD + 1.0)
    rng = np.random.default_rng(scene_seed(seed, sc) + 3)
    segment = f"synth_{seed:04d}_{sc:04d}_000_000"
    split = "validation" if is_val_scene(sc) else "training"
    ext = _lidar_extrinsic()
    width = WAYMO_LIDAR.azimuth_steps
    inc = np.asarray(WAYMO_LIDAR.inclinations)  # row 0 = highest beam; stored ascending, as Waymo does
    cams = waymo_cameras(image_scale)
    key = {"key.segment_context_name": segment}
    tables: dict[str, dict[str, list]] = {
        c: {} for c in ("lidar", "lidar_segmentation", "vehicle_pose", "camera_image")
    }

    def add(table: str, row: dict) -> None:
        for k, v in {**key, **row}.items():
            tables[table].setdefault(k, []).append(v)

    for k in range(frames):
        t = 0.5 + k * FRAME_PERIOD
        ts = 1_550_000_000_000_000 + sc * 100_000_000 + int(round(t * 1e6))
        scan = scan_lidar(world, t, WAYMO_LIDAR, rng, azimuths=waymo_azimuths(width, ext))
        h = len(inc)
        raw_intensity = np.arctanh(np.clip(scan.intensity / 255.0, 0, 0.999))  # readers squash with tanh back to 0-255
        ri = np.stack([scan.range, raw_intensity, np.zeros_like(scan.range), np.zeros_like(scan.range)], -1)
        ri[scan.range <= 0] = -1.0  # Waymo marks no-return pixels with -1
        seg = np.stack([scan.instance, _WAYMO_OF_MAT[scan.material]], -1).astype(np.int32)
        ident = {"key.frame_timestamp_micros": ts, "key.laser_name": 1}
        add(
            "lidar",
            {
                **ident,
                "[LiDARComponent].range_image_return1.values": ri.astype(np.float32).ravel().tolist(),
                "[LiDARComponent].range_image_return1.shape": [h, width, 4],
            },
        )
        add(
            "lidar_segmentation",
            {
                **ident,
                "[LiDARSegmentationLabelComponent].range_image_return1.values": seg.ravel().tolist(),
                "[LiDARSegmentationLabelComponent].range_image_return1.shape": [h, width, 2],
            },
        )
        add(
            "vehicle_pose",
            {
                "key.frame_timestamp_micros": ts,
                "[VehiclePoseComponent].world_from_vehicle.transform": ego_matrix(world, t).ravel().tolist(),
            },
        )
        for cam in cams:
            image = render_camera(world, t + cam.time_offset, cam)
            buf = io.BytesIO()
            Image.fromarray(image.rgb).save(buf, format="JPEG", quality=92)
            add(
                "camera_image",
                {
                    "key.frame_timestamp_micros": ts,
                    "key.camera_name": _CAMERA_IDS[cam.name],
                    "[CameraImageComponent].image": buf.getvalue(),
                    "[CameraImageComponent].pose.transform": ego_matrix(world, t + cam.time_offset).ravel().tolist(),
                },
            )
    calib = {
        "key.segment_context_name": [segment],
        "key.laser_name": [1],
        "[LiDARCalibrationComponent].extrinsic.transform": [ext.ravel().tolist()],
        "[LiDARCalibrationComponent].beam_inclination.values": [inc[::-1].tolist()],
        "[LiDARCalibrationComponent].beam_inclination.min": [float(inc.min())],
        "[LiDARCalibrationComponent].beam_inclination.max": [float(inc.max())],
    }
    cam_calib: dict[str, list] = {}
    for cam in cams:
        K = cam.intrinsic
        row = {
            "key.segment_context_name": segment,
            "key.camera_name": _CAMERA_IDS[cam.name],
            "[CameraCalibrationComponent].intrinsic.f_u": K[0, 0],
            "[CameraCalibrationComponent].intrinsic.f_v": K[1, 1],
            "[CameraCalibrationComponent].intrinsic.c_u": K[0, 2],
            "[CameraCalibrationComponent].intrinsic.c_v": K[1, 2],
            **{f"[CameraCalibrationComponent].intrinsic.{d}": 0.0 for d in ("k1", "k2", "p1", "p2", "k3")},
            "[CameraCalibrationComponent].extrinsic.transform": camera_extrinsic(cam).ravel().tolist(),
            "[CameraCalibrationComponent].width": cam.width,
            "[CameraCalibrationComponent].height": cam.height,
        }
        for k2, v in row.items():
            cam_calib.setdefault(k2, []).append(v)
    tables["lidar_calibration"], tables["camera_calibration"] = calib, cam_calib
    for name, rows in tables.items():
        _write_table(root / split / name / f"{segment}.parquet", rows)
    return segment


def write_waymo(
    out: str | Path,
    scenes: int = 4,
    frames: int = 10,
    seed: int = 0,
    image_scale: float = 0.2,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``scenes`` segments of ``frames`` frames under ``out``/{training,validation}; returns ``out``."""
    root = Path(out)
    list(
        run_scenes(_segment, [(root, seed, sc, frames, image_scale) for sc in range(scenes)], workers, progress, frames)
    )
    return root

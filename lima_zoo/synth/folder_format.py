"""Write the synthetic world in lima-zoo's sequence-folder format (the format for users' own drives).

The nuScenes rig (32-beam LiDAR, six cameras firing at their own offsets), scans as KITTI-style
``.bin`` (x, y, z, intensity 0-255, in the LiDAR's x-forward frame), ego poses at every scan and
image timestamp, and per-point labels (nuScenes evaluation ids). The format is documented in
``lima_zoo.training.datasets.sequence_folder``; this writer is its worked example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from ..labels import NUSCENES_EVAL_CLASSES, NUSCENES_LUT
from .materials import label_tables
from .nuscenes_format import KEYFRAME_PERIOD, matrix_to_quaternion
from .parallel import run_scenes
from .sensors import NUSCENES_LIDAR, ego_matrix, nuscenes_cameras, render_camera, scan_lidar
from .world import make_world, scene_seed

__all__ = ["write_sequence_folder"]

_EVAL_OF_MAT = NUSCENES_LUT[label_tables()["nuscenes"]]


def _drive(root: Path, seed: int, sc: int, frames: int, image_scale: float) -> str:
    from PIL import Image

    name = f"drive_{sc:04d}"
    out = root / name
    world = make_world(scene_seed(seed, sc), frames * KEYFRAME_PERIOD + 1.0)
    rng = np.random.default_rng(scene_seed(seed, sc) + 4)
    poses = {}
    for k in range(frames):
        t = 0.5 + k * KEYFRAME_PERIOD
        ts = 1_600_000_000_000_000 + int(round(t * 1e6))
        xyz, inten, _, mat, _ = scan_lidar(world, t, NUSCENES_LIDAR, rng).points()
        with atomic_path(out / "lidar" / f"{ts}.bin") as tmp:
            np.column_stack([xyz, inten]).astype(np.float32).tofile(tmp)
        with atomic_path(out / "labels" / f"{ts}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, _EVAL_OF_MAT[mat].astype(np.uint8))
        poses[ts] = ego_matrix(world, t)
        for cam in nuscenes_cameras(image_scale):
            tc = ts + int(round(cam.time_offset * 1e6))
            with atomic_path(out / "cameras" / cam.name / f"{tc}.jpg") as tmp:
                Image.fromarray(render_camera(world, t + cam.time_offset, cam).rgb).save(tmp, format="JPEG", quality=92)
            poses[tc] = ego_matrix(world, t + cam.time_offset)
    lines = [
        f"{ts} {m[0, 3]:.6f} {m[1, 3]:.6f} {m[2, 3]:.6f} "
        + " ".join(f"{q:.9f}" for q in matrix_to_quaternion(m[:3, :3]))
        for ts, m in sorted(poses.items())
    ]
    with atomic_path(out / "poses.txt") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return name


def write_sequence_folder(
    out: str | Path,
    scenes: int = 4,
    frames: int = 10,
    seed: int = 0,
    image_scale: float = 0.25,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``scenes`` drives of ``frames`` scans plus calibration.json under ``out``; returns ``out``."""
    root = Path(out)
    cams = nuscenes_cameras(image_scale)
    calibration = {
        "lidar": {
            "translation": list(NUSCENES_LIDAR.translation),
            "rotation": [1.0, 0.0, 0.0, 0.0],
            "intensity_range": 255,
            "load_dim": 4,
        },
        "cameras": {
            c.name: {
                "intrinsic": c.intrinsic.tolist(),
                "translation": list(c.translation),
                "rotation": matrix_to_quaternion(c.rotation),
                "width": c.width,
                "height": c.height,
            }
            for c in cams
        },
        "max_camera_offset_us": 50_000,
        "class_names": list(NUSCENES_EVAL_CLASSES),
    }
    with atomic_path(root / "calibration.json") as tmp:
        Path(tmp).write_text(json.dumps(calibration, indent=1))
    list(run_scenes(_drive, [(root, seed, sc, frames, image_scale) for sc in range(scenes)], workers, progress, frames))
    return root

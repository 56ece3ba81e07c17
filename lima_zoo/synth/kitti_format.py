"""Write the synthetic world as SemanticKITTI sequences (velodyne, labels, calib.txt, poses.txt, image_2).

The rig is KITTI's: a 64-beam scanner at 1.73 m (its frame: x forward, y left, z up), rectified cam0
0.27 m ahead of it, image_2 6 cm left of cam0 (P2 = K [I | (0.06, 0, 0)]), 10 Hz scans. Poses are
cam0 poses relative to the first scan, as KITTI's odometry ground truth. Sequences are numbered
00, 01, ... in scene order; ``lima_splits.json`` names the validation sequences (every fourth
scene), since a synthetic world has no sequence 08 of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from .materials import label_tables
from .parallel import run_scenes
from .sensors import KITTI_LIDAR, CameraSpec, ego_matrix, kitti_camera, render_camera, scan_lidar
from .world import is_val_scene, make_world, scene_seed

__all__ = ["write_semantickitti", "kitti_calibration", "SCAN_PERIOD"]

SCAN_PERIOD = 0.1  # s, 10 Hz
CAM0_TRANSLATION = np.array([1.03, 0.0, 1.65])  # ego frame
_KITTI_OF_MAT = label_tables()["kitti"]


def _pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation, translation
    return m


def kitti_calibration(cam: CameraSpec) -> dict[str, np.ndarray]:
    """P0..P3 (3, 4) and Tr (3, 4) velodyne -> cam0 for our rig, as calib.txt holds them."""
    K = cam.intrinsic
    cam0_to_ego = _pose(cam.rotation, CAM0_TRANSLATION)
    velo_to_ego = _pose(np.eye(3), np.asarray(KITTI_LIDAR.translation))
    tr = np.linalg.inv(cam0_to_ego) @ velo_to_ego
    baseline = {"P0": 0.0, "P1": -0.54, "P2": 0.06, "P3": -0.48}  # x offset of each camera's frame from cam0
    calib = {k: np.hstack([K, K @ np.array([[b], [0.0], [0.0]])]) for k, b in baseline.items()}
    calib["Tr"] = tr[:3]
    return calib


def _scene(root: Path, seed: int, sc: int, frames: int, image_scale: float) -> str:
    from PIL import Image

    seq = f"{sc:02d}"
    out = root / "sequences" / seq
    world = make_world(scene_seed(seed, sc), frames * SCAN_PERIOD + 1.0)
    rng = np.random.default_rng(scene_seed(seed, sc) + 2)
    cam = kitti_camera(image_scale)
    calib = kitti_calibration(cam)
    with atomic_path(out / "calib.txt") as tmp:
        Path(tmp).write_text("".join(f"{k}: {' '.join(f'{v:.12e}' for v in m.ravel())}\n" for k, m in calib.items()))
    cam0_to_ego = _pose(cam.rotation, CAM0_TRANSLATION)
    first = None
    poses = []
    for k in range(frames):
        t = 0.5 + k * SCAN_PERIOD
        name = f"{k:06d}"
        scan = scan_lidar(world, t, KITTI_LIDAR, rng)
        xyz, inten, _, mat, inst = scan.points()
        with atomic_path(out / "velodyne" / f"{name}.bin") as tmp:
            np.column_stack([xyz, inten / 255.0]).astype(np.float32).tofile(tmp)
        with atomic_path(out / "labels" / f"{name}.label") as tmp:
            (_KITTI_OF_MAT[mat].astype(np.uint32) | (inst.astype(np.uint32) << 16)).tofile(tmp)
        image = render_camera(world, t, cam)
        with atomic_path(out / "image_2" / f"{name}.png") as tmp:
            Image.fromarray(image.rgb).save(tmp, format="PNG")
        cam0_to_global = ego_matrix(world, t) @ cam0_to_ego
        first = cam0_to_global if first is None else first
        poses.append((np.linalg.inv(first) @ cam0_to_global)[:3])
    with atomic_path(out / "poses.txt") as tmp:
        Path(tmp).write_text("".join(" ".join(f"{v:.12e}" for v in p.ravel()) + "\n" for p in poses))
    return seq


def write_semantickitti(
    out: str | Path,
    scenes: int = 4,
    frames: int = 10,
    seed: int = 0,
    image_scale: float = 0.5,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``scenes`` sequences of ``frames`` scans under ``out``; returns ``out``."""
    root = Path(out)
    args = [(root, seed, sc, frames, image_scale) for sc in range(scenes)]
    seqs = list(run_scenes(_scene, args, workers, progress, frames))
    splits = {
        "train": [s for i, s in enumerate(seqs) if not is_val_scene(i)],
        "val": [s for i, s in enumerate(seqs) if is_val_scene(i)],
    }
    with atomic_path(root / "lima_splits.json") as tmp:
        Path(tmp).write_text(json.dumps(splits))
    return root

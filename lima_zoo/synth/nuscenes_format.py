"""Write the synthetic world as a nuScenes v1.0 dataset that nuscenes-devkit's ``NuScenes()`` opens.

All 13 tables plus lidarseg.json (annotation tables empty), LIDAR_TOP keyframes at 2 Hz (optional
20 Hz sweeps between them), six camera JPEGs per keyframe at their own timestamps and ego poses,
one label file per keyframe, a drivable-area map PNG per log (0.1 m / pixel, devkit convention).
Two files that are not nuScenes: ``lima_splits.json`` (train/val scene names, read by our reader in
place of the official split lists) and ``synth_truth/<camera sample_data token>.npz`` (rendered
per-pixel category and depth, so tests can check labels against images exactly).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_path
from ..labels import NUSCENES_CATEGORIES
from .materials import label_tables
from .parallel import run_scenes
from .sensors import NUSCENES_LIDAR, CameraSpec, ego_matrix, nuscenes_cameras, render_camera, scan_lidar
from .world import ROAD_HALF_WIDTH, World, is_val_scene, make_world, scene_seed

__all__ = ["write_nuscenes", "matrix_to_quaternion", "LIDAR_ROTATION"]

# LIDAR_TOP is mounted with -90 deg yaw: its x points right, its y forward (lidar -> ego rotation).
LIDAR_ROTATION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
KEYFRAME_PERIOD = 0.5  # s, nuScenes samples at 2 Hz
SWEEP_PERIOD = 0.05  # s, LiDAR spins at 20 Hz
BASE_TIMESTAMP = 1_533_151_600_000_000  # us, an arbitrary August 2018 start like the real logs
_NUS_OF_MAT = label_tables()["nuscenes"]


def matrix_to_quaternion(r: np.ndarray) -> list[float]:
    """(3, 3) rotation -> [w, x, y, z] with w >= 0 (Shepperd's method, stable for every rotation)."""
    m = np.asarray(r, dtype=np.float64)
    tr = np.trace(m)
    cands = np.array([tr, m[0, 0], m[1, 1], m[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        w = np.sqrt(1 + tr) / 2
        q = [w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)]
    else:
        j, k = (i % 3) + 1, ((i + 1) % 3) + 1
        a, b, c = i - 1, j - 1, k - 1
        s = np.sqrt(1 + m[a, a] - m[b, b] - m[c, c]) * 2
        q = [0.0] * 4
        q[0] = (m[c, b] - m[b, c]) / s
        q[i], q[j], q[k] = s / 4, (m[b, a] + m[a, b]) / s, (m[c, a] + m[a, c]) / s
    q = np.array(q) * (1 if q[0] >= 0 else -1)
    return (q / np.linalg.norm(q)).tolist()


TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
    "lidarseg",
)


def _token(*parts: object) -> str:
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def _write_json(path: Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=0))


def _map_png(world: World, offset: np.ndarray, path: Path) -> None:
    """Drivable area (255) of the scene's road in global coordinates, devkit layout (row 0 = max y)."""
    from PIL import Image

    s = np.arange(world.road.s_start, world.road.s_start + world.road.length, 1.0)
    x, y, _ = world.road.pose(s)
    extent = np.array([x.max(), y.max()]) + offset + 40.0
    coarse = 0.5
    w, h = int(extent[0] / coarse) + 1, int(extent[1] / coarse) + 1
    gy, gx = np.meshgrid((h - 1 - np.arange(h) + 0.5) * coarse, (np.arange(w) + 0.5) * coarse, indexing="ij")
    _, d = world.road.locate(np.stack([gx.ravel() - offset[0], gy.ravel() - offset[1]], 1))
    mask = (np.abs(d) < ROAD_HALF_WIDTH).reshape(h, w).astype(np.uint8) * 255
    image = Image.fromarray(mask).resize((w * 5, h * 5), Image.NEAREST)  # 0.5 m -> the devkit's 0.1 m
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _scene_tables(
    root: Path, seed: int, sc: int, frames: int, image_scale: float, sweeps: int, version: str
) -> dict[str, list]:
    """Render and write one scene's files; returns its rows of the per-scene tables."""
    from PIL import Image

    cams = nuscenes_cameras(image_scale)
    channels = ["LIDAR_TOP"] + [c.name for c in cams]
    tables: dict[str, list] = {
        k: [] for k in ("calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data", "map", "lidarseg")
    }
    world = make_world(scene_seed(seed, sc), frames * KEYFRAME_PERIOD + 1.0)
    rng = np.random.default_rng(scene_seed(seed, sc) + 1)
    s_probe = np.arange(world.road.s_start, world.road.s_start + world.road.length, 5.0)
    px, py, _ = world.road.pose(s_probe)
    offset = np.array([60.0 - px.min(), 60.0 - py.min()]).round()  # map frame: every coordinate > 0
    log_name = f"n000-synth-{seed:04d}-{sc:04d}"
    log_tok, scene_tok, map_tok = _token("log", seed, sc), _token("scene", seed, sc), _token("map", seed, sc)
    tables["log"].append(
        {
            "token": log_tok,
            "logfile": log_name,
            "vehicle": "synth",
            "date_captured": "2018-08-01",
            "location": "synth-town",
        }
    )
    _map_png(world, offset, root / "maps" / f"{map_tok}.png")
    tables["map"].append(
        {"token": map_tok, "log_tokens": [log_tok], "category": "semantic_prior", "filename": f"maps/{map_tok}.png"}
    )
    calib = {}
    for ch in channels:
        tok = _token("calibrated_sensor", seed, sc, ch)
        calib[ch] = tok
        if ch == "LIDAR_TOP":
            rec = {
                "translation": list(NUSCENES_LIDAR.translation),
                "rotation": matrix_to_quaternion(LIDAR_ROTATION),
                "camera_intrinsic": [],
            }
        else:
            cam = next(c for c in cams if c.name == ch)
            rec = {
                "translation": list(cam.translation),
                "rotation": matrix_to_quaternion(cam.rotation),
                "camera_intrinsic": cam.intrinsic.tolist(),
            }
        tables["calibrated_sensor"].append({"token": tok, "sensor_token": _token("sensor", ch), **rec})

    last_sd: dict[str, dict | None] = {ch: None for ch in channels}
    samples = []
    t0_us = BASE_TIMESTAMP + sc * 100_000_000

    def add_sample_data(ch: str, t: float, sample_tok: str, key: bool, filename: str, wh: tuple[int, int]) -> dict:
        ts = t0_us + int(round(t * 1e6))
        tok = _token("sample_data", seed, sc, ch, ts)
        ego = ego_matrix(world, t)
        pose_tok = _token("ego_pose", seed, sc, ch, ts)
        tables["ego_pose"].append(
            {
                "token": pose_tok,
                "timestamp": ts,
                "rotation": matrix_to_quaternion(ego[:3, :3]),
                "translation": [ego[0, 3] + offset[0], ego[1, 3] + offset[1], 0.0],
            }
        )
        rec = {
            "token": tok,
            "sample_token": sample_tok,
            "ego_pose_token": pose_tok,
            "calibrated_sensor_token": calib[ch],
            "timestamp": ts,
            "fileformat": "pcd" if ch == "LIDAR_TOP" else "jpg",
            "is_key_frame": key,
            "height": wh[1],
            "width": wh[0],
            "filename": filename,
            "prev": "",
            "next": "",
        }
        prev = last_sd[ch]
        if prev is not None:
            prev["next"], rec["prev"] = tok, prev["token"]
        last_sd[ch] = rec
        tables["sample_data"].append(rec)
        return rec

    def write_lidar(t: float, sample_tok: str, key: bool) -> None:
        scan = scan_lidar(world, t, NUSCENES_LIDAR, rng)
        xyz, inten, ring, mat, _ = scan.points()
        pts = np.column_stack([xyz @ LIDAR_ROTATION, inten, ring]).astype(np.float32)  # ego-aligned -> lidar frame
        ts = t0_us + int(round(t * 1e6))
        fname = f"{'samples' if key else 'sweeps'}/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
        with atomic_path(root / fname) as tmp:
            pts.tofile(tmp)
        rec = add_sample_data("LIDAR_TOP", t, sample_tok, key, fname, (0, 0))
        if key:
            lfile = f"lidarseg/{version}/{rec['token']}_lidarseg.bin"
            with atomic_path(root / lfile) as tmp:
                _NUS_OF_MAT[mat].astype(np.uint8).tofile(tmp)
            tables["lidarseg"].append({"token": rec["token"], "sample_data_token": rec["token"], "filename": lfile})

    def write_camera(cam: CameraSpec, t: float, sample_tok: str) -> None:
        image = render_camera(world, t, cam)
        ts = t0_us + int(round(t * 1e6))
        fname = f"samples/{cam.name}/{log_name}__{cam.name}__{ts}.jpg"
        with atomic_path(root / fname) as tmp:
            Image.fromarray(image.rgb).save(tmp, format="JPEG", quality=92)
        rec = add_sample_data(cam.name, t, sample_tok, True, fname, (cam.width, cam.height))
        with atomic_path(root / "synth_truth" / f"{rec['token']}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, label=image.label, depth=image.depth.astype(np.float16))

    for k in range(frames):
        t_key = 0.5 + k * KEYFRAME_PERIOD  # start 0.5 s in, so sweeps could precede the first keyframe
        sample_tok = _token("sample", seed, sc, k)
        if k > 0:
            for j in range(sweeps, 0, -1):
                write_lidar(t_key - j * SWEEP_PERIOD, sample_tok, False)
        write_lidar(t_key, sample_tok, True)
        for cam in cams:
            write_camera(cam, t_key + cam.time_offset, sample_tok)
        samples.append(
            {
                "token": sample_tok,
                "timestamp": t0_us + int(round(t_key * 1e6)),
                "scene_token": scene_tok,
                "prev": "",
                "next": "",
            }
        )
    for a, b in zip(samples[:-1], samples[1:]):
        a["next"], b["prev"] = b["token"], a["token"]
    tables["sample"] = samples
    tables["scene"].append(
        {
            "token": scene_tok,
            "log_token": log_tok,
            "nbr_samples": frames,
            "first_sample_token": samples[0]["token"],
            "last_sample_token": samples[-1]["token"],
            "name": scene_name(seed, sc),
            "description": f"synthetic drive, world seed {scene_seed(seed, sc)}",
        }
    )
    return tables


def scene_name(seed: int, scene: int) -> str:
    return f"scene-synth-{seed:04d}-{scene:04d}"


def write_nuscenes(
    out: str | Path,
    scenes: int = 4,
    frames: int = 10,
    seed: int = 0,
    image_scale: float = 0.25,
    sweeps: int = 0,
    version: str = "v1.0-trainval",
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``scenes`` scenes of ``frames`` keyframes each under ``out``; returns the dataroot.

    ``sweeps`` LiDAR-only non-key frames (20 Hz spacing) precede each keyframe after the first.
    Scenes render in ``workers`` processes (default: one per CPU core); the output does not depend on
    it. ``progress`` is called with the number of keyframes finished as each scene completes.
    """
    root = Path(out)
    tables: dict[str, list] = {k: [] for k in TABLES}
    tables["category"] = [
        {"token": _token("category", n), "name": n, "description": f"synthetic {n}", "index": i}
        for i, n in enumerate(NUSCENES_CATEGORIES)
    ]
    channels = ["LIDAR_TOP"] + [c.name for c in nuscenes_cameras(image_scale)]
    tables["sensor"] = [
        {"token": _token("sensor", ch), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"}
        for ch in channels
    ]
    args = [(root, seed, sc, frames, image_scale, sweeps, version) for sc in range(scenes)]
    for rows in run_scenes(_scene_tables, args, workers, progress, frames):
        for name, r in rows.items():
            tables[name].extend(r)
    for name, rows in tables.items():
        _write_json(root / version / f"{name}.json", rows)
    splits = {
        "train": [scene_name(seed, i) for i in range(scenes) if not is_val_scene(i)],
        "val": [scene_name(seed, i) for i in range(scenes) if is_val_scene(i)],
    }
    _write_json(root / "lima_splits.json", splits)
    return root

"""A plain folder format for a fleet's own unlabeled drives, so ``lima-zoo train`` needs no code changes.

    <root>/
      calibration.json                 sensor mounting, once for the whole fleet (see below)
      <drive>/                         one folder per drive (sequence), any name; sorted by name
        lidar/<timestamp_us>.<ext>     scans in any format lima_zoo.load_points reads
        poses.txt                      "<timestamp_us> tx ty tz qw qx qy qz" per line: ego -> global
        cameras/<CAMERA>/<timestamp_us>.jpg|.png
        labels/<timestamp_us>.npy      optional: one evaluation class id per point (0 = ignore)

calibration.json:

    {"lidar": {"translation": [x, y, z], "rotation": [qw, qx, qy, qz], "intensity_range": 255,
               "load_dim": 4},
     "cameras": {"CAM_FRONT": {"intrinsic": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                               "translation": [x, y, z], "rotation": [qw, qx, qy, qz],
                               "width": 1600, "height": 900}},
     "max_camera_offset_us": 50000,
     "class_names": ["car", ...]}         (optional; needed only for evaluation with labels)

Rotations map sensor -> ego; the camera frame is OpenCV's (x right, y down, z forward). Poses are
interpolated at every scan and image timestamp (linear translation, normalised-lerp rotation), so
cameras need not fire with the LiDAR; an image is paired with the scan nearest in time, at most
``max_camera_offset_us`` away. Everything is validated when the dataset is opened, and each problem
names its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...io import POINT_SUFFIXES, point_suffix
from .frame import (
    CameraFrame,
    Frame,
    FrameDataset,
    every_nth,
    group_by_sequence,
    image_loader,
    read_number_table,
    read_scan,
    require,
)
from .pairing import pose_matrix

__all__ = ["SequenceFolderDataset", "interpolate_pose"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _stamp(path: Path, suffix: str) -> int:
    stem = path.name[: -len(suffix)]
    if not stem.isdigit():
        raise ValueError(f"{path}: file names must be integer timestamps in microseconds (got {stem!r})")
    return int(stem)


def _read_poses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> timestamps (P,) int64 ascending, rows (P, 7) tx ty tz qw qx qy qz."""
    rows = read_number_table(path, "per-frame ego poses", 8, "timestamp_us tx ty tz qw qx qy qz")
    stamps = rows[:, 0].astype(np.int64)
    if np.any(np.diff(stamps) <= 0):
        raise ValueError(f"{path}: timestamps must increase strictly")
    return stamps, rows[:, 1:]


def interpolate_pose(stamps: np.ndarray, rows: np.ndarray, t: int, source: Path) -> np.ndarray:
    """Ego -> global (4, 4) at time t from poses (P,) / (P, 7); t outside the covered span is an error."""
    if t < stamps[0] or t > stamps[-1]:
        raise ValueError(f"{source}: timestamp {t} lies outside the poses ({stamps[0]}..{stamps[-1]})")
    j = int(np.searchsorted(stamps, t, side="right")) - 1
    j = min(j, len(stamps) - 2) if len(stamps) > 1 else 0
    a = 0.0 if len(stamps) == 1 else (t - stamps[j]) / (stamps[j + 1] - stamps[j])
    r0, r1 = rows[j], rows[min(j + 1, len(rows) - 1)]
    q0, q1 = r0[3:], r1[3:] * (1 if np.dot(r0[3:], r1[3:]) >= 0 else -1)  # shortest way round
    return pose_matrix((1 - a) * q0 + a * q1, (1 - a) * r0[:3] + a * r1[:3]).numpy()


class SequenceFolderDataset(FrameDataset):
    """Drives under ``root`` in the format above; ``split="all"`` (the default) or ``percent`` thins frames."""

    def __init__(self, root: str | Path, percent: float = 100, labels: bool = False) -> None:
        super().__init__()
        self.root = Path(root)
        cal_path = require(
            self.root / "calibration.json", "sensor calibration (see lima_zoo.training.datasets.sequence_folder)"
        )
        try:
            cal = json.loads(cal_path.read_text())
            lidar = cal["lidar"]
            self.lidar_to_ego = pose_matrix(lidar["rotation"], lidar["translation"]).numpy()
            self.intensity_range = float(lidar.get("intensity_range", 255))
            self.load_dim = lidar.get("load_dim")
            self.max_offset = int(cal.get("max_camera_offset_us", 50_000))
            self.cams = {}
            for name, c in cal.get("cameras", {}).items():
                K = np.asarray(c["intrinsic"], dtype=np.float64)
                if K.shape != (3, 3):
                    raise ValueError(f"camera {name}: intrinsic must be 3x3")
                self.cams[name] = (
                    K,
                    pose_matrix(c["rotation"], c["translation"]).numpy(),
                    int(c["width"]),
                    int(c["height"]),
                )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"{cal_path}: invalid calibration ({type(e).__name__}: {e})") from None
        self.class_names = tuple(cal.get("class_names", ()))
        self.labels = labels
        if labels and not self.class_names:
            raise ValueError(f"{cal_path}: labels requested but no 'class_names' given")
        self._poses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._images: dict[str, dict[str, list[tuple[int, Path]]]] = {}
        frames = []
        drives = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not drives:
            raise ValueError(f"{self.root}: no drive folders (expected <drive>/lidar, <drive>/poses.txt)")
        for drive in drives:
            scans = sorted(
                (
                    (_stamp(p, point_suffix(p)), p)
                    for p in require(drive / "lidar", "LiDAR scans").iterdir()
                    if point_suffix(p) in POINT_SUFFIXES
                )
            )
            if not scans:
                raise ValueError(f"{drive / 'lidar'}: no scans with a readable extension ({', '.join(POINT_SUFFIXES)})")
            stamps, rows = _read_poses(drive / "poses.txt")
            self._poses[drive.name] = (stamps, rows)
            for t, p in scans:
                interpolate_pose(stamps, rows, t, drive / "poses.txt")  # fail now, not mid-training
                if labels:
                    require(drive / "labels" / f"{t}.npy", f"labels of {p.name}")
            images = {}
            for name in self.cams:
                folder = require(drive / "cameras" / name, f"images of camera {name} (listed in calibration.json)")
                images[name] = sorted(
                    (_stamp(p, p.suffix), p) for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
                )
                for t, _ in images[name]:
                    interpolate_pose(stamps, rows, t, drive / "poses.txt")
            self._images[drive.name] = images
            frames += [(drive.name, (t, p)) for t, p in scans]
        frames = every_nth(frames, percent)
        self.sequences.extend(group_by_sequence(frames))

    def load(self, ref: tuple[int, Path], sequence: str, index: int) -> Frame:
        t, path = ref
        points = read_scan(path, "LiDAR scan", self.load_dim, self.intensity_range)
        stamps, rows = self._poses[sequence]
        pose_file = self.root / sequence / "poses.txt"
        labels = None
        if self.labels:
            lpath = self.root / sequence / "labels" / f"{t}.npy"
            labels = np.load(lpath, allow_pickle=False).astype(np.int64)
            if labels.shape != (len(points),):
                raise ValueError(f"{lpath}: {labels.shape} labels for {len(points)} points")
        cams = []
        for name, (K, to_ego, w, h) in self.cams.items():
            candidates = self._images[sequence][name]
            if not candidates:
                continue
            ts, img = min(candidates, key=lambda c: abs(c[0] - t))
            if abs(ts - t) > self.max_offset:
                continue  # this camera has no image close enough to the scan
            cams.append(
                CameraFrame(
                    name,
                    K,
                    to_ego,
                    interpolate_pose(stamps, rows, ts, pose_file),
                    w,
                    h,
                    image_loader(img, f"image of camera {name}"),
                )
            )
        return Frame(
            points, labels, self.lidar_to_ego, interpolate_pose(stamps, rows, t, pose_file), cams, sequence, index, t
        )

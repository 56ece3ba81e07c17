"""SemanticKITTI reader: velodyne scans, labels (19 classes), calib.txt, poses.txt, image_2.

Frames use the velodyne frame as their ego frame (lidar -> ego is the identity) and the LiDAR pose
Tr^-1 . pose . Tr as ego -> global. image_2's pose comes from P2 and Tr, so that pairing reproduces
KITTI's uv = P2 . Tr . p. Remission (0-1) is returned on the 0-255 scale like every reader here.

Splits: sequences 00-07, 09, 10 train, 08 val, 11-21 test — or ``lima_splits.json`` in the root
({"train": [...], "val": [...]}, written by our synthetic world). Percent subsets keep every
(100/p)-th scan of the training split (SLidR's rule).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...labels import KITTI_EVAL_CLASSES, kitti_learning_map
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

__all__ = ["SemanticKittiDataset", "read_calib", "read_poses"]

_OFFICIAL = {
    "train": [f"{i:02d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)],
    "val": ["08"],
    "test": [f"{i:02d}" for i in range(11, 22)],
}


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """calib.txt -> {"P0".."P3": (3, 4), "Tr": (4, 4)}; a missing key or bad row names the file."""
    out = {}
    for n, line in enumerate(require(path, "KITTI calibration").read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, vals = line.partition(":")
        try:
            out[key.strip()] = np.array(vals.split(), dtype=np.float64).reshape(3, 4)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'KEY: 12 numbers', got {line[:60]!r}") from None
    missing = [k for k in ("P2", "Tr") if k not in out]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    out["Tr"] = np.vstack([out["Tr"], [0, 0, 0, 1.0]])
    return out


def read_poses(path: Path) -> np.ndarray:
    """poses.txt -> (S, 4, 4) cam0 poses."""
    rows = read_number_table(path, "KITTI poses", 12, "a 3x4 matrix, row-major")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = rows.reshape(-1, 3, 4)
    return poses


class SemanticKittiDataset(FrameDataset):
    """Scans of ``split`` ("train", "val", "test", "all") under ``root`` (the folder holding sequences/)."""

    class_names = KITTI_EVAL_CLASSES

    def __init__(
        self, root: str | Path, split: str = "train", percent: float = 100, labels: bool = True, image: bool = True
    ) -> None:
        super().__init__()
        self.root, self.labels, self.use_image = Path(root), labels, image
        seq_dir = require(self.root / "sequences", "SemanticKITTI sequences folder")
        custom = self.root / "lima_splits.json"
        lists = json.loads(custom.read_text()) if custom.exists() else _OFFICIAL
        if split == "all":
            names = sorted(p.name for p in seq_dir.iterdir() if p.is_dir())
        elif split in lists:
            names = lists[split]
        else:
            raise ValueError(
                f"split {split!r} is not defined in {custom if custom.exists() else 'the official lists'}; choose "
                f"from {sorted(lists) + ['all']}"
            )
        if percent != 100 and split != "train":
            raise ValueError(f"percent applies to the train split only (got split={split!r}, percent={percent})")
        self._calib: dict[str, dict] = {}
        self._poses: dict[str, np.ndarray] = {}
        self._image_size: dict[str, tuple[int, int]] = {}
        scans = []
        for name in names:
            folder = seq_dir / name
            if not folder.is_dir():
                continue  # a split sequence this copy does not include (e.g. only 08 downloaded)
            ids = sorted(p.stem for p in require(folder / "velodyne", "velodyne scans").glob("*.bin"))
            self._calib[name] = read_calib(folder / "calib.txt")
            poses = read_poses(folder / "poses.txt")
            if len(poses) < len(ids):
                raise ValueError(f"{folder / 'poses.txt'}: {len(poses)} poses for {len(ids)} scans")
            self._poses[name] = poses
            scans += [(name, i) for i in ids]
        if split == "train":
            scans = every_nth(scans, percent)
        self.sequences.extend(group_by_sequence(scans))

    def load(self, ref: str, sequence: str, index: int) -> Frame:
        folder = self.root / "sequences" / sequence
        points = read_scan(folder / "velodyne" / f"{ref}.bin", "velodyne scan")  # remission 0-1 -> 0-255
        labels = None
        if self.labels:
            lpath = require(folder / "labels" / f"{ref}.label", "SemanticKITTI labels")
            raw_labels = np.fromfile(lpath, dtype=np.uint32)
            if len(raw_labels) != len(points):
                raise ValueError(f"{lpath}: {len(raw_labels)} labels for {len(points)} points")
            labels = kitti_learning_map(raw_labels & 0xFFFF)
        calib, tr = self._calib[sequence], self._calib[sequence]["Tr"]
        pose = np.linalg.inv(tr) @ self._poses[sequence][int(ref)] @ tr  # velodyne -> first velodyne frame
        cams = []
        if self.use_image:
            p2 = calib["P2"]
            K = p2[:, :3]
            cam2_to_cam0 = np.eye(4)
            cam2_to_cam0[:3, 3] = -np.linalg.solve(K, p2[:, 3])
            img_path = folder / "image_2" / f"{ref}.png"
            if sequence not in self._image_size:  # one camera per sequence: read one header, not one per frame
                self._image_size[sequence] = _image_size(img_path)
            w, h = self._image_size[sequence]
            cams.append(
                CameraFrame(
                    "image_2", K, np.linalg.inv(tr) @ cam2_to_cam0, pose, w, h, image_loader(img_path, "image_2 image")
                )
            )
        return Frame(points, labels, np.eye(4), pose, cams, sequence, index, int(round(int(ref) * 1e5)))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(require(path, "image_2 image")) as im:
        return im.size

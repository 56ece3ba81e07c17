"""nuScenes v1.0 reader: the JSON tables directly (nuscenes-devkit is not needed at run time).

Scenes come in split order, each walked keyframe by keyframe (sample.next). A frame carries the
LIDAR_TOP keyframe, the six camera keyframes of the sample (each with its own ego pose), optional
preceding LiDAR sweeps, and lidarseg labels mapped to the 16 evaluation classes.

Splits: the official scene lists (``nuscenes_splits.json``, taken from nuscenes-devkit 1.2.0's
``nuscenes.utils.splits``) unless the dataroot holds ``lima_splits.json`` ({"train": [scene names],
"val": [...]}) — our synthetic world writes one, and users can write one for a custom subset.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...labels import NUSCENES_EVAL_CLASSES, NUSCENES_LUT, map_labels
from .frame import CameraFrame, Frame, FrameDataset, every_nth, image_loader, read_scan, require
from .pairing import pose_matrix

__all__ = ["NuScenesDataset", "CAMERAS"]

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
_TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose", "sensor", "category")
_OFFICIAL = {
    "v1.0-trainval": {"train": "train", "val": "val"},
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-test": {"test": "test"},
}


@lru_cache(maxsize=1)
def _official_splits() -> dict[str, list[str]]:
    return json.loads((Path(__file__).with_name("nuscenes_splits.json")).read_text())


class NuScenesDataset(FrameDataset):
    """Keyframes of ``split`` ("train", "val", "test" or "all") of a nuScenes ``version`` under ``root``.

    ``percent`` keeps every (100/p)-th training scene in scene order (SLidR's rule); ``sweeps`` adds
    up to that many preceding LiDAR sweeps per keyframe; ``labels`` reads lidarseg (keyframes only).
    """

    class_names = NUSCENES_EVAL_CLASSES

    def __init__(
        self,
        root: str | Path,
        version: str = "v1.0-trainval",
        split: str = "train",
        percent: float = 100,
        sweeps: int = 0,
        labels: bool = True,
        cameras: tuple[str, ...] = CAMERAS,
    ) -> None:
        super().__init__()
        self.root, self.version, self.sweeps, self.cameras = Path(root), version, sweeps, cameras
        table_dir = require(self.root / version, f"nuScenes tables of version {version}")
        t = {}
        for name in _TABLES:
            t[name] = json.loads(require(table_dir / f"{name}.json", f"nuScenes table '{name}'").read_text())
        self.sample_data = {r["token"]: r for r in t["sample_data"]}
        self.calib = {r["token"]: r for r in t["calibrated_sensor"]}
        self.ego = {r["token"]: r for r in t["ego_pose"]}
        sensors = {r["token"]: r["channel"] for r in t["sensor"]}
        samples = {r["token"]: r for r in t["sample"]}
        self.keyframes: dict[str, dict[str, dict]] = {}  # sample token -> channel -> sample_data row
        for r in t["sample_data"]:
            if r["is_key_frame"]:
                self.keyframes.setdefault(r["sample_token"], {})[
                    sensors[self.calib[r["calibrated_sensor_token"]]["sensor_token"]]
                ] = r
        self.labels_lut = None
        if labels:
            lidarseg = require(
                table_dir / "lidarseg.json", "nuScenes-lidarseg table (pass labels=False for unlabelled data)"
            )
            self.lidarseg = {r["sample_data_token"]: r["filename"] for r in json.loads(lidarseg.read_text())}
            index = {c["name"]: c.get("index") for c in t["category"]}
            if any(v is None for v in index.values()):
                raise ValueError(
                    f"{table_dir / 'category.json'}: no 'index' fields; use the category.json shipped with "
                    "nuScenes-lidarseg"
                )
            self.labels_lut = NUSCENES_LUT

        scenes = {r["name"]: r for r in t["scene"]}
        names = self._split_names(split, sorted(scenes))
        if split == "train":
            names = every_nth(names, percent)
        elif percent != 100:
            raise ValueError(f"percent applies to the train split only (got split={split!r}, percent={percent})")
        for name in names:
            if name not in scenes:
                continue  # an official split scene this download does not include
            tokens, tok = [], scenes[name]["first_sample_token"]
            while tok:
                tokens.append(tok)
                tok = samples[tok]["next"]
            self.sequences.append((name, tokens))

    def _split_names(self, split: str, present: list[str]) -> list[str]:
        if split == "all":
            return present
        custom = self.root / "lima_splits.json"
        if custom.exists():
            lists = json.loads(custom.read_text())
        else:
            lists = {k: _official_splits()[v] for k, v in _OFFICIAL.get(self.version, {}).items()}
        if split not in lists:
            raise ValueError(
                f"split {split!r} is not defined for {self.version} in "
                f"{custom if custom.exists() else 'the official lists'}; "
                f"choose from {sorted(lists) + ['all']}"
            )
        return list(lists[split])

    def _pose(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        cs, ego = self.calib[sd["calibrated_sensor_token"]], self.ego[sd["ego_pose_token"]]
        return pose_matrix(cs["rotation"], cs["translation"]).numpy(), pose_matrix(
            ego["rotation"], ego["translation"]
        ).numpy()

    def _points(self, sd: dict) -> np.ndarray:
        return read_scan(self.root / sd["filename"], "LiDAR scan")  # .pcd.bin: 5 floats per point, intensity 0-255

    def load(self, ref: str, sequence: str, index: int) -> Frame:
        frame = self.keyframes.get(ref, {})
        if "LIDAR_TOP" not in frame:
            raise ValueError(f"{self.root / self.version}: sample {ref} has no LIDAR_TOP keyframe")
        lidar = frame["LIDAR_TOP"]
        points = self._points(lidar)
        labels = None
        if self.labels_lut is not None:
            if lidar["token"] not in self.lidarseg:
                raise ValueError(
                    f"{self.root / self.version / 'lidarseg.json'}: no label record for LiDAR sample_data "
                    f"{lidar['token']}"
                )
            path = require(self.root / self.lidarseg[lidar["token"]], "lidarseg labels")
            raw = np.fromfile(path, dtype=np.uint8)
            if len(raw) != len(points):
                raise ValueError(f"{path}: {len(raw)} labels for {len(points)} points in {lidar['filename']}")
            labels = map_labels(raw, self.labels_lut, str(path))
        cs_lidar, ego_lidar = self._pose(lidar)
        cams = []
        for ch in self.cameras:
            if ch not in frame:
                raise ValueError(f"{self.root / self.version}: sample {ref} has no {ch} keyframe")
            sd = frame[ch]
            cs, ego = self._pose(sd)
            K = np.asarray(self.calib[sd["calibrated_sensor_token"]]["camera_intrinsic"], dtype=np.float64)
            cams.append(
                CameraFrame(
                    ch, K, cs, ego, sd["width"], sd["height"], image_loader(self.root / sd["filename"], "camera image")
                )
            )
        sweeps = []
        sd = lidar
        while len(sweeps) < self.sweeps and sd["prev"]:
            sd = self.sample_data[sd["prev"]]  # walk back through sweeps (and earlier keyframes), as mmdet3d does
            cs, ego = self._pose(sd)
            sweeps.append((self._points(sd), ego @ cs))
        return Frame(points, labels, cs_lidar, ego_lidar, cams, sequence, index, lidar["timestamp"], sweeps)

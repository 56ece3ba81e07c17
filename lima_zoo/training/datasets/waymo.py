"""Waymo Open Dataset v2 reader (parquet through pyarrow; no TensorFlow, no waymo-open-dataset package).

TOP LiDAR range images -> points with the official formula (inclinations from the calibration,
reversed so row 0 is the highest beam; azimuth per column corrected by the extrinsic's yaw), points
in the vehicle frame (lidar -> ego is the identity). Segmentation labels are channel 1 of the
[H, W, 2] label image (22 classes, 0 = undefined). Intensity is returned as 255 * tanh(raw), the
usual squashing of Waymo's unbounded intensities onto our 0-255 scale. Cameras carry their own
vehicle pose (camera_image's pose.transform) and Waymo's x-forward camera axes are turned into
OpenCV's.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...labels import WAYMO_CLASSES
from .frame import CameraFrame, Frame, FrameDataset, every_nth, group_by_sequence, require

__all__ = ["WaymoDataset", "range_image_to_points"]

_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
_CAMERAS = {1: "FRONT", 2: "FRONT_LEFT", 3: "FRONT_RIGHT", 4: "SIDE_LEFT", 5: "SIDE_RIGHT"}
_OPENCV_TO_WAYMO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_LIDAR = "[LiDARComponent].range_image_return1"
_SEG = "[LiDARSegmentationLabelComponent].range_image_return1"
_CAL = "[LiDARCalibrationComponent]"
_CC = "[CameraCalibrationComponent]"


def range_image_to_points(
    range_image: np.ndarray, extrinsic: np.ndarray, inclinations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Range image (H, W, C) with range in channel 0, extrinsic lidar -> vehicle (4, 4), inclinations
    (H,) with row 0 the highest beam -> vehicle-frame xyz (N, 3) of pixels with range > 0, and the
    flat pixel indices (N,) they came from (row-major)."""
    h, w = range_image.shape[:2]
    az_corr = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    az = ((w - np.arange(w) - 0.5) / w * 2 - 1) * np.pi - az_corr
    r = range_image[..., 0].astype(np.float64)
    keep = np.flatnonzero(r > 0)
    rows, cols = np.divmod(keep, w)
    inc, a, rr = inclinations[rows], az[cols], r.ravel()[keep]
    local = np.stack([rr * np.cos(inc) * np.cos(a), rr * np.cos(inc) * np.sin(a), rr * np.sin(inc)], 1)
    return local @ extrinsic[:3, :3].T + extrinsic[:3, 3], keep


def _read(path: Path, columns: list[str], filters=None) -> dict[str, list]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(require(path, "Waymo parquet component"), columns=columns, filters=filters)
    except KeyError as e:
        raise ValueError(f"{path}: missing column {e}") from None
    return table.to_pydict()


class WaymoDataset(FrameDataset):
    """Frames of ``split`` ("train", "val", "test") under ``root``/{training,validation,testing}.

    With ``labels`` only frames that have segmentation labels are kept (Waymo labels a subset).
    ``percent`` keeps every (100/p)-th training frame.
    """

    class_names = WAYMO_CLASSES[1:]

    def __init__(
        self, root: str | Path, split: str = "train", percent: float = 100, labels: bool = True, cameras: bool = True
    ) -> None:
        super().__init__()
        if split not in _SPLITS:
            raise ValueError(f"split {split!r}: choose from {sorted(_SPLITS)}")
        if percent != 100 and split != "train":
            raise ValueError(f"percent applies to the train split only (got split={split!r}, percent={percent})")
        self.dir, self.labels, self.cameras = (
            require(Path(root) / _SPLITS[split], f"Waymo {split} folder"),
            labels,
            cameras,
        )
        segments = sorted(p.stem for p in require(self.dir / "lidar", "Waymo lidar component").glob("*.parquet"))
        frames = []
        for seg in segments:
            keyed = self._path("lidar_segmentation" if labels else "lidar", seg)
            stamps = _read(keyed, ["key.frame_timestamp_micros", "key.laser_name"])
            ts = sorted(
                {t for t, laser in zip(stamps["key.frame_timestamp_micros"], stamps["key.laser_name"]) if laser == 1}
            )
            frames += [(seg, t) for t in ts]
        if split == "train":
            frames = every_nth(frames, percent)
        self.sequences.extend(group_by_sequence(frames))
        self._calib: dict[str, tuple] = {}

    def _path(self, component: str, segment: str) -> Path:
        return self.dir / component / f"{segment}.parquet"

    def _calibration(self, seg: str) -> tuple:
        if seg not in self._calib:
            cal = _read(
                self._path("lidar_calibration", seg),
                [
                    "key.laser_name",
                    f"{_CAL}.extrinsic.transform",
                    f"{_CAL}.beam_inclination.values",
                    f"{_CAL}.beam_inclination.min",
                    f"{_CAL}.beam_inclination.max",
                ],
            )
            if 1 not in cal["key.laser_name"]:
                raise ValueError(f"{self._path('lidar_calibration', seg)}: no TOP (laser_name 1) calibration")
            i = cal["key.laser_name"].index(1)
            ext = np.asarray(cal[f"{_CAL}.extrinsic.transform"][i], dtype=np.float64).reshape(4, 4)
            values = cal[f"{_CAL}.beam_inclination.values"][i]
            cams = {}
            if self.cameras:
                cc = _read(
                    self._path("camera_calibration", seg),
                    ["key.camera_name", f"{_CC}.extrinsic.transform", f"{_CC}.width", f"{_CC}.height"]
                    + [f"{_CC}.intrinsic.{k}" for k in ("f_u", "f_v", "c_u", "c_v")],
                )
                for j, cid in enumerate(cc["key.camera_name"]):
                    K = np.array(
                        [
                            [cc[f"{_CC}.intrinsic.f_u"][j], 0, cc[f"{_CC}.intrinsic.c_u"][j]],
                            [0, cc[f"{_CC}.intrinsic.f_v"][j], cc[f"{_CC}.intrinsic.c_v"][j]],
                            [0, 0, 1.0],
                        ]
                    )
                    to_ego = np.asarray(cc[f"{_CC}.extrinsic.transform"][j], dtype=np.float64).reshape(4, 4).copy()
                    to_ego[:3, :3] = to_ego[:3, :3] @ _OPENCV_TO_WAYMO
                    cams[cid] = (K, to_ego, cc[f"{_CC}.width"][j], cc[f"{_CC}.height"][j])
            self._calib[seg] = (
                ext,
                values,
                cal[f"{_CAL}.beam_inclination.min"][i],
                cal[f"{_CAL}.beam_inclination.max"][i],
                cams,
            )
        return self._calib[seg]

    def load(self, ref: int, sequence: str, index: int) -> Frame:
        seg, ts = sequence, ref
        ext, values, lo, hi, cams = self._calibration(seg)
        where = [("key.frame_timestamp_micros", "=", ts), ("key.laser_name", "=", 1)]
        lid = _read(self._path("lidar", seg), [f"{_LIDAR}.values", f"{_LIDAR}.shape"], where)
        if not lid[f"{_LIDAR}.values"]:
            raise ValueError(f"{self._path('lidar', seg)}: no TOP range image at {ts}")
        ri = np.asarray(lid[f"{_LIDAR}.values"][0], dtype=np.float32).reshape(lid[f"{_LIDAR}.shape"][0])
        h = ri.shape[0]
        inc = (
            np.asarray(values, dtype=np.float64)[::-1] if values else (lo + (np.arange(h) + 0.5) / h * (hi - lo))[::-1]
        )
        if len(inc) != h:
            raise ValueError(
                f"{self._path('lidar_calibration', seg)}: {len(inc)} beam inclinations for a {h}-row range image"
            )
        xyz, pix = range_image_to_points(ri, ext, inc)
        intensity = 255.0 * np.tanh(np.clip(ri[..., 1].ravel()[pix], 0, None))
        points = np.column_stack([xyz, intensity]).astype(np.float32)
        labels = None
        if self.labels:
            seg_t = _read(self._path("lidar_segmentation", seg), [f"{_SEG}.values", f"{_SEG}.shape"], where)
            lab = np.asarray(seg_t[f"{_SEG}.values"][0], dtype=np.int64).reshape(seg_t[f"{_SEG}.shape"][0])
            if lab.shape[:2] != ri.shape[:2]:
                raise ValueError(
                    f"{self._path('lidar_segmentation', seg)}: label image {lab.shape[:2]} != range image "
                    f"{ri.shape[:2]} at {ts}"
                )
            labels = lab[..., 1].ravel()[pix]
            if labels.size and (labels.min() < 0 or labels.max() >= len(WAYMO_CLASSES)):
                raise ValueError(
                    f"{self._path('lidar_segmentation', seg)}: class ids outside 0..{len(WAYMO_CLASSES) - 1} at {ts}"
                )
        pose = _read(
            self._path("vehicle_pose", seg),
            ["[VehiclePoseComponent].world_from_vehicle.transform"],
            [("key.frame_timestamp_micros", "=", ts)],
        )
        rows = pose["[VehiclePoseComponent].world_from_vehicle.transform"]
        if not rows:
            raise ValueError(f"{self._path('vehicle_pose', seg)}: no pose at {ts}")
        ego = np.asarray(rows[0], dtype=np.float64).reshape(4, 4)
        cam_frames = []
        if self.cameras:
            img = _read(
                self._path("camera_image", seg),
                ["key.camera_name", "[CameraImageComponent].pose.transform"],
                [("key.frame_timestamp_micros", "=", ts)],
            )
            for cid, cam_pose in sorted(zip(img["key.camera_name"], img["[CameraImageComponent].pose.transform"])):
                K, to_ego, w, h_img = cams[cid]
                cam_frames.append(
                    CameraFrame(
                        _CAMERAS.get(cid, str(cid)),
                        K,
                        to_ego,
                        np.asarray(cam_pose, dtype=np.float64).reshape(4, 4),
                        w,
                        h_img,
                        self._image_loader(seg, ts, cid),
                    )
                )
        return Frame(points, labels, np.eye(4), ego, cam_frames, seg, index, ts)

    def _image_loader(self, seg: str, ts: int, cid: int):
        def load() -> np.ndarray:
            from PIL import Image

            rows = _read(
                self._path("camera_image", seg),
                ["[CameraImageComponent].image"],
                [("key.frame_timestamp_micros", "=", ts), ("key.camera_name", "=", cid)],
            )
            with Image.open(io.BytesIO(rows["[CameraImageComponent].image"][0])) as im:
                return np.asarray(im.convert("RGB"))

        return load

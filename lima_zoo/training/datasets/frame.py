"""One LiDAR frame with everything pretraining and evaluation need, and the base of every reader.

Every reader (nuScenes, SemanticKITTI, Waymo, sequence folders) yields the same ``Frame``: points in
the LiDAR frame with intensity on the 0-255 scale, evaluation labels (0 = ignore), the LiDAR's own
poses, and each camera with its own pose at its own timestamp. Readers group frames into sequences
in time order, which the stream sampler walks and the memory bank relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .pairing import CameraView, chain

__all__ = [
    "CameraFrame",
    "Frame",
    "FrameDataset",
    "every_nth",
    "group_by_sequence",
    "check_percent",
    "read_scan",
    "image_loader",
    "read_number_table",
    "require",
]


@dataclass
class CameraFrame:
    """One camera image: intrinsic K (3, 3); camera -> ego (4, 4) with the camera frame in the OpenCV
    convention (x right, y down, z forward); ego -> global (4, 4) at the image's own timestamp."""

    name: str
    intrinsic: np.ndarray
    camera_to_ego: np.ndarray
    ego_to_global: np.ndarray
    width: int
    height: int
    load: Callable[[], np.ndarray]  # -> (H, W, 3) uint8 RGB, read on demand

    def image(self) -> np.ndarray:
        img = self.load()
        if img.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"camera {self.name}: image is {img.shape[1]}x{img.shape[0]}, calibration says "
                f"{self.width}x{self.height}"
            )
        return img


@dataclass
class Frame:
    """points (N, 4) float32 x, y, z (LiDAR frame, metres), intensity (0-255); labels (N,) int64
    evaluation ids (0 = ignore) or None; lidar -> ego and ego -> global (4, 4) float64 at the LiDAR
    timestamp; cameras; ``sequence`` name and ``index`` (position in the sequence, time order)."""

    points: np.ndarray
    labels: np.ndarray | None
    lidar_to_ego: np.ndarray
    ego_to_global: np.ndarray
    cameras: list[CameraFrame]
    sequence: str
    index: int
    timestamp: int  # microseconds
    sweeps: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (points (M, 4), lidar -> global (4, 4))

    @property
    def lidar_to_global(self) -> np.ndarray:
        return self.ego_to_global @ self.lidar_to_ego

    def camera_views(self) -> list[CameraView]:
        """The pose chain of every camera, ready for ``pairing.project_points``."""
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        return [
            CameraView(
                c.name,
                t(c.intrinsic),
                chain(t(self.lidar_to_ego), t(self.ego_to_global), t(c.ego_to_global), t(c.camera_to_ego)),
                c.width,
                c.height,
            )
            for c in self.cameras
        ]


class FrameDataset:
    """Frames grouped into sequences. Subclasses fill ``sequences`` [(name, [ref, ...]), ...] in time
    order, set ``class_names`` (evaluation classes 1..C) and implement ``load(ref) -> Frame``."""

    class_names: tuple[str, ...] = ()
    intensity_scale: float = 255.0  # the 0-255 convention frames are returned in

    def __init__(self) -> None:
        self.sequences: list[tuple[str, list]] = []

    def load(self, ref, sequence: str, index: int) -> Frame:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Evaluation classes including the ignore id 0."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return sum(len(refs) for _, refs in self.sequences)

    def index(self) -> list[tuple[int, int]]:
        """(sequence, position) of every frame, flattened in sequence order."""
        return [(s, k) for s, (_, refs) in enumerate(self.sequences) for k in range(len(refs))]

    def frame(self, sequence: int, position: int) -> Frame:
        name, refs = self.sequences[sequence]
        return self.load(refs[position], name, position)

    def __getitem__(self, i: int) -> Frame:
        for name, refs in self.sequences:
            if i < len(refs):
                return self.load(refs[i], name, i)
            i -= len(refs)
        raise IndexError(i)


def check_percent(percent: float) -> int:
    """Percent of the training data -> keep every n-th item (SLidR's rule: 1% -> every 100th)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    n = 100 / percent
    if abs(n - round(n)) > 1e-9:
        raise ValueError(f"percent {percent} does not divide 100 (use 1, 5, 10, 20, 25, 50 or 100)")
    return int(round(n))


def every_nth(items: Sequence, percent: float) -> list:
    """Every (100 / percent)-th item, starting with the first."""
    return list(items)[:: check_percent(percent)]


def group_by_sequence(frames: Sequence[tuple[str, Any]]) -> list[tuple[str, list]]:
    """[(sequence name, frame ref), ...] in time order -> [(name, [ref, ...]), ...], sequences in
    the order they first appear (the layout of ``FrameDataset.sequences``)."""
    groups: dict[str, list] = {}
    for name, ref in frames:
        groups.setdefault(name, []).append(ref)
    return list(groups.items())


def read_scan(path: Path, what: str, load_dim: int | None = None, intensity_range: float = 255.0) -> np.ndarray:
    """A scan in any format ``lima_zoo.load_points`` reads -> (N, 4) float32 x, y, z, intensity 0-255.

    ``intensity_range`` is the file's convention where its format does not say (``.bin`` with
    load_dim 4 is KITTI's 0-1, ``.pcd.bin`` nuScenes' 0-255); a scan without intensity gets 0.
    """
    from ...io import load_points

    cloud = load_points(require(path, what), load_dim=load_dim)
    pts = cloud.points
    if pts.shape[1] < 4:
        pts = np.column_stack([pts, np.zeros(len(pts), np.float32)])
    points = pts[:, :4].astype(np.float32, copy=True)
    points[:, 3] *= 255.0 / (cloud.intensity_range or intensity_range)
    return points


def image_loader(path: Path, what: str) -> Callable[[], np.ndarray]:
    """A function reading ``path`` as (H, W, 3) uint8 RGB when called (images load on demand)."""

    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(require(path, what)) as im:
            return np.asarray(im.convert("RGB"))

    return load


def read_number_table(path: Path, what: str, columns: int, layout: str) -> np.ndarray:
    """A whitespace-separated text file of ``columns`` numbers per line -> (R, columns) float64."""
    try:
        rows = np.loadtxt(require(path, what), dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if rows.shape[1] != columns:
        raise ValueError(f"{path}: expected {columns} numbers per line ({layout}), got {rows.shape[1]}")
    return rows


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else FileNotFoundError naming it and what it should hold."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing ({what})")
    return path

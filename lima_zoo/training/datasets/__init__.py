"""Dataset readers (nuScenes, SemanticKITTI, Waymo, sequence folders) and point-to-pixel pairing.

``open_dataset(root)`` recognises the format from the folder's layout, or takes ``kind`` explicitly.
"""

from __future__ import annotations

from pathlib import Path

from .frame import CameraFrame, Frame, FrameDataset, check_percent, every_nth
from .pairing import CameraView, PixelPairs, chain, pose_matrix, project_points, quaternion_to_matrix

__all__ = [
    "CameraFrame",
    "Frame",
    "FrameDataset",
    "check_percent",
    "every_nth",
    "open_dataset",
    "detect_format",
    "FORMATS",
    "CameraView",
    "PixelPairs",
    "chain",
    "pose_matrix",
    "project_points",
    "quaternion_to_matrix",
]

FORMATS = ("nuscenes", "semantickitti", "waymo", "folder")


def detect_format(root: str | Path) -> str:
    """The dataset format of ``root`` from its layout; ValueError naming what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    if any(root.glob("v1.0-*/sample.json")):
        return "nuscenes"
    if (root / "sequences").is_dir():
        return "semantickitti"
    if any((root / s / "lidar").is_dir() for s in ("training", "validation", "testing")):
        return "waymo"
    if (root / "calibration.json").is_file():
        return "folder"
    raise ValueError(
        f"{root}: not a dataset lima-zoo recognises (looked for v1.0-*/sample.json (nuScenes), sequences/ "
        "(SemanticKITTI), "
        "training/lidar (Waymo v2) or calibration.json (sequence folder))"
    )


def open_dataset(
    root: str | Path, split: str = "train", percent: float = 100, kind: str | None = None, labels: bool = True, **kwargs
) -> FrameDataset:
    """Open ``root`` as a FrameDataset of ``split``; ``kind`` in FORMATS or None to detect it."""
    kind = kind or detect_format(root)
    if kind == "nuscenes":
        from .nuscenes import NuScenesDataset

        versions = sorted(p.parent.name for p in Path(root).glob("v1.0-*/sample.json"))
        version = kwargs.pop(
            "version", "v1.0-trainval" if "v1.0-trainval" in versions else (versions or ["v1.0-trainval"])[0]
        )
        return NuScenesDataset(root, version=version, split=split, percent=percent, labels=labels, **kwargs)
    if kind == "semantickitti":
        from .semantickitti import SemanticKittiDataset

        return SemanticKittiDataset(root, split=split, percent=percent, labels=labels, **kwargs)
    if kind == "waymo":
        from .waymo import WaymoDataset

        return WaymoDataset(root, split=split, percent=percent, labels=labels, **kwargs)
    if kind == "folder":
        from .sequence_folder import SequenceFolderDataset

        if split not in ("train", "all"):
            raise ValueError(
                f"{root}: a sequence folder has no {split!r} split; point --data at a separate folder for validation"
            )
        return SequenceFolderDataset(root, percent=percent, labels=labels, **kwargs)
    raise ValueError(f"unknown dataset format {kind!r}; choose from {', '.join(FORMATS)}")

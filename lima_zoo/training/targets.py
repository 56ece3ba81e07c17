"""Teacher targets of a frame: pair points with pixels, run the frozen teacher, aggregate the views.

Kept apart from the loop so the trainer, the memory-bank replay on resume and the no-bank baseline
(re-running the teacher on past frames) all compute a frame's unified features the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cross_view import aggregate_views, centre_weights, sample_pixel_features
from .datasets.frame import Frame
from .datasets.pairing import project_points
from .teacher import FrozenTeacher

__all__ = ["FrameTargets", "frame_targets", "global_xyz"]

TEACHER_CHUNK = 12  # images per teacher forward (two nuScenes frames)


@dataclass
class FrameTargets:
    """unified (N, D) unit features of the current cameras, valid (N,) bool, xyz (N, 3) float32
    global coordinates of the un-augmented points."""

    unified: torch.Tensor
    valid: torch.Tensor
    xyz: torch.Tensor


def global_xyz(frame: Frame) -> torch.Tensor:
    """(N, 3) float32 global coordinates of a frame's points (computed in float64)."""
    m = frame.lidar_to_global
    return torch.from_numpy(frame.points[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]).float()


@torch.no_grad()
def frame_targets(teacher: FrozenTeacher, frames: list[Frame], cva: str = "mean") -> tuple[list[FrameTargets], int]:
    """Unified targets of every frame (one teacher pass over all their images, in chunks) and the
    number of images the teacher ran on."""
    images = [cam.image() for f in frames for cam in f.cameras]
    maps = [teacher(images[i : i + TEACHER_CHUNK]) for i in range(0, len(images), TEACHER_CHUNK)]
    fmap = torch.cat(maps) if maps else None
    out, at = [], 0
    for f in frames:
        n = len(f.points)
        xyz = global_xyz(f)
        if not f.cameras:
            out.append(FrameTargets(torch.zeros(n, teacher.dim), torch.zeros(n, dtype=torch.bool), xyz))
            continue
        sizes = [(c.width, c.height) for c in f.cameras]
        pairs = project_points(torch.from_numpy(f.points[:, :3]), f.camera_views())
        feats = sample_pixel_features(fmap[at : at + len(f.cameras)], pairs, sizes).cpu()
        weights = centre_weights(pairs, sizes) if cva == "center" else None
        unified, valid = aggregate_views(n, pairs, feats, weights)
        out.append(FrameTargets(unified, valid, xyz))
        at += len(f.cameras)
    return out, len(images)

"""Teacher targets of a frame: pair points with pixels, run the frozen teacher, aggregate the views.

Kept apart from the loop so the trainer, the memory-bank replay on resume and the no-bank baseline
(re-running the teacher on past frames) all compute a frame's unified features the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.frame import Frame
from ..datasets.pairing import PixelPairs, project_points
from ..teacher import FrozenTeacher
from .cross_view import aggregate_views, centre_weights, sample_pixel_features

__all__ = ["FrameTargets", "frame_targets", "global_xyz", "select_cameras", "sample_cameras"]

TEACHER_CHUNK = 12  # images per teacher forward (two nuScenes frames)


@dataclass
class FrameTargets:
    """unified (N, D) unit features of the current cameras, valid (N,) bool, xyz (N, 3) float32
    global coordinates of the un-augmented points; maps (C, D, h, w) the teacher's token maps of the
    frame's cameras and pairs its point-pixel pairs (what a re-projection memory keeps)."""

    unified: torch.Tensor
    valid: torch.Tensor
    xyz: torch.Tensor
    maps: torch.Tensor | None = None
    pairs: PixelPairs | None = None


def global_xyz(frame: Frame) -> torch.Tensor:
    """(N, 3) float32 global coordinates of a frame's points (computed in float64)."""
    m = frame.lidar_to_global
    return torch.from_numpy(frame.points[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]).float()


def select_cameras(frame: Frame, names: list[str] | tuple[str, ...], where: str = "data.cameras") -> Frame:
    """``frame`` with only the cameras ``names`` (in the frame's order); an unknown name is an error
    that lists the frame's cameras. Empty ``names`` keeps every camera."""
    if not names:
        return frame
    have = [c.name for c in frame.cameras]
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(
            f"{where}: no camera {', '.join(map(repr, missing))} in {frame.sequence} (it has "
            f"{', '.join(have) or 'none'})"
        )
    return dataclasses.replace(frame, cameras=[c for c in frame.cameras if c.name in names])


def sample_cameras(frame: Frame, k: int, seed: int) -> Frame:
    """``frame`` with ``k`` of its cameras drawn at random (ScaLR distils one random camera per scan);
    k <= 0 or k >= the camera count keeps them all. The draw is a function of ``seed`` only, so a
    resumed run and the bank replay draw the same cameras."""
    if k <= 0 or k >= len(frame.cameras):
        return frame
    chosen = (
        torch.randperm(len(frame.cameras), generator=torch.Generator().manual_seed(seed))[:k].sort().values.tolist()
    )
    return dataclasses.replace(frame, cameras=[frame.cameras[i] for i in chosen])


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
        out.append(FrameTargets(unified, valid, xyz, fmap[at : at + len(f.cameras)], pairs))
        at += len(f.cameras)
    return out, len(images)

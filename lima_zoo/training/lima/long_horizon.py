"""One stream item's distillation targets: its current cameras plus what the stream's memory recalls.

The bank has two readings (``lima.align``): ``cell`` keeps past frames' per-point unified features and
matches current points to them in 3-D cells (``propagation.py``); ``reproject`` keeps past frames'
2-D token maps and projects current points into the past cameras (``reprojection.py``). Both end in
the same temporal fusion. The trainer, the bank replay on resume, the no-bank baseline and the
benchmark's target diagnostics all go through ``remember`` / ``recall``, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import LimaConfig
from ..datasets.frame import Frame
from .memory_bank import point_entry
from .propagation import fuse, propagate
from .reprojection import reproject, view_entry
from .targets import FrameTargets

__all__ = ["StreamTargets", "remember", "recall", "NO_TARGET", "CURRENT", "MEMORY_ONLY"]

NO_TARGET, CURRENT, MEMORY_ONLY = 0, 1, 2


@dataclass
class StreamTargets:
    """target (N, D) detached unit vectors; kind (N,) int64: NO_TARGET, CURRENT (a current camera sees
    the point; fused with memory where both exist) or MEMORY_ONLY; frames (N,) int64 past frames that
    gave the point a feature."""

    target: torch.Tensor
    kind: torch.Tensor
    frames: torch.Tensor


def remember(frame: Frame, cur: FrameTargets, key: tuple[int, int], lima: LimaConfig):
    """The bank entry of a frame whose targets are ``cur``, in the bank's reading."""
    dtype = torch.float16 if lima.bank_dtype == "float16" else torch.float32
    if lima.align == "reproject":
        return view_entry(frame, cur.maps, cur.pairs, lima.depth_cells, key, dtype)
    return point_entry(cur.xyz, cur.unified, cur.valid, key, dtype)


def recall(cur: FrameTargets, memory: list, lima: LimaConfig) -> StreamTargets:
    """Fuse the current targets with what ``memory`` (oldest first) holds for the same points."""
    if lima.align == "reproject":
        pooled, has, frames = reproject(
            cur.xyz,
            memory,
            lima.check,
            *lima.depth_tolerance,
            pool=lima.pool,
            recency=lima.recency,
            view_range=lima.view_range,
        )
    else:
        pooled, has, frames = propagate(cur.xyz, memory, lima.cell, lima.pool)
    target, mask = fuse(cur.unified, cur.valid, pooled, has, lima.alpha, lima.fusion)
    kind = torch.where(cur.valid, CURRENT, torch.where(mask, MEMORY_ONLY, NO_TARGET))
    return StreamTargets(target, kind, frames)

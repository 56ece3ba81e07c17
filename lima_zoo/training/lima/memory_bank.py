"""The memory bank: per stream, a FIFO of the last k frames' teacher features.

Because the teacher is frozen, a past frame's features never change, so they are kept instead of
recomputed — this is what LiMA saves over short-term methods that re-run the image model on
neighbour frames. An entry holds only the points that had a target: global xyz (from the
un-augmented scan and its pose; float32 metres, ~0.1 mm at nuScenes map scale), the unified feature
(fp16 by default) — so "validity" is membership. That is the ``cell`` reading of the bank; the
``reproject`` reading keeps the frame's 2-D token maps instead (``reprojection.ViewEntry``). The bank
holds either kind. A stream's bank is emptied at a sequence boundary.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

__all__ = ["MemoryEntry", "MemoryBank", "point_entry"]


@dataclass
class MemoryEntry:
    """xyz (M, 3) float32 global coordinates; feats (M, D) unified features; frame id for logs."""

    xyz: torch.Tensor
    feats: torch.Tensor
    frame: tuple[int, int]  # (sequence, position)

    @property
    def nbytes(self) -> int:
        return self.xyz.numel() * self.xyz.element_size() + self.feats.numel() * self.feats.element_size()


def point_entry(
    xyz: torch.Tensor,
    feats: torch.Tensor,
    valid: torch.Tensor,
    frame: tuple[int, int],
    dtype: torch.dtype = torch.float16,
) -> MemoryEntry:
    """The valid rows of a frame (xyz (N, 3) global, feats (N, D) unified, valid (N,)) as an entry."""
    keep = valid.nonzero().squeeze(1)
    return MemoryEntry(xyz[keep].float().contiguous(), feats[keep].to(dtype).contiguous(), frame)


class MemoryBank:
    """``streams`` FIFOs of capacity ``capacity`` (= frames - 1)."""

    def __init__(self, streams: int, capacity: int):
        if streams < 1 or capacity < 0:
            raise ValueError(f"need streams >= 1 and capacity >= 0, got {streams}, {capacity}")
        self.capacity = capacity
        self._fifo: list[deque[MemoryEntry]] = [deque(maxlen=capacity) for _ in range(streams)]

    def reset(self, stream: int) -> None:
        self._fifo[stream].clear()

    def push(self, stream: int, entry) -> None:
        """Remember one frame (a ``MemoryEntry`` or a ``reprojection.ViewEntry``); the oldest entry
        drops out when the FIFO is full."""
        if self.capacity > 0:
            self._fifo[stream].append(entry)

    def depth(self, stream: int) -> int:
        """Frames remembered for ``stream`` now."""
        return len(self._fifo[stream])

    def entries(self, stream: int) -> list:
        """Oldest first."""
        return list(self._fifo[stream])

    def nbytes(self) -> int:
        return sum(e.nbytes for fifo in self._fifo for e in fifo)

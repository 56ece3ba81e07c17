"""Time-ordered streams: each data-parallel rank walks B sequences frame by frame, in keyframe order.

The memory bank needs consecutive frames of one sequence at consecutive steps. Per epoch the
sequence order and each sequence's start offset are reshuffled (deterministically from the seed and
epoch); the shuffled sequences are dealt round-robin to ``world * streams`` lanes, each lane walks
its sequences back to back, and every lane yields one frame per step. An epoch lasts as long as the
shortest lane, so every rank runs the same number of steps (DDP needs that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StreamItem", "StreamSampler"]


@dataclass(frozen=True)
class StreamItem:
    sequence: int
    position: int
    starts_sequence: bool  # the stream's bank must be reset before this frame


class StreamSampler:
    """sequence_lengths: frames per sequence; ``streams`` lanes per rank of ``world``; ``max_offset``
    bounds the random start offset (so lanes do not reach bank resets in lockstep)."""

    def __init__(self, sequence_lengths: list[int], streams: int, rank: int = 0, world: int = 1, seed: int = 0, max_offset: int = 6):
        if not sequence_lengths or min(sequence_lengths) < 1:
            raise ValueError("every sequence needs at least one frame")
        if streams < 1 or not 0 <= rank < world:
            raise ValueError(f"bad streams={streams}, rank={rank}, world={world}")
        self.lengths, self.streams, self.rank, self.world, self.seed, self.max_offset = list(sequence_lengths), streams, rank, world, seed, max_offset

    def _lanes(self, epoch: int) -> list[list[StreamItem]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        offsets = [int(torch.randint(min(self.max_offset, n), (1,), generator=gen)) if n > 1 else 0 for n in self.lengths]
        lanes_total = self.world * self.streams
        shared = lanes_total > len(order)  # fewer sequences than lanes: lanes share sequences
        lanes = []
        for lane in range(lanes_total):
            items = []
            for s in order[lane::lanes_total] or [order[lane % len(order)]]:
                start = (offsets[s] + lane) % self.lengths[s] if shared else offsets[s]  # sharers start apart
                items += [StreamItem(s, p, p == start) for p in range(start, self.lengths[s])]
            lanes.append(items)
        return lanes

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return min(len(lane) for lane in self._lanes(epoch))

    def epoch(self, epoch: int) -> list[list[StreamItem]]:
        """Steps of ``epoch`` for this rank: a list of steps, each ``streams`` items (one per stream)."""
        lanes = self._lanes(epoch)
        n = min(len(lane) for lane in lanes)
        mine = lanes[self.rank * self.streams : (self.rank + 1) * self.streams]
        return [[lane[t] for lane in mine] for t in range(n)]

"""Time-ordered streams: each data-parallel rank walks B sequences frame by frame, in keyframe order.

The memory bank needs consecutive frames of one sequence at consecutive steps. Per epoch the
sequence order and each sequence's start offset are reshuffled (deterministically from the seed and
epoch); the shuffled sequences are dealt round-robin to ``world * streams`` lanes, each lane walks
its sequences back to back (again from the start if it runs out), one frame per step. An epoch is
frames / lanes steps, the same for every rank and epoch (DDP needs that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .run import step_generator

__all__ = ["StreamItem", "StreamSampler"]


@dataclass(frozen=True)
class StreamItem:
    sequence: int
    position: int
    starts_sequence: bool  # the stream's bank must be reset before this frame


class StreamSampler:
    """sequence_lengths: frames per sequence; ``streams`` lanes per rank of ``world``; ``max_offset``
    bounds the random start offset (so lanes do not reach bank resets in lockstep)."""

    def __init__(
        self,
        sequence_lengths: list[int],
        streams: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        max_offset: int = 6,
    ):
        if not sequence_lengths or min(sequence_lengths) < 1:
            raise ValueError("every sequence needs at least one frame")
        if streams < 1 or not 0 <= rank < world:
            raise ValueError(f"bad streams={streams}, rank={rank}, world={world}")
        self.lengths, self.streams, self.rank, self.world, self.seed, self.max_offset = (
            list(sequence_lengths),
            streams,
            rank,
            world,
            seed,
            max_offset,
        )

    def _lanes(self, epoch: int) -> list[list[StreamItem]]:
        gen = step_generator(self.seed, epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        offsets = [
            int(torch.randint(min(self.max_offset, n), (1,), generator=gen)) if n > 1 else 0 for n in self.lengths
        ]
        lanes_total = self.world * self.streams
        shared = lanes_total > len(order)  # fewer sequences than lanes: lanes share sequences
        n = self.steps_per_epoch()
        lanes = []
        for lane in range(lanes_total):
            seqs, items, rnd = order[lane::lanes_total] or [order[lane % len(order)]], [], 0
            while len(items) < n:  # a lane that runs out walks its sequences again, from their start
                for s in seqs:
                    start = ((offsets[s] + lane) % self.lengths[s] if shared else offsets[s]) if rnd == 0 else 0
                    items += [StreamItem(s, p, p == start) for p in range(start, self.lengths[s])]
                rnd += 1
            lanes.append(items[:n])
        return lanes

    def steps_per_epoch(self) -> int:
        """Frames / lanes: the same every epoch, whatever the shuffle."""
        return max(1, sum(self.lengths) // (self.world * self.streams))

    def epoch(self, epoch: int) -> list[list[StreamItem]]:
        """Steps of ``epoch`` for this rank: a list of steps, each ``streams`` items (one per stream)."""
        mine = self._lanes(epoch)[self.rank * self.streams : (self.rank + 1) * self.streams]
        return [[lane[t] for lane in mine] for t in range(self.steps_per_epoch())]

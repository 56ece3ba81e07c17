"""Frames of each step, loaded ahead of the step that needs them (DataLoader workers).

The stream schedule (``streams.py``) fixes, for every micro-step, which frame each stream sees; a
frame is a pure function of (sequence, position, epoch). So loading can run in worker processes
and still hand the trainer exactly the frames, in exactly the order, that loading inline would:
the bank sees every stream's frames in time order, and the losses are the same with 0 or N
workers. Workers only read and decode (points, images, poses); augmentation and everything random
stays in the training loop. Camera images are decoded in the loader (datasets hand out lazy
readers, which cannot cross a process boundary, and decoding is the work worth moving off the
training loop).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from typing import Iterator

import numpy as np
import torch

from .datasets.frame import Frame
from .lima.targets import sample_cameras, select_cameras
from .run import step_seed
from .streams import StreamItem, StreamSampler

__all__ = ["FrameSource", "StepFrames", "step_frames"]


class FrameSource:
    """(sequence, position, epoch) -> the Frame a run distils: ``cameras``, then ``cameras_per_frame``
    drawn from them (a function of seed, epoch and frame, so replays draw the same ones)."""

    def __init__(self, dataset, cameras: tuple[str, ...], cameras_per_frame: int, seed: int):
        self.dataset, self.cameras, self.cameras_per_frame, self.seed = dataset, cameras, cameras_per_frame, seed

    def __call__(self, sequence: int, position: int, epoch: int) -> Frame:
        f = select_cameras(self.dataset.frame(sequence, position), self.cameras)
        draw = (step_seed(self.seed, epoch) * 100_003 + sequence) * 10_007 + position
        return sample_cameras(f, self.cameras_per_frame, draw)


class _Decoded:
    """A camera's ``load`` that hands out an image already decoded (picklable, unlike the readers)."""

    def __init__(self, image: np.ndarray):
        self.image = image

    def __call__(self) -> np.ndarray:
        return self.image


def decoded(frame: Frame) -> Frame:
    """``frame`` with every camera image read now."""
    return dataclasses.replace(frame, cameras=[dataclasses.replace(c, load=_Decoded(c.image())) for c in frame.cameras])


class StepFrames(torch.utils.data.Dataset):
    """Micro-step ``m`` (counted from ``first``) -> (m, its stream items, their frames)."""

    def __init__(self, source: FrameSource, sampler: StreamSampler, micro_per_epoch: int, first: int, total: int):
        self.source, self.sampler, self.micro_per_epoch, self.first, self.total = (
            source,
            sampler,
            micro_per_epoch,
            first,
            total,
        )
        self._epoch: tuple[int, list[list[StreamItem]]] | None = None

    def __len__(self) -> int:
        return self.total - self.first

    def items(self, micro: int) -> list[StreamItem]:
        epoch = micro // self.micro_per_epoch
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.sampler.epoch(epoch))
        return self._epoch[1][micro % self.micro_per_epoch]

    def __getitem__(self, i: int) -> tuple[int, list[StreamItem], list[Frame]]:
        micro = self.first + i
        items, epoch = self.items(micro), micro // self.micro_per_epoch
        return micro, items, [decoded(self.source(it.sequence, it.position, epoch)) for it in items]


def step_frames(
    frames: StepFrames, workers: int, prefetch: int = 2, timeout: float = 600.0
) -> Iterator[tuple[int, list[StreamItem], list[Frame]]]:
    """Iterate ``frames`` in step order; with ``workers`` > 0 on that many processes, each up to
    ``prefetch`` steps ahead. Spawned, not forked: the trainer has already run OpenMP threads, and a
    forked OpenMP runtime can hang. ``timeout``: a step whose frames take longer is an error, not a
    silent wait (a result a worker cannot send is otherwise lost and the loop waits forever)."""
    if workers == 0:
        return (frames[i] for i in range(len(frames)))
    loader = torch.utils.data.DataLoader(
        frames,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch,
        multiprocessing_context=multiprocessing.get_context("spawn"),
        timeout=timeout,
    )
    return iter(loader)

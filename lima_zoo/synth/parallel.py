"""Render scenes in worker processes: scenes are independent, so the output never depends on how many."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence

__all__ = ["run_scenes"]


def run_scenes(
    fn: Callable[..., Any],
    args: Sequence[tuple],
    workers: int | None,
    progress: Callable[[int], None] | None,
    frames: int,
) -> Iterator[Any]:
    """Yield ``fn(*a)`` for every ``a`` in ``args``, in order; ``progress(frames)`` after each scene.

    Workers are spawned (not forked): the caller may hold torch threads, which a fork would copy
    half-initialised.
    """
    workers = min(len(args), workers or os.cpu_count() or 1)
    if workers <= 1:
        for a in args:
            out = fn(*a)
            if progress is not None:
                progress(frames)
            yield out
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for out in pool.map(fn, *zip(*args)):
            if progress is not None:
                progress(frames)
            yield out

"""Dynamic batching: requests that arrive together are embedded as one sparse batch on one worker
thread, so the HTTP side never waits on the model and the model sees fewer, larger batches.

The worker takes the first queued job, then keeps taking jobs for up to ``max_wait_ms`` or until
``max_batch_points`` points are gathered, groups them by what must agree inside one forward (the
feature space and the intensity convention) and runs each group as one ``embed`` call. A group
that fails is run again job by job, so one bad request never fails the others. A full queue is
refused at once (the caller answers 503); a job whose caller gave up is skipped.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Job", "Batcher", "QueueFull"]


class QueueFull(RuntimeError):
    """The batcher holds ``max_queue`` jobs already."""


@dataclass
class Job:
    points: np.ndarray  # (N, C) float32, NaN rows already left out
    intensity_range: float | None
    space: str
    future: Future = field(default_factory=Future)


class Batcher:
    """One worker thread running ``embed(list_of_points, space=, intensity_range=)`` on batches.

    on_batch: called with (scans, points, seconds) after each forward (metrics).
    """

    def __init__(
        self,
        embed: Callable,
        max_batch_points: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        self.embed, self.max_batch_points, self.max_wait = embed, max_batch_points, max_wait_ms / 1000
        self.on_batch = on_batch
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.busy = False
        self.thread = threading.Thread(target=self._loop, name="lima-zoo-model", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.jobs.maxsize} requests are waiting") from None
        return job.future

    def depth(self) -> int:
        return self.jobs.qsize() + int(self.busy)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the queued jobs, then end the worker."""
        self.jobs.put(None)
        self.thread.join(timeout)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        batch, points = [first], len(first.points)
        deadline = time.monotonic() + self.max_wait
        while points < self.max_batch_points:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            points += len(job.points)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            self.busy = True
            batch, stopping = self._gather(first)
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            groups: dict[tuple, list[Job]] = {}
            for job in live:
                groups.setdefault((job.space, job.intensity_range), []).append(job)
            for (space, intensity), jobs in groups.items():
                self._run(jobs, space, intensity)
            self.busy = False
            if stopping:
                return

    def _run(self, jobs: list[Job], space: str, intensity: float | None) -> None:
        start = time.perf_counter()
        try:
            features = self.embed([j.points for j in jobs], space=space, intensity_range=intensity)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not fail the batch
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
            else:  # which one? each alone
                for job in jobs:
                    self._run_alone(job, space, intensity)
            return
        if self.on_batch is not None:
            self.on_batch(len(jobs), sum(len(j.points) for j in jobs), time.perf_counter() - start)
        for job, f in zip(jobs, features):
            job.future.set_result(f)

    def _run_alone(self, job: Job, space: str, intensity: float | None) -> None:
        start = time.perf_counter()
        try:
            (f,) = self.embed([job.points], space=space, intensity_range=intensity)
        except Exception as exc:  # noqa: BLE001 - delivered to the request, which answers with it
            job.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(1, len(job.points), time.perf_counter() - start)
        job.future.set_result(f)

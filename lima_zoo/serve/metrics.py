"""The service's counters in the Prometheus text format (``GET /metrics``): requests by status,
request latency and batch-size histograms, points embedded and the model's busy seconds (points/s
is ``rate(points_total) / rate(model_seconds_total)`` or over wall time), and the queue depth."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        for j in range(i, len(self.buckets)):
            self.counts[j] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Thread-safe counters; ``render(queue_depth)`` writes them out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[int] = Counter()
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch_scans = _Histogram(BATCH_BUCKETS)
        self.points = 0
        self.model_seconds = 0.0

    def request(self, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[status] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def batch(self, scans: int, points: int, seconds: float) -> None:
        with self._lock:
            self.batch_scans.observe(scans)
            self.points += points
            self.model_seconds += seconds

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines = [
                "# HELP lima_zoo_requests_total Requests answered, by HTTP status.",
                "# TYPE lima_zoo_requests_total counter",
            ]
            lines += [f'lima_zoo_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += [
                "# HELP lima_zoo_request_seconds Time from a request's arrival to its answer (embed requests).",
                "# TYPE lima_zoo_request_seconds histogram",
                *self.latency.lines("lima_zoo_request_seconds"),
            ]
            lines += [
                "# HELP lima_zoo_batch_scans Scans embedded together in one forward.",
                "# TYPE lima_zoo_batch_scans histogram",
                *self.batch_scans.lines("lima_zoo_batch_scans"),
            ]
            lines += [
                "# HELP lima_zoo_points_total Points embedded.",
                "# TYPE lima_zoo_points_total counter",
                f"lima_zoo_points_total {self.points}",
                "# HELP lima_zoo_model_seconds_total Seconds the model spent in forwards.",
                "# TYPE lima_zoo_model_seconds_total counter",
                f"lima_zoo_model_seconds_total {self.model_seconds:.6f}",
                "# HELP lima_zoo_queue_depth Requests waiting for or in the model.",
                "# TYPE lima_zoo_queue_depth gauge",
                f"lima_zoo_queue_depth {queue_depth}",
            ]
        return "\n".join(lines) + "\n"

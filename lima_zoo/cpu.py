"""How many CPU threads this process may really use, and how they should wait, decided before torch
starts its thread pool.

OpenMP (torch's intra-op pool) sizes itself from the CPUs the process may run on but not from a
container's CPU quota, and by default its idle threads spin for a while before they sleep. On an
idle machine spinning is what makes the many short parallel regions of a sparse network fast; when
other processes want the same cores, the spinning threads take the cores from the thread that has
work, and everything waits on everything (docs/performance.md has the measurements). So:

* threads: torch's default (which follows the affinity mask) unless a cgroup CPU quota (v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``) allows fewer CPUs than the mask holds: then the quota;
* wait policy: OpenMP's default where nothing else runs; ``PASSIVE`` (threads sleep at once) when
  other runnable tasks were seen on the machine's CPUs when the process started.

:func:`configure_threads` writes these as ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` unless the user
set them, and must run before torch is imported (the CLI does it first thing; a Python program can
call it before ``import torch``). Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import MutableMapping

__all__ = ["ThreadPlan", "usable_cpus", "cgroup_cpu_limit", "other_runnable", "plan_threads", "configure_threads"]


@dataclass(frozen=True)
class ThreadPlan:
    """threads: OpenMP threads (None: torch's default); passive: sleep when idle instead of spinning;
    why: one line for the log."""

    threads: int | None
    passive: bool
    why: str


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs a cgroup quota allows this process (e.g. 2.5), or None without a quota."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _affinity_cpus() -> int:
    """The CPUs in this process's affinity mask (os.cpu_count off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may run on (affinity), capped by a cgroup quota; at least 1."""
    cpus = _affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def other_runnable(samples: int = 5, interval: float = 0.01, stat: Path = Path("/proc/stat")) -> int | None:
    """Runnable tasks on the machine besides this one: the fewest of ``samples`` readings of
    ``procs_running`` (a task that only blinked is not load), minus this process; None off Linux."""
    seen = []
    for i in range(samples):
        try:
            line = next(x for x in stat.read_text().splitlines() if x.startswith("procs_running"))
        except (OSError, StopIteration):
            return None
        seen.append(int(line.split()[1]))
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(seen) - 1)


def plan_threads(others: int | None = None, root: Path = Path("/sys/fs/cgroup")) -> ThreadPlan:
    """The plan for this process: a cgroup quota below the affinity mask caps the threads; ``others``
    (default :func:`other_runnable`) competing tasks make them wait passively."""
    mask = _affinity_cpus()
    cpus = usable_cpus(root)
    threads = cpus if cpus < mask else None
    others = other_runnable() if others is None else others
    size = f"{cpus} thread(s) (cgroup quota)" if threads else "torch's default threads"
    if others:
        return ThreadPlan(threads, True, f"{size}, passive wait: {others} other runnable task(s) share the CPUs")
    return ThreadPlan(threads, False, f"{size}, OpenMP's default wait: no other runnable task")


def configure_threads(env: MutableMapping[str, str] | None = None, plan: ThreadPlan | None = None) -> ThreadPlan:
    """Set ``OMP_NUM_THREADS`` and (when contended) ``OMP_WAIT_POLICY=PASSIVE`` in ``env`` (default
    os.environ), leaving any the user set; call before torch is imported. Returns the plan."""
    env = os.environ if env is None else env
    plan = plan or plan_threads()
    if plan.threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(plan.threads))
    if plan.passive:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return plan

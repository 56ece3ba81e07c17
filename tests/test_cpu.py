"""Thread count and OpenMP wait policy from what the process may really use (lima_zoo/cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lima_zoo.cpu import ThreadPlan, cgroup_cpu_limit, configure_threads, other_runnable, plan_threads, usable_cpus


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    tmp_path.mkdir(parents=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


def test_cgroup_quotas_v2_and_v1(tmp_path):
    assert cgroup_cpu_limit(_cgroup(tmp_path / "a", v2="150000 100000\n")) == 1.5
    assert cgroup_cpu_limit(_cgroup(tmp_path / "b", v2="max 100000\n")) is None
    assert cgroup_cpu_limit(_cgroup(tmp_path / "c", v1=("200000", "100000"))) == 2.0
    assert cgroup_cpu_limit(_cgroup(tmp_path / "d", v1=("-1", "100000"))) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_a_quota_below_the_affinity_mask_caps_the_threads(tmp_path):
    mask = len(os.sched_getaffinity(0))
    root = _cgroup(tmp_path / "q", v2="50000 100000\n")  # half a CPU: one thread
    assert usable_cpus(root) == 1
    plan = plan_threads(others=0, root=root)
    assert plan.threads == (1 if mask > 1 else None) and not plan.passive
    assert plan_threads(others=0, root=tmp_path / "none").threads is None  # torch's default follows the mask


def test_other_runnable_takes_the_fewest_and_leaves_itself_out(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n")
    assert other_runnable(samples=3, interval=0, stat=stat) == 2
    stat.write_text("procs_running 1\n")
    assert other_runnable(samples=2, interval=0, stat=stat) == 0
    assert other_runnable(stat=tmp_path / "missing") is None


def test_configure_threads_sets_passive_only_when_contended_and_keeps_the_users_choice():
    env: dict[str, str] = {}
    configure_threads(env, ThreadPlan(None, False, "idle"))
    assert env == {}
    configure_threads(env, ThreadPlan(3, True, "busy"))
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "8"}
    configure_threads(mine, ThreadPlan(2, True, "busy"))
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "8"}


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_the_cli_decides_before_torch_starts():
    """With a busy process beside it, a CLI command runs with OMP_WAIT_POLICY=PASSIVE in effect."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        code = (
            "import os, sys\n"
            "from lima_zoo.cli import main\n"
            "from lima_zoo.cli.commands import hub\n"
            "def report(**options):\n"
            "    print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
            "hub.backends_cmd.callback = report\n"
            "main(['backends'])\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout
    finally:
        busy.kill()
        busy.wait()
    assert "policy PASSIVE False" in out, out

"""The synthetic quality benchmark's pipeline end to end at CI size (checks the pipeline, not the ranking)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")


def test_bench_quality_quick_runs_every_method(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "bench_quality.py"
    out = tmp_path / "quality.json"
    res = subprocess.run([sys.executable, str(script), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["linear"]) == {"random", "1-frame", "LiMA-nomix", "LiMA"}
    assert all(len(v) == 1 and 0.0 <= v[0] <= 1.0 for v in data["linear"].values())
    assert set(data["finetune"]) == {"random", "LiMA"}
    assert "| LiMA |" in res.stdout and "| random |" in res.stdout
    # LiMA's long horizon gave some points a target that no current camera could.
    assert data["diagnostics"]["LiMA"][0]["memory_only_fraction"] > 0
    assert data["diagnostics"]["1-frame"][0]["memory_only_fraction"] == 0
    q = data["target_quality"]
    assert q["current_camera"]["points"] > 0 and q["memory_only"]["points"] > 0
    assert 0 <= q["memory_only"]["accuracy"] <= 1

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
    res = subprocess.run(
        [sys.executable, str(script), "--quick", "--tables", "a", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=3600,
    )  # a hang guard only (~2 min on 2 idle cores), never a speed check
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]["a"]
    assert set(rows) == {"random", "ScaLR-literal", "1 frame", "LiMA (cell)", "LiMA (reproject)"}
    for name, r in rows.items():
        assert len(r["lp"]) == 1 and all(0.0 <= r["lp"][0][k] <= 1.0 for k in ("all", "inside", "outside")), name
    assert len(rows["random"]["ft"]) == len(rows["LiMA (reproject)"]["ft"]) == 1
    assert (
        "| LiMA (reproject) |" in res.stdout
        and "| random |" in res.stdout
        and "paired diff vs ScaLR-literal" in res.stdout
    )
    # The long horizon gave some points a target that no current camera could; one frame never does.
    assert (
        rows["LiMA (reproject)"]["diag"][0]["memory_only_fraction"] > 0
        and rows["LiMA (cell)"]["diag"][0]["bank_depth"] > 0
    )
    assert (
        rows["1 frame"]["diag"][0]["memory_only_fraction"] == 0 and rows["ScaLR-literal"]["diag"][0]["bank_depth"] == 0
    )
    # ScaLR-literal distils one camera of six: fewer points get a target than with every camera.
    assert rows["ScaLR-literal"]["diag"][0]["target_fraction"] < rows["1 frame"]["diag"][0]["target_fraction"]
    acc = rows["LiMA (reproject)"]["acc"]["0"]  # per world seed
    assert 0 <= acc["current"] <= 1 and 0 <= acc["memory_only"] <= 1

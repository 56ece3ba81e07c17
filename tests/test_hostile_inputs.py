"""A careless or hostile user: malformed scans among good ones, two runs into one dataset, two inputs
with one output name, out-of-range numbers, huge scans, and the wrong words they used to get."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_cli import _dataset_rows
from test_encoder_loading import TINY

from lima_zoo import LiMAEncoder
from lima_zoo.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return LiMAEncoder(TINY).save_pretrained(tmp_path_factory.mktemp("model"))


def _good_scans(root, points: np.ndarray, n: int = 3) -> dict[str, int]:
    root.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for i in range(n):
        scan = points[i * 200 : i * 200 + 900, :4]
        (root / f"{i:06d}.bin").write_bytes(scan.tobytes())
        sizes[f"{i:06d}.bin"] = len(scan)
    return sizes


def test_malformed_scans_among_good_ones_are_reported_per_file(model_dir, tmp_path, small_street_points):
    """Every good scan is embedded; each bad one is listed with its reason in the summary and the
    manifest; exit 1; no traceback."""
    root = tmp_path / "mixed"
    sizes = _good_scans(root, small_street_points)
    (root / "bare.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA\n")
    (root / "header.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
    )
    (root / "short.ply").write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nproperty float x\nend_header\n"
    )
    (root / "nan_intensity.npy").write_bytes(b"")
    nan_i = small_street_points[:50, :4].copy()
    nan_i[3, 3] = np.nan
    np.save(root / "nan_intensity.npy", nan_i)
    bad = ["bare.pcd", "header.npy", "short.ply", "nan_intensity.npy"]
    try:
        import laspy

        las = laspy.LasData(laspy.LasHeader(point_format=1, version="1.2"))
        las.x, las.y, las.z = small_street_points[:100, 0], small_street_points[:100, 1], small_street_points[:100, 2]
        las.write(str(tmp_path / "full.laz"))
        (root / "truncated.laz").write_bytes((tmp_path / "full.laz").read_bytes()[:-200])
        bad.append("truncated.laz")
    except Exception:  # noqa: BLE001 - no laspy / no LAZ backend: the other formats still make the case
        pass
    out = tmp_path / "ds"
    run = subprocess.run(
        [sys.executable, "-m", "lima_zoo.cli", "embed", str(root), "-m", str(model_dir), "-o", str(out)]
        + ["--format", "parquet-dataset"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"embedded {len(sizes)} scan(s)" in run.stdout, run.stdout
    manifest = json.loads((out / "_manifest-00000-of-00001.json").read_text())
    assert sorted(manifest["failed"]) == sorted(bad), manifest["failed"]
    for name in bad:
        assert name in run.stderr and manifest["failed"][name].startswith(str(root / name))
    assert "intensity" in manifest["failed"]["nan_intensity.npy"]
    rows = _dataset_rows(out)
    assert len(rows) == sum(sizes.values()) == manifest["points"]


def _run_cli(args: list[str]):
    return CliRunner().invoke(main, args)


def test_a_second_writer_of_a_shard_is_refused_and_a_dead_ones_lock_is_broken(model_dir, tmp_path, small_street_points):
    root = tmp_path / "scans"
    sizes = _good_scans(root, small_street_points)
    out = tmp_path / "fleet"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[19]
        lock = out / "_lock-00000-of-00001.json"
        lock.write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "start": start, "since": time.time()})
        )
        args = ["embed", str(root), "-m", str(model_dir), "-o", str(out), "--format", "parquet-dataset"]
        res = _run_cli(args)
        assert res.exit_code == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in res.output, res.output
        assert not list(out.glob("part-*")) and lock.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = _run_cli(args)  # the holder is gone: its lock is broken
    assert res.exit_code == 0, res.output
    assert not (out / "_lock-00000-of-00001.json").exists()
    assert len(_dataset_rows(out)) == sum(sizes.values())


def test_restarts_leave_one_row_per_scan_and_point_and_pyarrow_reads_the_folder(
    model_dir, tmp_path, small_street_points
):
    import pyarrow.dataset as pads

    root = tmp_path / "scans"
    sizes = _good_scans(root, small_street_points, n=5)
    out = tmp_path / "fleet"
    base = ["embed", str(root), "-m", str(model_dir), "-o", str(out), "--format", "parquet-dataset"]
    assert _run_cli(base + ["--scans-per-part", "2"]).exit_code == 0
    manifest = out / "_manifest-00000-of-00001.json"
    manifest.write_text("{ torn")  # a broken manifest: refused, with the way out
    res = _run_cli(base + ["--scans-per-part", "3"])
    assert res.exit_code == 1 and "remove it to start this shard again" in res.output, res.output
    manifest.unlink()  # following that advice, with another part size
    assert _run_cli(base + ["--scans-per-part", "3"]).exit_code == 0
    rows = _dataset_rows(out)  # asserts no (scan, point) twice
    assert len(rows) == sum(sizes.values())
    table = pads.dataset(str(out), format="parquet").to_table()  # manifests and locks are skipped
    assert table.num_rows == sum(sizes.values())
    # another shard count into the same folder would hold the scans twice: refused
    res = _run_cli(base + ["--shard", "0/2"])
    assert res.exit_code == 1 and "shard count" in res.output, res.output


def test_a_killed_run_resumes_to_one_row_per_scan_and_point(model_dir, tmp_path, small_street_points):
    root = tmp_path / "scans"
    sizes = _good_scans(root, small_street_points, n=8)
    out = tmp_path / "fleet"
    cmd = [sys.executable, "-m", "lima_zoo.cli", "embed", str(root), "-m", str(model_dir), "-o", str(out)]
    cmd += ["--format", "parquet-dataset", "--scans-per-part", "1", "--prefetch", "0"]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    again = subprocess.run(cmd + ["--scans-per-part", "2"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_dataset_rows(out)) == sum(sizes.values())


@pytest.mark.parametrize("fmt", ["npy", "parquet-dataset"])
def test_two_inputs_with_one_output_name_are_refused_before_any_work(model_dir, tmp_path, small_street_points, fmt):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.bin").write_bytes(small_street_points[:500, :4].tobytes())
    out = tmp_path / "out"
    args = [str(tmp_path / "a" / "x.bin"), str(tmp_path / "b" / "x.bin"), "-m", str(model_dir), "-o", str(out)]
    res = _run_cli(["embed", *args, "--format", fmt])
    assert res.exit_code == 1 and "a/x.bin" in res.output and "b/x.bin" in res.output, res.output
    assert not out.exists()
    same = _run_cli(
        ["embed", str(tmp_path / "a" / "x.bin"), str(tmp_path / "a" / "x.bin"), "-m", str(model_dir), "-o", str(out)]
    )
    assert same.exit_code == 0 and "embedded 1 scan(s)" in same.output, same.output  # the same file twice: once


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.max_steps=-5", "max_steps must be in [0,"),
        ("run.checkpoint_every=0", "checkpoint_every must be in [1,"),
        ("optim.lr=.nan", "lr must be in (0, 10], got nan"),
        ("lima.alpha=2", "alpha must be in [0, 1]"),
        ("data.synthetic_scenes=0", "synthetic_scenes must be in [1,"),
        ("optim.lr=!!python/object/apply:os.system ['touch PWNED']", "not plain YAML"),
    ],
)
def test_out_of_range_training_numbers_are_refused_before_any_work(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    res = _run_cli(["train", "synthetic-tiny", "--out", str(tmp_path / "run"), "--set", override])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


def test_out_of_range_eval_numbers_are_refused(tmp_path):
    res = _run_cli(["eval", "-m", "random", "--data", str(tmp_path), "-o", str(tmp_path / "e"), "--set", "epochs=-1"])
    assert res.exit_code == 1 and "epochs must be in [1," in res.output, res.output


def test_every_numeric_config_field_has_a_range():
    from lima_zoo import config
    from lima_zoo.training import config as training_config

    classes = [config.RangeImageConfig, config.PreprocessConfig, config.EncoderConfig]
    classes += [getattr(training_config, n) for n in training_config.__all__ if n.endswith("Config")]
    missing = [
        f"{c.__name__}.{name}" for c in classes for name, ranged in config.numeric_fields(c).items() if not ranged
    ]
    assert not missing, missing


def test_a_nan_in_config_json_is_refused(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["preprocess"]["intensity_scale"] = float("nan")
    (folder / "config.json").write_text(json.dumps(cfg))  # json writes NaN, Python reads it back
    with pytest.raises(ValueError, match=r"config.json.preprocess: intensity_scale must be in \(0,"):
        LiMAEncoder.from_pretrained(folder)


def test_bad_points_get_the_right_words(model_dir):
    enc = LiMAEncoder.from_pretrained(model_dir)
    pts = np.random.default_rng(0).normal(0, 10, (100, 4)).astype(np.float32)
    nan_i = pts.copy()
    nan_i[5, 3] = np.nan
    with pytest.raises(ValueError, match="1 points have a NaN or Inf intensity"):
        enc.embed(nan_i)
    nan_xyz = pts.copy()
    nan_xyz[5, 0] = np.inf
    with pytest.raises(ValueError, match="1 of 100 points have NaN or Inf coordinates"):
        enc.embed(nan_xyz)
    for far in (np.full_like(pts, 1e30), np.concatenate([pts, np.full((1, 4), 1e30, np.float32)])):
        with pytest.raises(ValueError, match="beyond 100000 m of the origin"):
            enc.embed(far)


def test_a_model_that_does_not_load_leaves_no_output_folder(tmp_path, small_street_points):
    (tmp_path / "s.bin").write_bytes(small_street_points[:100, :4].tobytes())
    out = tmp_path / "deep" / "out"
    res = _run_cli(["embed", str(tmp_path / "s.bin"), "-m", str(tmp_path / "no-such-model"), "-o", str(out)])
    assert res.exit_code == 1 and not (tmp_path / "deep").exists(), res.output


def test_a_rank_outside_the_world_is_refused(model_dir, tmp_path, small_street_points):
    (tmp_path / "s.bin").write_bytes(small_street_points[:100, :4].tobytes())
    res = CliRunner(env={"WORLD_SIZE": "2", "RANK": "5"}).invoke(
        main, ["embed", str(tmp_path / "s.bin"), "-m", str(model_dir), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "RANK=5 with WORLD_SIZE=2" in res.output, res.output


def test_an_empty_model_name_is_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no model given"):
        LiMAEncoder.from_pretrained("")


def test_onnx_export_without_the_extra_fails_before_loading(model_dir, tmp_path, monkeypatch):
    import importlib.util

    import lima_zoo.export.folder as folder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing extra was reported")

    monkeypatch.setattr(folder, "load_encoder", no_load)
    res = _run_cli(["export", str(model_dir), "-o", str(tmp_path / "x"), "--format", "onnx"])
    assert res.exit_code == 1 and "pip install 'lima-zoo[onnx]'" in res.output and "onnxruntime" in res.output, (
        res.output
    )


def test_a_huge_scan_is_refused_before_voxelizing_it(model_dir, tmp_path):
    """A map whose voxels cannot fit is refused after a count in bounded memory, never after
    voxelizing it whole (here: 4M points, 2 GiB free said; voxelizing would take ~0.9 GB)."""
    script = f"""
import resource, numpy as np
import lima_zoo.features as features
from lima_zoo import LiMAEncoder
enc = LiMAEncoder.from_pretrained({str(model_dir)!r})
features.available_memory = lambda device: 2 * 2**30
pts = np.random.default_rng(0).uniform(-300, 300, (4_000_000, 4)).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    enc.embed(pts)
    print("EMBEDDED")
except ValueError as e:
    print("REFUSED", e)
print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in run.stdout and "voxels would need" in run.stdout, run.stdout + run.stderr[-2000:]
    growth = float(run.stdout.split("GROWTH_MB")[1])
    assert growth < 450, f"peak memory grew by {growth:.0f} MB before the refusal"


def test_cli_reports_a_huge_scan_per_file(model_dir, tmp_path, monkeypatch, small_street_points):
    import lima_zoo.features as features

    monkeypatch.setattr(features, "available_memory", lambda device: 64 * 2**20)
    merged = np.random.default_rng(0).uniform(-200, 200, (400_000, 4)).astype(np.float32)
    (tmp_path / "map.bin").write_bytes(merged.tobytes())
    (tmp_path / "ok.bin").write_bytes(small_street_points[:50, :4].tobytes())
    res = _run_cli(
        ["embed", str(tmp_path / "map.bin"), str(tmp_path / "ok.bin"), "-m", str(model_dir), "-o", str(tmp_path / "o")]
    )
    assert (
        res.exit_code == 1 and "map.bin" in res.output and "GiB" in res.output and "embedded 1 scan(s)" in res.output
    ), res.output
    assert os.path.exists(tmp_path / "o" / "ok.npy")

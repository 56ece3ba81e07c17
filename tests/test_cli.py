"""lima-zoo embed / models / info end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fill_hub_cache, free_port
from test_encoder_loading import TINY

from lima_zoo import LiMAEncoder
from lima_zoo.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return LiMAEncoder(TINY).save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture
def scans(tmp_path, small_street_points):
    root = tmp_path / "scans"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    kitti = small_street_points[:, :4].copy()
    kitti[:, 3] /= 255.0
    (root / "a" / "000001.bin").write_bytes(kitti.tobytes())
    (root / "b" / "n008__LIDAR_TOP__1.pcd.bin").write_bytes(small_street_points[:3000].tobytes())
    np.save(root / "b" / "c.npy", small_street_points[:2000, :3])
    (root / "a" / "broken.bin").write_bytes(b"\x00" * 7)
    (root / "notes.txt").write_text("not a scan")
    return root


def test_embed_directory_keeps_layout_and_reports_bad_file(scans, model_dir, tmp_path, small_street_points):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["embed", str(scans), "--model", str(model_dir), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "broken.bin" in res.output and "not a multiple" in res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "a/000001.npy",
        "b/c.npy",
        "b/n008__LIDAR_TOP__1.npy",
    ]
    feats = np.load(out / "a" / "000001.npy")
    assert feats.shape == (len(small_street_points), 96)
    # KITTI remission 0-1 was rescaled to the model's 0-255 before embedding.
    enc = LiMAEncoder.from_pretrained(model_dir)
    np.testing.assert_allclose(feats, enc.embed(small_street_points[:, :4]), rtol=1e-5, atol=1e-5)


def test_embed_glob_formats_and_skip_existing(scans, model_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        "embed",
        str(scans / "**" / "*.npy"),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--format",
        "safetensors",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (out / "b" / "c.safetensors").exists()
    res = CliRunner().invoke(main, args + ["--skip-existing"])
    assert res.exit_code == 0 and "skipped 1 existing" in res.output


def test_embed_ply_and_load_dim(scans, model_dir, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        [
            "embed",
            str(scans / "b" / "n008__LIDAR_TOP__1.pcd.bin"),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--format",
            "ply",
            "--load-dim",
            "5",
            "--batch-size",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "n008__LIDAR_TOP__1.ply").read_bytes().startswith(b"ply")


def test_embed_unknown_model_is_clear(scans, tmp_path):
    res = CliRunner().invoke(main, ["embed", str(scans), "--model", "vit-q-minkunet34", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "unknown model" in res.output and "Traceback" not in res.output


def test_embed_needs_a_model_and_a_writable_out(scans, model_dir, tmp_path):
    res = CliRunner().invoke(main, ["embed", str(scans), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--model" in res.output
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    res = CliRunner().invoke(main, ["embed", str(scans), "--model", str(model_dir), "--out", str(blocked / "feats")])
    assert (
        res.exit_code == 2
        and f"--out {blocked / 'feats'}: cannot write there" in res.output
        and "Traceback" not in res.output
    )


def test_embed_truncated_weights_is_clear(scans, model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:500])
    res = CliRunner().invoke(main, ["embed", str(scans), "--model", str(bad), "--out", str(tmp_path / "o")])
    assert (
        res.exit_code != 0
        and "model.safetensors: not a readable safetensors file" in res.output
        and "Traceback" not in res.output
    )


def test_embed_drops_nan_rows_or_keeps_them_aligned_and_counts_ignored_files(model_dir, tmp_path, small_street_points):
    scans = tmp_path / "scans"
    scans.mkdir()
    pts = small_street_points[:2000, :4].copy()
    pts[[3, 10], 0] = np.nan  # no-return pixels of an organised cloud
    pts.tofile(scans / "a.bin")
    (scans / "notes.txt").write_text("not a scan")
    res = CliRunner().invoke(main, ["embed", str(scans), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert (
        "2 points with NaN/Inf coordinates in 1 scan(s) left out" in res.output
        and "ignored 1 file(s) with no point-cloud extension (.txt)" in res.output
    )
    assert np.load(tmp_path / "o" / "a.npy").shape == (1998, 96)
    res = CliRunner().invoke(
        main, ["embed", str(scans / "a.bin"), "--model", str(model_dir), "--out", str(tmp_path / "k"), "--keep-rows"]
    )
    kept = np.load(tmp_path / "k" / "a.npy")
    assert res.exit_code == 0 and kept.shape == (2000, 96)
    assert np.isnan(kept[[3, 10]]).all() and np.isfinite(np.delete(kept, [3, 10], axis=0)).all()
    np.testing.assert_allclose(np.delete(kept, [3, 10], axis=0), np.load(tmp_path / "o" / "a.npy"), atol=1e-5)


def test_models_and_info():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0 and "vit-l-minkunet34" in res.output and "37.9M" in res.output
    res = CliRunner().invoke(main, ["info", "vit-b-minkunet34"])
    assert res.exit_code == 0 and "lima-zoo/vit-b-minkunet34" in res.output and "cc-by-nc-sa-4.0" in res.output


def test_real_subprocess_offline_hub_cache(scans, model_dir, tmp_path):
    """The installed console script, a Hub repo id served from a pre-filled cache, HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf"
    fill_hub_cache(cache, "someorg/tiny", model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lima_zoo.cli",
        "embed",
        str(scans / "a" / "000001.bin"),
        "--model",
        "someorg/tiny",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "000001.npy").exists() and "points/s" in done.stdout
    cmd[cmd.index("someorg/tiny")] = "vit-b-minkunet34"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "HF_HUB_OFFLINE=1" in done.stderr and "Traceback" not in done.stderr


def test_embed_inputs_from_a_list_and_shards_that_add_up_to_one_run(model_dir, tmp_path, small_street_points):
    """Two shards (--shard, RANK/WORLD_SIZE, a real 2-process torchrun) write exactly the files and
    features of one run."""
    root = tmp_path / "kitti"
    for seq in ("00", "01"):
        (root / seq / "velodyne").mkdir(parents=True)
        for i in range(3):
            pts = small_street_points[i * 500 : i * 500 + 1500, :4].copy()
            pts[:, 0] += float(seq)
            (root / seq / "velodyne" / f"00000{i}.bin").write_bytes(pts.tobytes())
    listing = tmp_path / "list.txt"
    files = sorted(str(p) for p in root.rglob("*.bin"))
    listing.write_text("# scans\n" + "\n".join(files) + "\n\n" + files[0] + "\n")  # a comment, a blank, a duplicate
    base = ["embed", "--inputs-from", str(listing), "--model", str(model_dir)]
    one = CliRunner().invoke(main, base + ["--out", str(tmp_path / "one")])
    assert one.exit_code == 0 and "embedded 6 scan(s)" in one.output, one.output
    assert (tmp_path / "one" / "00" / "velodyne" / "000000.npy").exists() and (
        tmp_path / "one" / "01" / "velodyne" / "000000.npy"
    ).exists()
    a = CliRunner().invoke(main, base + ["--out", str(tmp_path / "two"), "--shard", "0/2"])
    b = CliRunner(env={"RANK": "1", "WORLD_SIZE": "2"}).invoke(main, base + ["--out", str(tmp_path / "two")])
    assert (
        a.exit_code == 0 and b.exit_code == 0 and "shard 0/2: 3 of 6" in a.output and "shard 1/2: 3 of 6" in b.output
    ), a.output + b.output
    # torchrun: two real processes, each taking its RANK's shard
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "lima_zoo.cli",
        *base,
        "--out",
        str(tmp_path / "torchrun"),
    ]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "shard 1/2: 3 of 6" in done.stdout, done.stdout + done.stderr[-3000:]
    ones = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy"))
    assert len(ones) == 6
    for other in ("two", "torchrun"):
        assert sorted(p.relative_to(tmp_path / other) for p in (tmp_path / other).rglob("*.npy")) == ones
        for rel in ones:  # one thread or two: the same features within float tolerance
            np.testing.assert_allclose(
                np.load(tmp_path / other / rel), np.load(tmp_path / "one" / rel), rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--shard", "2/2"], {}, "0 <= i < n"),
        (["--shard", "one"], {}, "give i/n"),
        (
            [],
            {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "0"},
            "outside its array of 2",
        ),
        (["--inputs-from", "MISSING"], {}, "unreadable"),
    ],
)
def test_embed_bad_shard_or_list_is_a_usage_error(scans, model_dir, tmp_path, args, env, message):
    args = [a.replace("MISSING", str(tmp_path / "nope.txt")) for a in args]
    res = CliRunner(env=env).invoke(
        main, ["embed", str(scans), "--model", str(model_dir), "--out", str(tmp_path / "o"), *args]
    )
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_shard_of_slurm_array_with_a_step():
    from lima_zoo.pipeline import shard_of

    env = {
        "SLURM_ARRAY_TASK_COUNT": "3",
        "SLURM_ARRAY_TASK_ID": "14",
        "SLURM_ARRAY_TASK_MIN": "10",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert shard_of(None, env) == (2, 3) and shard_of(None, {}) == (0, 1) and shard_of("1/4", env) == (1, 4)


def _dataset_rows(folder) -> dict:
    """{(scan, point): feature row} over every part of a parquet-dataset folder, with duplicates counted."""
    import pyarrow.parquet as pq

    rows, dup = {}, 0
    for part in sorted(folder.glob("part-*.parquet")):
        t = pq.read_table(part)
        feats = np.asarray(t.column("features").combine_chunks().flatten()).reshape(len(t), -1)
        for s, p, f in zip(t.column("scan").to_pylist(), t.column("point").to_pylist(), feats):
            dup += (s, p) in rows
            rows[s, p] = f
    assert dup == 0, f"{dup} rows written twice"
    return rows


def test_embed_parquet_dataset_matches_per_file_output_and_reports_failures(
    scans, model_dir, tmp_path, small_street_points
):
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "ds"
    res = CliRunner().invoke(
        main,
        [
            "embed",
            str(scans),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--format",
            "parquet-dataset",
            "--scans-per-part",
            "2",
        ],
    )
    assert res.exit_code == 1 and "broken.bin" in res.output, res.output  # the bad scan fails, the others finish
    manifest = json.loads((out / "_manifest-00000-of-00001.json").read_text())
    assert manifest["scans_done"] == 3 and list(manifest["failed"]) == ["a/broken.bin"] and len(manifest["parts"]) == 2
    assert (
        manifest["model"] == str(model_dir.resolve())
        and len(manifest["config_sha256"]) == 64
        and manifest["feature_dim"] == "96"
    )
    meta = pq.read_schema(out / manifest["parts"][0]["file"]).metadata
    assert meta[b"lima_zoo.config_sha256"].decode() == manifest["config_sha256"]
    rows = _dataset_rows(out)
    assert sum(p["points"] for p in manifest["parts"]) == len(rows) == manifest["points"]
    per_file = tmp_path / "npy"
    CliRunner().invoke(
        main, ["embed", str(scans), "--model", str(model_dir), "--out", str(per_file), "--prefetch", "0"]
    )
    for scan, n in (("a/000001.bin", len(small_street_points)), ("b/c.npy", 2000)):
        ref = np.load(per_file / (scan.rsplit(".", 1)[0] + ".npy"))
        got = np.stack([rows[scan, i] for i in range(n)])
        np.testing.assert_array_equal(got, ref)  # same features, rows in input order


def test_embed_parquet_dataset_shards_and_resume_without_duplicates(model_dir, tmp_path, small_street_points):
    """Two shards into one folder write the rows of one run; a run killed between a part and its
    manifest resumes with no scan twice; another model cannot append to the folder."""
    import json

    root = tmp_path / "scans"
    root.mkdir()
    for i in range(5):
        (root / f"{i:06d}.bin").write_bytes(small_street_points[i * 300 : i * 300 + 1200, :4].tobytes())
    base = ["embed", str(root), "--model", str(model_dir), "--format", "parquet-dataset", "--scans-per-part", "1"]
    one = CliRunner().invoke(main, base + ["--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    for shard in ("0/2", "1/2"):
        assert CliRunner().invoke(main, base + ["--out", str(tmp_path / "two"), "--shard", shard]).exit_code == 0
    full, sharded = _dataset_rows(tmp_path / "one"), _dataset_rows(tmp_path / "two")
    assert full.keys() == sharded.keys() and len({s for s, _ in full}) == 5
    assert all(np.array_equal(full[k], sharded[k]) for k in full)
    assert sorted(p.name for p in (tmp_path / "two").glob("_manifest-*")) == [
        "_manifest-00000-of-00002.json",
        "_manifest-00001-of-00002.json",
    ]
    # A kill after the last part's rename but before its manifest: the part is on disk, unlisted.
    mpath = tmp_path / "one" / "_manifest-00000-of-00001.json"
    manifest = json.loads(mpath.read_text())
    lost = manifest["parts"].pop()
    mpath.write_text(json.dumps(manifest))
    again = CliRunner().invoke(main, base + ["--out", str(tmp_path / "one")])
    assert again.exit_code == 0 and "embedded 1 scan(s)" in again.output and "skipped 4" in again.output, again.output
    assert (
        _dataset_rows(tmp_path / "one").keys() == full.keys()
        and lost["scans"] == json.loads(mpath.read_text())["parts"][-1]["scans"]
    )
    done = CliRunner().invoke(main, base + ["--out", str(tmp_path / "one"), "--float16"])
    assert done.exit_code == 1 and "written by another model or dtype" in done.output and "float32" in done.output, (
        done.output
    )
    assert "Traceback" not in done.output


def test_embed_parquet_dataset_float16(model_dir, tmp_path, small_street_points):
    import pyarrow.parquet as pq

    scan = tmp_path / "s.bin"
    kitti = small_street_points[:1500, :4].copy()
    kitti[:, 3] /= 255.0  # a .bin scan is KITTI's: remission in 0-1
    scan.write_bytes(kitti.tobytes())
    res = CliRunner().invoke(
        main,
        [
            "embed",
            str(scan),
            "--model",
            str(model_dir),
            "--out",
            str(tmp_path / "h"),
            "--format",
            "parquet-dataset",
            "--float16",
        ],
    )
    assert res.exit_code == 0, res.output
    t = pq.read_table(next((tmp_path / "h").glob("part-*.parquet")))
    assert str(t.schema.field("features").type) == "fixed_size_list<element: halffloat>[96]"
    ref = LiMAEncoder.from_pretrained(model_dir).embed(small_street_points[:1500, :4])
    got = np.asarray(t.column("features").combine_chunks().flatten()).reshape(1500, 96)
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=1e-2, atol=1e-2)
    bad = CliRunner().invoke(
        main, ["embed", str(scan), "--model", str(model_dir), "--out", str(tmp_path / "x"), "--float16"]
    )
    assert bad.exit_code == 2 and "--float16 applies to --format parquet-dataset only" in bad.output


def test_embed_on_ray_data_matches_a_local_run_and_resumes(scans, model_dir, tmp_path):
    """--engine ray on a local 2-CPU Ray instance, one model per actor: the dataset (parts, rows,
    manifest with the corrupt scan listed) of a local run; a rerun skips every scan."""
    pytest.importorskip("ray.data")
    import json

    base = [
        sys.executable,
        "-m",
        "lima_zoo.cli",
        "embed",
        str(scans),
        "--model",
        str(model_dir),
        "--format",
        "parquet-dataset",
        "--scans-per-part",
        "2",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    local = subprocess.run(
        base + ["--out", str(tmp_path / "local")], capture_output=True, text=True, timeout=300, env=env
    )
    ray = subprocess.run(
        base + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    for run in (local, ray):
        assert (
            run.returncode == 1
            and "broken.bin" in run.stderr
            and "embedded 3 scan(s)" in run.stdout
            and "Traceback" not in run.stderr
        ), run.stdout + run.stderr[-3000:]
    manifests = [json.loads((tmp_path / d / "_manifest-00000-of-00001.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["parts"] == manifests[1]["parts"] and list(manifests[1]["failed"]) == ["a/broken.bin"]
    want, got = _dataset_rows(tmp_path / "local"), _dataset_rows(tmp_path / "ray")
    assert want.keys() == got.keys()
    for key in want:  # the actors run on one thread each, the local run on two
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
    again = subprocess.run(
        base + ["--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert "embedded 0 scan(s)" in again.stdout and "skipped 3" in again.stdout, again.stdout + again.stderr[-3000:]
    bad = subprocess.run(
        base + ["--out", str(tmp_path / "x"), "--engine", "ray", "--workers", "64"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert (
        bad.returncode == 1 and "--workers 64: the Ray cluster has" in bad.stderr and "Traceback" not in bad.stderr
    ), bad.stderr[-3000:]
    res = CliRunner().invoke(
        main, ["embed", str(scans), "--model", str(model_dir), "--out", str(tmp_path / "y"), "--workers", "2"]
    )
    assert res.exit_code == 2 and "apply to --engine ray only" in res.output


def test_embed_progress_rate_counts_the_last_write(model_dir, tmp_path, small_street_points, capsys):
    from lima_zoo.pipeline import EmbedOptions, run_embed

    src = tmp_path / "one.npy"
    np.save(src, small_street_points[:, :3])
    report = run_embed(
        [(src, src.relative_to(tmp_path))],
        LiMAEncoder.from_pretrained(model_dir),
        tmp_path / "out",
        EmbedOptions(progress=True),
    )
    rates = [part.split("=")[1].rstrip("]\r\n ") for part in capsys.readouterr().err.split("points_per_s")[1:]]
    assert report.points == len(small_street_points) and rates and rates[-1] != "0", rates

"""`lima-zoo embed` end to end on a directory of nuScenes-size scans, and where the time goes.

Writes --scans ray-cast 32-beam street scans as nuScenes ``.pcd.bin`` files and a MinkUNet-34
encoder (random weights: no LiMA weights are published) to a temp dir, then:

1. runs the real CLI (`python -m lima_zoo.cli embed DIR --out OUT`) on the same inputs as one
   process (--threads threads) with the read-ahead on and off, and as two processes (``--shard 0/2``
   and ``1/2`` side by side, half the threads each) and, with Ray installed, as ``--engine ray``
   with two actors; it reports scans/s and points/s;
2. runs the same steps in-process with a timer around each: read, voxelize, kernel maps (every
   level's maps built up front), forward (backbone on the prebuilt maps + per-point gather), write.

    python benchmarks/bench_embed.py [--scans 16] [--threads 2] [--format npy]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lima_zoo import LiMAEncoder
from lima_zoo.config import EncoderConfig
from lima_zoo.io import load_points, save_features
from lima_zoo.sparse import SparseTensor
from lima_zoo.sparse.fused import fused_module
from lima_zoo.synth.scan import street_scan

sys.path.insert(0, str(Path(__file__).parent))
from bench_sparse import machine_summary  # noqa: E402


def write_scans(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"n000-2018__LIDAR_TOP__{i:06d}.pcd.bin"
        path.write_bytes(street_scan(seed=100 + i).tobytes())
        paths.append(path)
    return paths


def staged(encoder: LiMAEncoder, paths: list[Path], out: Path, fmt: str) -> dict[str, float]:
    t = dict.fromkeys(("read", "voxelize", "kernel maps", "forward", "write"), 0.0)
    points = 0
    for path in paths:
        s = time.perf_counter()
        cloud = load_points(path)
        t["read"] += time.perf_counter() - s
        s = time.perf_counter()
        pts = encoder.prepare(cloud.points, cloud.intensity_range)
        vox = encoder.voxelize([pts])
        t["voxelize"] += time.perf_counter() - s
        s = time.perf_counter()
        x = SparseTensor(vox.feats, vox.coords)
        x.cache.build_unet_maps(levels=5)
        t["kernel maps"] += time.perf_counter() - s
        s = time.perf_counter()
        with torch.inference_mode():
            feats = encoder.backbone(x).feats[vox.inverse].numpy()
        t["forward"] += time.perf_counter() - s
        s = time.perf_counter()
        save_features(out / f"{path.name}.{fmt}", feats, cloud.points[:, :3])
        t["write"] += time.perf_counter() - s
        points += len(feats)
    t["points"] = points
    return t


def cli_runs(tmp: Path, fmt: str, threads: int, procs: int, extra: list[str], tag: str) -> float:
    """Wall seconds of ``procs`` CLI processes started together, each embedding its shard with
    threads / procs threads (process start and model load included)."""
    each = max(1, threads // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(each)}
    cmd = [
        sys.executable,
        "-m",
        "lima_zoo.cli",
        "embed",
        str(tmp / "scans"),
        "--model",
        str(tmp / "model"),
        "--out",
        str(tmp / tag),
        "--format",
        fmt,
        *extra,
    ]
    s = time.perf_counter()
    runs = [
        subprocess.Popen(
            cmd + (["--shard", f"{i}/{procs}"] if procs > 1 else []),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    for r in runs:
        _, err = r.communicate()
        if r.returncode != 0:
            sys.exit(err)
    return time.perf_counter() - s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", default="npy", choices=["npy", "safetensors", "parquet", "ply", "parquet-dataset"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "scans").mkdir()
        paths = write_scans(tmp / "scans", args.scans)
        torch.manual_seed(0)
        LiMAEncoder(EncoderConfig()).save_pretrained(tmp / "model")
        encoder = LiMAEncoder.from_pretrained(tmp / "model")
        fused_module()  # build (or find) the fused kernel now, so no timed run pays its first-use compile

        runs = {  # (label, processes, extra CLI arguments); the same inputs for each
            "1 process, read-ahead 2 (default)": (1, []),
            "1 process, read-ahead off": (1, ["--prefetch", "0"]),
            f"2 processes (--shard), {max(1, args.threads // 2)} thread(s) each": (2, []),
        }
        if importlib.util.find_spec("ray") is not None:  # Ray's start and actor start-up included
            runs[f"--engine ray, 2 actors, {max(1, args.threads // 2)} thread(s) each"] = (
                1,
                ["--engine", "ray", "--workers", "2"],
            )
        walls = {
            label: cli_runs(tmp, args.format, args.threads, procs, extra, f"cli{i}")
            for i, (label, (procs, extra)) in enumerate(runs.items())
        }

        (tmp / "staged").mkdir()
        fmt = "parquet" if args.format == "parquet-dataset" else args.format
        staged(encoder, paths[:1], tmp / "staged", fmt)  # warm-up
        t = staged(encoder, paths, tmp / "staged", fmt)

    points = t.pop("points")
    total = sum(t.values())
    print(
        f"lima-zoo embed, MinkUNet-34 (random weights), {args.scans} nuScenes-size scans "
        f"({points // args.scans:,} points each), {args.threads} threads, format {args.format}\n{machine_summary()}\n"
    )
    first = next(iter(walls.values()))
    print(f"CLI end to end on the same {args.scans} scans (process start and model load included):\n")
    print("| run | wall s | scans/s | points/s | vs default |")
    print("|---|---|---|---|---|")
    for label, wall in walls.items():
        print(f"| {label} | {wall:.1f} | {args.scans / wall:.2f} | {points / wall:,.0f} | {first / wall:.2f}x |")
    print()
    print(f"in-process per scan: {total / args.scans * 1e3:.0f} ms, {points / total:,.0f} points/s\n")
    print("| stage | ms / scan | share |")
    print("|---|---|---|")
    for name, sec in t.items():
        print(f"| {name} | {sec / args.scans * 1e3:.1f} | {sec / total * 100:.0f}% |")


if __name__ == "__main__":
    main()

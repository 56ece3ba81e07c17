"""Every backbone on the same scan: parameters, forward and train-step time, peak memory.

One ray-cast 32-beam street scan (~34k points), the LiMA voxelization (cylindrical 0.1 m x 1 deg x
0.1 m) or, for FRNet, the nuScenes range image (32 x 480), random weights, this machine's threads.
Per backbone, interleaved, median of --repeats:

* forward: ``encoder.embed``-style eval forward to one feature per point (voxelize included);
* train step: train-mode forward through the distillation head + backward;
* peak RSS of one forward above the loaded model, in a fresh process per backbone;
* with --onnx: ``embed(points)`` with PyTorch and with onnxruntime (the exported, verified model.onnx).

The ratio column is each backbone's forward against MinkUNet-34's, measured in the same run.

    python benchmarks/bench_backbones.py [--threads 2] [--repeats 5] [--backbones minkunet34,spvcnn34,...] [--onnx]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lima_zoo import LiMAEncoder
from lima_zoo.config import BACKBONES, RANGE_VIEW_BACKBONES, EncoderConfig
from lima_zoo.models import parameter_count
from lima_zoo.sparse.fused import fused_module
from lima_zoo.synth.scan import street_scan

sys.path.insert(0, str(Path(__file__).parent))
from bench_sparse import machine_summary, rss_mb  # noqa: E402


def make(backbone: str) -> LiMAEncoder:
    torch.manual_seed(0)
    return LiMAEncoder(EncoderConfig(backbone=backbone)).eval()


def scan() -> torch.Tensor:
    return torch.from_numpy(street_scan(seed=0))[:, :4]


def forward_seconds(enc: LiMAEncoder, pts: torch.Tensor) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        batch = enc.backbone_input([pts], intensity_range=255.0)
        feats = enc.rows_to_points(enc.backbone_rows(batch), batch)
    assert feats.shape[0] == len(pts)
    return time.perf_counter() - t


def train_step_seconds(enc: LiMAEncoder, pts: torch.Tensor) -> float:
    enc.train()
    t = time.perf_counter()
    batch = enc.backbone_input([pts], intensity_range=255.0)
    out = enc.rows_to_points(enc.head(enc.backbone_rows(batch)), batch)
    out.square().sum().backward()
    secs = time.perf_counter() - t
    enc.zero_grad(set_to_none=True)
    enc.eval()
    return secs


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def onnx_runners(encs: dict[str, LiMAEncoder], folder: Path, threads: int) -> dict:
    """backbone -> OnnxEncoder of its verified export."""
    from lima_zoo.export import export_onnx
    from lima_zoo.runtime import OnnxEncoder

    return {b: OnnxEncoder(export_onnx(enc, folder / b), enc.config, threads=threads) for b, enc in encs.items()}


def memory_probe(backbone: str, threads: int) -> None:
    """In a fresh process: peak RSS of one forward above the loaded model and scan."""
    torch.set_num_threads(threads)
    enc, pts = make(backbone), scan()
    fused_module()  # loading the kernel is not scan memory
    base = rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    forward_seconds(enc, pts)
    print(json.dumps({"peak_mb": rss_mb("VmHWM") - base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument(
        "--onnx",
        action="store_true",
        help="also time embed() with onnxruntime (each backbone exported and verified first)",
    )
    ap.add_argument("--memory-probe", metavar="BACKBONE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.threads)
    torch.set_num_threads(args.threads)
    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        sys.exit(f"--backbones: unknown {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    fused_module()
    pts = scan()
    encs = {b: make(b) for b in names}
    tmp = tempfile.TemporaryDirectory()
    runners = onnx_runners(encs, Path(tmp.name), args.threads) if args.onnx else {}
    for b, enc in encs.items():  # warm-up: kernel maps' first allocations, the fused kernel's first call
        forward_seconds(enc, pts)
        if b in runners:
            runners[b].embed(pts)
    fwd = {b: [] for b in names}
    step = {b: [] for b in names}
    embed = {b: {"torch": [], "onnx": []} for b in runners}
    for _ in range(args.repeats):  # interleaved, so a machine's slow minute hits every backbone alike
        for b, enc in encs.items():
            fwd[b].append(forward_seconds(enc, pts))
            step[b].append(train_step_seconds(enc, pts))
            if b in runners:
                embed[b]["torch"].append(seconds(lambda: enc.embed(pts)))
                embed[b]["onnx"].append(seconds(lambda: runners[b].embed(pts)))
    tmp.cleanup()
    peaks = {}
    for b in names:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", b, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[b] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    with torch.no_grad():  # the rows each backbone's input has: voxels, or occupied range-image pixels
        cells = {b: len(enc.backbone_input([pts], intensity_range=255.0).coords) for b, enc in encs.items()}
    print(
        f"backbones on one 32-beam street scan: {len(pts):,} points (voxel nets: cylindrical 0.1 m x 1 deg x 0.1 m; "
        "range view: "
        f"32 x 480, +10 / -30 deg), {args.threads} threads, median of {args.repeats}\n{machine_summary()}\n"
    )
    ref = statistics.median(fwd["minkunet34"]) if "minkunet34" in fwd else None
    onnx_head = " embed torch / onnxruntime ms | onnxruntime vs torch |" if args.onnx else ""
    print(
        "| backbone | params | input cells | forward ms | vs MinkUNet-34 | train step ms | peak forward MB |"
        + onnx_head
    )
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.onnx else ""))
    for b in names:
        f, s = statistics.median(fwd[b]), statistics.median(step[b])
        ratio = f"{f / ref:.2f}x" if ref else "-"
        kind = "pixels" if b in RANGE_VIEW_BACKBONES else "voxels"
        onnx = ""
        if args.onnx:
            e = {k: statistics.median(v) for k, v in embed[b].items()}
            onnx = f" {e['torch'] * 1e3:.0f} / {e['onnx'] * 1e3:.0f} | {e['onnx'] / e['torch']:.2f}x |"
        print(
            f"| {b} | {parameter_count(b) / 1e6:.1f}M | {cells[b]:,} {kind} | {f * 1e3:.0f} | {ratio} | "
            f"{s * 1e3:.0f} | {peaks[b]:.0f} |" + onnx
        )


if __name__ == "__main__":
    main()

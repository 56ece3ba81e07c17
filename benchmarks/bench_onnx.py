"""onnxruntime vs PyTorch on the same nuScenes-size scans, measured side by side in one run.

A MinkUNet-34 encoder (random weights with non-trivial BN statistics: no LiMA weights are published)
is exported with `export_onnx`; then for --scans ray-cast 32-beam street scans (~34k points,
~19k cylindrical voxels each), interleaved, median of --repeats:

* forward: the PyTorch engine's backbone vs onnxruntime's session run, both on prebuilt kernel maps
  (the same maps: the graph takes them as inputs) — the ratio the issue's target is about;
* end to end ``embed(points)`` for both runtimes (voxelize + maps + forward + per-point gather);
* the pre-processing the ONNX runtime needs (``graph_inputs``: voxel maps as numpy arrays);
* achieved GFLOP/s of each next to this machine's dense torch.mm rate on the network's pair work;
* onnxruntime's per-op-type time (its profiler), to show where the time goes;
* parity: max |diff| of the features.

    python benchmarks/bench_onnx.py [--scans 3] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sparse import dense_gemm_seconds, layer_shapes  # noqa: E402

from lima_zoo import LiMAEncoder  # noqa: E402
from lima_zoo.export import OnnxEncoder, export_onnx, graph_inputs  # noqa: E402
from lima_zoo.sparse import SparseTensor  # noqa: E402
from lima_zoo.synth.scan import street_scan  # noqa: E402


def make_encoder() -> LiMAEncoder:
    torch.manual_seed(0)
    enc = LiMAEncoder()
    g = torch.Generator().manual_seed(0)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return enc.eval()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def op_profile(model: Path, feeds: dict, threads: int) -> dict[str, float]:
    """onnxruntime's own per-op-type milliseconds for one run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(model.parent / "ort_profile")  # inside the temp dir, not the cwd
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    session.run(["features"], {**feeds, "teacher_space": np.array(False)})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000
    return dict(per_op.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    enc = make_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        seconds, model = timed(lambda: export_onnx(enc, tmp))
        print(f"export (build + check + onnxruntime verification): {seconds:.1f} s, model.onnx {model.stat().st_size / 1e6:.0f} MB")
        runner = OnnxEncoder(model, enc.config, threads=args.threads)
        rows, flops_total, fwd = [], 0.0, {"torch": [], "onnx": []}
        for i in range(args.scans):
            scan = street_scan(seed=200 + i)[:, :4]
            vox = enc.voxelize_points([scan])
            shapes = layer_shapes(enc.backbone, vox)
            flops = 2 * sum(sum(p) * ci * co for p, ci, co in shapes)
            flops_total += flops

            def torch_forward():
                x = SparseTensor(vox.feats, vox.coords)
                x.cache.build_unet_maps(levels=5)
                start = time.perf_counter()
                with torch.inference_mode():
                    enc.backbone(x)
                return time.perf_counter() - start

            feeds = graph_inputs(vox.feats, vox.coords)
            t = collections.defaultdict(list)
            for _ in range(args.repeats):  # interleaved so both see the same machine state
                t["torch forward"].append(torch_forward())
                t["onnx forward"].append(timed(lambda: runner.run(feeds))[0])
                t["onnx inputs"].append(timed(lambda: graph_inputs(vox.feats, vox.coords))[0])
                t["torch embed"].append(timed(lambda: enc.embed(scan))[0])
                t["onnx embed"].append(timed(lambda: runner.embed(scan))[0])
            med = {k: statistics.median(v) for k, v in t.items()}
            fwd["torch"].append(med["torch forward"])
            fwd["onnx"].append(med["onnx forward"])
            diff = float(np.abs(enc.embed(scan) - runner.embed(scan)).max())
            rows.append((len(scan), len(vox.coords), med, diff, flops))

        dense = dense_gemm_seconds(shapes, args.repeats, per_offset=False)
        print(f"\nthreads {args.threads}, repeats {args.repeats} (median); forward = backbone on prebuilt maps\n")
        print("| points | voxels | forward torch / onnx | ratio onnx/torch | embed torch / onnx | ratio | onnx inputs | max abs diff |")
        print("|---|---|---|---|---|---|---|---|")
        for n, m, med, diff, _ in rows:
            print(f"| {n:,} | {m:,} | {med['torch forward'] * 1e3:.0f} / {med['onnx forward'] * 1e3:.0f} ms "
                  f"| {med['onnx forward'] / med['torch forward']:.2f}x | {med['torch embed'] * 1e3:.0f} / {med['onnx embed'] * 1e3:.0f} ms "
                  f"| {med['onnx embed'] / med['torch embed']:.2f}x | {med['onnx inputs'] * 1e3:.0f} ms | {diff:.1e} |")
        per_scan = flops_total / args.scans
        rate = {k: per_scan / statistics.mean(v) / 1e9 for k, v in fwd.items()}
        dense_rate = rows[-1][4] / dense / 1e9
        print(f"\nGFLOP/s on the pair work: torch {rate['torch']:.0f}, onnxruntime {rate['onnx']:.0f}; "
              f"dense torch.mm on the same (pairs, C_in) x (C_in, C_out) shapes: {dense_rate:.0f} "
              f"(torch {rate['torch'] / dense_rate:.0%}, onnxruntime {rate['onnx'] / dense_rate:.0%} of it)")
        profile = op_profile(model, feeds, args.threads)
        total = sum(profile.values())
        print("onnxruntime time by op (profiler, last scan): "
              + ", ".join(f"{op} {ms:.0f} ms ({ms / total:.0%})" for op, ms in list(profile.items())[:6]))


if __name__ == "__main__":
    main()

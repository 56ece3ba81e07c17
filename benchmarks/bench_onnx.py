"""onnxruntime vs PyTorch on the same nuScenes-size scans, measured side by side in one run.

A MinkUNet-34 encoder (random weights with non-trivial BN statistics: no LiMA weights are published)
is exported with `export_onnx`; then for --scans ray-cast 32-beam street scans (~34k points,
~19k cylindrical voxels each) and one real-size 128-beam scan (~136k points), interleaved, median
of --repeats:

* the inputs: the torch-free runtime's numpy voxelization + kernel maps + graph layout
  (``lima_zoo.runtime``) vs the PyTorch engine's own voxelization + map building;
* forward: the PyTorch engine's backbone (fused kernel) vs onnxruntime's session run, both on
  prebuilt kernel maps (the same maps: the graph takes them as inputs);
* the runtime's total (numpy inputs + onnxruntime forward) vs the PyTorch path's whole ``embed``,
  and end to end ``embed(points)`` for both runtimes (+ the per-point gather);
* achieved GFLOP/s of each next to this machine's dense GEMM rate on the network's pair work, for
  torch.mm and for onnxruntime's MatMul: the two GEMM libraries differ by CPU (MKL vs MLAS), and
  that alone moves the ratio;
* time in GEMMs vs everything else for each runtime (their profilers), and onnxruntime's per-op-type
  time, to show where the time goes;
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
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from bench_sparse import dense_gemm_seconds, gemm_sizes, layer_shapes, machine_summary  # noqa: E402

from lima_zoo import LiMAEncoder  # noqa: E402
from lima_zoo.export import export_onnx  # noqa: E402
from lima_zoo.export.onnx_builder import OPSET  # noqa: E402
from lima_zoo.runtime import OnnxEncoder  # noqa: E402
from lima_zoo.runtime.voxel_inputs import graph_inputs  # noqa: E402
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


def ort_dense_gemm_seconds(shapes, repeats: int, threads: int) -> float:
    """``dense_gemm_seconds(per_offset=False)`` for onnxruntime: one MatMul per layer, each layer's
    pairs as one dense (pairs, C_in) x (C_in, C_out) GEMM with a constant (pre-packed) weight."""
    sizes = gemm_sizes(shapes, per_offset=False)
    nodes, inits, inputs, outputs, feeds = [], [], [], [], {}
    rng = np.random.default_rng(0)
    for i, (p, ci, co) in enumerate(sizes):
        inits.append(numpy_helper.from_array(rng.standard_normal((ci, co), dtype=np.float32), f"w{i}"))
        inputs.append(helper.make_tensor_value_info(f"a{i}", TensorProto.FLOAT, [p, ci]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [p, co]))
        nodes.append(helper.make_node("MatMul", [f"a{i}", f"w{i}"], [f"y{i}"]))
        feeds[f"a{i}"] = rng.standard_normal((p, ci), dtype=np.float32)
    model = helper.make_model(
        helper.make_graph(nodes, "gemms", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in outputs]
    session.run(names, feeds)  # warm-up
    return statistics.median(timed(lambda: session.run(names, feeds))[0] for _ in range(repeats))


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Of several profiled runs ({op: ms} each), the one with the median total: on a machine with
    noisy neighbours a single profiled run can land in a slow phase."""
    return sorted(runs, key=lambda r: sum(r.values()))[len(runs) // 2]


def torch_op_profile(enc: LiMAEncoder, vox, runs: int = 3) -> dict[str, float]:
    """torch's profiler: self milliseconds per aten op of one backbone forward on prebuilt maps (the
    median of ``runs`` profiled forwards)."""
    from torch.profiler import ProfilerActivity, profile

    x = SparseTensor(vox.feats, vox.coords)
    x.cache.build_unet_maps(levels=5)
    per_run = []
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
            enc.backbone(x)
        per_run.append({e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()})
    return median_run(per_run)


def op_profile(model: Path, feeds: dict, threads: int, runs: int = 3) -> dict[str, float]:
    """onnxruntime's profiler: milliseconds per op type of one session run (the median of ``runs``
    profiled runs after a warm-up run)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(model.parent / "ort_profile")  # inside the temp dir, not the cwd
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(["features"], {**feeds, "teacher_space": np.array(False)})
    events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")[1:]
    per_run = [collections.Counter() for _ in starts]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[0]:
            run = max(i for i, t in enumerate(starts) if t <= e["ts"])
            per_run[run][e["args"]["op_name"]] += e["dur"] / 1000
    return dict(collections.Counter(median_run(per_run)).most_common())


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
        print(
            f"export (build + check + onnxruntime verification): {seconds:.1f} s, model.onnx "
            f"{model.stat().st_size / 1e6:.0f} MB"
        )
        runner = OnnxEncoder(model, enc.config, threads=args.threads)
        rows, flops_total, fwd = [], 0.0, {"torch": [], "onnx": []}
        scans = [street_scan(seed=200 + i)[:, :4] for i in range(args.scans)]
        scans.append(street_scan(seed=0, beams=128)[:, :4])
        for scan in scans:
            vox = enc.backbone_input([scan])
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

            def numpy_inputs():
                cells = runner.voxelize([runner.prepare(scan)])
                return graph_inputs(cells.feats, cells.coords)

            def torch_maps():
                v = enc.backbone_input([scan])
                SparseTensor(v.feats, v.coords).cache.build_unet_maps(levels=5)

            feeds = numpy_inputs()
            t = collections.defaultdict(list)
            for _ in range(args.repeats):  # interleaved so both see the same machine state
                t["torch forward"].append(torch_forward())
                t["onnx forward"].append(timed(lambda: runner.run(feeds))[0])
                t["onnx inputs"].append(timed(numpy_inputs)[0])
                t["torch maps"].append(timed(torch_maps)[0])
                t["torch embed"].append(timed(lambda: enc.embed(scan))[0])
                t["onnx embed"].append(timed(lambda: runner.embed(scan))[0])
            med = {k: statistics.median(v) for k, v in t.items()}
            fwd["torch"].append(med["torch forward"])
            fwd["onnx"].append(med["onnx forward"])
            diff = float(np.abs(enc.embed(scan) - runner.embed(scan)).max())
            rows.append((len(scan), len(vox.coords), med, diff, flops))

        dense = dense_gemm_seconds(shapes, args.repeats, per_offset=False)
        dense_ort = ort_dense_gemm_seconds(shapes, args.repeats, args.threads)
        print(f"\n{machine_summary()}; onnxruntime {ort.__version__}")
        print(f"threads {args.threads}, repeats {args.repeats} (median); forward = backbone on prebuilt maps\n")
        print(
            "| points | voxels | inputs numpy / torch engine | forward onnx / torch | onnx total (inputs + forward) "
            "| torch embed | total vs torch embed | embed onnx / torch | max abs diff |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for n, m, med, diff, _ in rows:
            total = med["onnx inputs"] + med["onnx forward"]
            print(
                f"| {n:,} | {m:,} | {med['onnx inputs'] * 1e3:.0f} / {med['torch maps'] * 1e3:.0f} ms "
                f"({med['onnx inputs'] / med['torch maps']:.2f}x) | {med['onnx forward'] * 1e3:.0f} / "
                f"{med['torch forward'] * 1e3:.0f} ms ({med['onnx forward'] / med['torch forward']:.2f}x) "
                f"| {total * 1e3:.0f} ms | {med['torch embed'] * 1e3:.0f} ms | {total / med['torch embed']:.2f}x "
                f"| {med['onnx embed'] * 1e3:.0f} / {med['torch embed'] * 1e3:.0f} ms "
                f"({med['onnx embed'] / med['torch embed']:.2f}x) | {diff:.1e} |"
            )
        per_scan = flops_total / len(scans)
        rate = {k: per_scan / statistics.mean(v) / 1e9 for k, v in fwd.items()}
        dense_rate, dense_ort_rate = rows[-1][4] / dense / 1e9, rows[-1][4] / dense_ort / 1e9
        print(
            f"\nGFLOP/s on the pair work: torch {rate['torch']:.0f}, onnxruntime {rate['onnx']:.0f}; "
            f"dense GEMMs on the same (pairs, C_in) x (C_in, C_out) shapes: torch.mm {dense_rate:.0f}, "
            f"onnxruntime MatMul {dense_ort_rate:.0f} (torch at {rate['torch'] / dense_rate:.0%} of its "
            f"library's dense rate, onnxruntime at {rate['onnx'] / dense_ort_rate:.0%} of its own)"
        )
        profiles = {"torch": torch_op_profile(enc, vox), "onnxruntime": op_profile(model, feeds, args.threads)}
        gemm_ops = ("aten::mm", "aten::addmm", "MatMul", "Gemm")
        print(
            "time in GEMMs / elsewhere (profilers, last scan, median of 3 runs): "
            + ", ".join(
                f"{name} {sum(ms for op, ms in p.items() if op in gemm_ops):.0f} / "
                f"{sum(ms for op, ms in p.items() if op not in gemm_ops):.0f} ms"
                for name, p in profiles.items()
            )
        )
        profile = profiles["onnxruntime"]
        total = sum(profile.values())
        print(
            "onnxruntime time by op: "
            + ", ".join(f"{op} {ms:.0f} ms ({ms / total:.0%})" for op, ms in list(profile.items())[:6])
        )


if __name__ == "__main__":
    main()

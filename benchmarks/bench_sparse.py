"""Sparse engine: fused kernel vs pure-PyTorch path vs spconv, measured side by side in one run.

Three scans: the ray-cast 32-beam street scan with the cylindrical (LiMA default) and cartesian
0.1 m voxelizations, and a 128-beam scan of the same street (~100k points, real-size). For each,
interleaved, median of --repeats:

* kernel-map build: our level-0 submanifold 3x3x3 map vs spconv's get_indice_pairs;
* MinkUNet-34 forward (eval, inference_mode) and forward+backward (train mode) with the three
  engines: "fused" (the torch backend's fused CPU kernel, LIMA_ZOO_KERNEL=fused), "pure" (the same
  backend's pure-PyTorch path, LIMA_ZOO_KERNEL=torch) and spconv;
* the fp32 limit: the forward's GEMMs alone (one torch.mm per layer and kernel offset, the very
  shapes the engine multiplies) at this machine's dense rate, and each engine's share of it; for
  forward+backward the same with the backward's grad-input and grad-weight GEMMs added; and the
  issue's speed targets restated as the share of that limit each would need;
* per layer kind (128-beam scan): one conv's forward with each engine, summed over the layers of
  that kind;
* peak RSS of one forward above the loaded model, in a fresh process per engine;
* spconv's own error at this thread count (its CPU path races with > 1 thread, spconv#679).

    python benchmarks/bench_sparse.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lima_zoo.config import PreprocessConfig
from lima_zoo.models import MinkUNet
from lima_zoo.sparse import Conv3d, SparseTensor, set_backend
from lima_zoo.sparse.backends import kernel_map, spconv_cpu_unguarded
from lima_zoo.sparse.fused import KERNEL_ENV, fused_module
from lima_zoo.sparse.kmap import CoordinateKeys, build_submanifold_map
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize

SCANS = {  # name -> (beams, voxelization)
    "32-beam cylindrical": (32, PreprocessConfig()),
    "32-beam cartesian": (32, PreprocessConfig(voxel_type="cartesian", voxel_size=(0.1, 0.1, 0.1))),
    "128-beam cylindrical": (128, PreprocessConfig()),
}
ENGINES = ("fused", "pure", "spconv")  # fused / pure: the torch backend with LIMA_ZOO_KERNEL=fused / torch


def scan_voxels(kind: str):
    beams, cfg = SCANS[kind]
    return voxelize([torch.from_numpy(street_scan(seed=0, beams=beams))], cfg)


def make_net(seed: int = 0) -> MinkUNet:
    torch.manual_seed(seed)
    return MinkUNet("minkunet34").eval()


def use_engine(net: torch.nn.Module | None, engine: str) -> None:
    os.environ[KERNEL_ENV] = "torch" if engine == "pure" else "fused"
    if net is not None:
        set_backend(net, "spconv" if engine == "spconv" else "torch")


def conv_inputs(net: MinkUNet, vox) -> list[tuple[Conv3d, SparseTensor]]:
    """Every sparse conv of one forward with its input tensor (train-mode copy: in eval mode BN is
    folded and Conv3d.forward is bypassed)."""
    net = copy.deepcopy(net).train()
    seen = []
    handles = [
        m.register_forward_hook(lambda mod, inputs, _out: seen.append((mod, inputs[0])))
        for m in net.modules()
        if isinstance(m, Conv3d)
    ]
    with torch.no_grad():
        net(SparseTensor(vox.feats, vox.coords))
    for h in handles:
        h.remove()
    return seen


def layer_shapes(net: MinkUNet, vox) -> list[tuple[list[int], int, int]]:
    """(pairs per offset, C_in, C_out) of every conv of one forward (centre offset included)."""
    shapes = []
    for mod, x in conv_inputs(net, vox):
        pairs = (
            [x.num_voxels]
            if mod.kernel_size == 1
            else kernel_map(x, mod.kernel_size, mod.stride, mod.dilation, mod.transposed).pair_counts()
        )
        shapes.append((pairs, mod.in_channels, mod.out_channels))
    return shapes


def gemm_sizes(shapes, per_offset: bool) -> list[tuple[int, int, int]]:
    """(rows, C_in, C_out) of the network's pair work as dense GEMMs: each layer as one
    (pairs, C_in) x (C_in, C_out) GEMM, or ``per_offset`` one GEMM per kernel offset (the very
    shapes the engine multiplies, without its gathers and scatters)."""
    return [(p, ci, co) for ps, ci, co in shapes for p in (ps if per_offset else [sum(ps)]) if p]


def mm_seconds(mats: list[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> float:
    """Median over ``repeats`` of one torch.mm per (A, B) pair, all of them in a row."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in mats:
            torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_gemm_seconds(shapes, repeats: int, per_offset: bool) -> float:
    """Time of dense torch.mm doing ``gemm_sizes(shapes, per_offset)``, summed (median)."""
    return mm_seconds(
        [(torch.randn(p, ci), torch.randn(ci, co)) for p, ci, co in gemm_sizes(shapes, per_offset)], repeats
    )


def backward_gemm_seconds(shapes, repeats: int) -> float:
    """Time of dense torch.mm doing the backward's GEMMs of ``shapes``, per kernel offset: grad input
    (pairs, C_out) x (C_out, C_in) (not for the first layer: the voxel features need no gradient)
    and grad weight (C_in, pairs) x (pairs, C_out). Layer by layer (median each, summed), so only
    one layer's operands are held at a time."""
    total = 0.0
    for layer, (ps, ci, co) in enumerate(shapes):
        mats = [(torch.randn(p, co), torch.randn(co, ci)) for p in ps if p and layer > 0]
        mats += [(torch.randn(ci, p), torch.randn(p, co)) for p in ps if p]
        total += mm_seconds(mats, repeats)
    return total


def machine_summary() -> str:
    """One line naming what the timings depend on: CPU model, cores, widest vector ISA, torch's BLAS."""
    cpuinfo = Path("/proc/cpuinfo")
    fields = {}  # first value of each "key : value" line (the first core's)
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name", platform.processor())
    flags = set(fields.get("flags", "").split())
    isa = next((name for name in ("avx512f", "avx2", "avx") if name in flags), "no AVX")
    blas = "MKL" if torch.backends.mkl.is_available() else "non-MKL BLAS"
    return f"{model}, {os.cpu_count()} cores, {isa}; torch {torch.__version__} ({blas})"


def spconv_map_seconds(vox) -> float:
    from spconv.core import ConvAlgo
    from spconv.pytorch import ops

    c = vox.coords
    idx = torch.stack([c[:, 0], c[:, 3], c[:, 2], c[:, 1]], 1).contiguous()
    shape = [int(v) + 1 for v in idx[:, 1:].max(0).values.tolist()]
    start = time.perf_counter()
    ops.get_indice_pairs(
        idx, 1, shape, ConvAlgo.Native, [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0], subm=True
    )
    return time.perf_counter() - start


def our_map_seconds(vox) -> float:
    start = time.perf_counter()
    build_submanifold_map(CoordinateKeys(vox.coords, margin=8), 3, 1)
    return time.perf_counter() - start


def forward_seconds(net, vox, engine: str) -> tuple[float, torch.Tensor]:
    use_engine(net, engine)
    net.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        out = net(SparseTensor(vox.feats, vox.coords)).feats
        return time.perf_counter() - start, out


def train_step_seconds(net, vox, engine: str) -> float:
    """Train-mode forward + backward of one scan (maps are rebuilt, as in training). Give it its own
    copy of the network: train mode moves BatchNorm's running statistics."""
    use_engine(net, engine)
    net.train()
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    net(SparseTensor(vox.feats, vox.coords)).feats.square().mean().backward()
    return time.perf_counter() - start


def layer_kind(mod: Conv3d, x: SparseTensor) -> str:
    kind = (
        "1x1x1"
        if mod.kernel_size == 1
        else "up k2"
        if mod.transposed
        else "down k2"
        if mod.stride == 2
        else f"subm {mod.kernel_size}^3"
    )
    return f"{kind} stride {x.stride}, {mod.in_channels}->{mod.out_channels}"


def per_layer(net: MinkUNet, vox, repeats: int) -> list[dict]:
    """One conv's forward per engine, summed over the layers of each kind (same map, same shapes)."""
    groups: dict[str, dict] = {}
    for mod, x in conv_inputs(net, vox):
        if mod.kernel_size == 1:
            continue
        g = groups.setdefault(layer_kind(mod, x), {"count": 0, "mod": mod, "x": x})
        g["count"] += 1
    rows = []
    for name, g in groups.items():
        mod, x = g["mod"], g["x"]
        kmap = kernel_map(x, mod.kernel_size, mod.stride, mod.dilation, mod.transposed)
        # spconv keeps its own maps per coordinate set and cannot reuse a strided conv's: a submanifold
        # layer gets one fresh tensor (map built in the warm-up round), a down layer a fresh tensor per
        # call for every engine (so each time includes building its map, as in a forward pass). An up
        # conv needs the finer level's map on the same set: not timed on spconv.
        fresh = lambda: SparseTensor(x.feats, x.coords, stride=x.stride)  # noqa: E731
        subm_input = fresh()
        t = {e: [] for e in ENGINES if not (e == "spconv" and mod.transposed)}
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first round warms caches and plans
                for engine in t:
                    use_engine(mod, engine)
                    inp = (
                        x
                        if engine != "spconv" and mod.stride == 1 or mod.transposed
                        else subm_input
                        if mod.stride == 1
                        else fresh()
                    )
                    start = time.perf_counter()
                    mod(inp)
                    t[engine].append(time.perf_counter() - start)
        use_engine(mod, "fused")
        limit = dense_gemm_seconds([(kmap.pair_counts(), mod.in_channels, mod.out_channels)], repeats, per_offset=True)
        rows.append(
            {
                "layer": name,
                "count": g["count"],
                "pairs": kmap.num_pairs,
                "limit": limit * g["count"],
                "spconv": float("nan"),
                **{e: statistics.median(v[1:]) * g["count"] for e, v in t.items()},
            }
        )
    return rows


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def memory_probe(kind: str, engine: str, threads: int) -> None:
    """Run in a fresh process: peak RSS of one forward above the loaded model and scan."""
    torch.set_num_threads(threads)
    vox = scan_voxels(kind)
    net = make_net()
    use_engine(net, engine)
    if engine == "spconv":
        import spconv.pytorch  # noqa: F401  (library load is not scan memory)
    elif engine == "fused":
        fused_module()  # loading the extension is not scan memory either
    base = rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    forward_seconds(net, vox, engine)
    print(json.dumps({"peak_mb": rss_mb("VmHWM") - base}))


def probe(kind: str, engine: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", kind, engine, "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scans", default=",".join(SCANS), help="subset of: " + ", ".join(SCANS))
    ap.add_argument("--memory-probe", nargs=2, metavar=("SCAN", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe, args.threads)
        return
    torch.set_num_threads(args.threads)
    if fused_module() is None:
        sys.exit(f"the fused kernel is not available here ({KERNEL_ENV}); nothing to compare")
    net = make_net()
    train_net = copy.deepcopy(net)  # its BatchNorm statistics drift; the eval forwards stay comparable
    rows, layers = [], []
    for kind in [k.strip() for k in args.scans.split(",")]:
        vox = scan_voxels(kind)
        shapes = layer_shapes(net, vox)
        gflop = sum(2 * sum(ps) * ci * co for ps, ci, co in shapes) / 1e9
        t = {"ours_map": [], "sp_map": [], **{f"fwd {e}": [] for e in ENGINES}, **{f"train {e}": [] for e in ENGINES}}
        outs = {}
        for _ in range(2):  # warm-up: workspace, fused plans, spconv JIT tables, caches
            for e in ENGINES:
                forward_seconds(net, vox, e), train_step_seconds(train_net, vox, e)
        for _ in range(args.repeats):  # interleaved so drift hits every engine alike
            t["ours_map"].append(our_map_seconds(vox))
            t["sp_map"].append(spconv_map_seconds(vox))
            for e in ENGINES:
                dt, outs[e] = forward_seconds(net, vox, e)
                t[f"fwd {e}"].append(dt)
                t[f"train {e}"].append(train_step_seconds(train_net, vox, e))
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append(
            {
                "scan": kind,
                "points": len(vox.inverse),
                "n": len(vox.coords),
                "gflop": gflop,
                **med,
                "limit": dense_gemm_seconds(shapes, args.repeats, per_offset=True),
                "backward limit": backward_gemm_seconds(shapes, args.repeats),
                "pure_err": ((outs["fused"] - outs["pure"]).abs().max() / outs["pure"].abs().max()).item(),
                "spconv_err": ((outs["fused"] - outs["spconv"]).abs().max() / outs["pure"].abs().max()).item(),
                **{f"mem {e}": probe(kind, e, args.threads) for e in ENGINES},
            }
        )
        if kind.startswith("128"):
            layers = per_layer(net, vox, args.repeats)
    use_engine(net, "fused")
    print(
        f"MinkUNet-34, {args.threads} threads, median of {args.repeats} (interleaved); fused = the torch backend's "
        f"fused CPU kernel, pure = its pure-PyTorch path\n{machine_summary()}\n"
    )
    print(
        "| scan | points -> voxels | GFLOP | map build ours / spconv | forward fused / pure / spconv | fused vs pure "
        "/ spconv | share of fp32 limit fused / pure / spconv | fwd+bwd fused / pure / spconv | fwd+bwd fused vs "
        "pure | fwd+bwd share of its fp32 limit fused / pure / spconv | peak MB fused / pure / spconv | rel. diff vs "
        "pure / spconv |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = lambda key: f"{r[key] * 1e3:.0f}"  # noqa: E731
        share = " / ".join(f"{r['limit'] / r['fwd ' + e] * 100:.0f}%" for e in ENGINES)
        r["train limit"] = r["limit"] + r["backward limit"]
        train_share = " / ".join(f"{r['train limit'] / r['train ' + e] * 100:.0f}%" for e in ENGINES)
        print(
            f"| {r['scan']} | {r['points']} -> {r['n']} | {r['gflop']:.1f} "
            f"| {r['ours_map'] * 1e3:.1f} / {r['sp_map'] * 1e3:.1f} ms "
            f"| {ms('fwd fused')} / {ms('fwd pure')} / {ms('fwd spconv')} ms "
            f"| {r['fwd fused'] / r['fwd pure']:.2f}x / {r['fwd fused'] / r['fwd spconv']:.2f}x "
            f"| {share} "
            f"| {ms('train fused')} / {ms('train pure')} / {ms('train spconv')} ms | "
            f"{r['train fused'] / r['train pure']:.2f}x "
            f"| {train_share} "
            f"| {r['mem fused']:.0f} / {r['mem pure']:.0f} / {r['mem spconv']:.0f} | {r['pure_err']:.1g} / "
            f"{r['spconv_err']:.1g} |"
        )
    print(
        "\nThe issue's targets as shares of the fp32 limit (the share a kernel would need to meet each on this "
        "machine):\n"
    )
    print("| scan | forward <= 0.7x spconv | forward >= 85% of the limit | fwd+bwd <= 0.75x pure |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scan']} | {r['limit'] / (0.7 * r['fwd spconv']) * 100:.0f}% | 85% | "
            f"{r['train limit'] / (0.75 * r['train pure']) * 100:.0f}% |"
        )
    if layers:
        print("\nPer layer kind, 128-beam scan (one conv's forward x the layers of that kind, ms):\n")
        print("| layer | layers | pairs | fused | pure | spconv | fused vs pure / spconv | share of fp32 limit |")
        print("|---|---|---|---|---|---|---|---|")
        for r in layers:
            sp = "-" if r["spconv"] != r["spconv"] else f"{r['spconv'] * 1e3:.1f}"  # NaN: not timed
            vs_sp = "-" if sp == "-" else f"{r['fused'] / r['spconv']:.2f}x"
            print(
                f"| {r['layer']} | {r['count']} | {r['pairs']} | {r['fused'] * 1e3:.1f} | {r['pure'] * 1e3:.1f} | {sp} "
                f"| {r['fused'] / r['pure']:.2f}x / {vs_sp} | {r['limit'] / r['fused'] * 100:.0f}% |"
            )
    print(
        "\nfp32 limit = the forward's GEMMs alone (one torch.mm per layer and kernel offset) at this machine's dense "
        "rate;"
        " fwd+bwd's limit adds the backward's (grad input and grad weight per offset); share = limit / time. 'rel. "
        "diff' is max |fused - other| / max |pure| over the output:"
        f" spconv 2.3.8's CPU path is only correct at 1 thread (spconv#679), at {args.threads} threads it races;"
        " the fused kernel is bit-identical at any thread count."
    )


if __name__ == "__main__":
    # spconv is timed as its users run it, on every thread (lima-zoo's own spconv backend would run
    # its CPU forward on one thread and refuse its multi-thread backward: spconv#679)
    with spconv_cpu_unguarded():
        main()

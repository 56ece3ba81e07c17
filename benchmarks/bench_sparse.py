"""Sparse engine vs spconv on a nuScenes-like scan, measured side by side in one run.

For the cylindrical (LiMA default) and cartesian 0.1 m voxelizations of a ray-cast 32-beam street
scan, interleaved and median of --repeats:

* kernel-map build: our level-0 submanifold 3x3x3 map vs spconv's get_indice_pairs;
* MinkUNet-34 forward (eval, inference_mode) on the torch and spconv backends, and the ratio;
* achieved GFLOP/s (2 * sum of pairs * C_in * C_out / time) next to this machine's torch.mm
  GFLOP/s on the same work: each layer's pairs as one dense (P, C_in) x (C_in, C_out) GEMM (the
  stricter reference), and one GEMM per kernel offset (exactly the GEMMs the engine issues);
* peak RSS of one forward above the loaded model, in a fresh process per backend;
* spconv's own error at this thread count (its CPU path races with > 1 thread, spconv#679).

    python benchmarks/bench_sparse.py [--threads 2] [--repeats 7] [--markdown]
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
from lima_zoo.sparse.backends import kernel_map
from lima_zoo.sparse.kmap import CoordinateKeys, build_submanifold_map
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize

VOXELIZATIONS = {
    "cylindrical": PreprocessConfig(),
    "cartesian": PreprocessConfig(voxel_type="cartesian", voxel_size=(0.1, 0.1, 0.1)),
}


def scan_voxels(kind: str):
    return voxelize([torch.from_numpy(street_scan(seed=0))], VOXELIZATIONS[kind])


def make_net(seed: int = 0) -> MinkUNet:
    torch.manual_seed(seed)
    return MinkUNet("minkunet34").eval()


def layer_shapes(net: MinkUNet, vox) -> list[tuple[list[int], int, int]]:
    """(pairs per offset, C_in, C_out) of every conv of one forward (centre offset included).

    Recorded on a train-mode copy: in eval mode BN is folded and Conv3d.forward is bypassed.
    """
    net = copy.deepcopy(net).train()
    shapes = []

    def hook(mod: Conv3d, inputs, _out):
        x = inputs[0]
        if mod.kernel_size == 1:
            pairs = [x.num_voxels]
        else:
            pairs = kernel_map(x, mod.kernel_size, mod.stride, mod.dilation, mod.transposed).pair_counts()
        shapes.append((pairs, mod.in_channels, mod.out_channels))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, Conv3d)]
    with torch.no_grad():
        net(SparseTensor(vox.feats, vox.coords))
    for h in handles:
        h.remove()
    return shapes


def gemm_sizes(shapes, per_offset: bool) -> list[tuple[int, int, int]]:
    """(rows, C_in, C_out) of the network's pair work as dense GEMMs: each layer as one
    (pairs, C_in) x (C_in, C_out) GEMM, or ``per_offset`` one GEMM per kernel offset (the very
    shapes the engine multiplies, without its gathers and scatters)."""
    return [(p, ci, co) for ps, ci, co in shapes for p in (ps if per_offset else [sum(ps)]) if p]


def dense_gemm_seconds(shapes, repeats: int, per_offset: bool) -> float:
    """Time of dense torch.mm doing ``gemm_sizes(shapes, per_offset)``, summed (median)."""
    sizes = gemm_sizes(shapes, per_offset)
    mats = [(torch.randn(p, ci), torch.randn(ci, co)) for p, ci, co in sizes]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in mats:
            torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    ops.get_indice_pairs(idx, 1, shape, ConvAlgo.Native, [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0], subm=True)
    return time.perf_counter() - start


def our_map_seconds(vox) -> float:
    start = time.perf_counter()
    build_submanifold_map(CoordinateKeys(vox.coords, margin=8), 3, 1)
    return time.perf_counter() - start


def forward_seconds(net, vox, backend: str) -> tuple[float, torch.Tensor]:
    set_backend(net, backend)
    with torch.inference_mode():
        start = time.perf_counter()
        out = net(SparseTensor(vox.feats, vox.coords)).feats
        return time.perf_counter() - start, out


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def memory_probe(kind: str, backend: str, threads: int) -> None:
    """Run in a fresh process: peak RSS of one forward above the loaded model and scan."""
    torch.set_num_threads(threads)
    vox = scan_voxels(kind)
    net = make_net()
    if backend == "spconv":
        import spconv.pytorch  # noqa: F401  (library load is not scan memory)
    base = rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    forward_seconds(net, vox, backend)
    print(json.dumps({"peak_mb": rss_mb("VmHWM") - base}))


def probe(kind: str, backend: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", kind, backend, "--threads", str(threads)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory-probe", nargs=2, metavar=("VOXELS", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe, args.threads)
        return
    torch.set_num_threads(args.threads)
    net = make_net()
    rows = []
    for kind in VOXELIZATIONS:
        vox = scan_voxels(kind)
        shapes = layer_shapes(net, vox)
        gflop = sum(2 * sum(ps) * ci * co for ps, ci, co in shapes) / 1e9
        t = {"ours_map": [], "sp_map": [], "torch": [], "spconv": []}
        for _ in range(3):  # warm-up: workspace, spconv JIT tables, caches
            forward_seconds(net, vox, "torch"), forward_seconds(net, vox, "spconv")
        for _ in range(args.repeats):  # interleaved so drift hits both sides alike
            t["ours_map"].append(our_map_seconds(vox))
            t["sp_map"].append(spconv_map_seconds(vox))
            dt, ours = forward_seconds(net, vox, "torch")
            t["torch"].append(dt)
            dt, theirs = forward_seconds(net, vox, "spconv")
            t["spconv"].append(dt)
        med = {k: statistics.median(v) for k, v in t.items()}
        dense = dense_gemm_seconds(shapes, args.repeats, per_offset=False)
        dense_k = dense_gemm_seconds(shapes, args.repeats, per_offset=True)
        rows.append({
            "voxels": kind, "points": len(vox.inverse), "n": len(vox.coords), "gflop": gflop, **med,
            "dense": dense, "dense_k": dense_k, "spconv_err": (ours - theirs).abs().max().item(),
            "mem_torch": probe(kind, "torch", args.threads), "mem_spconv": probe(kind, "spconv", args.threads),
        })
    set_backend(net, "torch")
    print(f"MinkUNet-34 forward, {args.threads} threads, median of {args.repeats} (interleaved)\n{machine_summary()}\n")
    print("| voxels | points -> voxels | GFLOP | map build ours / spconv | forward torch / spconv | ratio | GFLOP/s torch / spconv | dense mm GFLOP/s per layer / per offset | torch vs dense per layer / per offset | peak MB torch / spconv | spconv max err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = lambda s: r["gflop"] / s  # noqa: E731
        print(
            f"| {r['voxels']} | {r['points']} -> {r['n']} | {r['gflop']:.1f} "
            f"| {r['ours_map'] * 1e3:.1f} / {r['sp_map'] * 1e3:.1f} ms "
            f"| {r['torch'] * 1e3:.0f} / {r['spconv'] * 1e3:.0f} ms | {r['torch'] / r['spconv']:.2f}x "
            f"| {rate(r['torch']):.0f} / {rate(r['spconv']):.0f} | {rate(r['dense']):.0f} / {rate(r['dense_k']):.0f} "
            f"| {r['dense'] / r['torch'] * 100:.0f}% / {r['dense_k'] / r['torch'] * 100:.0f}% "
            f"| {r['mem_torch']:.0f} / {r['mem_spconv']:.0f} | {r['spconv_err']:.2g} |"
        )
    print(
        "\nratio = torch-backend time / spconv time (lower is better). 'spconv max err' is the max |diff|"
        f" between the two backends' outputs at {args.threads} threads: spconv 2.3.8's CPU path is only"
        " correct at 1 thread (spconv#679); ours is thread-count independent."
    )


if __name__ == "__main__":
    main()

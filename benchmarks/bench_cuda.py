"""The GPU path, proven in one run (under 8 minutes on one H100) the moment a GPU is there.

1. the CUDA tests (``pytest -m cuda``);
2. MinkUNet-34 forward and forward+backward on the real-size 128-beam scan for every installed
   backend (torch engine, spconv, spconv-triton, torchsparse), with each one's parity to the CPU
   engine;
3. 30 steps of the LiMA recipe on a synthetic world with the full-width MinkUNet-34 student
   (steps/s, peak GPU memory, the loss curve beside the first three steps on the CPU);
4. embed throughput (scans/s) of the PyTorch path and of onnxruntime's CUDA provider;
5. a 2-process torchrun step when 2 GPUs are visible.

Writes ``--out``/bench_cuda.json and bench_cuda.md. Without CUDA it says so in one line and exits 0.

    python benchmarks/bench_cuda.py [--out bench_cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_cuda(fn, repeats: int = 5) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def backends_rows() -> list[dict]:
    import torch

    from lima_zoo.config import PreprocessConfig
    from lima_zoo.models import MinkUNet
    from lima_zoo.sparse import SparseTensor, set_backend
    from lima_zoo.sparse.backends import available_backends
    from lima_zoo.synth.scan import street_scan
    from lima_zoo.voxelize import voxelize

    scan = torch.from_numpy(street_scan(seed=0, beams=128)[:, :4])
    torch.manual_seed(0)
    cpu_net = MinkUNet("minkunet34").eval()
    vox_cpu = voxelize([scan], PreprocessConfig())
    with torch.inference_mode():
        reference = cpu_net(SparseTensor(vox_cpu.feats, vox_cpu.coords)).feats
    net = MinkUNet("minkunet34").cuda()
    net.load_state_dict(cpu_net.state_dict())
    vox = voxelize([scan.cuda()], PreprocessConfig())
    rows = []
    for backend in available_backends():
        try:
            set_backend(net, backend)
            net.eval()

            def forward():
                with torch.inference_mode():
                    return net(SparseTensor(vox.feats, vox.coords)).feats

            def train_step():
                net.train()
                net(SparseTensor(vox.feats, vox.coords)).feats.square().mean().backward()
                net.zero_grad(set_to_none=True)
                net.eval()

            fwd, step = timed_cuda(forward), timed_cuda(train_step)
            diff = float((forward().float().cpu() - reference).abs().max() / reference.abs().max())
            rows.append(
                {"backend": backend, "forward_ms": fwd * 1e3, "train_step_ms": step * 1e3, "rel_diff_vs_cpu": diff}
            )
        except Exception as exc:  # noqa: BLE001 - a backend that fails is a row that says so
            rows.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"[:200]})
    return rows


def training_rows(work: Path) -> dict:
    import torch

    from lima_zoo.training.config import load_recipe
    from lima_zoo.training.trainer import train

    sets = ["optim.max_steps=30", "encoder.backbone=minkunet34", "encoder.width=1.0", "run.device=cuda", "run.amp=true"]
    losses, seconds = [], []
    torch.cuda.reset_peak_memory_stats()
    train(
        load_recipe("synthetic-tiny", sets),
        work / "gpu",
        on_step=lambda r: (losses.append(r["loss"]), seconds.append(r["seconds"])),
    )
    peak = torch.cuda.max_memory_allocated() / 2**30
    cpu_losses = []
    cpu_sets = [s.replace("run.device=cuda", "run.device=cpu") for s in sets[1:]] + ["optim.max_steps=3"]
    train(load_recipe("synthetic-tiny", cpu_sets), work / "cpu", on_step=lambda r: cpu_losses.append(r["loss"]))
    return {
        "steps_per_s": len(seconds[3:]) / sum(seconds[3:]),
        "peak_gib": peak,
        "losses": losses,
        "cpu_first_losses": cpu_losses,
    }


def embed_rows(work: Path) -> dict:
    import torch

    from lima_zoo import LiMAEncoder
    from lima_zoo.synth.scan import street_scan

    scans = [street_scan(seed=500 + i)[:, :4] for i in range(16)]
    torch.manual_seed(0)
    enc = LiMAEncoder().cuda().eval().set_backend("auto")
    enc.embed(scans[0])
    start = time.perf_counter()
    for s in scans:
        enc.embed(s)
    out = {"torch_scans_per_s": len(scans) / (time.perf_counter() - start), "auto_backend": enc.backend_reason}
    try:
        import onnxruntime as ort

        from lima_zoo.export import export_onnx
        from lima_zoo.runtime import OnnxEncoder

        if "CUDAExecutionProvider" in ort.get_available_providers():
            runner = OnnxEncoder(export_onnx(enc.cpu(), work / "onnx"), enc.config, device="cuda")
            runner.embed(scans[0])
            start = time.perf_counter()
            for s in scans:
                runner.embed(s)
            out["onnx_cuda_scans_per_s"] = len(scans) / (time.perf_counter() - start)
        else:
            out["onnx_cuda"] = "onnxruntime has no CUDA provider here (pip install 'lima-zoo[onnx-gpu]')"
    except ImportError as exc:
        out["onnx_cuda"] = f"not run: {exc}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_cuda"))
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device is visible here (torch.cuda.is_available() is False); nothing to measure")
        return
    root = Path(__file__).resolve().parents[1]
    result: dict = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__}
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result["cuda_tests"] = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]
    result["backends"] = backends_rows()
    with tempfile.TemporaryDirectory() as tmp:
        result["training"] = training_rows(Path(tmp))
        result["embed"] = embed_rows(Path(tmp))
        if torch.cuda.device_count() >= 2:
            ddp = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    "2",
                    "-m",
                    "lima_zoo.cli",
                    "train",
                    "synthetic-tiny",
                    "--out",
                    str(Path(tmp) / "ddp"),
                    "--set",
                    "optim.max_steps=2",
                    "--set",
                    "run.device=cuda",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            result["torchrun_2_gpus"] = "ok" if ddp.returncode == 0 else ddp.stderr[-500:]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cuda.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# bench_cuda on {result['gpu']} ({result['gpus']} GPU(s)), torch {result['torch']}",
        "",
        f"CUDA tests: {result['cuda_tests']}",
        "",
        "| backend | forward ms | train step ms | rel. diff vs CPU |",
        "|---|---|---|---|",
    ]
    for row in result["backends"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['error']} | | |")
        else:
            timing = f"{row['forward_ms']:.1f} | {row['train_step_ms']:.1f}"
            lines.append(f"| {row['backend']} | {timing} | {row['rel_diff_vs_cpu']:.1e} |")
    t, e = result["training"], result["embed"]
    lines += [
        "",
        f"LiMA synthetic-tiny, MinkUNet-34 full width, 30 steps: {t['steps_per_s']:.2f} steps/s, peak "
        f"{t['peak_gib']:.2f} GiB; losses {t['losses'][0]:.3f} -> {t['losses'][-1]:.3f} (CPU's first three: "
        f"{', '.join(f'{v:.3f}' for v in t['cpu_first_losses'])})",
        f"embed: torch {e['torch_scans_per_s']:.1f} scans/s ({e['auto_backend']}); onnxruntime CUDA: "
        f"{e.get('onnx_cuda_scans_per_s', e.get('onnx_cuda'))}",
    ]
    (args.out / "bench_cuda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

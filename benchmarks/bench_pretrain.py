"""The paper's efficiency table, measured here: pretraining step time, peak memory and teacher work
for frames = 1..8, with and without the memory bank (CPU, tiny student and teacher, same data).

    python benchmarks/bench_pretrain.py            # 25-30 min on 2 cores

The teacher/student cost ratio is chosen to resemble the real pair: the script first measures
DINOv2 ViT-B/14 on six 224x448 images against MinkUNet-34 forward+backward on one nuScenes-like scan
(random weights: timing does not depend on them), then the tiny pair used for the table, and prints
both ratios. Each configuration runs in its own process so peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STREAMS = 2
TEACHER = dict(dim=512, depth=12, patch=14)  # at 224x448 (16x32 tokens): ~2x the student, like ViT-B vs MinkUNet-34


def _student_time(backbone: str, scan: torch.Tensor, voxel_size, voxel_type: str, repeats: int = 3) -> float:
    from lima_zoo.config import EncoderConfig, PreprocessConfig
    from lima_zoo.encoder import LiMAEncoder
    from lima_zoo.sparse import SparseTensor
    from lima_zoo.voxelize import voxelize

    cfg = EncoderConfig(
        backbone=backbone, head_dim=96, preprocess=PreprocessConfig(voxel_type=voxel_type, voxel_size=voxel_size)
    )
    enc = LiMAEncoder(cfg).train()
    vox = voxelize([scan], cfg.preprocess)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        out = enc.head(enc.backbone(SparseTensor(vox.feats, vox.coords)).feats)
        out.square().mean().backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def _teacher_time(vit: torch.nn.Module, size: tuple[int, int], repeats: int = 3) -> float:
    x = torch.randn(6, 3, *size)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t = time.perf_counter()
            vit.forward_intermediates(x, indices=1, norm=False, intermediates_only=True)
            times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def cost_ratios(scan: torch.Tensor) -> dict:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    real_teacher = _teacher_time(
        timm.create_model("vit_base_patch14_dinov2", pretrained=False, img_size=(224, 448), num_classes=0),
        (224, 448),
        1,
    )
    real_student = _student_time("minkunet34", scan, (0.1, 1.0, 0.1), "cylindrical", 1)
    tiny = VisionTransformer(
        img_size=(224, 448),
        patch_size=TEACHER["patch"],
        embed_dim=TEACHER["dim"],
        depth=TEACHER["depth"],
        num_heads=TEACHER["dim"] // 64,
        mlp_ratio=3.0,
        num_classes=0,
        global_pool="",
    )  # as make_synthetic_teacher builds it
    tiny_teacher = _teacher_time(tiny, (224, 448))
    tiny_student = _student_time("minkunet14", scan, (0.1, 1.0, 0.1), "cylindrical")
    return {
        "real_teacher_s": real_teacher,
        "real_student_s": real_student,
        "real_ratio": real_teacher / real_student,
        "tiny_teacher_s": tiny_teacher,
        "tiny_student_s": tiny_student,
        "tiny_ratio": tiny_teacher / tiny_student,
    }


def one(data: Path, teacher: Path, frames: int, bank: bool, steps: int, out: Path) -> dict:
    """Run one configuration in this process; step times after the bank has filled."""
    from lima_zoo.training.config import load_recipe
    from lima_zoo.training.trainer import train

    cfg = load_recipe(
        "synthetic-tiny",
        [
            f"data.path={data}",
            "data.synthetic=false",
            f"teacher.weights={teacher}",
            f"encoder.head_dim={TEACHER['dim']}",
            "teacher.image_size=[224, 448]",
            f"lima.frames={frames}",
            f"lima.memory_bank={str(bank).lower()}",
            f"optim.max_steps={steps}",
            f"optim.streams={STREAMS}",
            "run.checkpoint_every=100000",
        ],
    )
    train(cfg, out)
    recs = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    steady = recs[frames:] or recs[-1:]  # the bank (or the re-run window) is full from step `frames` on
    return {
        "frames": frames,
        "bank": bank,
        "step_s": statistics.median(r["seconds"] for r in steady),
        "teacher_frames": statistics.mean(r["teacher_images"] for r in steady) / 6 / STREAMS,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=list(range(1, 9)))
    ap.add_argument("--steps-after-fill", type=int, default=3)
    ap.add_argument("--one", nargs=4, metavar=("DATA", "TEACHER", "FRAMES", "BANK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.one:
        data, teacher, frames, bank = Path(args.one[0]), Path(args.one[1]), int(args.one[2]), args.one[3] == "1"
        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout = open(os.devnull, "w")  # keep the child quiet; the result goes to stderr's last line
            res = one(data, teacher, frames, bank, frames + args.steps_after_fill, Path(tmp) / "run")
        print(json.dumps(res), file=sys.stderr)
        return

    from lima_zoo.synth import generate
    from lima_zoo.training.synthetic_teacher import make_synthetic_teacher

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        longest = max(args.frames) + args.steps_after_fill + 2
        data = generate(tmp / "world", "nuscenes", scenes=3, frames=longest + 8, seed=0, image_scale=0.15)
        teacher = tmp / "teacher"
        make_synthetic_teacher(
            teacher, seed=1000, scenes=1, frames=1, steps=10, batch=2, image_size=(224, 448), **TEACHER
        )  # timing only
        import numpy as np

        scan = torch.from_numpy(
            np.fromfile(next((data / "samples" / "LIDAR_TOP").glob("*.pcd.bin")), dtype=np.float32)
            .reshape(-1, 5)[:, :4]
            .copy()
        )
        ratios = cost_ratios(scan)
        print(
            f"cost of the teacher on one frame's 6 images / student forward+backward on one scan ({len(scan):,} "
            "points):"
        )
        print(
            f"  real pair  ViT-B/14 at 224x448: {ratios['real_teacher_s']:.2f} s / MinkUNet-34: "
            f"{ratios['real_student_s']:.2f} s = {ratios['real_ratio']:.2f}"
        )
        print(
            f"  tiny pair  ViT dim {TEACHER['dim']} depth {TEACHER['depth']} patch {TEACHER['patch']} at 224x448: "
            f"{ratios['tiny_teacher_s']:.2f} s / MinkUNet-14: "
            f"{ratios['tiny_student_s']:.2f} s = {ratios['tiny_ratio']:.2f}"
        )
        rows = []
        for frames in args.frames:
            for bank in (True, False) if frames > 1 else (True,):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    str(data),
                    str(teacher),
                    str(frames),
                    "1" if bank else "0",
                    "--steps-after-fill",
                    str(args.steps_after_fill),
                ]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"frames={frames} bank={bank} failed:\n{res.stderr[-3000:]}")
                rows.append(json.loads(res.stderr.strip().splitlines()[-1]))
                print(f"  measured frames={frames} bank={bank}: {rows[-1]['step_s']:.2f} s/step", flush=True)
    base = next(r["step_s"] for r in rows if r["frames"] == 1)
    print(
        f"\nstep = {STREAMS} streams x (current scan + mixed scene); median over steps with a full memory window; 2 "
        "threads"
    )
    print(
        "| frames | memory bank | step time (s) | vs 1 frame | peak memory (MB) | teacher runs per stream-step "
        "(frames of 6 images) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        bank = "-" if r["frames"] == 1 else ("yes" if r["bank"] else "no (re-run teacher)")
        print(
            f"| {r['frames']} | {bank} | {r['step_s']:.2f} | {r['step_s'] / base:.2f}x | {r['peak_mb']:.0f} | "
            f"{r['teacher_frames']:.1f} |"
        )


if __name__ == "__main__":
    main()

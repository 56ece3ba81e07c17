"""The paper's ordering on the synthetic benchmark: Random << 1-frame (ScaLR-style) < LiMA.

    python benchmarks/bench_quality.py                 # < 30 min on 2 cores
    python benchmarks/bench_quality.py --quick         # the CI-size pipeline check (ranking meaningless)

One fixed synthetic world (nuScenes format; train and validation split by sequence: every fourth
scene is validation), one synthetic teacher (made on worlds seeded from 1000, never these), and the
same pretraining budget (steps x streams) for each method:

    random        no pretraining (seeded initialisation)
    1-frame       lima.frames=1, no mixing (ScaLR-style single-frame distillation)
    LiMA-nomix    6 frames + memory bank, no cross-sequence mixing
    LiMA          6 frames + memory bank + LaserMix

Each is linear-probed (frozen backbone, BatchNorm + Linear, cached features) and scored by mIoU
over every validation point; mean +- std over seeds (pretraining and probe seeded together). Then
fine-tuning on the 1% subset (SLidR's rule: every 100th training scene — the first one) for random
vs LiMA. The diagnostics columns say where targets came from: the share of points with a target,
and the share that only the memory bank (long horizon) could give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = {
    "1-frame": ["lima.frames=1", "lima.mixing=none"],
    "LiMA-nomix": ["lima.frames=6", "lima.mixing=none"],
    "LiMA": ["lima.frames=6", "lima.mixing=lasermix"],
}
STUDENT = ["encoder.backbone=minkunet14", "encoder.preprocess.voxel_size=[0.2, 2.0, 0.2]"]


def pretrain(method: str, seed: int, data: Path, teacher: Path, steps: int, out: Path) -> tuple[Path, dict]:
    from lima_zoo.training.config import load_recipe
    from lima_zoo.training.trainer import train

    cfg = load_recipe("synthetic-tiny", [f"data.path={data}", "data.synthetic=false", f"teacher.weights={teacher}", f"optim.max_steps={steps}",
                                         f"run.seed={seed}", "run.checkpoint_every=100000", *STUDENT, *METHODS[method]])  # fmt: skip
    enc = train(cfg, out)
    recs = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    return enc, {"target_fraction": statistics.mean(r["target_fraction"] for r in recs),
                 "memory_only_fraction": statistics.mean(r["memory_only_fraction"] for r in recs),
                 "final_loss": statistics.mean(r["loss_current"] for r in recs[-10:])}  # fmt: skip


def random_encoder(seed: int, out: Path) -> Path:
    from lima_zoo.training.config import load_recipe
    from lima_zoo.encoder import LiMAEncoder

    cfg = load_recipe("synthetic-tiny", STUDENT)
    torch.manual_seed(seed)
    return LiMAEncoder(cfg.encoder).save_pretrained(out)


def evaluate(model: Path, data: Path, protocol: str, seed: int, steps: int, out: Path, percent: float = 100) -> float:
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.downstream import run_downstream

    linear = protocol == "linear"
    cfg = DownstreamConfig(protocol=protocol, percent=percent, max_steps=steps, seed=seed, augment=not linear, batch=2,
                           lr=0.01 if linear else 0.002, checkpoint_every=100000)  # fmt: skip
    return run_downstream(cfg, str(model), data, out)["miou"]


def target_quality(data: Path, teacher_dir: Path, frames: int = 6, cell: float = 0.3) -> dict:
    """Are the targets right? Walk every training sequence as LiMA does (teacher on the current
    cameras, memory bank, propagation, fusion) and classify each target by its nearest class
    prototype (the mean current-camera teacher feature of each class). Accuracy of current-camera
    targets says how informative the teacher is; accuracy of memory-only targets says whether the
    long horizon hands correct supervision to points outside the cameras, or stale features."""
    import torch.nn.functional as F

    from lima_zoo.training.config import TeacherConfig
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.memory_bank import MemoryBank
    from lima_zoo.training.propagation import fuse, propagate
    from lima_zoo.training.targets import frame_targets
    from lima_zoo.training.teacher import build_teacher

    ds = open_dataset(data, "train", labels=True)
    teacher = build_teacher(TeacherConfig(name="synthetic", weights=str(teacher_dir), image_size=(112, 224)))
    rows = []  # (target, label, kind) with kind 0 = current camera, 1 = memory only
    for s, (_, refs) in enumerate(ds.sequences):
        bank = MemoryBank(1, frames - 1)
        for k in range(len(refs)):
            frame = ds.frame(s, k)
            (cur,), _ = frame_targets(teacher, [frame])
            pooled, has = propagate(cur.xyz, bank.entries(0), cell)
            target, mask = fuse(cur.unified, cur.valid, pooled, has, 0.5)
            bank.push(0, cur.xyz, cur.unified, cur.valid, (s, k))
            labels = torch.from_numpy(frame.labels)
            for kind, sel in ((0, cur.valid), (1, mask & ~cur.valid)):
                rows.append((target[sel], labels[sel], kind, cur.unified[sel]))
    unified = torch.cat([r[3] for r in rows if r[2] == 0])
    lab0 = torch.cat([r[1] for r in rows if r[2] == 0])
    classes = [c for c in range(1, len(ds.class_names) + 1) if bool((lab0 == c).any())]
    protos = F.normalize(torch.stack([unified[lab0 == c].mean(0) for c in classes]), dim=1)
    out = {}
    for kind, name in ((0, "current_camera"), (1, "memory_only")):
        tgt = torch.cat([r[0] for r in rows if r[2] == kind])
        lab = torch.cat([r[1] for r in rows if r[2] == kind])
        keep = lab > 0
        pred = torch.tensor(classes)[(tgt[keep] @ protos.T).argmax(1)]
        correct = pred == lab[keep]
        per = {ds.class_names[c - 1]: float(correct[lab[keep] == c].float().mean()) for c in classes if bool((lab[keep] == c).any())}
        out[name] = {"points": int(keep.sum()), "accuracy": float(correct.float().mean()), "per_class": per}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="tiny world and budgets: checks the pipeline, not the ranking")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.pretrain_steps, args.probe_steps, args.finetune_steps, args.scenes, args.frames = 1, 3, 5, 2, 4, 3
    torch.set_num_threads(2)
    from lima_zoo.synth import generate
    from lima_zoo.training.synthetic_teacher import make_synthetic_teacher

    start = time.perf_counter()
    results: dict[str, list] = {m: [] for m in ["random", *METHODS]}
    diag: dict[str, list] = {m: [] for m in METHODS}
    finetune: dict[str, list] = {"random": [], "LiMA": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "world", "nuscenes", args.scenes, args.frames, seed=0, image_scale=0.15)
        teacher = tmp / "teacher"
        meta = make_synthetic_teacher(teacher, steps=20 if args.quick else 300)
        print(f"world {args.scenes} scenes x {args.frames} frames; teacher held-out patch accuracy {meta['heldout_patch_accuracy']:.3f} "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip
        quality = target_quality(data, teacher)
        for seed in range(args.seeds):
            encoders = {"random": random_encoder(seed, tmp / f"random-{seed}")}
            for method in METHODS:
                encoders[method], d = pretrain(method, seed, data, teacher, args.pretrain_steps, tmp / f"{method}-{seed}")
                diag[method].append(d)
            for method, enc in encoders.items():
                results[method].append(evaluate(enc, data, "linear", seed, args.probe_steps, tmp / f"lp-{method}-{seed}"))
                print(f"seed {seed} {method:<11} linear-probe mIoU {100 * results[method][-1]:.2f} [{time.perf_counter() - start:.0f} s]", flush=True)
            for method in finetune:
                finetune[method].append(evaluate(encoders[method], data, "finetune", seed, args.finetune_steps, tmp / f"ft-{method}-{seed}", percent=1))
                print(f"seed {seed} {method:<11} 1% fine-tune mIoU {100 * finetune[method][-1]:.2f} [{time.perf_counter() - start:.0f} s]", flush=True)

    def pm(v: list[float]) -> str:
        return f"{100 * statistics.mean(v):.2f} +- {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{100 * v[0]:.2f}"

    print(f"\nsynthetic benchmark, {args.seeds} seeds, pretraining {args.pretrain_steps} steps x 2 streams each, "
          f"linear probe {args.probe_steps} steps, 1% fine-tune {args.finetune_steps} steps; {time.perf_counter() - start:.0f} s total")  # fmt: skip
    print("| method | linear probe mIoU (%) | 1% fine-tune mIoU (%) | points with a target | ... only from memory | final distillation loss |")
    print("|---|---|---|---|---|---|")
    for method, v in results.items():
        d = diag.get(method)
        cols = ["-", "-", "-"] if not d else [f"{100 * statistics.mean(x['target_fraction'] for x in d):.1f}%",
                                              f"{100 * statistics.mean(x['memory_only_fraction'] for x in d):.1f}%",
                                              f"{statistics.mean(x['final_loss'] for x in d):.3f}"]  # fmt: skip
        print(f"| {method} | {pm(v)} | {pm(finetune[method]) if method in finetune else '-'} | {' | '.join(cols)} |")
    print("\nare the 6-frame targets right? nearest class prototype of each target (prototypes: mean current-camera feature per class)")
    for name, q in quality.items():
        worst = sorted(q["per_class"].items(), key=lambda kv: kv[1])[:4]
        print(f"  {name:<15} {q['points']:>9,} points, accuracy {100 * q['accuracy']:.1f}%; lowest: "
              + ", ".join(f"{c} {100 * a:.0f}%" for c, a in worst))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"linear": results, "finetune": finetune, "diagnostics": diag, "target_quality": quality, "args": vars(args)},
                                        default=str, indent=1))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

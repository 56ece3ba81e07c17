"""Does the long horizon beat one-frame distillation? LiMA vs ScaLR on synthetic worlds, paired by seed.

    python benchmarks/bench_quality.py                       # tables a) and b), 3 seeds, 180 steps (~40 min on 2 cores)
    python benchmarks/bench_quality.py --tables c            # the frames sweep (1, 2, 4, 6, 8)
    python benchmarks/bench_quality.py --world-seed 5 --seeds 4 --teacher DIR
    python benchmarks/bench_quality.py --quick               # the CI-size pipeline check (numbers meaningless)
    python benchmarks/bench_quality.py --tables a --rows "random,LiMA (reproject)" --backbone frnet18 --json fr.json
    python benchmarks/bench_quality.py --render mink.json spv.json fr.json --baseline random   # a table per student

Worlds (nuScenes format, generated from ``--world-seed``; every fourth scene is validation):
  a) six cameras, 8 scenes x 10 keyframes;
  b) long horizon, 12 scenes x 16 keyframes, the front camera only: a SemanticKITTI-like rig, where the
     camera sees the least of each scan (~11% of its points), so what was seen before has the most
     room to help. With one camera, ScaLR-literal and "1 frame" are the same run (printed once).
The synthetic teacher is made on worlds seeded from 1000 (never these). Rows, each with the same
student (MinkUNet-14 at half width: a quarter of the compute, so a) + b) fit in 45 min), the same
pretraining budget (steps x streams) and the same student scans per step (``BASE``: one per stream,
no mixing):

  random            no pretraining
  ScaLR-literal     1 frame, one randomly drawn camera per scan, no view fusion (ScaLR's nuScenes loader)
  1 frame           1 frame, every camera of the world, fused (cross-view aggregation)
  LiMA (cell)       6 frames; past per-point features matched in 0.3 m cells
  LiMA (reproject)  6 frames; current points re-projected into past frames' 2-D token maps

Columns: linear-probe mIoU on every validation point and on the points inside / outside the current
cameras; the paired per-seed difference to ScaLR-literal (mean +- std over seeds, and its standard
error); 1% fine-tune mIoU for random, ScaLR-literal and LiMA (reproject); targets during pretraining
(share of points with a target, share only from memory, mean bank depth) and target accuracy (each
target classified by the nearest class prototype of current-camera targets; current-camera and
memory-only points). ``--lima-set`` adds overrides to the LiMA rows (ablations).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

WORLDS = {
    "a": {"title": "a) six-camera world", "scenes": 8, "frames": 10, "cameras": ()},
    "b": {"title": "b) long-horizon world, front camera only", "scenes": 12, "frames": 16, "cameras": ("CAM_FRONT",)},
}
# The LiMA rows name every method setting, so the tables do not move when a recipe default does.
LIMA = ["lima.frames=6", "lima.alpha=0.5", "lima.loss_average=joint", "lima.mixing=none"]
ROWS = {
    "random": None,
    "ScaLR-literal": ["lima.frames=1", "lima.cameras_per_frame=1", "lima.mixing=none"],
    "1 frame": ["lima.frames=1", "lima.mixing=none"],
    "LiMA (cell)": [*LIMA, "lima.align=cell"],
    "LiMA (reproject)": [*LIMA, "lima.align=reproject"],
}
# Every pretrained row: one student scan per stream and no mixing, so no method's student sees more
# (or other) scans than another's; cross-sequence mixing is an ablation (--lima-set lima.mixing=lasermix).
BASE = ["lima.scans_per_stream=1"]
FINETUNE_ROWS = ("random", "ScaLR-literal", "LiMA (reproject)")


def student(width: float, backbone: str = "minkunet14") -> list[str]:
    """The student of every row: ``backbone`` (--backbone; MinkUNet-14 by default) at ``width`` (--width),
    0.2 m / 2 deg / 0.2 m cylindrical voxels."""
    return [f"encoder.backbone={backbone}", f"encoder.width={width}", "encoder.preprocess.voxel_size=[0.2, 2.0, 0.2]"]


def pretrain(
    overrides: list[str],
    seed: int,
    data: Path,
    teacher: Path,
    cameras: tuple[str, ...],
    steps: int,
    out: Path,
    width: float,
    backbone: str = "minkunet14",
) -> tuple[Path, dict]:
    from lima_zoo.training.config import load_recipe
    from lima_zoo.training.trainer import train

    cfg = load_recipe(
        "synthetic-tiny",
        [
            f"data.path={data}",
            "data.synthetic=false",
            f"teacher.weights={teacher}",
            f"optim.max_steps={steps}",
            f"run.seed={seed}",
            "run.checkpoint_every=100000",
            f"data.cameras={list(cameras)}",
            *student(width, backbone),
            *overrides,
        ],
    )
    enc = train(cfg, out)
    recs = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    return enc, {
        k: statistics.mean(r[k] for r in recs) for k in ("target_fraction", "memory_only_fraction", "bank_depth")
    }


def random_encoder(seed: int, out: Path, width: float, backbone: str = "minkunet14") -> Path:
    from lima_zoo.encoder import LiMAEncoder
    from lima_zoo.training.config import load_recipe

    torch.manual_seed(seed)
    return LiMAEncoder(load_recipe("synthetic-tiny", student(width, backbone)).encoder).save_pretrained(out)


def evaluate(
    model: Path,
    data: Path,
    cameras: tuple[str, ...],
    protocol: str,
    seed: int,
    steps: int,
    out: Path,
    percent: float = 100,
) -> dict:
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.downstream import run_downstream

    linear = protocol == "linear"
    cfg = DownstreamConfig(
        protocol=protocol,
        percent=percent,
        max_steps=steps,
        seed=seed,
        augment=not linear,
        batch=2,
        lr=0.01 if linear else 0.002,
        checkpoint_every=100000,
        camera_split=True,
        cameras=cameras,
    )
    r = run_downstream(cfg, str(model), data, out)
    return {k: r[f"miou{s}"] for k, s in (("all", ""), ("inside", "_inside"), ("outside", "_outside"))}


def target_accuracy(
    data: Path, teacher_dir: Path, cameras: tuple[str, ...], overrides: list[str], sequences: int = 3
) -> dict:
    """Walk the first ``sequences`` training sequences from their start as a stream does and classify each target by the
    nearest class prototype (mean current-camera teacher feature per class): is the teacher
    informative (current-camera targets), are remembered targets right or stale (memory-only)?"""
    import torch.nn.functional as F

    from lima_zoo.training.config import TeacherConfig, load_recipe
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.lima.long_horizon import CURRENT, MEMORY_ONLY, recall, remember
    from lima_zoo.training.lima.targets import frame_targets, sample_cameras, select_cameras
    from lima_zoo.training.teacher import build_teacher

    lima = load_recipe("synthetic-tiny", overrides).lima
    ds = open_dataset(data, "train", labels=True)
    teacher = build_teacher(TeacherConfig(name="synthetic", weights=str(teacher_dir), image_size=(112, 224)))
    rows = []  # (target, label, kind, unified)
    for s, (_, refs) in enumerate(ds.sequences[:sequences]):
        bank = []
        for k in range(len(refs)):
            frame = sample_cameras(select_cameras(ds.frame(s, k), cameras), lima.cameras_per_frame, s * 10_007 + k)
            (cur,), _ = frame_targets(teacher, [frame], lima.cva)
            out = recall(cur, bank[-(lima.frames - 1) :] if lima.frames > 1 else [], lima)
            bank.append(remember(frame, cur, (s, k), lima))
            rows.append((out.target, torch.from_numpy(frame.labels), out.kind, cur.unified))
    kind = torch.cat([r[2] for r in rows])
    label = torch.cat([r[1] for r in rows])
    target, unified = torch.cat([r[0] for r in rows]), torch.cat([r[3] for r in rows])
    cur = (kind == CURRENT) & (label > 0)
    classes = [c for c in range(1, len(ds.class_names) + 1) if bool((label[cur] == c).any())]
    protos = F.normalize(torch.stack([unified[cur & (label == c)].mean(0) for c in classes]), dim=1)
    res = {}
    for name, k in (("current", CURRENT), ("memory_only", MEMORY_ONLY)):
        sel = (kind == k) & (label > 0)
        pred = (
            torch.tensor(classes)[(target[sel] @ protos.T).argmax(1)]
            if bool(sel.any())
            else torch.zeros(0, dtype=torch.long)
        )
        res[name] = float((pred == label[sel]).float().mean()) if bool(sel.any()) else float("nan")
    return res


def pm(v: list[float], scale: float = 100) -> str:
    if not v:
        return "-"
    return (
        f"{scale * statistics.mean(v):.2f} +- {scale * statistics.stdev(v):.2f}"
        if len(v) > 1
        else f"{scale * v[0]:.2f}"
    )


def run_task(task: dict) -> dict:
    """One (row, seed) run: pretrain (or a random encoder), linear probe, 1% fine-tune. In a worker
    process with --jobs > 1, so it sets its own thread count."""
    torch.set_num_threads(task["threads"])
    out, data, cams, seed = Path(task["out"]), Path(task["data"]), tuple(task["cameras"]), task["seed"]
    res: dict = {"diag": None, "ft": None}
    if task["overrides"] is None:
        enc = random_encoder(seed, out, task["width"], task["backbone"])
    else:
        enc, res["diag"] = pretrain(
            task["overrides"],
            seed,
            data,
            Path(task["teacher"]),
            cams,
            task["steps"],
            out,
            task["width"],
            task["backbone"],
        )
    res["lp"] = evaluate(enc, data, cams, "linear", seed, task["probe_steps"], Path(f"{out}-lp"))
    if task["finetune_steps"] > 0:
        res["ft"] = evaluate(enc, data, cams, "finetune", seed, task["finetune_steps"], Path(f"{out}-ft"), percent=1)[
            "all"
        ]
    return res


def accuracy_task(task: dict) -> dict:
    torch.set_num_threads(task["threads"])
    return target_accuracy(Path(task["data"]), Path(task["teacher"]), tuple(task["cameras"]), task["overrides"])


def run_world(
    key: str,
    args,
    tmp: Path,
    teacher: Path,
    rows: dict[str, list[str] | None],
    finetune_rows: tuple[str, ...],
    tag: str = "",
) -> dict:
    """Every (row, seed) of one world, ``args.jobs`` at a time (each with 2 / jobs threads); results in
    row order, printed as they finish."""
    from concurrent.futures import ProcessPoolExecutor

    from lima_zoo.synth import generate

    w = WORLDS[key]
    scenes, frames = (4, 4) if args.quick else (w["scenes"], w["frames"])
    t0 = time.perf_counter()
    data = tmp / f"world-{key}"
    if not (data / "lima_splits.json").exists():
        data = generate(data, "nuscenes", scenes, frames, seed=args.world_seed, image_scale=0.15)
    print(
        f"{w['title']}: {scenes} scenes x {frames} keyframes, world seed {args.world_seed} "
        f"[{time.perf_counter() - t0:.0f} s]",
        flush=True,
    )
    if len(w["cameras"]) == 1 and "ScaLR-literal" in rows:  # one camera: "1 frame" is ScaLR-literal
        rows = {k: v for k, v in rows.items() if k != "1 frame"}
    threads = max(1, THREADS // args.jobs)
    common = {
        "data": str(data),
        "teacher": str(teacher),
        "cameras": list(w["cameras"]),
        "threads": threads,
        "width": args.width,
        "backbone": args.backbone,
    }
    res: dict = {name: {"lp": [], "ft": [], "diag": [], "acc": None} for name in rows}
    runs = [(name, seed) for seed in args.seeds_list for name in rows]
    # spawn, not fork: the parent already ran OpenMP threads, and a forked OpenMP runtime can hang
    with (
        ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        if args.jobs > 1
        else _InProcess() as pool
    ):
        acc = {
            name: pool.submit(accuracy_task, {**common, "overrides": ov}) for name, ov in rows.items() if ov is not None
        }
        futures = {}
        for name, seed in runs:
            out = tmp / f"{tag or key}-{name.replace(' ', '_').replace('(', '').replace(')', '')}-{seed}"
            task = {
                **common,
                "overrides": rows[name],
                "seed": seed,
                "out": str(out),
                "steps": args.pretrain_steps,
                "probe_steps": args.probe_steps,
                "finetune_steps": args.finetune_steps if name in finetune_rows else 0,
            }
            futures[name, seed] = pool.submit(run_task, task)
        for name, seed in runs:  # in submission order: the log reads the same for any --jobs
            r = futures[name, seed].result()
            res[name]["lp"].append(r["lp"])
            if r["diag"] is not None:
                res[name]["diag"].append(r["diag"])
            if r["ft"] is not None:
                res[name]["ft"].append(r["ft"])
            lp = r["lp"]
            print(
                f"[{key}] seed {seed} {name:<17} LP mIoU {100 * lp['all']:.2f} (inside {100 * lp['inside']:.2f}, "
                f"outside {100 * lp['outside']:.2f})"
                + (f", 1% FT {100 * r['ft']:.2f}" if r["ft"] is not None else "")
                + f" [{time.perf_counter() - START:.0f} s]",
                flush=True,
            )
        for name, f in acc.items():
            res[name]["acc"] = f.result()
    return res


class _InProcess:
    """The executor interface for --jobs 1: each task runs in this process when its result is asked
    for (so every run's line is printed as it finishes)."""

    def __enter__(self) -> "_InProcess":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *a) -> "_Deferred":
        return _Deferred(lambda: fn(*a))


class _Deferred:
    def __init__(self, call):
        self.call, self.done, self.value = call, False, None

    def result(self):
        if not self.done:
            self.value, self.done = self.call(), True
        return self.value


def paired(rows: list[dict], base: list[dict], key: str) -> str:
    """Per-seed differences row - base of ``key``: mean +- std (standard error)."""
    d = [a[key] - b[key] for a, b in zip(rows, base)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return f"{pm(d)} ({100 * se:.2f})"


def print_table(title: str, res: dict, baseline: str = "ScaLR-literal") -> None:
    print(f"\n{title}")
    print(
        f"| method | LP mIoU | inside cameras | outside cameras | paired diff vs {baseline} (SE) | ... outside "
        "cameras | 1% FT mIoU "
        "| targets | only from memory | bank depth | target acc. current / memory-only |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = res.get(baseline)
    for name, r in res.items():
        lp = {k: [x[k] for x in r["lp"]] for k in ("all", "inside", "outside")}
        diff = ["-", "-"]
        if base is not None and name != baseline and len(r["lp"]) == len(base["lp"]):
            diff = [paired(r["lp"], base["lp"], "all"), paired(r["lp"], base["lp"], "outside")]
        dg = r["diag"]
        diag = (
            ["-", "-", "-"]
            if not dg
            else [
                f"{100 * statistics.mean(x['target_fraction'] for x in dg):.1f}%",
                f"{100 * statistics.mean(x['memory_only_fraction'] for x in dg):.1f}%",
                f"{statistics.mean(x['bank_depth'] for x in dg):.2f}",
            ]
        )
        acc = (
            "-"
            if r["acc"] is None
            else " / ".join(
                "-" if v != v else f"{100 * v:.1f}%" for v in (r["acc"]["current"], r["acc"]["memory_only"])
            )
        )
        print(
            f"| {name} | {pm(lp['all'])} | {pm(lp['inside'])} | {pm(lp['outside'])} | {' | '.join(diff)} | "
            f"{pm(r['ft'])} | {' | '.join(diag)} | {acc} |"
        )


START = time.perf_counter()
THREADS = 2  # every table is made with 2 threads in all (2 cores), split over --jobs
SWEEP_BASE = "1 frame (ScaLR-literal)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="a,b", help="a, b (method rows per world) and/or c (frames sweep on world b)")
    ap.add_argument("--rows", default=",".join(ROWS), help="subset of the method rows")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument(
        "--seeds",
        default="0,1,2",
        help="pretraining / probe seeds, paired across rows and runs (a count n means 0..n-1)",
    )
    # 180, not 60: at 60 steps the paired differences swing +-5-6 points from seed to seed (even with
    # twice the validation scenes), at 180 by +-3 (docs/method.md).
    ap.add_argument("--pretrain-steps", type=int, default=180)
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument(
        "--width",
        type=float,
        default=0.5,
        help="the student's channel multiplier (1.0: the full MinkUNet-14, ~2.5x the time)",
    )
    ap.add_argument(
        "--backbone",
        default="minkunet14",
        help="the student of every row (e.g. spvcnn18: the same rows with a point-voxel student)",
    )
    ap.add_argument("--finetune-steps", type=int, default=40, help="0 skips fine-tuning")
    ap.add_argument("--sweep", default="1,2,4,6,8", help="frames of table c)")
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every pretrained row (after BASE)")
    ap.add_argument(
        "--lima-set",
        nargs="*",
        default=[],
        help="overrides for the LiMA rows only (ablations, e.g. lima.mixing=lasermix)",
    )
    ap.add_argument("--teacher", type=Path, help="a synthetic teacher folder to reuse (default: make one, ~4 min)")
    ap.add_argument(
        "--quick", action="store_true", help="tiny worlds and budgets: checks the pipeline, not the ranking"
    )
    ap.add_argument("--label", default="", help="appended to the LiMA rows' names (to tell ablations apart)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs at a time, each with 2 / jobs threads (2 jobs of 1 thread: ~1.15x the throughput of 1 job of 2)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--render",
        type=Path,
        nargs="+",
        help="print the tables of earlier --json files (rows merged, same seeds; one set of tables per student "
        "backbone) and exit",
    )
    ap.add_argument(
        "--baseline",
        default="ScaLR-literal",
        help="--render: the row the paired differences are taken against (e.g. random)",
    )
    args = ap.parse_args()
    if args.render:
        students: dict[str, dict] = {}  # the files' student backbone -> its tables, rows merged
        for f in args.render:
            saved = json.loads(f.read_text())
            merged = students.setdefault(saved["args"].get("backbone", "minkunet14"), {})
            for key, res in saved["results"].items():
                merged.setdefault(key, {}).update(res)
        for backbone, merged in students.items():
            if "c" in merged and "b" in merged:  # the sweep's 1- and 6-frame points are table b's runs (same seeds)
                b = {SWEEP_BASE: merged["b"].get("ScaLR-literal"), "6 frames": merged["b"].get("LiMA (reproject)")}
                rows = {**{k: v for k, v in b.items() if v is not None}, **merged["c"]}
                merged["c"] = dict(sorted(rows.items(), key=lambda kv: int(kv[0].split()[0])))
            student_note = f", student {backbone}" if len(students) > 1 else ""
            for key, res in merged.items():
                if key in WORLDS:
                    print_table(WORLDS[key]["title"] + student_note, res, baseline=args.baseline)
                else:
                    print_table("c) frames sweep on world b (LiMA reproject)" + student_note, res, baseline=SWEEP_BASE)
        return
    args.seeds_list = list(range(int(args.seeds))) if args.seeds.isdigit() else [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.seeds_list, args.pretrain_steps, args.probe_steps, args.finetune_steps = [0], 3, 5, 2
    torch.set_num_threads(THREADS)
    from lima_zoo.training.synthetic_teacher import make_synthetic_teacher

    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        sys.exit(f"--rows: unknown {unknown}; rows: {', '.join(ROWS)}")
    lima_rows = lambda name: name.startswith("LiMA")  # noqa: E731
    rows = {
        (f"{r} {args.label}" if args.label and lima_rows(r) else r): None
        if ROWS[r] is None
        else [*BASE, *args.common, *ROWS[r], *(args.lima_set if lima_rows(r) else [])]
        for r in chosen
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = args.teacher
        if teacher is None:
            teacher = tmp / "teacher"
            meta = make_synthetic_teacher(teacher, steps=20 if args.quick else 300)
            print(
                f"synthetic teacher: held-out patch accuracy {meta['heldout_patch_accuracy']:.3f} "
                f"[{time.perf_counter() - START:.0f} s]",
                flush=True,
            )
        for key in [t for t in args.tables.split(",") if t in WORLDS]:
            results[key] = run_world(key, args, tmp, teacher, rows, FINETUNE_ROWS if args.finetune_steps > 0 else ())
        if "c" in args.tables.split(","):  # world b has one camera: its 1-frame point is ScaLR-literal
            best = [*BASE, *args.common, *ROWS["LiMA (reproject)"], *args.lima_set]
            counts = [int(n) for n in args.sweep.split(",")]
            sweep = {SWEEP_BASE: [*BASE, *args.common, *ROWS["ScaLR-literal"]]} if 1 in counts else {}
            sweep.update(
                {
                    f"{n} frames{' ' + args.label if args.label else ''}": [*best, f"lima.frames={n}"]
                    for n in counts
                    if n > 1
                }
            )
            results["c"] = run_world("b", args, tmp, teacher, sweep, (), tag="c")
    print(
        f"\n{len(args.seeds_list)} seeds {args.seeds_list}; student {args.backbone} x {args.width}, {args.jobs} "
        f"job(s); pretraining {args.pretrain_steps} steps x 2 streams, linear probe {args.probe_steps} steps, "
        f"1% fine-tune {args.finetune_steps} steps; common {args.common or '-'}; LiMA rows {args.lima_set or '-'}; "
        f"{time.perf_counter() - START:.0f} s total"
    )
    for key, res in results.items():
        if key in WORLDS:
            print_table(WORLDS[key]["title"], res)
        else:
            print_table("c) frames sweep on world b (LiMA reproject)", res, baseline=SWEEP_BASE)
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1)
        )


if __name__ == "__main__":
    sys.exit(main())

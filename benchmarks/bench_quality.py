"""Does the long horizon beat one-frame distillation? LiMA vs ScaLR on synthetic worlds, paired by seed.

    python benchmarks/bench_quality.py                       # tables a) and b), 3 seeds, 180 steps (~40 min on 2 cores)
    python benchmarks/bench_quality.py --tables c            # the frames sweep (1, 2, 4, 6, 8)
    python benchmarks/bench_quality.py --world-seeds 3,4 --seeds 6 --work DIR --json q.json   # resumable
    python benchmarks/bench_quality.py --quick               # the CI-size pipeline check (numbers meaningless)
    python benchmarks/bench_quality.py --tables a --rows "random,LiMA (reproject)" --backbone frnet18 --json fr.json
    python benchmarks/bench_quality.py --render mink.json spv.json fr.json --baseline random   # a table per student

Worlds (nuScenes format, generated from each of ``--world-seeds``; every fourth scene is validation):
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
  LiMA (fill)       re-projection, a = 1: memory only where no current camera sees the point
  LiMA (confidence) re-projection, memory's share scaled by its agreement with the current target
  LiMA (cell, fill) cells, a = 1
  LiMA (memory w)   re-projection, memory-only targets weighted w (0, 0.25, 0.5) in the joint mean
(the LiMA rows fuse with a = 0.5 and weigh memory-only targets 1 unless named otherwise; the rows
after LiMA (reproject) run when --rows names them)

Columns: linear-probe mIoU (per world seed, and pooled over every world seed and seed) on every
validation point and on the points inside / outside the current cameras; the paired difference to
ScaLR-literal and to "1 frame" (pairs: same world seed and seed; mean +- std over the pairs, its
standard error, and each world's mean); 1% fine-tune mIoU for random, ScaLR-literal and LiMA
(reproject); targets during pretraining (share of points with a target, share only from memory,
mean bank depth) and target accuracy (each target classified by the nearest class prototype of
current-camera targets; current-camera and memory-only points). ``--lima-set`` adds overrides to
the LiMA rows (ablations).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from target_quality import target_accuracy  # the script's folder is on sys.path

WORLDS = {
    "a": {"title": "a) six-camera world", "scenes": 8, "frames": 10, "cameras": ()},
    "b": {"title": "b) long-horizon world, front camera only", "scenes": 12, "frames": 16, "cameras": ("CAM_FRONT",)},
}
# The LiMA rows name every method setting, so the tables do not move when a recipe default does.
LIMA = [
    "lima.frames=6",
    "lima.alpha=0.5",
    "lima.fusion=blend",
    "lima.loss_average=joint",
    "lima.memory_weight=1.0",
    "lima.mixing=none",
]
ROWS = {
    "random": None,
    "ScaLR-literal": ["lima.frames=1", "lima.cameras_per_frame=1", "lima.mixing=none"],
    "1 frame": ["lima.frames=1", "lima.mixing=none"],
    "LiMA (cell)": [*LIMA, "lima.align=cell"],
    "LiMA (reproject)": [*LIMA, "lima.align=reproject"],
    # the fusion rules (lima.fusion, lima.alpha): memory only where no current camera sees the point
    # (a = 1), and memory weighed by its agreement with the current target
    "LiMA (fill)": [*LIMA, "lima.align=reproject", "lima.alpha=1.0"],
    "LiMA (confidence)": [*LIMA, "lima.align=reproject", "lima.fusion=confidence"],
    "LiMA (cell, fill)": [*LIMA, "lima.align=cell", "lima.alpha=1.0"],
    # the memory-only targets' weight in the joint mean (lima.memory_weight; 0: memory fuses into
    # current-camera targets only, and the points no current camera sees get no target)
    "LiMA (memory 0)": [*LIMA, "lima.align=reproject", "lima.memory_weight=0.0"],
    "LiMA (memory 0.25)": [*LIMA, "lima.align=reproject", "lima.memory_weight=0.25"],
    "LiMA (memory 0.5)": [*LIMA, "lima.align=reproject", "lima.memory_weight=0.5"],
}
DEFAULT_ROWS = ("random", "ScaLR-literal", "1 frame", "LiMA (cell)", "LiMA (reproject)")
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


def world_data(key: str, world_seed: int, args, work: Path) -> Path:
    """World ``key`` generated from ``world_seed`` in ``work`` (reused when already there)."""
    from lima_zoo.synth import generate

    w = WORLDS[key]
    scenes, frames = (4, 4) if args.quick else (w["scenes"], w["frames"])
    data = work / f"world-{world_seed}-{key}"
    if not (data / "lima_splits.json").exists():
        t0 = time.perf_counter()
        data = generate(data, "nuscenes", scenes, frames, seed=world_seed, image_scale=0.15)
        print(
            f"{w['title']}: {scenes} scenes x {frames} keyframes, world seed {world_seed} "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    return data


def table_rows(key: str, rows: dict[str, list[str] | None]) -> dict[str, list[str] | None]:
    """The rows that run on world ``key``: with one camera, "1 frame" is ScaLR-literal (run once)."""
    if len(WORLDS[key]["cameras"]) == 1 and "ScaLR-literal" in rows:
        return {k: v for k, v in rows.items() if k != "1 frame"}
    return rows


def run_tables(
    tables: dict[str, tuple[str, dict[str, list[str] | None], tuple[str, ...]]],
    args,
    work: Path,
    teacher: Path,
    state: dict,
    save,
) -> None:
    """Every (world seed, table, row, seed) run not already in ``state["runs"]``, ``args.jobs`` at a
    time (each with 2 / jobs threads), seed-major so that every paired set completes early; each
    result is saved as it finishes (``save``), so an interrupted benchmark resumes where it stopped.

    ``tables``: table name -> (world key, rows, fine-tuned rows)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, THREADS // args.jobs)
    runs, accs = state["runs"], state["acc"]
    worlds: dict[str, str] = {}  # digests of the worlds this run uses
    todo: list[tuple[str, dict]] = []
    for seed in args.seeds_list:
        for ws in args.world_seeds:
            for table, (key, rows, finetune_rows) in tables.items():
                data = world_data(key, ws, args, work)
                world_id = f"{ws}/{key}"
                if world_id not in worlds:
                    worlds[world_id] = folder_digest(data)
                    if state.setdefault("worlds", {}).setdefault(world_id, worlds[world_id]) != worlds[world_id]:
                        raise SystemExit(
                            f"world {world_id} in {data} differs from the one the saved runs used; use another --json"
                        )
                common = {
                    "data": str(data),
                    "teacher": str(teacher),
                    "cameras": list(WORLDS[key]["cameras"]),
                    "threads": threads,
                    "width": args.width,
                    "backbone": args.backbone,
                }
                for name, ov in table_rows(key, rows).items():
                    acc_id = f"{ws}/{table}/{name}"
                    if ov is not None and seed == args.seeds_list[0] and accs.get(acc_id, {}).get("overrides") != ov:
                        todo.append((acc_id, {**common, "kind": "acc", "overrides": ov}))
                    run_id = f"{ws}/{table}/{name}/{seed}"
                    if runs.get(run_id, {}).get("overrides", "-") == ov:
                        continue  # done with the same settings (resumed)
                    slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
                    todo.append(
                        (
                            run_id,
                            {
                                **common,
                                "kind": "run",
                                "overrides": ov,
                                "seed": seed,
                                "out": str(work / "runs" / f"{ws}-{table}-{slug}-{seed}"),
                                "steps": args.pretrain_steps,
                                "probe_steps": args.probe_steps,
                                "finetune_steps": args.finetune_steps if name in finetune_rows else 0,
                            },
                        )
                    )
    done = sum(1 for _ in runs)
    print(f"{len(todo)} runs to go ({done} done before)", flush=True)
    # spawn, not fork: the parent already ran OpenMP threads, and a forked OpenMP runtime can hang
    with (
        ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        if args.jobs > 1
        else _InProcess() as pool
    ):
        futures = {pool.submit(do_task, task): (tid, task) for tid, task in todo}
        for f in as_completed(futures) if args.jobs > 1 else futures:
            tid, task = futures[f]
            try:
                r = f.result()
            except Exception:  # noqa: BLE001 - one failed run is reported and the others go on
                state.setdefault("failed", {})[tid] = traceback.format_exc()
                save()
                print(f"[{tid}] FAILED:\n{state['failed'][tid]}", flush=True)
                continue
            state.get("failed", {}).pop(tid, None)
            if task["kind"] == "acc":
                accs[tid] = {"overrides": task["overrides"], **r}
                save()
                continue
            runs[tid] = {"overrides": task["overrides"], **r}
            save()
            lp = r["lp"]
            print(
                f"[{tid}] LP mIoU {100 * lp['all']:.2f} (inside {100 * lp['inside']:.2f}, "
                f"outside {100 * lp['outside']:.2f})"
                + (f", 1% FT {100 * r['ft']:.2f}" if r["ft"] is not None else "")
                + f" [{time.perf_counter() - START:.0f} s]",
                flush=True,
            )


def do_task(task: dict) -> dict:
    return accuracy_task(task) if task["kind"] == "acc" else run_task(task)


def collect(state: dict, world_seeds: list[int] | None = None) -> dict:
    """Saved runs -> table -> row -> {"lp": [...], "ft": [...], "diag": [...], "worlds": [...],
    "seeds": [...], "acc": {world seed: ...}}, the lists over (world seed, seed) pairs in one order,
    so any two rows of a table pair up entry by entry."""
    out: dict = {}
    for rid, r in sorted(state["runs"].items(), key=lambda kv: _run_order(kv[0])):
        ws, table, name, seed = rid.split("/")
        if world_seeds is not None and int(ws) not in world_seeds:
            continue
        row = out.setdefault(table, {}).setdefault(
            name, {"lp": [], "ft": [], "diag": [], "worlds": [], "seeds": [], "acc": {}}
        )
        row["lp"].append(r["lp"])
        row["worlds"].append(int(ws))
        row["seeds"].append(int(seed))
        if r.get("ft") is not None:
            row["ft"].append(r["ft"])
        if r.get("diag") is not None:
            row["diag"].append(r["diag"])
    for aid, a in state["acc"].items():
        ws, table, name = aid.split("/", 2)
        if name in out.get(table, {}) and (world_seeds is None or int(ws) in world_seeds):
            out[table][name]["acc"][int(ws)] = {k: a[k] for k in ("current", "memory_only")}
    return out


def _run_order(rid: str) -> tuple:
    """Tables in name order; rows as ``ROWS`` lists them (then by frames, then by name)."""
    ws, table, name, seed = rid.split("/")
    known = [i for i, r in enumerate(ROWS) if name == r or name.startswith(r + " ")]
    frames = int(name.split()[0]) if name.split()[0].isdigit() else 0
    return (table, known[0] if known else len(ROWS), frames, name, int(ws), int(seed))


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


def differences(row: dict, base: dict, key: str) -> dict[int, list[float]]:
    """Paired differences row - base of ``key`` per world seed (pairs: same world seed and seed)."""
    at = {(w, sd): x[key] for w, sd, x in zip(base["worlds"], base["seeds"], base["lp"])}
    out: dict[int, list[float]] = {}
    for w, sd, x in zip(row["worlds"], row["seeds"], row["lp"]):
        if (w, sd) in at:
            out.setdefault(w, []).append(x[key] - at[w, sd])
    return out


def paired(row: dict, base: dict, key: str, per_world: bool = False) -> str:
    """The pooled paired difference: mean +- std over every (world seed, seed) pair (its standard
    error); with ``per_world``, each world's mean after it."""
    d = differences(row, base, key)
    pooled = [x for v in d.values() for x in v]
    if not pooled:
        return "-"
    se = statistics.stdev(pooled) / len(pooled) ** 0.5 if len(pooled) > 1 else float("nan")
    worlds = (
        f" [{', '.join(f'{100 * statistics.mean(v):+.2f}' for v in d.values())}]" if per_world and len(d) > 1 else ""
    )
    return f"{pm(pooled)} ({100 * se:.2f}){worlds}"


def world_means(row: dict, key: str = "all") -> str:
    """Mean LP mIoU of each world seed, in world-seed order."""
    by: dict[int, list[float]] = {}
    for w, x in zip(row["worlds"], row["lp"]):
        by.setdefault(w, []).append(x[key])
    return " / ".join(f"{100 * statistics.mean(by[w]):.2f}" for w in sorted(by))


def print_table(title: str, res: dict, baseline: str = "ScaLR-literal") -> None:
    """One table: per-world and pooled means, pooled paired differences (with each world's mean)
    against ``baseline`` and, where the table has it, against "1 frame"."""
    worlds = sorted({w for r in res.values() for w in r["worlds"]})
    bases = [b for b in (baseline, "1 frame") if b in res]
    counts = sorted({len(r["lp"]) for r in res.values()})
    runs = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    print(f"\n{title}; world seeds {', '.join(map(str, worlds))}; {runs} runs per row")
    head = ["method", "LP mIoU per world", "LP mIoU", "inside cameras", "outside cameras"]
    for b in bases:
        head += [f"paired diff vs {b} (SE) [per world]", "... inside cameras", "... outside cameras"]
    head += ["1% FT mIoU", "targets", "only from memory", "bank depth", "target acc. current / memory-only"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in res.items():
        lp = {k: [x[k] for x in r["lp"]] for k in ("all", "inside", "outside")}
        cells = [name, world_means(r) if len(worlds) > 1 else "-", pm(lp["all"]), pm(lp["inside"]), pm(lp["outside"])]
        for b in bases:
            if name == b:
                cells += ["-", "-", "-"]
            else:
                cells += [paired(r, res[b], "all", True), paired(r, res[b], "inside"), paired(r, res[b], "outside")]
        dg = r["diag"]
        cells += [pm(r["ft"])] + (
            ["-", "-", "-"]
            if not dg
            else [
                f"{100 * statistics.mean(x['target_fraction'] for x in dg):.1f}%",
                f"{100 * statistics.mean(x['memory_only_fraction'] for x in dg):.1f}%",
                f"{statistics.mean(x['bank_depth'] for x in dg):.2f}",
            ]
        )
        acc = list(r["acc"].values())
        cells.append(
            "-"
            if not acc
            else " / ".join(
                "-" if any(a[k] != a[k] for a in acc) else f"{100 * statistics.mean(a[k] for a in acc):.1f}%"
                for k in ("current", "memory_only")
            )
        )
        print("| " + " | ".join(cells) + " |")


START = time.perf_counter()
THREADS = 2  # every table is made with 2 threads in all (2 cores), split over --jobs
SWEEP_BASE = "1 frame (ScaLR-literal)"


def folder_digest(folder: Path) -> str:
    """sha256 over a folder's files: a resumed benchmark must distil the same teacher on the same
    worlds (another CPU kind may generate a world with other bits)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="a,b", help="a, b (method rows per world) and/or c (frames sweep on world b)")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"method rows, of: {', '.join(ROWS)}")
    ap.add_argument(
        "--world-seeds",
        default="0",
        help="worlds to measure on, e.g. 3,4: every row runs on each; tables pool the pairs (world seed, seed)",
    )
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
    ap.add_argument("--sweep-row", default="LiMA (reproject)", help="the LiMA row whose frames table c) sweeps")
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every pretrained row (after BASE)")
    ap.add_argument(
        "--lima-set",
        nargs="*",
        default=[],
        help="overrides for the LiMA rows only (ablations, e.g. lima.mixing=lasermix)",
    )
    ap.add_argument("--teacher", type=Path, help="a synthetic teacher folder to reuse (default: make one, ~4 min)")
    ap.add_argument(
        "--work",
        type=Path,
        help="keep worlds, teacher and runs here (default: a temporary folder); with --json, a killed benchmark "
        "rerun with the same command resumes where it stopped",
    )
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
    ap.add_argument("--json", type=Path, help="write the results here, after every run (and resume from it)")
    ap.add_argument(
        "--render",
        type=Path,
        nargs="+",
        help="print the tables of earlier --json files (runs merged; one set of tables per student backbone) and exit",
    )
    ap.add_argument(
        "--baseline",
        default="ScaLR-literal",
        help="--render: the row the paired differences are taken against (e.g. random)",
    )
    args = ap.parse_args()
    if args.render:
        render(args.render, args.baseline)
        return
    parse_list = lambda text: list(range(int(text))) if text.isdigit() else [int(x) for x in text.split(",")]  # noqa: E731
    args.seeds_list = parse_list(args.seeds)
    args.world_seeds = [int(x) for x in args.world_seeds.split(",")]
    if args.quick:
        args.seeds_list, args.pretrain_steps, args.probe_steps, args.finetune_steps = [0], 3, 5, 2
    if "/" in args.label:
        sys.exit("--label: no '/' (it separates the parts of a run's name)")
    torch.set_num_threads(THREADS)
    from lima_zoo.training.synthetic_teacher import make_synthetic_teacher

    chosen = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in chosen + [args.sweep_row] if r not in ROWS]
    if unknown:
        sys.exit(f"--rows / --sweep-row: unknown {unknown}; rows: {', '.join(ROWS)}")
    lima_rows = lambda name: name.startswith("LiMA")  # noqa: E731
    rows = {
        (f"{r} {args.label}" if args.label and lima_rows(r) else r): None
        if ROWS[r] is None
        else [*BASE, *args.common, *ROWS[r], *(args.lima_set if lima_rows(r) else [])]
        for r in chosen
    }
    tables = {
        key: (key, rows, FINETUNE_ROWS if args.finetune_steps > 0 else ())
        for key in args.tables.split(",")
        if key in WORLDS
    }
    if "c" in args.tables.split(","):  # world b has one camera: its 1-frame point is ScaLR-literal
        best = [*BASE, *args.common, *ROWS[args.sweep_row], *args.lima_set]
        counts = [int(n) for n in args.sweep.split(",")]
        label = f" {args.label}" if args.label else ""
        sweep = {SWEEP_BASE: [*BASE, *args.common, *ROWS["ScaLR-literal"]]} if 1 in counts else {}
        sweep.update({f"{n} frames{label}": [*best, f"lima.frames={n}"] for n in counts if n > 1})
        tables["c"] = ("b", sweep, ())
    protocol = {k: str(getattr(args, k)) for k in ("pretrain_steps", "probe_steps", "width", "backbone", "quick")}
    state = {"runs": {}, "acc": {}, "protocol": protocol}
    if args.json and args.json.exists():
        saved = json.loads(args.json.read_text())
        if "runs" in saved:
            if saved.get("protocol") != protocol:
                sys.exit(f"{args.json}: made with {saved.get('protocol')}, not {protocol}; use another --json")
            state = saved
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        teacher = args.teacher or work / "teacher"
        if not (teacher / "teacher.json").exists():
            meta = make_synthetic_teacher(teacher, steps=20 if args.quick else 300)
            print(
                f"synthetic teacher: held-out patch accuracy {meta['heldout_patch_accuracy']:.3f} "
                f"[{time.perf_counter() - START:.0f} s]",
                flush=True,
            )
        digest = folder_digest(teacher)
        if state.get("teacher", digest) != digest:
            sys.exit(f"{args.json}: made with another teacher than {teacher}; pass that one (--teacher / --work)")
        state["teacher"] = digest
        state["args"] = {k: str(v) for k, v in vars(args).items()}

        def save() -> None:
            if args.json:
                state["results"] = collect(state)
                write_atomic(args.json, json.dumps(state, indent=1))

        run_tables(tables, args, work, teacher, state, save)
        save()
    print(
        f"\n{len(args.seeds_list)} seeds {args.seeds_list} on world seeds {args.world_seeds}; student {args.backbone} "
        f"x {args.width}, {args.jobs} job(s); pretraining {args.pretrain_steps} steps x 2 streams, linear probe "
        f"{args.probe_steps} steps, 1% fine-tune {args.finetune_steps} steps; common {args.common or '-'}; LiMA rows "
        f"{args.lima_set or '-'}; {time.perf_counter() - START:.0f} s total"
    )
    results = collect(state, args.world_seeds)
    print_tables({k: {n: results[k][n] for n in t[1] if n in results.get(k, {})} for k, t in tables.items()})


def print_tables(results: dict, baseline: str = "ScaLR-literal", note: str = "") -> None:
    for key, res in results.items():
        if not res:
            continue
        if key in WORLDS:
            print_table(WORLDS[key]["title"] + note, res, baseline)
        else:
            print_table("c) frames sweep on world b" + note, res, baseline=SWEEP_BASE)


def _only_pairs(row: dict, pairs: set[tuple[int, int]]) -> dict:
    """A collected row restricted to the runs of ``pairs`` (world seed, seed)."""
    keep = [i for i, p in enumerate(zip(row["worlds"], row["seeds"])) if p in pairs]
    pick = lambda v: [v[i] for i in keep] if len(v) == len(row["lp"]) else v  # noqa: E731
    return {k: pick(v) if isinstance(v, list) else v for k, v in row.items()}


def render(files: list[Path], baseline: str) -> None:
    """The tables of earlier --json files, runs merged (one set of tables per student backbone)."""
    students: dict[str, dict] = {}
    for f in files:
        saved = json.loads(f.read_text())
        state = students.setdefault(saved["args"].get("backbone", "minkunet14"), {"runs": {}, "acc": {}})
        state["runs"].update(saved.get("runs", {}))
        state["acc"].update(saved.get("acc", {}))
    for backbone, state in students.items():
        merged = collect(state)
        if "c" in merged and "b" in merged:  # the sweep's 1- and 6-frame points: table b's runs on the sweep's pairs
            pairs = {p for r in merged["c"].values() for p in zip(r["worlds"], r["seeds"])}
            extra = {
                name: _only_pairs(merged["b"][row], pairs)
                for name, row in ((SWEEP_BASE, "ScaLR-literal"), ("6 frames", "LiMA (reproject)"))
                if row in merged["b"]
            }
            rows = {**{k: v for k, v in extra.items() if v is not None and k not in merged["c"]}, **merged["c"]}
            merged["c"] = dict(sorted(rows.items(), key=lambda kv: int(kv[0].split()[0])))
        print_tables(merged, baseline, f", student {backbone}" if len(students) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())

"""Where are the distillation targets right? Target accuracy by kind, class and range, per LiMA row.

    python benchmarks/target_quality.py --table a --world-seeds 1,2 --rows "LiMA (reproject),LiMA (memory 0)" \\
        --teacher benchmarks/results/quality-worlds-1-2/teacher --work DIR

No student is trained: the first training sequences of each world are walked as a stream walks them
(the memory bank of ``lima.frames - 1`` past frames, the row's reading and fusion) and every target
is classified by the nearest class prototype, the mean *unfused* current-camera teacher feature of
each class (labels come from the synthetic world). A target is right when its prototype class is
the point's class. Three kinds of target are scored:

  current, unfused   the current cameras' feature alone (what the "1 frame" row distils)
  current, fused     the same points after the row's temporal fusion with the memory
  memory-only        points no current camera sees, targeted from the memory alone

Tables (pooled over the world seeds): by class (share of points, accuracy of each kind) and by range
(horizontal distance to the sensor). ``bench_quality.py`` reports the overall accuracies of its rows
through ``target_accuracy``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

RANGES = (0.0, 10.0, 20.0, 30.0, 50.0, float("inf"))  # m, horizontal distance to the LiDAR
KINDS = ("current, unfused", "current, fused", "memory-only")


def collect_targets(
    data: Path, teacher_dir: Path, cameras: tuple[str, ...], overrides: list[str], sequences: int = 3
) -> dict:
    """Walk the first ``sequences`` training sequences from their start as a stream does.

    Returns {"target": (N, D) fused targets, "unified": (N, D) unfused current-camera features,
    "kind": (N,) NO_TARGET / CURRENT / MEMORY_ONLY, "label": (N,) class ids (0 = ignored),
    "range": (N,) metres, "class_names": [...]} over every point of every walked frame."""
    from lima_zoo.training.config import TeacherConfig, load_recipe
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.lima.long_horizon import recall, remember
    from lima_zoo.training.lima.targets import frame_targets, sample_cameras, select_cameras
    from lima_zoo.training.teacher import build_teacher

    lima = load_recipe("synthetic-tiny", overrides).lima
    ds = open_dataset(data, "train", labels=True)
    teacher = build_teacher(TeacherConfig(name="synthetic", weights=str(teacher_dir), image_size=(112, 224)))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("target", "unified", "kind", "label", "range")}
    with torch.no_grad():
        for s, (_, refs) in enumerate(ds.sequences[:sequences]):
            bank = []
            for k in range(len(refs)):
                frame = sample_cameras(select_cameras(ds.frame(s, k), cameras), lima.cameras_per_frame, s * 10_007 + k)
                (cur,), _ = frame_targets(teacher, [frame], lima.cva)
                out = recall(cur, bank[-(lima.frames - 1) :] if lima.frames > 1 else [], lima)
                bank.append(remember(frame, cur, (s, k), lima))
                parts["target"].append(out.target)
                parts["unified"].append(cur.unified)
                parts["kind"].append(out.kind)
                parts["label"].append(torch.from_numpy(frame.labels))
                parts["range"].append(torch.from_numpy(frame.points[:, :2]).norm(dim=1))
    return {**{k: torch.cat(v) for k, v in parts.items()}, "class_names": list(ds.class_names)}


def correct(rec: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per kind, (mask (N,) of the points scored, right (N,) bool): the nearest prototype's class is
    the point's. Prototypes: the mean unfused current-camera feature of each class."""
    import torch.nn.functional as F

    from lima_zoo.training.lima.long_horizon import CURRENT, MEMORY_ONLY

    kind, label = rec["kind"], rec["label"]
    cur = (kind == CURRENT) & (label > 0)
    classes = torch.tensor([c for c in range(1, len(rec["class_names"]) + 1) if bool((label[cur] == c).any())])
    protos = F.normalize(torch.stack([rec["unified"][cur & (label == c)].mean(0) for c in classes.tolist()]), dim=1)

    def right(features: torch.Tensor) -> torch.Tensor:
        return classes[(features.float() @ protos.T).argmax(1)] == label

    mem = (kind == MEMORY_ONLY) & (label > 0)
    fused = right(rec["target"])  # the fused targets: current-camera points and memory-only ones
    unfused = right(rec["unified"])
    return {"current, unfused": (cur, unfused), "current, fused": (cur, fused), "memory-only": (mem, fused)}


def target_accuracy(
    data: Path, teacher_dir: Path, cameras: tuple[str, ...], overrides: list[str], sequences: int = 3
) -> dict:
    """{"current": accuracy of the fused current-camera targets, "memory_only": of the memory-only
    ones} (nan where a kind has no point): is the teacher informative, are remembered targets right?"""
    scored = correct(collect_targets(data, teacher_dir, cameras, overrides, sequences))
    return {
        name: float(right[mask].float().mean()) if bool(mask.any()) else float("nan")
        for name, (mask, right) in (("current", scored["current, fused"]), ("memory_only", scored["memory-only"]))
    }


def _cell(mask: torch.Tensor, right: torch.Tensor, where: torch.Tensor) -> str:
    sel = mask & where
    n = int(sel.sum())
    return f"{100 * float(right[sel].float().mean()):.1f}% ({n})" if n else "-"


def breakdown(recs: list[dict]) -> tuple[list[str], list[str]]:
    """Markdown rows by class and by range, pooled over ``recs`` (each scored against its own
    prototypes): share of the scored points, then each kind's accuracy (points)."""
    per = [correct(r) for r in recs]
    scored = {k: (torch.cat([p[k][0] for p in per]), torch.cat([p[k][1] for p in per])) for k in KINDS}
    labels, ranges = torch.cat([r["label"] for r in recs]), torch.cat([r["range"] for r in recs])
    some = scored["current, unfused"][0] | scored["memory-only"][0]

    def row(name: str, where: torch.Tensor) -> str:
        share = int((some & where).sum()) / max(int(some.sum()), 1)
        return f"| {name} | {100 * share:.1f}% | " + " | ".join(_cell(m, r, where) for m, r in scored.values()) + " |"

    names = recs[0]["class_names"]
    by_class = [row("all", torch.ones_like(some))] + [
        row(name, labels == c + 1) for c, name in enumerate(names) if bool((some & (labels == c + 1)).any())
    ]
    by_range = [
        row(f"{lo:.0f}-{hi:.0f} m" if hi != float("inf") else f">= {lo:.0f} m", (ranges >= lo) & (ranges < hi))
        for lo, hi in zip(RANGES[:-1], RANGES[1:])
    ]
    return by_class, by_range


def main() -> None:
    import bench_quality as bq  # the benchmark's worlds and rows (lazily: bench_quality imports this module)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="a", choices=sorted(bq.WORLDS), help="the world kind (bench_quality's tables)")
    ap.add_argument("--world-seeds", default="1,2")
    ap.add_argument("--rows", default="LiMA (reproject)", help=f"LiMA rows, of: {', '.join(bq.ROWS)}")
    ap.add_argument("--sequences", type=int, default=3, help="training sequences walked per world (1-1000)")
    ap.add_argument("--teacher", type=Path, required=True, help="the synthetic teacher folder the runs distilled")
    ap.add_argument("--work", type=Path, required=True, help="where the worlds are (made when missing)")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if bq.ROWS.get(r) is None]
    if bad:
        raise SystemExit(f"--rows: {bad} are not pretrained rows; rows: {', '.join(r for r in bq.ROWS if bq.ROWS[r])}")
    if not 1 <= args.sequences <= 1000:
        raise SystemExit(f"--sequences: {args.sequences} is outside 1-1000")
    try:
        world_seeds = [int(x) for x in args.world_seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--world-seeds: {args.world_seeds!r} is not a comma-separated list of integers") from None
    if not (args.teacher / "teacher.json").is_file():
        raise SystemExit(f"--teacher: {args.teacher} holds no teacher.json (a synthetic teacher folder)")
    args.quick = False
    cameras = bq.WORLDS[args.table]["cameras"]
    head = "| {} | share | " + " | ".join(KINDS) + " |\n|---|---|" + "---|" * len(KINDS)
    for name in rows:
        recs = [
            collect_targets(
                bq.world_data(args.table, ws, args, args.work), args.teacher, cameras, bq.ROWS[name], args.sequences
            )
            for ws in world_seeds
        ]
        by_class, by_range = breakdown(recs)
        print(f"\n{bq.WORLDS[args.table]['title']}, {name}, world seeds {world_seeds}: target accuracy (points)\n")
        print("\n".join([head.format("class"), *by_class, "", head.format("range"), *by_range]))


if __name__ == "__main__":
    main()

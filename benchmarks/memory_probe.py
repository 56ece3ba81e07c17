"""What each memory reading hands to current points, checked against the synthetic world's truth
(no teacher, no training).

    python benchmarks/memory_probe.py WORLD [--cameras CAM_FRONT] [--frames 6]

WORLD is a nuScenes-format folder written by ``lima-zoo synth`` (it keeps ``synth_truth/``: the rendered
class of every camera pixel). For every training frame, as a stream would see it with a bank of
``frames - 1`` past frames, each current point outside the current cameras that the memory reaches is
a memory-only target. A remembered sample is *right* when what the past view shows there is the point's
own class: for ``cell`` the labels of the past LiDAR points in the point's cell, for ``reproject`` the
rendered class of the past camera's pixel the point projects to. Rows: cell matching and re-projection
with each check (none / occlusion / agreement) and z-buffer resolution; columns: memory-only coverage,
sample accuracy (all classes, and on thing classes), by range.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lima_zoo.labels import NUSCENES_EVAL_CLASSES

THINGS = NUSCENES_EVAL_CLASSES[:10]  # the object classes (barrier .. truck); the rest are stuff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", type=Path)
    ap.add_argument("--cameras", default="", help="comma-separated camera names (default: all)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--cells", default="32,64,128", help="z-buffer resolutions (cells across the image width)")
    args = ap.parse_args()
    from lima_zoo.labels import NUSCENES_LUT
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.datasets.pairing import CameraView, project_points
    from lima_zoo.training.lima.propagation import cell_keys
    from lima_zoo.training.lima.reprojection import depth_check, view_entry
    from lima_zoo.training.lima.targets import global_xyz, select_cameras

    torch.set_num_threads(2)
    names = [c for c in args.cameras.split(",") if c]
    ds = open_dataset(args.world, "train", labels=True)
    classes = ds.class_names
    things = torch.tensor([c in THINGS for c in ("ignore",) + tuple(classes)])
    variants = [("cell 0.3 m", "cell", None, None)] + [
        (f"reproject {chk} {cells}", "reproject", chk, cells)
        for cells in map(int, args.cells.split(","))
        for chk in ("none", "occlusion", "agreement")
    ]
    stats = {
        v[0]: {"memory_only": 0, "samples": 0, "right": 0, "thing_samples": 0, "thing_right": 0, "near_only": 0}
        for v in variants
    }
    total = near_total = 0
    start = time.perf_counter()
    for s, (_, refs) in enumerate(ds.sequences):
        hist = []  # (frame, pairs, labels, global xyz, truth label images)
        for k in range(len(refs)):
            frame = select_cameras(ds.frame(s, k), names)
            views = frame.camera_views()
            pairs = project_points(torch.from_numpy(frame.points[:, :3]), views)
            xyz = global_xyz(frame)
            labels = torch.from_numpy(frame.labels)
            cur = torch.zeros(len(xyz), dtype=torch.bool)
            cur[pairs.point] = True
            rng = torch.from_numpy(np.hypot(frame.points[:, 0], frame.points[:, 1]))
            out = ~cur & (labels > 0)
            total += int(out.sum())
            near_total += int((out & (rng < 20)).sum())
            truth = torch.from_numpy(
                np.stack(
                    [
                        NUSCENES_LUT[
                            np.load(ds.root / "synth_truth" / f"{ds.keyframes[refs[k]][c.name]['token']}.npz")["label"]
                        ]
                        for c in frame.cameras
                    ]
                ).astype(np.int64)
            )
            past = hist[-(args.frames - 1) :] if args.frames > 1 else []
            for name, align, chk, cells in variants:
                st = stats[name]
                reached = torch.zeros(len(xyz), dtype=torch.bool)
                for pf, ppairs, plabels, pxyz, ptruth in past:
                    if align == "cell":
                        keys, pkeys = cell_keys(xyz, 0.3), cell_keys(pxyz[ppairs.point.unique()], 0.3)
                        plab = plabels[ppairs.point.unique()]
                        order = torch.argsort(pkeys)
                        pos = torch.searchsorted(pkeys[order], keys).clamp_max(len(pkeys) - 1)
                        found = pkeys[order][pos] == keys
                        sel = found & out
                        right = plab[order][pos][sel] == labels[sel]
                        lab = labels[sel]
                    else:
                        entry = view_entry(pf, torch.zeros(len(pf.cameras), 1, 1, 1), ppairs, cells, (s, 0))
                        cams = [
                            CameraView(str(c), entry.intrinsic[c], entry.world_to_camera[c], w, h)
                            for c, (w, h) in enumerate(entry.sizes)
                        ]
                        q = project_points(xyz, cams)
                        ok = depth_check(q, entry, chk, 0.5, 0.1) & out[q.point]
                        uv = q.uv[ok].round().long()
                        h, w = ptruth.shape[1:]
                        shown = ptruth[q.camera[ok], uv[:, 1].clamp(0, h - 1), uv[:, 0].clamp(0, w - 1)]
                        lab = labels[q.point[ok]]
                        right = shown == lab
                        sel = torch.zeros(len(xyz), dtype=torch.bool)
                        sel[q.point[ok]] = True
                    reached |= sel
                    st["samples"] += len(lab)
                    st["right"] += int(right.sum())
                    st["thing_samples"] += int(things[lab].sum())
                    st["thing_right"] += int((right & things[lab]).sum())
                st["memory_only"] += int(reached.sum())
                st["near_only"] += int((reached & (rng < 20)).sum())
            hist.append((frame, pairs, labels, xyz, truth))
        print(f"sequence {s} done [{time.perf_counter() - start:.0f} s]", flush=True)
    print(
        f"\n{args.world}, cameras {names or 'all'}, {args.frames} frames; {total:,} labelled points outside the "
        f"current cameras ({near_total:,} within 20 m)"
    )
    print("| reading | memory-only coverage of outside points | within 20 m | sample accuracy | on things |")
    print("|---|---|---|---|---|")
    for name, st in stats.items():
        acc = st["right"] / max(st["samples"], 1)
        tacc = st["thing_right"] / max(st["thing_samples"], 1)
        print(
            f"| {name} | {100 * st['memory_only'] / max(total, 1):.1f}% | "
            f"{100 * st['near_only'] / max(near_total, 1):.1f}% | {100 * acc:.1f}% | {100 * tacc:.1f}% "
            f"({st['thing_samples']:,}) |"
        )


if __name__ == "__main__":
    main()

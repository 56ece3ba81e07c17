"""The paper's query figure on a dataset frame (``lima-zoo viz --data``): per camera, the frozen
image teacher's similarity to the query's pixel beside the student's per-point similarity.

It reads datasets and runs the teacher, so it lives with training; the drawing itself is
:mod:`lima_zoo.viz.cameras` (arrays in, PNG out).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..viz.cameras import CameraPanel, best_view, render_cameras, teacher_similarity
from ..viz.views import cosine_similarity, nearest_point
from .config import TeacherConfig
from .datasets import detect_format, open_dataset, project_points
from .teacher import build_teacher

__all__ = ["draw_query_figure", "pick_sample", "class_id", "class_query", "absent_class"]

log = logging.getLogger(__name__)


def pick_sample(ds, sample: str, where: str):
    """``--sample``: a frame of ``ds`` by position (0-based, over the split in sequence order), by
    "SEQUENCE:POSITION", or by the reader's own id (a nuScenes sample token, a scan's path)."""
    index = ds.index()
    if not index:
        raise ValueError(f"{where}: the split has no frames")
    text = sample.strip()
    if text.isdigit():
        i = int(text)
        if i >= len(index):
            raise ValueError(f"--sample {sample}: {where} has {len(index)} frames (0..{len(index) - 1})")
        return ds.frame(*index[i])
    for s, (name, refs) in enumerate(ds.sequences):
        if text.startswith(f"{name}:") and text[len(name) + 1 :].isdigit():
            k = int(text[len(name) + 1 :])
            if k >= len(refs):
                raise ValueError(
                    f"--sample {sample}: sequence {name} of {where} has {len(refs)} frames (0..{len(refs) - 1})"
                )
            return ds.frame(s, k)
        for k, ref in enumerate(refs):
            if str(ref) == text or (isinstance(ref, Path) and ref.name == text):
                return ds.frame(s, k)
    first = ds.sequences[0][0]
    raise ValueError(
        f"--sample {sample!r}: no such frame in {where}; give a position 0..{len(index) - 1}, SEQUENCE:POSITION "
        f"(e.g. {first}:0) "
        "or the reader's frame id (nuScenes sample token)"
    )


def class_id(class_names: tuple[str, ...], name: str) -> int:
    """The label id (1..C; 0 is ignore) of class ``name`` (any case); ValueError listing the classes."""
    lowered = [c.lower() for c in class_names]
    if name.lower() not in lowered:
        raise ValueError(f"--query-class {name!r}: not a class of this dataset; classes: {', '.join(class_names)}")
    return lowered.index(name.lower()) + 1


def class_query(labels, cid: int, pairs, sizes) -> int | None:
    """The query point for class ``cid``: of its points that a camera sees, the one with the most
    same-class points around it in that image (the biggest view of the class; ties: nearest the
    image centre); a class no camera sees: its point nearest the sensor; None if the frame has none."""
    members = np.flatnonzero(labels == cid)
    if not len(members):
        return None
    seen = np.flatnonzero(labels[pairs["point"]] == cid)
    if not len(seen):
        return int(members[np.argmin(pairs["range"][members])])
    cand = seen[:: max(1, len(seen) // 2000)]  # a deterministic subsample bounds the pairwise counts
    cam, uv = pairs["camera"], pairs["uv"]
    radius = 0.05 * sizes[cam[cand], 0]
    near = (cam[cand][:, None] == cam[seen][None, :]) & (
        np.linalg.norm(uv[cand][:, None] - uv[seen][None, :], axis=2) < radius[:, None]
    )
    count = near.sum(axis=1)
    top = cand[count == count.max()]
    return int(pairs["point"][top[best_view(uv[top], sizes[cam[top]])]])


def absent_class(labels, class_names: tuple[str, ...], cid: int) -> str:
    """Why class ``cid`` has no query point in a frame: which labelled classes it does hold."""
    present = sorted({class_names[c - 1] for c in np.unique(labels) if c > 0})
    return f"this sample has no {class_names[cid - 1]} point; it has {', '.join(present) or 'no labelled point'}"


def draw_query_figure(
    data: Path,
    sample: str,
    split: str | None,
    encoder,
    out: Path,
    teacher_spec: str | None,
    query_xyz,
    query_index: int | None,
    query_class: str | None,
    queries: list[str] | None,
) -> dict:
    """The paper's figure for one frame of a dataset: per camera, the teacher's similarity map at
    the query's pixel beside the student's per-point similarity projected onto the image
    (``queries``: one row per class instead, each in the camera that shows its query best)."""
    given = [q for q in (query_xyz, query_index, query_class, queries) if q is not None]
    if len(given) != 1:
        raise ValueError(
            "with --data, give exactly one of --query X,Y,Z, --query-index I, --query-class NAME or --queries "
            "NAME,NAME,..."
        )
    if split is None:
        split = "train" if detect_format(data) == "folder" else "val"
    ds = open_dataset(data, split, labels=query_class is not None or queries is not None)
    where = f"{data} ({split} split)"
    frame = pick_sample(ds, sample, where)
    if not frame.cameras:
        raise ValueError(f"{where}: frame {frame.sequence}:{frame.index} has no camera images to draw on")
    pts = np.ascontiguousarray(frame.points)
    proj = project_points(torch.from_numpy(pts[:, :3]), frame.camera_views())
    pairs = {
        "point": proj.point.numpy(),
        "camera": proj.camera.numpy(),
        "uv": proj.uv.numpy().astype(np.float64),
        "range": np.linalg.norm(pts[:, :3], axis=1),
    }
    sizes = np.array([[c.width, c.height] for c in frame.cameras], dtype=np.float64)
    if query_index is not None and not 0 <= query_index < len(pts):
        raise ValueError(f"--query-index {query_index}: the frame has {len(pts)} points (0..{len(pts) - 1})")
    if queries is not None:
        targets = []
        for name in queries:
            cid = class_id(ds.class_names, name)
            q = class_query(frame.labels, cid, pairs, sizes)
            if q is None:
                log.warning("skipped %s: %s", name, absent_class(frame.labels, ds.class_names, cid))
            else:
                targets.append((name, q))
        if not targets:
            raise ValueError(f"--queries: none of {', '.join(queries)} is in frame {frame.sequence}:{frame.index}")
    elif query_class is not None:
        cid = class_id(ds.class_names, query_class)
        q = class_query(frame.labels, cid, pairs, sizes)
        if q is None:
            raise ValueError(f"--query-class {query_class}: {absent_class(frame.labels, ds.class_names, cid)}")
        targets = [(query_class, q)]
    else:
        targets = [("query", nearest_point(pts, query_xyz) if query_xyz is not None else query_index)]
    teacher = _viz_teacher(teacher_spec, encoder)  # before the forward: a bad --teacher fails fast
    features = encoder.embed(pts, intensity_range=ds.intensity_scale)
    images = [c.image() for c in frame.cameras]
    tokens = None if teacher is None else teacher(images).cpu().numpy()
    panels = []
    for label, q in targets:
        student = cosine_similarity(features, q)
        views = np.flatnonzero(pairs["point"] == q)
        best = None if not len(views) else views[best_view(pairs["uv"][views], sizes[pairs["camera"][views]])]
        t_sim = None
        if tokens is not None and best is not None:
            cam = int(pairs["camera"][best])
            _, t_sim = teacher_similarity(
                tokens, cam, tuple(pairs["uv"][best]), (frame.cameras[cam].width, frame.cameras[cam].height)
            )
        shown = (
            range(len(frame.cameras)) if queries is None else ([int(pairs["camera"][best])] if best is not None else [])
        )
        if queries is not None and best is None:
            log.warning("skipped %s: its query point is outside every camera", label)
        for cam in shown:
            sel = pairs["camera"] == cam
            mine = views[pairs["camera"][views] == cam]
            panels.append(
                CameraPanel(
                    label=frame.cameras[cam].name if queries is None else f"{label} ({frame.cameras[cam].name})",
                    image=images[cam],
                    uv=pairs["uv"][sel],
                    student=student[pairs["point"][sel]],
                    teacher=None if t_sim is None else t_sim[cam],
                    query_uv=tuple(pairs["uv"][mine[0]]) if len(mine) else None,
                )
            )
    if not panels:
        raise ValueError("no query point is seen by a camera of this frame: nothing to draw")
    q0 = targets[0][1]
    what = (
        f"queries {', '.join(n for n, _ in targets)}"
        if queries is not None
        else f"query point {q0} at ({', '.join(f'{v:.2f}' for v in pts[q0, :3])}) m"
    )
    model = getattr(encoder, "name_or_path", "encoder")
    title = f"{data.name} {split} frame {frame.sequence}:{frame.index}, {model}; {what}"
    render_cameras(out, panels, title=title)
    return {
        "path": out,
        "panels": len(panels),
        "queries": [q for _, q in targets],
        "points": len(pts),
        "teacher": None if teacher is None else teacher.description or teacher_spec,
    }


def _viz_teacher(spec: str | None, encoder):
    """``--teacher``: none, a teacher folder (``lima-zoo make-teacher``) or a timm name; by default the
    teacher named in the encoder's config (a synthetic teacher needs its folder)."""
    if spec is not None and spec.lower() == "none":
        return None
    spec = spec or encoder.config.teacher
    path = Path(spec)
    if path.is_dir() and (path / "teacher.json").is_file():
        size = tuple(json.loads((path / "teacher.json").read_text())["vit"]["img_size"])
        return build_teacher(TeacherConfig(name="synthetic", weights=str(path), image_size=size), device=encoder.device)
    if spec == "synthetic" or path.is_dir():
        why = (
            "this encoder was distilled from a synthetic teacher"
            if spec == "synthetic"
            else f"{path} has no teacher.json"
        )
        raise ValueError(
            f"--teacher: {why}; "
            "pass its folder (the run folder's teacher/, or one made by `lima-zoo make-teacher`), or --teacher none"
        )
    return build_teacher(TeacherConfig(name=spec), device=encoder.device)

"""One scan through an encoder, drawn (``lima-zoo viz SCAN``): a PNG of bird's-eye and range views
coloured by PCA or by similarity to a query point, or (``labels``, a segmentation model) by the
predicted class with a legend; or the points written as PLY (with a ``label`` property) / rerun .rrd."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import load_points
from ..labels import class_palette
from .export3d import write_points
from .figure import colours_for, render
from .views import nearest_point

__all__ = ["draw_scan"]


def draw_scan(
    scan: Path,
    encoder,
    out: Path,
    fmt: str,
    mode: str | None,
    query_xyz,
    query_index: int | None,
    load_dim: int | None = None,
    use_dim: int | None = None,
    labels: bool = False,
) -> dict:
    """Embed ``scan`` and write ``out`` (png figure, or ply / rrd points).

    Args:
        scan: a point-cloud file (any format ``load_points`` reads).
        encoder: anything with ``embed`` (from ``load_encoder``).
        out: the file to write.
        fmt: "png", "ply" or "rrd".
        mode: "pca" or "similarity" (default: similarity with a query, else pca).
        query_xyz: the query is the scan's point nearest to (x, y, z); or
        query_index: the query is this row of the file as read (NaN / Inf rows count).
        load_dim, use_dim: columns of a raw ``.bin``.
        labels: colour by the class ``encoder`` (a segmentation model, ``load_segmenter``) predicts.

    Returns:
        what was drawn: mode, query row and position, points drawn, points left out.
    """
    if query_xyz is not None and query_index is not None:
        raise ValueError("give one of --query and --query-index, not both")
    cloud = load_points(scan, load_dim=load_dim, use_dim=use_dim)
    pts = cloud.points
    finite = np.isfinite(pts[:, :3]).all(axis=1)
    kept = np.flatnonzero(finite)
    if len(kept) == 0:
        raise ValueError(f"{scan}: no point has finite coordinates")
    query = None
    if query_index is not None:
        if not 0 <= query_index < len(pts):
            raise ValueError(f"--query-index {query_index}: {scan} has {len(pts)} points (0..{len(pts) - 1})")
        if not finite[query_index]:
            raise ValueError(f"--query-index {query_index}: that point of {scan} has NaN/Inf coordinates")
        query = int(np.searchsorted(kept, query_index))
    pts = pts[kept]
    if query_xyz is not None:
        query = nearest_point(pts, query_xyz)
    mode = mode or ("similarity" if query is not None else "pca")
    if mode == "pca" and query is not None:
        raise ValueError("--query / --query-index select the point for --mode similarity; PCA mode has no query")
    if labels and (query is not None or mode not in (None, "pca")):
        raise ValueError("--labels colours by predicted class: no --mode, --query or --query-index")
    title = f"{scan.name}: {len(pts):,} points, {getattr(encoder, 'name_or_path', 'encoder')}"
    if labels:
        return _draw_labels(encoder, pts, cloud.source_intensity_range(), out, fmt, title) | {
            "query": None,
            "points": len(pts),
            "dropped": int((~finite).sum()),
            "query_xyz": None,
        }
    features = encoder.embed(np.ascontiguousarray(pts), intensity_range=cloud.source_intensity_range())
    if fmt == "png":
        result = render(out, pts, features, mode=mode, query=query, title=title)
    else:
        colours, sim = colours_for(features, mode, query)
        what = "PCA of the features" if sim is None else f"cosine similarity to point {query} (inferno)"
        write_points(out, pts, colours, features, what)
        result = {"path": out, "similarity": sim}
    result.update(
        mode=mode,
        query=query,
        points=len(pts),
        dropped=int((~finite).sum()),
        query_xyz=None if query is None else tuple(float(v) for v in pts[query, :3]),
    )
    return result


def _draw_labels(model, pts: np.ndarray, intensity_range, out: Path, fmt: str, title: str) -> dict:
    """Predict the classes of ``pts`` and draw them (PNG with a legend of the classes present, by
    their share) or write them (PLY: colours and a ``label`` property, the class index)."""
    index = model.predict(np.ascontiguousarray(pts), intensity_range=intensity_range)
    names = model.class_names
    palette = class_palette(len(names) + 1).astype(np.float32) / 255.0  # colour c + 1 is class c
    colours = palette[index + 1]
    present = np.bincount(index, minlength=len(names))
    order = [c for c in np.argsort(-present, kind="stable") if present[c]]
    legend = [(f"{names[c]} ({100 * present[c] / len(index):.1f}%)", palette[c + 1]) for c in order]
    what = f"predicted class ({len(order)} of {len(names)} classes present)"
    if fmt == "png":
        render(out, pts, np.zeros((len(pts), 1), np.float32), colours=colours, legend=legend, what=what, title=title)
    else:
        key = ", ".join(f"{i}={n}" for i, n in enumerate(names))
        write_points(out, pts, colours, index[:, None], f"{what}; label property: {key}", {"label": index})
    return {"path": out, "mode": "labels", "classes": {names[c]: int(present[c]) for c in order}}

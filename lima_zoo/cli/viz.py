"""``lima-zoo viz``: one scan through an encoder, drawn (PNG) or written as coloured points."""

from __future__ import annotations

from pathlib import Path

__all__ = ["parse_query", "run_viz"]


def parse_query(text: str) -> tuple[float, float, float]:
    """'x,y,z' (metres, the scan's frame) -> a tuple; ValueError naming the option otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(abs(v) < float("inf") for v in values):
        raise ValueError(f"--query {text!r}: give three numbers x,y,z in metres, e.g. --query 12.5,-3,0.2")
    return values  # type: ignore[return-value]


def run_viz(scan: Path, encoder, out: Path, fmt: str, mode: str | None, query_xyz, query_index: int | None,
            load_dim: int | None = None, use_dim: int | None = None) -> dict:
    """Embed ``scan`` and write ``out`` (png figure, or ply / rrd points). Points with NaN/Inf
    coordinates are left out; ``query_index`` counts rows of the file as read."""
    import numpy as np

    from ..io import load_points
    from ..viz.figure import colours_for, render
    from ..viz.views import nearest_point
    from .embed import _intensity_range

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
    features = encoder.embed(np.ascontiguousarray(pts), intensity_range=_intensity_range(cloud))
    title = f"{scan.name}: {len(pts):,} points, {getattr(encoder, 'name_or_path', 'encoder')}"
    if fmt == "png":
        result = render(out, pts, features, mode=mode, query=query, title=title)
    else:
        from ..viz.export3d import write_points

        colours, sim = colours_for(features, mode, query)
        what = "PCA of the features" if sim is None else f"cosine similarity to point {query} (inferno)"
        write_points(out, pts, colours, features, what)
        result = {"path": out, "similarity": sim}
    result.update(mode=mode, query=query, points=len(pts), dropped=int((~finite).sum()),
                  query_xyz=None if query is None else tuple(float(v) for v in pts[query, :3]))
    return result

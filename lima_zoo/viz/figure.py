"""Draw per-point features: PCA colours or similarity to a query point, bird's-eye + range view.

matplotlib (the ``[viz]`` extra) is imported only here, inside the functions, and a missing
install is a one-line hint. Figures are written atomically (temporary file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..io.writers import pca_colors
from .views import View, bev_view, cosine_similarity, range_view

__all__ = ["MODES", "colours_for", "render", "require_matplotlib"]

MODES = ("pca", "similarity")
HEAT = "inferno"


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "lima-zoo viz draws with matplotlib: pip install 'lima-zoo[viz]' (or pip install matplotlib)"
        ) from None
    return plt


def colours_for(features: np.ndarray, mode: str, query: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, D) -> ((N, 3) float colours in [0, 1], (N,) similarity or None)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "pca":
        return pca_colors(features).astype(np.float32) / 255.0, None
    if query is None:
        raise ValueError("similarity mode needs a query point (--query x,y,z, --query-index i or --query-class NAME)")
    sim = cosine_similarity(features, query)
    plt = require_matplotlib()
    lo = float(np.nanmin(sim)) if np.isfinite(sim).any() else -1.0
    scaled = (sim - lo) / max(1.0 - lo, 1e-12)  # the colour bar spans [min, 1]: the query is the brightest
    rgb = plt.get_cmap(HEAT)(np.nan_to_num(scaled, nan=0.0))[:, :3].astype(np.float32)
    return rgb, sim


def _scale_bar(ax, metres: float) -> None:
    from matplotlib.offsetbox import AnchoredOffsetbox, AuxTransformBox, TextArea, VPacker
    from matplotlib.patches import Rectangle

    # The BEV axis is flipped (y decreases to the right), so the bar is drawn from +metres to 0.
    box = AuxTransformBox(ax.transData)
    box.add_artist(Rectangle((0, 0), -metres, metres * 0.02, color="black"))
    packed = VPacker(children=[box, TextArea(f"{metres:g} m")], align="center", pad=0, sep=2)
    ax.add_artist(AnchoredOffsetbox(loc="lower right", child=packed, frameon=True, pad=0.3, borderpad=0.5))


def _nice(length: float) -> float:
    """A round scale-bar length near a fifth of the view (1, 2, 5 x 10^k metres)."""
    target = max(length / 5, 1e-3)
    p = 10 ** np.floor(np.log10(target))
    return float(min((m * p for m in (1, 2, 5, 10)), key=lambda v: abs(v - target)))


def render(
    out: str | os.PathLike,
    xyz: np.ndarray,
    features: np.ndarray,
    mode: str = "pca",
    query: int | None = None,
    title: str = "",
    bev_half_extent: float | None = None,
    dpi: int = 110,
    colours: np.ndarray | None = None,
    legend: list[tuple[str, np.ndarray]] | None = None,
    what: str = "",
) -> dict:
    """Write a PNG: bird's-eye view (axes in metres, scale bar) above a range view, coloured by
    PCA of the features or by cosine similarity to point ``query`` (marked, with a colour bar), or
    by given ``colours`` (N, 3) in [0, 1] (e.g. predicted classes) with a ``legend`` of (name,
    colour) and ``what`` for the subtitle.

    xyz: (N, >=3) points; features: (N, D) rows aligned with xyz (NaN rows are drawn black).
    Returns {"path", "bev": View, "range": View, "colours": (N, 3), "similarity": (N,) or None}.
    """
    plt = require_matplotlib()
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    features = np.asarray(features, dtype=np.float32)
    if len(xyz) != len(features):
        raise ValueError(f"{len(xyz)} points but {len(features)} feature rows")
    if len(xyz) == 0:
        raise ValueError("no points to draw")
    if query is not None and not 0 <= query < len(xyz):
        raise ValueError(f"query index {query} is outside the scan's {len(xyz)} points")
    colours, sim = colours_for(features, mode, query) if colours is None else (colours, None)
    bev, rng = bev_view(xyz, bev_half_extent), range_view(xyz)
    fig = plt.figure(figsize=(9.5, 12.0), constrained_layout=True)
    grid = fig.add_gridspec(2, 1, height_ratios=[4.2, 1.0])
    ax_bev, ax_rng = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    for ax, view, name in ((ax_bev, bev, "bird's-eye view"), (ax_rng, rng, "range view")):
        ax.imshow(
            view.paint(colours), extent=view.extent, interpolation="nearest", aspect="equal" if view is bev else "auto"
        )
        ax.set_xlabel(view.xlabel)
        ax.set_ylabel(view.ylabel)
        ax.set_title(name, fontsize=10)
        if query is not None:
            qr, qc = view.pixel[query]
            if qr >= 0:
                x, y = _pixel_centre(view, qr, qc)
                ax.plot(
                    [x],
                    [y],
                    marker="*",
                    markersize=16,
                    markerfacecolor="cyan",
                    markeredgecolor="black",
                    linestyle="none",
                    label="query",
                )
    _scale_bar(ax_bev, _nice(abs(bev.extent[1] - bev.extent[0])))
    if sim is not None:
        import matplotlib as mpl

        lo = float(np.nanmin(sim))
        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(lo, 1.0), cmap=HEAT)
        fig.colorbar(sm, ax=[ax_bev, ax_rng], shrink=0.6, label="cosine similarity to the query")
        ax_bev.legend(loc="upper right")
    if legend:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=tuple(c), label=name) for name, c in legend]
        ax_bev.legend(handles=handles, loc="upper left", fontsize=7, ncol=2 if len(handles) > 10 else 1)
    what = what or (
        "PCA of the features (RGB = components 1-3)"
        if sim is None
        else f"similarity to point {query} at ({', '.join(f'{v:.2f}' for v in xyz[query])}) m"
    )
    fig.suptitle(f"{title}\n{what}" if title else what, fontsize=11)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the figure is a PNG; give --out a .png name")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return {"path": out, "bev": bev, "range": rng, "colours": colours, "similarity": sim}


def _pixel_centre(view: View, row: int, col: int) -> tuple[float, float]:
    """Axis coordinates of a pixel's centre (imshow's extent maps columns to x, rows to y)."""
    left, right, bottom, top = view.extent
    h, w = view.winner.shape
    return left + (col + 0.5) / w * (right - left), top + (row + 0.5) / h * (bottom - top)

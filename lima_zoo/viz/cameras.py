"""The paper's query-point figure on camera images: the teacher's similarity map beside the student's.

For a query point, each row shows one camera image twice: on the left the frozen image teacher's
patch features, coloured by cosine similarity to the teacher feature at the query's pixel (a heat
map over the image); on the right the LiDAR points this camera sees, coloured by the cosine
similarity of the student's (LiDAR encoder's) features to the query point's. If distillation
worked, the same object lights up in both. A grid of several queries (one row per class, in the
camera that sees each query best) is the paper's multi-class figure.

Arrays in, a PNG out: reading datasets and running the teacher is the caller's job (``cli/viz.py``),
so this module stays in the core and never imports ``lima_zoo.training``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .figure import HEAT, require_matplotlib

__all__ = ["CameraPanel", "best_view", "render_cameras", "teacher_similarity"]


@dataclass
class CameraPanel:
    """One row of the figure.

    label: row title (camera name, or class and camera); image (H, W, 3) uint8; uv (P, 2) pixel
    coordinates (x right, y down) of the scan points this camera sees and ``student`` (P,) their
    similarity to the query; ``teacher`` (h, w) similarity of the teacher's patch features to the
    teacher feature at the query's pixel, or None (no teacher, or the query outside every camera);
    ``query_uv`` the query's pixel in this image, or None where this camera does not see it.
    """

    label: str
    image: np.ndarray
    uv: np.ndarray
    student: np.ndarray
    teacher: np.ndarray | None
    query_uv: tuple[float, float] | None


def best_view(uv: np.ndarray, sizes: np.ndarray) -> int:
    """Of several views of one point -- uv (V, 2) and each view's image (width, height) (V, 2) -- the
    one that shows it nearest the image centre (relative to the image size): the clearest view."""
    return int(np.argmin(np.square(uv / sizes - 0.5).sum(axis=1)))


def teacher_similarity(
    tokens: np.ndarray, camera: int, query_uv: tuple[float, float], image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """tokens (C, D, h, w) teacher patch features of C cameras; the query's pixel (u, v) in camera
    ``camera``'s image of size (width, height) -> (the query's teacher feature (D,), (C, h, w)
    cosine similarity of every camera's patches to it).

    The query feature is sampled bilinearly at the pixel, with the convention the distillation
    targets use (``training.lima.cross_view.sample_pixel_features``: pixel centres, border padding)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    _, _, h, w = tokens.shape
    width, height = image_size
    x = np.clip((query_uv[0] + 0.5) / width * w - 0.5, 0, w - 1)  # pixel -> continuous patch-grid index
    y = np.clip((query_uv[1] + 0.5) / height * h - 0.5, 0, h - 1)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    grid = tokens[camera]
    q = (
        grid[:, y0, x0] * (1 - fx) * (1 - fy)
        + grid[:, y0, x1] * fx * (1 - fy)
        + grid[:, y1, x0] * (1 - fx) * fy
        + grid[:, y1, x1] * fx * fy
    )
    norms = np.linalg.norm(tokens, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
    sim = np.einsum("cdhw,d->chw", tokens, q) / np.maximum(norms, 1e-12)
    return q, np.clip(sim, -1.0, 1.0)


def render_cameras(out: str | os.PathLike, panels: list[CameraPanel], title: str = "", dpi: int = 100) -> Path:
    """Write the PNG: one row per panel, teacher similarity (left) beside student similarity (right),
    each with a colour bar; the query marked (cyan star) where the camera sees it."""
    if not panels:
        raise ValueError("no camera to draw")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the figure is a PNG; give --out a .png name")
    plt = require_matplotlib()
    import matplotlib as mpl

    aspect = max(p.image.shape[1] / p.image.shape[0] for p in panels)
    fig, axes = plt.subplots(
        len(panels),
        2,
        figsize=(2 * 4.2 * min(aspect, 3) / 1.5 + 1.5, 2.9 * len(panels)),
        squeeze=False,
        constrained_layout=True,
    )
    cmap = mpl.colormaps[HEAT]
    t_lo = min((float(np.nanmin(p.teacher)) for p in panels if p.teacher is not None), default=-1.0)
    s_lo = min((float(np.nanmin(p.student)) for p in panels if len(p.student)), default=-1.0)
    for row, p in enumerate(panels):
        h, w = p.image.shape[:2]
        grey = _muted(p.image)
        ax_t, ax_s = axes[row]
        ax_t.imshow(grey, extent=(0, w, h, 0))
        if p.teacher is not None:
            ax_t.imshow(
                p.teacher, extent=(0, w, h, 0), cmap=cmap, vmin=t_lo, vmax=1.0, alpha=0.65, interpolation="bilinear"
            )
        else:
            ax_t.text(
                w / 2,
                h / 2,
                "no teacher map\n(the query is outside every camera)" if p.query_uv is None else "no teacher",
                ha="center",
                va="center",
                color="white",
                fontsize=9,
            )
        ax_s.imshow(grey, extent=(0, w, h, 0))
        if len(p.uv):
            order = np.argsort(p.student, kind="stable")  # the most similar points drawn last, on top
            ax_s.scatter(
                p.uv[order, 0],
                p.uv[order, 1],
                c=p.student[order],
                cmap=cmap,
                vmin=s_lo,
                vmax=1.0,
                s=max(1.0, 2400.0 / max(w, 1)),
                linewidths=0,
                marker="s",
            )
        for ax, what in ((ax_t, "teacher (image features)"), (ax_s, "student (LiDAR features)")):
            if p.query_uv is not None:
                ax.plot(
                    [p.query_uv[0]],
                    [p.query_uv[1]],
                    marker="*",
                    markersize=14,
                    markerfacecolor="cyan",
                    markeredgecolor="black",
                    linestyle="none",
                )
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{p.label}: {what}", fontsize=9)
    for col, lo, name in ((0, t_lo, "teacher"), (1, s_lo, "student")):
        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(lo, 1.0), cmap=cmap)
        fig.colorbar(
            sm,
            ax=list(axes[:, col]),
            shrink=min(0.9, 0.3 + 0.15 * len(panels)),
            label=f"{name}: cosine similarity to the query",
        )
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out


def _muted(image: np.ndarray) -> np.ndarray:
    """The photo in dim grey, so that the heat colours on top read as the signal."""
    g = np.asarray(image, dtype=np.float32)[..., :3].mean(axis=2, keepdims=True) / 255.0
    return np.repeat(0.15 + 0.45 * g, 3, axis=2)

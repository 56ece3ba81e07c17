"""Coloured points for people who prefer to orbit: a PLY file or a rerun recording (.rrd).

The colours are the figure's (PCA or similarity heat); rerun-sdk is an optional extra
(``pip install 'lima-zoo[rerun]'``), imported only here. Both writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..io.writers import write_ply

__all__ = ["write_points", "FORMATS_3D"]

FORMATS_3D = ("ply", "rrd")


def write_points(
    path: str | os.PathLike,
    xyz: np.ndarray,
    colours: np.ndarray,
    features: np.ndarray,
    what: str,
    scalars: dict[str, np.ndarray] | None = None,
) -> Path:
    """xyz (N, 3), colours (N, 3) float in [0, 1] -> ``path`` (.ply or .rrd by its suffix); PLY
    also stores ``scalars`` (int per point, e.g. the predicted class) as vertex properties."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS_3D:
        raise ValueError(f"{path}: 3-D output is .ply or .rrd, not {path.suffix or 'no suffix'}")
    rgb = (np.clip(np.nan_to_num(colours), 0, 1) * 255).round().astype(np.uint8)
    xyz = np.ascontiguousarray(xyz[:, :3], dtype=np.float32)
    if fmt == "ply":
        with atomic_path(path) as tmp:
            write_ply(tmp, features, xyz, with_features=False, rgb=rgb, comment=f"RGB = {what}", scalars=scalars)
        return path
    try:
        import rerun as rr
    except ImportError:
        raise ImportError(
            "--format rrd writes a rerun recording: pip install 'lima-zoo[rerun]' (or pip install rerun-sdk)"
        ) from None
    with atomic_path(path) as tmp:
        rec = rr.RecordingStream("lima-zoo viz")
        rec.save(str(tmp))
        rec.log("scan/points", rr.Points3D(xyz, colors=rgb, radii=0.04))
        rec.log("scan/description", rr.TextDocument(f"lima-zoo features, colours: {what}"), static=True)
        rec.flush()  # blocks until everything is written
        rec.disconnect()  # closes the file (footer written) before it is renamed into place
    return path

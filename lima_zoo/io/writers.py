"""Feature writers: ``.npy`` (default), ``.safetensors``, ``.parquet``, ``.ply``.

All writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["FEATURE_FORMATS", "save_features", "pca_colors"]

FEATURE_FORMATS = ("npy", "safetensors", "parquet", "ply")


def save_features(
    path: str | os.PathLike,
    features: np.ndarray,
    xyz: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
    ply_features: bool = False,
) -> Path:
    """Write per-point features to ``path`` (atomically); the format is the file's suffix.

    Args:
        path: ``.npy``, ``.safetensors``, ``.parquet`` or ``.ply``.
        features: (N, D) float32 features.
        xyz: (N, 3) coordinates, stored where the format holds them (all but ``.npy``).
        metadata: strings stored with the features (safetensors metadata, Parquet schema metadata).
        ply_features: with ``.ply``, also store the features as vertex properties.

    Returns:
        the path written.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FEATURE_FORMATS:
        raise ValueError(f"{path}: unknown feature format {fmt!r}; choose one of {', '.join(FEATURE_FORMATS)}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if fmt != "npy" and (xyz is None or len(xyz) != len(features)):
        raise ValueError(f"{path}: the {fmt} format stores xyz next to the features; pass (N, 3) xyz")
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, features)
        elif fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(
                {"features": features, "xyz": np.ascontiguousarray(xyz[:, :3], dtype=np.float32)},
                str(tmp),
                metadata={k: str(v) for k, v in (metadata or {}).items()},
            )
        elif fmt == "parquet":
            _write_parquet(tmp, features, xyz)
        else:
            write_ply(tmp, features, xyz, ply_features)
    return path


def _write_parquet(path: Path, features: np.ndarray, xyz: np.ndarray) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("writing .parquet needs pyarrow (pip install pyarrow)") from None
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    cols.update({f"f{i}": features[:, i] for i in range(features.shape[1])})
    pq.write_table(pa.table({k: np.asarray(v, dtype=np.float32) for k, v in cols.items()}), path)


def pca_colors(features: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 3) uint8: the first three principal components, each stretched to 0-255
    between its 1st and 99th percentile (so a few outliers do not wash the colours out). Rows with
    NaN (``embed --keep-rows`` placeholders) are black and take no part in the components."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        rgb = np.zeros((len(features), 3), np.uint8)
        if finite.any():
            rgb[finite] = pca_colors(features[finite])
        return rgb
    x = features.astype(np.float64) - features.mean(axis=0)
    # Principal axes from the D x D covariance (cheap for D << N); sign fixed for determinism.
    _, vecs = np.linalg.eigh(x.T @ x)
    axes = vecs[:, ::-1][:, :3]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), range(axes.shape[1])])
    proj = x @ axes
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    return (np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def write_ply(
    path: Path,
    features: np.ndarray,
    xyz: np.ndarray,
    with_features: bool,
    rgb: np.ndarray | None = None,
    comment: str = "RGB = PCA of features",
    scalars: dict[str, np.ndarray] | None = None,
) -> None:
    """Binary PLY of xyz + RGB (uint8, default the features' PCA colours) (+ the features) (+ int32
    ``scalars`` per point, e.g. a class id)."""
    rgb = pca_colors(features) if rgb is None else rgb
    scalars = scalars or {}
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    fields += [(name, "<i4") for name in scalars]
    if with_features:
        fields += [(f"f{i}", "<f4") for i in range(features.shape[1])]
    rec = np.empty(len(features), dtype=np.dtype(fields))
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    for name, values in scalars.items():
        rec[name] = values
    if with_features:
        for i in range(features.shape[1]):
            rec[f"f{i}"] = features[:, i]
    ply_type = {"<f4": "float", "u1": "uchar", "<i4": "int"}
    header = (
        [
            "ply",
            "format binary_little_endian 1.0",
            f"comment lima-zoo features ({comment})",
            f"element vertex {len(rec)}",
        ]
        + [f"property {ply_type[t]} {n}" for n, t in fields]
        + ["end_header"]
    )
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(rec.tobytes())

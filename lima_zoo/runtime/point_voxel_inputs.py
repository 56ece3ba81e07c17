"""SPVCNN's point-voxel graph inputs: one batch voxelized with its points -> numpy arrays.

The voxel half is :mod:`lima_zoo.runtime.voxel_inputs` (the same kernel-map inputs). The point
half carries each point's link to the voxels, as the graph reads them without a scatter:

Inputs, in order (N points, M_l voxels at level l):

* ``point_feats`` (N, C_in) float32 — every point's columns (x, y, z[, intensity]).
* ``teacher_space`` () bool.
* the kernel-map inputs of ``voxel_inputs.input_names()`` from ``subm0_in`` on.
* ``cell_sum{w}`` (m_w, w) int64, w in CELL_WIDTHS — the points of each level-0 voxel (N = padding);
  ``cell_rank`` (M_0,) int64 — each voxel's row among those bucket-sorted sums.
* per level l in POINT_LEVELS: ``count{l}`` (M_l, 1) float32 points per voxel, ``corners{l}`` (8, N)
  int64, ``weights{l}`` (8, N) float32.

The look-ups are the PyTorch engine's (``sparse/points.py``: ``voxel_rows``, ``corner_rows``) in
numpy, renumbered into the graph's row order of each level, so both runtimes read the same voxels
with the same weights.
"""

from __future__ import annotations

import numpy as np

from .cells import Cells
from .kernel_maps import KEY_MARGIN, Keys
from .voxel_inputs import SUBM_WIDTHS, input_names, inverse_permutation, map_inputs, sum_tables

__all__ = ["POINT_VOXEL_INPUT_NAMES", "CELL_WIDTHS", "POINT_LEVELS", "point_voxel_inputs", "point_input_shape"]

# Points per level-0 voxel: exact up to 8, padded by <= 4x beyond 26 (rare: a dense patch near the sensor).
CELL_WIDTHS = SUBM_WIDTHS + (40, 64, 128, 512, 2048, 8192, 32768, 131072)
POINT_LEVELS = (0, 2, 4)  # where SPVCNN's point branch meets the voxels (strides 1, 4, 16)
POINT_VOXEL_INPUT_NAMES = [
    "point_feats",
    "teacher_space",
    *input_names()[4:],
    *[f"cell_sum{w}" for w in CELL_WIDTHS],
    "cell_rank",
] + [f"{name}{level}" for level in POINT_LEVELS for name in ("count", "corners", "weights")]


def point_input_shape(name: str) -> list:
    """Symbolic shape of a point-branch input."""
    if name.startswith("cell_sum"):
        return ["cells_rows" + name[8:], int(name[8:])]
    if name == "cell_rank":
        return ["voxels_0"]
    level = name[-1]
    return [f"voxels_{level}", 1] if name.startswith("count") else [8, "points"]


_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.int64)


def _level_cells(grid: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) int64 [b, cell at stride] and (N, 3) float32 positions in level units (sparse/points.py)."""
    pos = grid[:, 1:] / np.float32(stride)
    cells = np.concatenate([np.round(grid[:, :1]).astype(np.int64), np.floor(pos).astype(np.int64)], axis=1)
    return cells, pos


def voxel_rows(grid: np.ndarray, keys: Keys, stride: int) -> np.ndarray:
    """(N,) int64 the level's row each point falls in."""
    cells, _ = _level_cells(grid, stride)
    rows = keys.lookup(keys.pack(cells))
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} point(s) fall outside the voxels at stride {stride}")
    return rows


def corner_rows(grid: np.ndarray, keys: Keys, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's 8 surrounding voxel rows (N, 8) int64 (absent: 0) and trilinear weights (N, 8)
    float32 (absent: 0, the rest renormalised to sum to 1), as the engine's ``corner_rows``."""
    cells, pos = _level_cells(grid, stride)
    near = np.repeat(cells[:, None, :], 8, axis=1)
    near[:, :, 1:] += _CORNERS
    rows = keys.lookup(keys.pack(near))
    frac = (pos - np.floor(pos)).astype(np.float32)[:, None, :]
    weights = np.where(_CORNERS.astype(bool), frac, np.float32(1) - frac)
    weights = weights[:, :, 0] * weights[:, :, 1] * weights[:, :, 2]
    weights = weights * (rows >= 0)
    weights = weights / (weights.sum(axis=1, keepdims=True) + np.float32(1e-8))
    return np.maximum(rows, 0), weights.astype(np.float32)


def point_voxel_inputs(cells: Cells) -> dict[str, np.ndarray]:
    """The graph's inputs for one batch voxelized with its points (``cells.voxelize(..., keep_points=True)``).

    The look-ups are the engine's (``voxel_rows``, ``corner_rows`` of ``sparse/points.py``),
    renumbered into the graph's row order of each level, so both runtimes read the same voxels with
    the same weights.
    """
    arrays, ranks, levels = map_inputs(cells.coords)
    grid = cells.grid
    for level in POINT_LEVELS:
        stride = 2**level
        keys = Keys(levels[level], margin=KEY_MARGIN)
        rows = cells.inverse if level == 0 else voxel_rows(grid, keys, stride)
        count = np.bincount(rows, minlength=len(levels[level]))
        arrays[f"count{level}"] = count[inverse_permutation(ranks[level])].astype(np.float32)[:, None]  # graph order
        if level == 0:
            if count.max() > CELL_WIDTHS[-1]:
                raise ValueError(
                    f"a voxel holds {count.max()} points; the ONNX graph sums at most {CELL_WIDTHS[-1]} per voxel "
                    "(embed this scan with the torch runtime)"
                )
            tables, order = sum_tables(ranks[0][rows], len(levels[0]), CELL_WIDTHS)
            arrays.update({f"cell_sum{w}": t for w, t in tables.items()})
            arrays["cell_rank"] = inverse_permutation(order)
        corners, weights = corner_rows(grid, keys, stride)
        arrays[f"corners{level}"] = np.ascontiguousarray(ranks[level][corners].T)
        arrays[f"weights{level}"] = np.ascontiguousarray(weights.T)
    arrays.update(point_feats=np.ascontiguousarray(cells.point_feats, dtype=np.float32), teacher_space=np.array(False))
    return {name: arrays[name] for name in POINT_VOXEL_INPUT_NAMES}

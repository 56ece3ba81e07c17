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

The look-ups are the PyTorch engine's own (``sparse/points.py``: ``voxel_rows``, ``corner_rows``),
renumbered into the graph's row order of each level, so both runtimes read the same voxels with
the same weights.
"""

from __future__ import annotations

import numpy as np
import torch

from ..sparse import SparseTensor
from ..sparse.points import PointFeatures, corner_rows, voxel_rows
from ..voxelize import Voxels
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


def point_voxel_inputs(vox: Voxels) -> dict[str, np.ndarray]:
    """The graph's inputs for one batch voxelized with its points (``voxelize(..., keep_points=True)``).

    The look-ups are the PyTorch engine's own (``voxel_rows``, ``corner_rows``), renumbered into
    the graph's row order of each level, so both runtimes read the same voxels with the same weights.
    """
    base = SparseTensor(vox.feats.cpu(), vox.coords.cpu())
    arrays, ranks = map_inputs(base.cache)
    points = PointFeatures(vox.point_feats.cpu(), vox.grid.cpu(), {("cell", 1): vox.inverse.cpu()})
    for level in POINT_LEVELS:
        stride = 2**level
        at_level = SparseTensor.derived(torch.empty(len(base.cache.coords[stride]), 0), base, stride=stride)
        rows = voxel_rows(points, at_level).numpy()
        count = np.bincount(rows, minlength=at_level.num_voxels)
        arrays[f"count{level}"] = count[inverse_permutation(ranks[level])].astype(np.float32)[
            :, None
        ]  # graph row order
        if level == 0:
            if count.max() > CELL_WIDTHS[-1]:
                raise ValueError(
                    f"a voxel holds {count.max()} points; the ONNX graph sums at most {CELL_WIDTHS[-1]} per voxel "
                    "(embed this scan with the torch runtime)"
                )
            tables, order = sum_tables(ranks[0][rows], at_level.num_voxels, CELL_WIDTHS)
            arrays.update({f"cell_sum{w}": t for w, t in tables.items()})
            arrays["cell_rank"] = inverse_permutation(order)
        corners, weights = corner_rows(points, at_level)
        arrays[f"corners{level}"] = np.ascontiguousarray(ranks[level][corners.numpy()].T)
        arrays[f"weights{level}"] = np.ascontiguousarray(weights.numpy().T.astype(np.float32))
    arrays.update(point_feats=points.feats.float().numpy(), teacher_space=np.array(False))
    return {name: arrays[name] for name in POINT_VOXEL_INPUT_NAMES}

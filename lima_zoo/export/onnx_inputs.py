"""The ONNX runtime's pre-processing step: one voxel batch -> the graph's index inputs (numpy).

The kernel maps come from the PyTorch engine's own builder (``CoordinateCache.build_unet_maps``),
so both runtimes consume the very same pairs. This module only re-expresses them in the layout
the scatter-free graph needs (see ``onnx_graph.py`` for why there is no scatter):

* **Level row order.** The rows of every level are reordered so that voxels with the same
  *bucket* of submanifold neighbour count are contiguous (stable within a bucket, so spatial
  order is kept). A submanifold conv can then sum each bucket with one Gather + ReduceSum and
  concatenate the buckets straight into the level's row order. ``voxel_order`` / ``voxel_rank``
  take level-0 rows from and back to the caller's order.
* **Sum tables.** ``{map}_sum{w}`` is an (m_w, w) table of product rows (pair indices, offset-major
  as in the map; the index P — one past the last pair — is a zero row) for the m_w outputs whose
  pair count falls in the bucket of width w.
* **Down maps** also carry ``down{l}_parents`` (each coarse row's position among the bucket-sorted
  parents) and ``down{l}_slot`` (each fine row's pair, the transposed conv's single product).
"""

from __future__ import annotations

import numpy as np
import torch

from ..sparse import SparseTensor
from ..sparse.tensor import CoordinateCache
from .onnx_graph import DOWN_WIDTHS, NUM_LEVELS, SUBM_WIDTHS, input_names

__all__ = ["graph_inputs", "map_inputs", "sum_tables", "inverse_permutation"]


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """(n,) the permutation that undoes ``perm``: inv[perm[i]] == i."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=perm.dtype)
    return inv


def sum_tables(out_idx: np.ndarray, n_out: int, widths: tuple[int, ...]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Group the pairs of a map by output row into padded per-bucket tables.

    out_idx: (P,) int64 output row of each pair.  Returns ({w: (m_w, w) int64 pair indices, P =
    padding}, order (n_out,): output rows sorted by bucket, ascending width, stable). Rows with
    no pair go to the smallest bucket and read only the zero row.
    """
    pairs = len(out_idx)
    count = np.bincount(out_idx, minlength=n_out)
    if count.max(initial=0) > widths[-1]:
        raise ValueError(f"an output has {count.max()} pairs; the graph's widest sum bucket is {widths[-1]}")
    bucket = np.searchsorted(np.asarray(widths), count)  # smallest width >= count
    order = np.argsort(bucket, kind="stable")
    by_row = np.argsort(out_idx, kind="stable")  # pair indices grouped by output row
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    tables, start = {}, 0
    for b, width in enumerate(widths):
        stop = start + int(np.count_nonzero(bucket == b))
        rows = order[start:stop]
        cols = np.arange(width)
        valid = cols[None, :] < count[rows, None]
        table = np.full((len(rows), width), pairs, dtype=np.int64)
        table[valid] = by_row[(first[rows, None] + cols[None, :])[valid]]
        tables[width], start = table, stop
    return tables, order


def map_inputs(cache: CoordinateCache) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The kernel-map inputs of the five levels (every name of ``input_names()`` but feats and
    teacher_space), built on ``cache``; and per level the rank of every original row in the graph's
    row order ((N_l,) int64: original row r is graph row ranks[l][r])."""
    maps = cache.build_unet_maps(NUM_LEVELS)
    arrays: dict[str, np.ndarray] = {}
    ranks = []
    for level, (subm, _) in enumerate(maps):
        tables, order = sum_tables(subm.out_idx.numpy(), subm.n_out, SUBM_WIDTHS)
        ranks.append(inverse_permutation(order))
        arrays.update({f"subm{level}_sum{w}": t for w, t in tables.items()})
        arrays[f"subm{level}_in"] = ranks[level][subm.in_idx.numpy()]
        arrays[f"subm{level}_bounds"] = np.asarray(subm.bounds, dtype=np.int64)
        if level == 0:
            arrays["voxel_order"], arrays["voxel_rank"] = order, ranks[0]
    for level, (_, down) in enumerate(maps[:-1]):
        children, parents = ranks[level][down.in_idx.numpy()], ranks[level + 1][down.out_idx.numpy()]
        tables, order = sum_tables(parents, down.n_out, DOWN_WIDTHS)
        arrays.update({f"down{level}_sum{w}": t for w, t in tables.items()})
        arrays[f"down{level}_in"], arrays[f"down{level}_out"] = children, parents
        arrays[f"down{level}_bounds"] = np.asarray(down.bounds, dtype=np.int64)
        arrays[f"down{level}_parents"] = inverse_permutation(order)
        arrays[f"down{level}_slot"] = inverse_permutation(children)  # every fine row has exactly one parent
    return arrays, ranks


def graph_inputs(feats: torch.Tensor, coords: torch.Tensor) -> dict[str, np.ndarray]:
    """The graph's inputs for one voxel batch.  feats (M, C_in) float32; coords (M, 4) int32
    [batch, i, j, k] (as voxelization emits them) -> {input name: numpy array}."""
    arrays, _ = map_inputs(SparseTensor(feats.cpu(), coords.cpu()).cache)
    arrays.update(feats=feats.detach().cpu().float().numpy(), teacher_space=np.array(False))
    return {name: arrays[name] for name in input_names()}

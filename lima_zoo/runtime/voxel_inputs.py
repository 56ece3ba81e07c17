"""The voxel graph's inputs (MinkUNet, and the voxel half of SPVCNN): one voxel batch -> numpy arrays.

Kernel maps are graph *inputs*, not built inside the graph: onnxruntime has no fast way to hash
coordinates, while building them here is cheap. The maps are the sparse engine's pairs, rebuilt in
numpy (``kernel_maps.py``, equal to ``CoordinateCache.build_unet_maps`` pair for pair), so both
runtimes consume the very same pairs; this module re-expresses them in the layout the scatter-free
graph needs. Nothing here imports torch.

Inputs (N_l = voxels at level l = stride 2**l, l = 0..4; P = pairs), in the order of
:func:`input_names`:

* ``feats`` (N_0, C_in) float32 — voxel features from voxelization.
* ``teacher_space`` () bool — False: backbone features; True: the distillation head's output.
* ``voxel_order`` / ``voxel_rank`` (N_0,) int64 — level-0 rows into the graph's internal row order
  and back (every level's rows are grouped by neighbour-count bucket inside the graph).
* ``subm{l}_in`` (P,), ``subm{l}_bounds`` (28,) int64 — input rows of the 3x3x3 submanifold map of
  level l, grouped by offset (centre excluded; offset k owns pairs [bounds[k], bounds[k+1])).
* ``subm{l}_sum{w}`` (m_w, w) int64, w in SUBM_WIDTHS — which products each output row sums.
* ``down{l}_in`` / ``down{l}_out`` (N_l,), ``down{l}_bounds`` (9,), ``down{l}_sum{w}`` (w in
  DOWN_WIDTHS), ``down{l}_parents`` (N_{l+1},), ``down{l}_slot`` (N_l,), l = 0..3 — the stride-2
  map from level l to l+1 (every voxel has one parent; grouped by child offset).

Layout rules:

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

from .kernel_maps import unet_maps

__all__ = [
    "graph_inputs",
    "map_inputs",
    "sum_tables",
    "inverse_permutation",
    "input_names",
    "input_shape",
    "NUM_LEVELS",
    "SUBM_VOLUME",
    "SUBM_WIDTHS",
    "DOWN_WIDTHS",
]

NUM_LEVELS = 5  # MinkUNet strides 1, 2, 4, 8, 16
SUBM_VOLUME = 27
# Sum-bucket widths: an output row with n pairs is summed in the bucket of the smallest width >= n
# (missing pairs read a zero row). Exact up to 8, where nearly all rows are; the few rows above are
# padded by at most 30%. The last width is the most pairs a row can have (26 neighbours, 8 children).
SUBM_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 19, 26)
DOWN_WIDTHS = (1, 2, 3, 4, 6, 8)


def input_names() -> list[str]:
    """Graph input names, in order."""
    names = ["feats", "teacher_space", "voxel_order", "voxel_rank"]
    for level in range(NUM_LEVELS):
        names += [f"subm{level}_in", f"subm{level}_bounds"] + [f"subm{level}_sum{w}" for w in SUBM_WIDTHS]
    for level in range(NUM_LEVELS - 1):
        names += [f"down{level}_in", f"down{level}_out", f"down{level}_bounds"]
        names += [f"down{level}_sum{w}" for w in DOWN_WIDTHS] + [f"down{level}_parents", f"down{level}_slot"]
    return names


def input_shape(name: str) -> list:
    """Symbolic shape of an index input (dims named after what they count)."""
    head, tail = name.split("_", 1)
    if tail == "bounds":
        return [SUBM_VOLUME + 1 if head.startswith("subm") else 9]
    if tail.startswith("sum"):
        return [f"{head}_rows{tail[3:]}", int(tail[3:])]
    if head.startswith("subm"):
        return [f"pairs_{head}"]
    level = int(head[-1]) if head[-1].isdigit() else 0  # voxel_order / voxel_rank: level 0
    return [f"voxels_{level + 1 if tail == 'parents' else level}"]


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


def map_inputs(coords: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The kernel-map inputs of the five levels (every name of ``input_names()`` but feats and
    teacher_space) for voxels ``coords`` (M, 4) [batch, i, j, k]; per level the rank of every original
    row in the graph's row order ((N_l,) int64: original row r is graph row ranks[l][r]); and each
    level's coordinates in level units."""
    maps, levels = unet_maps(coords, NUM_LEVELS)
    arrays: dict[str, np.ndarray] = {}
    ranks = []
    for level, (subm, _) in enumerate(maps):
        tables, order = sum_tables(subm.out_idx, subm.n_out, SUBM_WIDTHS)
        ranks.append(inverse_permutation(order))
        arrays.update({f"subm{level}_sum{w}": t for w, t in tables.items()})
        arrays[f"subm{level}_in"] = ranks[level][subm.in_idx]
        arrays[f"subm{level}_bounds"] = np.asarray(subm.bounds, dtype=np.int64)
        if level == 0:
            arrays["voxel_order"], arrays["voxel_rank"] = order, ranks[0]
    for level, (_, down) in enumerate(maps[:-1]):
        children, parents = ranks[level][down.in_idx], ranks[level + 1][down.out_idx]
        tables, order = sum_tables(parents, down.n_out, DOWN_WIDTHS)
        arrays.update({f"down{level}_sum{w}": t for w, t in tables.items()})
        arrays[f"down{level}_in"], arrays[f"down{level}_out"] = children, parents
        arrays[f"down{level}_bounds"] = np.asarray(down.bounds, dtype=np.int64)
        arrays[f"down{level}_parents"] = inverse_permutation(order)
        arrays[f"down{level}_slot"] = inverse_permutation(children)  # every fine row has exactly one parent
    return arrays, ranks, levels


def graph_inputs(feats: np.ndarray, coords: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for one voxel batch.  feats (M, C_in) float32; coords (M, 4) int32
    [batch, i, j, k] (as voxelization emits them) -> {input name: numpy array}."""
    arrays, _, _ = map_inputs(np.asarray(coords))
    arrays.update(feats=np.ascontiguousarray(feats, dtype=np.float32), teacher_space=np.array(False))
    return {name: arrays[name] for name in input_names()}

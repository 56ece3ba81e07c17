"""Kernel maps in numpy: the sparse engine's maps (``lima_zoo.sparse.kmap``) rebuilt without torch,
pair for pair, so an exported graph can be fed where PyTorch is not installed.

The rules are the engine's (its module docstring states them): coordinates of one level are packed
into sortable int64 keys with a margin of 8; a 3x3x3 submanifold map finds the 26 neighbours with
4 column searches plus key adjacency (offsets k and 26 - k are the same pairs reversed); a stride-2
map gives every voxel its parent ``coords // 2`` at offset ``bx * 4 + by * 2 + bz``, pairs grouped
by offset with inputs ascending, parents in key order. Every operation is on integers (sorts of
distinct keys, stable sorts, searches), so the arrays equal the engine's exactly; the tests
compare them on real-size scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LevelMap", "Keys", "unique_first", "submanifold_map", "downsample_map", "unet_maps", "KEY_MARGIN"]

KEY_MARGIN = 8  # as the engine's CoordinateCache: kernels up to 17 (or 3 with dilation 8) never wrap


@dataclass(frozen=True)
class LevelMap:
    """Pairs (input row -> output row) grouped by kernel offset (the identity offset left out).

    in_idx, out_idx: (P,) int64; bounds: (K + 1,) the pairs of offset k are [bounds[k], bounds[k+1]);
    n_in, n_out: rows of the input and output levels.
    """

    in_idx: np.ndarray
    out_idx: np.ndarray
    bounds: tuple[int, ...]
    n_in: int
    n_out: int


class Keys:
    """(N, 4) int [b, x, y, z] level coordinates packed to int64 keys, lexicographic in (b, x, y, z)."""

    def __init__(self, level_coords: np.ndarray, margin: int):
        c = np.asarray(level_coords, dtype=np.int64)
        self.margin = margin
        maxes = c.max(axis=0) if len(c) else np.zeros(4, np.int64)
        self.sizes = [int(v) + 2 * margin + 1 for v in maxes[1:]]
        span = (int(maxes[0]) + 1) * self.sizes[0] * self.sizes[1] * self.sizes[2]
        if span >= 2**62:
            raise ValueError(f"coordinate range too large to pack into int64 keys (span {span})")
        self.keys = self.pack(c)
        self.is_sorted = bool((self.keys[1:] > self.keys[:-1]).all()) if len(self.keys) > 1 else True
        if self.is_sorted:
            self.sorted_keys, self.order = self.keys, None
        else:
            self.order = np.argsort(self.keys, kind="stable")
            self.sorted_keys = self.keys[self.order]

    def pack(self, c: np.ndarray) -> np.ndarray:
        m, (s0, s1, s2) = self.margin, self.sizes
        return ((c[..., 0] * s0 + c[..., 1] + m) * s1 + c[..., 2] + m) * s2 + c[..., 3] + m

    def delta(self, dx: int, dy: int, dz: int) -> int:
        _, s1, s2 = self.sizes
        return dx * (s1 * s2) + dy * s2 + dz

    def rows(self, pos: np.ndarray) -> np.ndarray:
        return pos if self.order is None else self.order[pos]

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """Row of each query key, or -1 where no voxel has that key."""
        pos = np.minimum(np.searchsorted(self.sorted_keys, query), len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[pos] == query, self.rows(pos), -1)


def unique_first(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group equal keys: (N,) int64 -> inverse (N,) group of each row, first (G,) lowest row of
    each group; groups in ascending key order. One stable sort: within a group rows stay ascending."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return inverse, order[new].astype(np.int64)


def submanifold_map(keys: Keys) -> LevelMap:
    """The 3x3x3 submanifold map of one level (output coordinates = input coordinates)."""
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(dx: int, dy: int, dz: int, out_rows: np.ndarray, in_rows: np.ndarray) -> None:
        k = ((dz + 1) * 3 + dy + 1) * 3 + dx + 1
        pairs[k] = (in_rows, out_rows)
        pairs[26 - k] = (out_rows, in_rows)  # the opposite offset: the same pairs reversed

    sk, n = keys.sorted_keys, len(keys.sorted_keys)
    if n > 1:
        nxt = np.flatnonzero(sk[1:] == sk[:-1] + 1)
        add(0, 0, 1, keys.rows(nxt), keys.rows(nxt + 1))
    for dx, dy in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        q = sk + keys.delta(dx, dy, 0)
        pos = np.searchsorted(sk, q)
        at = np.minimum(pos, n - 1)
        same = sk[at] == q
        for dz, cand in ((0, at), (1, np.minimum(pos + same, n - 1)), (-1, np.maximum(pos - 1, 0))):
            hit = same if dz == 0 else sk[cand] == q + dz
            out_pos = np.flatnonzero(hit)
            add(dx, dy, dz, keys.rows(out_pos), keys.rows(cand[out_pos]))
    empty = np.empty(0, np.int64)
    ins, outs, bounds = [], [], [0]
    for k in range(27):
        i, o = pairs.get(k, (empty, empty)) if k != 13 else (empty, empty)
        ins.append(i)
        outs.append(o)
        bounds.append(bounds[-1] + len(i))
    return LevelMap(np.concatenate(ins).astype(np.int64), np.concatenate(outs).astype(np.int64), tuple(bounds), n, n)


def downsample_map(level_coords: np.ndarray) -> tuple[LevelMap, np.ndarray]:
    """The kernel-2 stride-2 map from one level to the next; and the parents' level coordinates
    (M, 4) int64 in parent level units, in key order."""
    c = np.asarray(level_coords, dtype=np.int64)
    parent = c.copy()
    parent[:, 1:] = np.floor_divide(c[:, 1:], 2)
    bits = c[:, 1:] - 2 * parent[:, 1:]
    k = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]
    inverse, first = unique_first(Keys(parent, margin=0).keys)
    order = np.argsort(k, kind="stable")
    counts = np.bincount(k, minlength=8)
    bounds = (0, *np.cumsum(counts).tolist())
    return LevelMap(order.astype(np.int64), inverse[order], bounds, len(c), len(first)), parent[first]


def unet_maps(coords: np.ndarray, levels: int) -> tuple[list[tuple[LevelMap, LevelMap | None]], list[np.ndarray]]:
    """Every map a U-Net of ``levels`` levels uses on voxels ``coords`` (N, 4) [b, x, y, z]: per level
    (finest first) its submanifold map and the stride-2 map to the next (None for the coarsest);
    and every level's coordinates in level units."""
    level = np.asarray(coords, dtype=np.int64)
    maps, coordinates = [], [level]
    for depth in range(levels):
        subm = submanifold_map(Keys(level, margin=KEY_MARGIN))
        down = None
        if depth < levels - 1:
            down, level = downsample_map(level)
            coordinates.append(level)
        maps.append((subm, down))
    return maps, coordinates

"""Kernel maps: which input voxel feeds which output voxel through which kernel offset.

A kernel map is data-dependent (it depends only on coordinates), so it is built once per
(stride, kernel size, dilation) and cached on the coordinate set; every layer at that stride reuses
it. Compute (``functional.py``) never looks at coordinates, only at these index lists.

Kernel-offset order (matches torchsparse, so its ``[K, C_in, C_out]`` kernels load unchanged):

* odd kernel sizes (submanifold 3x3x3, 1x1x1): x varies fastest, then y, then z::

      k = (dz + r) * s*s + (dy + r) * s + (dx + r)      r = s // 2, offsets in [-r, r]

* even kernel size 2 (strided down / transposed up): z varies fastest::

      k = bx * 4 + by * 2 + bz                          b = child bit of each axis (0 or 1)

A convolution is a cross-correlation like dense ``conv3d``: ``out[o] += in[o + offset_k] @ W[k]``.
The transposed (up) convolution reuses the down map with inputs and outputs swapped, so the fine
voxel with child bits ``b`` receives ``coarse @ W[k(b)]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "KernelMap",
    "CoordinateKeys",
    "kernel_offsets",
    "build_submanifold_map",
    "build_downsample_map",
    "unique_first",
]


@dataclass(frozen=True)
class KernelMap:
    """Pairs (input row -> output row) grouped by kernel offset.

    in_idx, out_idx: (P,) int64, the pairs of all non-identity offsets, grouped by offset.
    bounds: K+1 python ints; the pairs of offset k are ``[bounds[k], bounds[k+1])``.
    identity: offset whose pairs are ``i -> i`` for every row (the centre of a submanifold
        kernel); it is not stored in in_idx/out_idx and is computed as a plain matmul.
    n_in, n_out: number of input and output rows.
    cache: what compute derives from the pairs once and reuses on every layer that shares the map
        (the transposed map, the fused kernel's tiling).
    """

    in_idx: torch.Tensor
    out_idx: torch.Tensor
    bounds: tuple[int, ...]
    identity: int | None
    n_in: int
    n_out: int
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def volume(self) -> int:
        return len(self.bounds) - 1

    @property
    def num_pairs(self) -> int:
        """All pairs, the identity offset included (what the work is proportional to)."""
        return int(self.in_idx.numel()) + (self.n_in if self.identity is not None else 0)

    def transposed(self) -> "KernelMap":
        """The same pairs read backwards (outputs become inputs): the map of the transposed conv.
        Built once per map, so what is cached on it survives from one backward pass to the next."""
        t = self.cache.get("transposed")
        if t is None:
            t = self.cache["transposed"] = KernelMap(
                self.out_idx, self.in_idx, self.bounds, self.identity, self.n_out, self.n_in
            )
        return t

    def pair_counts(self) -> list[int]:
        """Pairs per offset (identity included), for FLOP accounting."""
        counts = [self.bounds[k + 1] - self.bounds[k] for k in range(self.volume)]
        if self.identity is not None:
            counts[self.identity] = self.n_in
        return counts


def kernel_offsets(kernel_size: int, dilation: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """Offsets in level units, (K, 3) int64 [dx, dy, dz], in the documented torchsparse order."""
    if kernel_size % 2 == 1:
        r = kernel_size // 2
        rng = torch.arange(-r, r + 1, device=device) * dilation
        dz, dy, dx = torch.meshgrid(rng, rng, rng, indexing="ij")  # x fastest
    elif kernel_size == 2:
        rng = torch.arange(2, device=device) * dilation
        dx, dy, dz = torch.meshgrid(rng, rng, rng, indexing="ij")  # z fastest
    else:
        raise ValueError(f"kernel_size must be odd or 2, got {kernel_size}")
    return torch.stack([dx.flatten(), dy.flatten(), dz.flatten()], dim=1)


class CoordinateKeys:
    """Coordinates of one level packed to sortable int64 keys, for neighbour look-ups.

    ``key = ((b * S0 + x + m) * S1 + y + m) * S2 + z + m`` with a margin ``m`` so that every
    neighbour within the margin packs without wrapping (a neighbour off the grid can never alias
    an existing voxel). Keys are lexicographic in (b, x, y, z).
    """

    def __init__(self, level_coords: torch.Tensor, margin: int):
        """level_coords: (N, 4) int [b, x, y, z] in level units (already divided by the stride)."""
        c = level_coords.to(torch.int64)
        self.margin = margin
        maxes = c.max(dim=0).values if c.numel() else torch.zeros(4, dtype=torch.int64)
        self.sizes = [int(v) + 2 * margin + 1 for v in maxes[1:].tolist()]
        span = (int(maxes[0]) + 1) * self.sizes[0] * self.sizes[1] * self.sizes[2]
        if span >= 2**62:
            raise ValueError(f"coordinate range too large to pack into int64 keys (span {span})")
        self.keys = self.pack(c)
        self.is_sorted = bool((self.keys[1:] > self.keys[:-1]).all()) if len(self.keys) > 1 else True
        if self.is_sorted:
            self.sorted_keys, self.order = self.keys, None
        else:
            self.sorted_keys, self.order = torch.sort(self.keys)

    def pack(self, c: torch.Tensor) -> torch.Tensor:
        m, (s0, s1, s2) = self.margin, self.sizes
        return ((c[:, 0] * s0 + c[:, 1] + m) * s1 + c[:, 2] + m) * s2 + c[:, 3] + m

    def delta(self, offsets: torch.Tensor) -> torch.Tensor:
        """Key shift of each (K, 3) offset: packing is linear, so a neighbour is key + delta."""
        _, s1, s2 = self.sizes
        return offsets[:, 0] * (s1 * s2) + offsets[:, 1] * s2 + offsets[:, 2]

    def has_duplicates(self) -> bool:
        return bool((self.sorted_keys[1:] == self.sorted_keys[:-1]).any()) if len(self.keys) > 1 else False

    def lookup(self, query: torch.Tensor) -> torch.Tensor:
        """Row of each query key, or -1 where no voxel has that key. query: any shape int64."""
        pos = torch.searchsorted(self.sorted_keys, query).clamp_(max=len(self.sorted_keys) - 1)
        found = self.sorted_keys[pos] == query
        rows = pos if self.order is None else self.order[pos]
        return torch.where(found, rows, torch.full_like(rows, -1))


def unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group equal keys: (N,) int64 -> inverse (N,) group of each row, first (G,) lowest row of
    each group; groups are in ascending key order."""
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    first = torch.full((len(unique_keys),), len(keys), dtype=torch.int64, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
    return inverse, first


def build_submanifold_map(keys: CoordinateKeys, kernel_size: int, dilation: int) -> KernelMap:
    """Submanifold (stride 1, output coords = input coords) map for an odd kernel.

    Offsets k and K-1-k are opposite, so only half of them are searched; the other half are the
    same pairs with input and output swapped. For 3x3x3 without dilation a further trick applies:
    z is the last packed axis, so the neighbour at dz = +-1 is the next / previous key, and one
    search per (dx, dy) column finds all three dz (4 searches instead of 13).
    """
    offsets = kernel_offsets(kernel_size, dilation, keys.keys.device)
    volume = len(offsets)
    side = kernel_size
    r = kernel_size // 2

    def k_of(dx: int, dy: int, dz: int) -> int:
        return ((dz // dilation + r) * side + dy // dilation + r) * side + dx // dilation + r

    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # k -> (in rows, out rows)

    def add(offset: tuple[int, int, int], out_rows: torch.Tensor, in_rows: torch.Tensor) -> None:
        # Output o reads input o + offset; the opposite offset is the same pairs reversed.
        pairs[k_of(*offset)] = (in_rows, out_rows)
        pairs[k_of(*(-v for v in offset))] = (out_rows, in_rows)

    if kernel_size == 3 and dilation == 1:
        _columns_search(keys, add)
    else:
        for dx, dy, dz in offsets[: volume // 2].tolist():
            rows = keys.lookup(keys.keys + keys.delta(torch.tensor([[dx, dy, dz]], device=keys.keys.device)))
            out_rows = (rows >= 0).nonzero().squeeze(1)
            add((dx, dy, dz), out_rows, rows[out_rows])
    return _assemble(pairs, volume, len(keys.keys), keys.keys.device)


def _columns_search(keys: CoordinateKeys, add) -> None:
    """All 26 neighbours of a 3x3x3 kernel from 4 column searches + key adjacency."""
    sk = keys.sorted_keys
    n = len(sk)
    rows_of = (lambda pos: pos) if keys.order is None else (lambda pos: keys.order[pos])
    # (0, 0, +1): in sorted order the next key, if it is key + 1.
    if n > 1:
        nxt = (sk[1:] == sk[:-1] + 1).nonzero().squeeze(1)
        add((0, 0, 1), rows_of(nxt), rows_of(nxt + 1))
    own = keys.keys if keys.order is None else sk  # query in sorted order, map rows at the end
    for dx, dy in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):  # one of each mirrored (dx, dy) pair
        q = own + keys.delta(torch.tensor([[dx, dy, 0]], device=sk.device))
        pos = torch.searchsorted(sk, q)
        at = pos.clamp(max=n - 1)
        same = sk[at] == q
        for dz, cand in (
            (0, at),
            (1, (pos + same.long()).clamp(max=n - 1)),  # first key > q
            (-1, (pos - 1).clamp(min=0)),  # last key < q (at pos 0 every key is >= q: no match)
        ):
            hit = same if dz == 0 else sk[cand] == q + dz
            out_pos = hit.nonzero().squeeze(1)
            add((dx, dy, dz), rows_of(out_pos), rows_of(cand[out_pos]))


def _assemble(pairs: dict, volume: int, n: int, device: torch.device) -> KernelMap:
    centre = volume // 2
    empty = torch.empty(0, dtype=torch.int64, device=device)
    ins, outs, bounds = [], [], [0]
    for k in range(volume):
        i, o = pairs.get(k, (empty, empty)) if k != centre else (empty, empty)
        ins.append(i)
        outs.append(o)
        bounds.append(bounds[-1] + len(i))
    return KernelMap(torch.cat(ins), torch.cat(outs), tuple(bounds), centre, n, n)


def build_downsample_map(level_coords: torch.Tensor) -> tuple[KernelMap, torch.Tensor]:
    """Kernel-2 stride-2 map from one level to the next coarser one.

    level_coords: (N, 4) int [b, x, y, z] in level units. Every input voxel has exactly one
    parent (its coordinates // 2) and one offset (its child bits), so no search is needed.
    Returns the map and the parent level's coordinates (M, 4) int32 in parent level units,
    lexicographically sorted.
    """
    c = level_coords.to(torch.int64)
    parent = c.clone()
    parent[:, 1:] = torch.div(c[:, 1:], 2, rounding_mode="floor")
    bits = c[:, 1:] - 2 * parent[:, 1:]
    k = bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]
    inverse, first = unique_first(CoordinateKeys(parent, margin=0).keys)
    parent_coords = parent[first].to(torch.int32)  # any child would do; take the first
    order = torch.sort(k, stable=True).indices  # group by offset, inputs ascending within a group
    counts = torch.bincount(k, minlength=8).tolist()
    bounds = [0]
    for cnt in counts:
        bounds.append(bounds[-1] + cnt)
    kmap = KernelMap(order, inverse[order], tuple(bounds), None, len(c), len(first))
    return kmap, parent_coords

"""SparseTensor: per-voxel features on integer coordinates, plus the shared kernel-map cache.

Coordinate convention (as torchsparse): ``coords`` is (N, 4) int32 ``[batch, x, y, z]`` in units of
the finest grid, and at tensor stride ``s`` every spatial coordinate is a multiple of ``s``. All
tensors derived from one input (every layer of a network) share one :class:`CoordinateCache`, so a
kernel map or the coordinates of a level are computed once per forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from .kmap import CoordinateKeys, KernelMap, build_downsample_map, build_submanifold_map

__all__ = ["SparseTensor", "CoordinateCache"]


class CoordinateCache:
    """Coordinates of every level reached so far and the kernel maps built on them.

    Keys: ``coords[stride]``; ``kmaps[("subm", stride, kernel_size, dilation)]`` and
    ``kmaps[("down", stride)]`` (stride -> 2 * stride). ``backend_state`` holds per-backend data
    (e.g. spconv's indice dict) so a foreign backend also builds its maps once per forward.
    """

    def __init__(self, coords: torch.Tensor, stride: int):
        self.coords: dict[int, torch.Tensor] = {stride: coords}
        self.keys: dict[int, CoordinateKeys] = {}
        self.kmaps: dict[tuple, KernelMap] = {}
        self.backend_state: dict[str, Any] = {}

    def level_coords(self, stride: int) -> torch.Tensor:
        """(N, 4) int64 coordinates at ``stride`` divided by the stride (level units)."""
        c = self.coords[stride].to(torch.int64)
        if stride == 1:
            return c
        out = c.clone()
        out[:, 1:] = torch.div(c[:, 1:], stride, rounding_mode="floor")
        return out

    def coordinate_keys(self, stride: int) -> CoordinateKeys:
        if stride not in self.keys:
            # Margin 8 covers kernels up to 17 (or 3 with dilation up to 8) without wrap-around.
            self.keys[stride] = CoordinateKeys(self.level_coords(stride), margin=8)
        return self.keys[stride]

    def submanifold_map(self, stride: int, kernel_size: int, dilation: int) -> KernelMap:
        key = ("subm", stride, kernel_size, dilation)
        if key not in self.kmaps:
            if (kernel_size // 2) * dilation > 8:
                raise ValueError(f"kernel reach {(kernel_size // 2) * dilation} exceeds the key margin 8")
            self.kmaps[key] = build_submanifold_map(self.coordinate_keys(stride), kernel_size, dilation)
        return self.kmaps[key]

    def downsample_map(self, stride: int) -> KernelMap:
        """Map from ``stride`` to ``2 * stride``; also records the coarser level's coordinates."""
        key = ("down", stride)
        if key not in self.kmaps:
            kmap, parent = build_downsample_map(self.level_coords(stride))
            parent[:, 1:] *= 2 * stride
            self.coords[2 * stride] = parent
            self.kmaps[key] = kmap
        return self.kmaps[key]

    def build_unet_maps(self, levels: int, kernel_size: int = 3) -> list[tuple[KernelMap, KernelMap | None]]:
        """Build up front every map a U-Net with ``levels`` levels uses: per level (finest first) its
        submanifold map and the stride-2 map to the next level (None for the coarsest)."""
        stride, maps = min(self.coords), []
        for level in range(levels):
            subm = self.submanifold_map(stride, kernel_size, 1)
            down = self.downsample_map(stride) if level < levels - 1 else None
            maps.append((subm, down))
            stride *= 2
        return maps


class SparseTensor:
    """Features (N, C) float on coordinates (N, 4) int32 ``[batch, x, y, z]`` at a tensor stride.

    Built from user data it is validated: dtypes, shapes, negative coordinates, coordinates that
    are not multiples of the stride, and duplicate coordinates raise a ValueError. Rows keep the
    order they were given in (voxelization emits them key-sorted, which is faster).
    """

    __slots__ = ("feats", "coords", "stride", "cache")

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, stride: int = 1, *, check: bool = True):
        if check:
            _validate(feats, coords, stride)
        self.feats = feats
        self.coords = coords
        self.stride = int(stride)
        self.cache = CoordinateCache(coords, self.stride)
        if check and self.cache.coordinate_keys(self.stride).has_duplicates():
            raise ValueError("coords contain duplicate [batch, x, y, z] rows; voxelize first")

    @classmethod
    def derived(cls, feats: torch.Tensor, like: "SparseTensor", stride: int | None = None) -> "SparseTensor":
        """A tensor on ``like``'s coordinate set (same cache) at ``stride``; no re-validation."""
        out = cls.__new__(cls)
        out.feats = feats
        out.stride = like.stride if stride is None else int(stride)
        out.cache = like.cache
        out.coords = like.cache.coords[out.stride]
        return out

    def replace_feats(self, feats: torch.Tensor) -> "SparseTensor":
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"new feats have {feats.shape[0]} rows, tensor has {self.feats.shape[0]}")
        return SparseTensor.derived(feats, self)

    @property
    def num_voxels(self) -> int:
        return int(self.feats.shape[0])

    def to(self, device: torch.device | str) -> "SparseTensor":
        return SparseTensor(self.feats.to(device), self.coords.to(device), self.stride, check=False)

    def __repr__(self) -> str:
        return f"SparseTensor(N={self.num_voxels}, C={self.feats.shape[1]}, stride={self.stride})"


def _validate(feats: torch.Tensor, coords: torch.Tensor, stride: int) -> None:
    if not isinstance(feats, torch.Tensor) or not isinstance(coords, torch.Tensor):
        raise ValueError("feats and coords must be torch tensors")
    if not feats.is_floating_point():
        raise ValueError(f"feats must be a float tensor, got {feats.dtype}")
    if feats.dim() != 2:
        raise ValueError(f"feats must be (N, C), got shape {tuple(feats.shape)}")
    if coords.dtype != torch.int32:
        raise ValueError(f"coords must be int32, got {coords.dtype}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be (N, 4) [batch, x, y, z], got shape {tuple(coords.shape)}")
    if coords.shape[0] != feats.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but feats has {feats.shape[0]}")
    if coords.device != feats.device:
        raise ValueError(f"coords on {coords.device} but feats on {feats.device}")
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if coords.numel() and bool((coords < 0).any()):
        bad = int((coords < 0).any(dim=1).nonzero()[0])
        raise ValueError(f"coords must be non-negative; row {bad} is {coords[bad].tolist()}")
    if stride > 1 and coords.numel() and bool((coords[:, 1:] % stride != 0).any()):
        raise ValueError(f"coords at stride {stride} must be multiples of {stride}")

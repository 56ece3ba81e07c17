"""nn modules on SparseTensor: Conv3d (submanifold / strided / transposed), BatchNorm, ReLU, cat.

Conv3d stores its kernel as ``kernel`` of shape (K, C_in, C_out) in the offset order documented in
``kmap.py`` (torchsparse's), so torchsparse MinkUNet state dicts map onto it key for key. Which
library executes the convolution is the module's ``backend`` ("torch", "spconv", "torchsparse");
the weights are the same on every backend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backends import check_backend, conv3d
from .functional import epilogue
from .tensor import SparseTensor

__all__ = ["Conv3d", "BatchNorm", "ReLU", "cat", "set_backend", "conv_bn"]


class Conv3d(nn.Module):
    """Sparse 3D convolution.

    * ``stride=1``, odd ``kernel_size``: submanifold (output coords = input coords).
    * ``kernel_size=2, stride=2``: downsampling to the next level.
    * ``kernel_size=2, stride=2, transposed=True``: upsampling back onto the finer level's
      coordinates (which must have been reached by a downsampling conv on the same input).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        transposed: bool = False,
    ):
        super().__init__()
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError(f"a stride-1 (submanifold) conv needs an odd kernel_size, got {kernel_size}")
        if stride != 1 and (stride, kernel_size) != (2, 2):
            raise ValueError(f"strided convs support kernel_size=2, stride=2 only, got {kernel_size}, {stride}")
        if transposed and stride == 1:
            raise ValueError("a transposed conv needs stride 2 (a stride-1 transpose is a submanifold conv)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.transposed = kernel_size, stride, dilation, transposed
        self.kernel = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.backend = "torch"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same fan-in uniform bound as torchsparse / dense Conv3d.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel.shape[0])
        nn.init.uniform_(self.kernel, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return conv3d(
            x, self.kernel, self.bias, self.kernel_size, self.stride, self.dilation, self.transposed, self.backend
        )

    def extra_repr(self) -> str:
        kind = "transposed" if self.transposed else ("strided" if self.stride > 1 else "submanifold")
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, {kind}, backend={self.backend}"
        )


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over voxels (keys weight/bias/running_mean/running_var like torchsparse)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))


class ReLU(nn.ReLU):
    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(torch.relu(x.feats))


def conv_bn(
    x: SparseTensor, conv: Conv3d, norm: BatchNorm, relu: bool, residual: SparseTensor | None = None
) -> SparseTensor:
    """conv -> BN (-> + residual) (-> ReLU). With BN in eval mode the BN is folded into the conv
    (kernel scaled per output channel, shift as bias), which saves two full passes over the
    features per layer; the residual and ReLU then run inside the conv's pass where the backend can."""
    if norm.training:
        out = norm(conv(x))
        return out.replace_feats(epilogue(out.feats, None if residual is None else residual.feats, relu))
    scale, shift = bn_affine(conv, norm)
    return conv3d(
        x,
        conv.kernel,
        shift,
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        conv.transposed,
        conv.backend,
        residual=residual,
        relu=relu,
        scale=scale,
    )


def folded(conv: Conv3d, norm: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel * scale, shift): conv followed by eval-mode BN as one conv (for graph exporters)."""
    scale, shift = bn_affine(conv, norm)
    return conv.kernel * scale, shift


def bn_affine(conv: Conv3d | nn.Linear, norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C_out,): conv (or a Linear) followed by eval-mode BN is
    ``scale * conv_nobias(x) + shift``.
    The kernel itself is not scaled here: the fused CPU kernel applies the scale to each output
    block in cache, and a scaled copy of every kernel per forward cost ~5% of it (other paths scale
    the kernel when they run; caching a scaled copy would double the weights' memory)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return scale, shift


def cat(tensors: list[SparseTensor]) -> SparseTensor:
    """Concatenate features of tensors on the same coordinates (U-Net skip connections)."""
    first = tensors[0]
    for t in tensors[1:]:
        if t.cache is not first.cache or t.stride != first.stride:
            raise ValueError("cat needs tensors on the same coordinates and stride")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))


def set_backend(module: nn.Module, backend: str) -> None:
    """Switch every sparse Conv3d inside ``module`` to ``backend`` (weights unchanged)."""
    check_backend(backend)
    for m in module.modules():
        if isinstance(m, Conv3d):
            m.backend = backend

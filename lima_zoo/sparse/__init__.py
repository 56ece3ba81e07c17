"""Pure-PyTorch sparse convolution engine (with optional spconv execution).

Split like torchsparse: ``tensor`` (SparseTensor + coordinate cache), ``kmap`` (kernel maps from
coordinates), ``functional`` (gather-GEMM-scatter compute), ``nn`` (modules), ``backends``.
"""

from .backends import available_backends
from .functional import clear_workspace, sparse_conv
from .kmap import KernelMap, kernel_offsets
from .nn import BatchNorm, Conv3d, ReLU, cat, conv_bn, set_backend
from .tensor import SparseTensor

__all__ = [
    "SparseTensor",
    "KernelMap",
    "kernel_offsets",
    "sparse_conv",
    "clear_workspace",
    "Conv3d",
    "BatchNorm",
    "ReLU",
    "cat",
    "conv_bn",
    "set_backend",
    "available_backends",
]

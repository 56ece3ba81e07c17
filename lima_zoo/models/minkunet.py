"""MinkUNet-14/18/34 on the sparse engine (the torchsparse MinkUNet of SuperFlow / LiMA).

Layout (MinkUNet-34): stem ``conv0`` = two 3x3x3 conv-BN-ReLU 4->32->32; encoder ``conv1..conv4``
(k2 s2 conv-BN-ReLU keeping the width) each followed by ``block1..block4`` of BasicBlocks [2,3,4,6]
with planes [32,64,128,256]; decoder ``conv5..conv8`` (k2 s2 transposed conv-BN-ReLU to
[256,128,96,96]) each followed by concatenation with the encoder skip and ``block5..block8`` of
BasicBlocks [2,2,2,2]. Output: 96 channels at stride 1.

``width`` scales every layer's channels (torchsparse's channel ratio ``cr``): at 0.5 the planes are
[16, 32, 64, 128, 128, 64, 48, 48] from a 16-channel stem, a quarter of the multiply-adds.

Module and parameter names follow that lineage (``conv0.0.conv.kernel``, ``block1.0.norm1.weight``,
``block5.0.downsample.conv.kernel``, ...), so its checkpoints load through
:func:`convert_torchsparse_state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sparse import BatchNorm, Conv3d, ReLU, SparseTensor, cat, conv_bn
from .common import check_architecture, scaled

__all__ = ["MinkUNet", "LAYERS", "PLANES", "convert_torchsparse_state_dict"]

STEM = 32
PLANES = (32, 64, 128, 256, 256, 128, 96, 96)
LAYERS = {
    "minkunet14": (1, 1, 1, 1, 1, 1, 1, 1),
    "minkunet18": (2, 2, 2, 2, 2, 2, 2, 2),
    "minkunet34": (2, 3, 4, 6, 2, 2, 2, 2),
}


class ConvModule(nn.Module):
    """Conv3d -> BatchNorm (-> ReLU)."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, transposed=False, activate=True, bn_momentum=0.1):
        super().__init__()
        self.conv = Conv3d(c_in, c_out, kernel_size, stride=stride, transposed=transposed)
        self.norm = BatchNorm(c_out, momentum=bn_momentum)
        self.relu = ReLU() if activate else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        return conv_bn(x, self.conv, self.norm, relu=self.relu is not None)


class BasicBlock(nn.Module):
    """Two 3x3x3 conv-BN with a residual (1x1x1 conv-BN projection when widths differ)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = Conv3d(c_in, c_out, 3)
        self.norm1 = BatchNorm(c_out, momentum=bn_momentum)
        self.conv2 = Conv3d(c_out, c_out, 3)
        self.norm2 = BatchNorm(c_out, momentum=bn_momentum)
        self.downsample = ConvModule(c_in, c_out, 1, activate=False, bn_momentum=bn_momentum) if c_in != c_out else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        residual = self.downsample(x) if self.downsample is not None else x
        out = conv_bn(x, self.conv1, self.norm1, relu=True)
        return conv_bn(out, self.conv2, self.norm2, relu=True, residual=residual)


class MinkUNet(nn.Module):
    """Sparse U-Net.  forward: SparseTensor (N voxels, in_channels) -> SparseTensor (N, round(96 * width))."""

    point_output = False  # rows are voxels; the encoder maps them back to points

    def __init__(self, depth: str = "minkunet34", in_channels: int = 4, width: float = 1.0, bn_momentum: float = 0.05):
        super().__init__()
        layers, m = check_architecture("MinkUNet", depth, LAYERS, width), bn_momentum
        planes, base_channels = [scaled(p, width) for p in PLANES], scaled(STEM, width)
        self.out_channels = planes[-1]
        self.conv0 = nn.Sequential(
            ConvModule(in_channels, base_channels, 3, bn_momentum=m),
            ConvModule(base_channels, base_channels, 3, bn_momentum=m),
        )
        width = base_channels
        skips = [base_channels]
        for i in range(4):  # encoder: downsample keeping the width, then blocks to planes[i]
            setattr(self, f"conv{i + 1}", ConvModule(width, width, 2, stride=2, bn_momentum=m))
            setattr(self, f"block{i + 1}", self._blocks(width, planes[i], layers[i], m))
            width = planes[i]
            skips.append(width)
        for i in range(4, 8):  # decoder: upsample, concatenate the skip, blocks
            setattr(self, f"conv{i + 1}", ConvModule(width, planes[i], 2, stride=2, transposed=True, bn_momentum=m))
            skip = skips[7 - i]
            setattr(self, f"block{i + 1}", self._blocks(planes[i] + skip, planes[i], layers[i], m))
            width = planes[i]

    @staticmethod
    def _blocks(c_in: int, c_out: int, n: int, m: float) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(c_in if j == 0 else c_out, c_out, m) for j in range(n)])

    def forward(self, x: SparseTensor) -> SparseTensor:
        skips = [self.conv0(x)]
        out = skips[0]
        for i in range(1, 5):
            out = getattr(self, f"block{i}")(getattr(self, f"conv{i}")(out))
            skips.append(out)
        for i in range(5, 9):
            out = getattr(self, f"conv{i}")(out)
            out = getattr(self, f"block{i}")(cat([out, skips[8 - i]]))
        return out


def convert_torchsparse_state_dict(state: dict[str, torch.Tensor], prefix: str = "") -> tuple[dict, list[str]]:
    """Map a torchsparse-lineage MinkUNet state dict onto ours.

    The mapping is: strip ``prefix`` (e.g. "backbone_3d." or "backbone."); keep every name; a
    1x1x1 ``kernel`` stored as (C_in, C_out) becomes (1, C_in, C_out). Kernel-offset order is the
    same (see ``lima_zoo.sparse.kmap``). Returns the converted dict and the keys that did not
    carry the prefix (left out, for the caller to report).
    """
    out, skipped = {}, []
    for key, value in state.items():
        if not key.startswith(prefix):
            skipped.append(key)
            continue
        name = key[len(prefix) :]
        if name.endswith(".kernel") and value.dim() == 2:
            value = value.unsqueeze(0)
        out[name] = value
    return out, skipped

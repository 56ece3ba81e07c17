"""SPVCNN: a sparse voxel U-Net with a point branch (SPVNAS, Tang et al. 2020; torchsparse lineage).

Voxel branch: ``stem`` (two 3x3x3 conv-BN-ReLU) at stride 1; ``stage1..4``, each a k2 s2
conv-BN-ReLU then residual blocks, to strides 2..16; ``up1..4``, each a k2 s2 transposed
conv-BN-ReLU, concatenation with the encoder's skip and residual blocks, back to stride 1.
Channels [32, 32, 64, 128, 256, 256, 128, 96, 96] times ``width``.

Point branch (every input point keeps its own feature, sparse/points.py): the stem's voxels are
read at each point by trilinear interpolation (z0); the points are averaged back into voxels for the
encoder; after stage 4, after up2 and after up4 the points read the voxel features again and add a
point-wise MLP (Linear-BN-ReLU, ``point_transforms``) of their previous features (z1, z2, z3); the
next stage starts from the points averaged into voxels. Output: (N points, 96 * width).

Depths: ``spvcnn34`` has MinkUNet-34's residual blocks (2, 3, 4, 6 down; 2, 2, 2, 2 up);
``spvcnn18`` has torchsparse's SPVCNN's (2 everywhere). Module and parameter names are
torchsparse's (``stem.0.kernel``, ``stage1.1.net.3.kernel``, ``up1.1.0.downsample.1.weight``,
``point_transforms.0.1.running_mean``), so its checkpoints convert with ``lima-zoo convert``
(a 1x1x1 ``kernel`` stored as (C_in, C_out) gains the offset axis; ``classifier.*`` is left out).
Left out from that lineage: the dropout before up1 and up3 (a segmentation regulariser; it would
make a resumed pretraining run draw different masks).
"""

from __future__ import annotations

import torch
from torch import nn

from ..sparse import BatchNorm, Conv3d, ReLU, SparseTensor, cat, conv_bn
from ..sparse.points import PointFeatures, devoxelize, voxelize_mean
from ..voxelize import Voxels
from .common import check_architecture, scaled

__all__ = ["SPVCNN", "SPVCNN_LAYERS", "CHANNELS"]

CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)
SPVCNN_LAYERS = {
    "spvcnn18": (2, 2, 2, 2, 2, 2, 2, 2),
    "spvcnn34": (2, 3, 4, 6, 2, 2, 2, 2),
}


class _ConvBlock(nn.Module):
    """``net`` = conv-BN-ReLU (torchsparse's BasicConvolutionBlock / BasicDeconvolutionBlock)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, transposed: bool = False, m: float = 0.1
    ):
        super().__init__()
        self.net = nn.Sequential(
            Conv3d(c_in, c_out, kernel_size, stride=stride, transposed=transposed), BatchNorm(c_out, momentum=m), ReLU()
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        return conv_bn(x, self.net[0], self.net[1], relu=True)


class _ResidualBlock(nn.Module):
    """``net`` = conv-BN-ReLU-conv-BN, plus ``downsample`` (1x1x1 conv-BN when widths differ); ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, m: float):
        super().__init__()
        self.net = nn.Sequential(
            Conv3d(c_in, c_out, 3),
            BatchNorm(c_out, momentum=m),
            ReLU(),
            Conv3d(c_out, c_out, 3),
            BatchNorm(c_out, momentum=m),
        )
        self.downsample = (
            nn.Sequential(Conv3d(c_in, c_out, 1), BatchNorm(c_out, momentum=m)) if c_in != c_out else nn.Identity()
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        residual = (
            x
            if isinstance(self.downsample, nn.Identity)
            else conv_bn(x, self.downsample[0], self.downsample[1], relu=False)
        )
        out = conv_bn(x, self.net[0], self.net[1], relu=True)
        return conv_bn(out, self.net[3], self.net[4], relu=True, residual=residual)


class _Stem(nn.Sequential):
    """conv-BN-ReLU-conv-BN-ReLU at stride 1, as one Sequential (torchsparse's ``stem.0`` ... ``stem.5``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return conv_bn(conv_bn(x, self[0], self[1], relu=True), self[3], self[4], relu=True)


def _point_mlp(c_in: int, c_out: int, m: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out, momentum=m), nn.ReLU())


class SPVCNN(nn.Module):
    """Point-voxel U-Net.  point_features: Voxels (with points) -> (N points, out_channels)."""

    point_output = True  # one output row per input point (the encoder maps nothing back)

    def __init__(self, depth: str = "spvcnn34", in_channels: int = 4, width: float = 1.0, bn_momentum: float = 0.05):
        super().__init__()
        layers, m = check_architecture("SPVCNN", depth, SPVCNN_LAYERS, width), bn_momentum
        cs = [scaled(c, width) for c in CHANNELS]
        self.out_channels = cs[8]
        self.stem = _Stem(
            Conv3d(in_channels, cs[0], 3),
            BatchNorm(cs[0], momentum=m),
            ReLU(),
            Conv3d(cs[0], cs[0], 3),
            BatchNorm(cs[0], momentum=m),
            ReLU(),
        )
        for i in range(4):  # stage i+1: cs[i] -> cs[i+1] at stride 2^(i+1)
            blocks = [_ResidualBlock(cs[i] if j == 0 else cs[i + 1], cs[i + 1], m) for j in range(layers[i])]
            setattr(self, f"stage{i + 1}", nn.Sequential(_ConvBlock(cs[i], cs[i], 2, stride=2, m=m), *blocks))
        skips = [cs[3], cs[2], cs[1], cs[0]]
        for i in range(4):  # up i+1: cs[4+i] -> cs[5+i], then the skip of the matching stage
            c_in, c_out = cs[4 + i], cs[5 + i]
            blocks = [_ResidualBlock(c_out + skips[i] if j == 0 else c_out, c_out, m) for j in range(layers[4 + i])]
            setattr(
                self,
                f"up{i + 1}",
                nn.ModuleList([_ConvBlock(c_in, c_out, 2, stride=2, transposed=True, m=m), nn.Sequential(*blocks)]),
            )
        self.point_transforms = nn.ModuleList(
            [_point_mlp(cs[0], cs[4], m), _point_mlp(cs[4], cs[6], m), _point_mlp(cs[6], cs[8], m)]
        )

    def point_features(self, vox: Voxels) -> torch.Tensor:
        """(N, out_channels): one row per point of ``vox``, in input order."""
        if vox.grid is None or vox.point_feats is None:
            raise ValueError("SPVCNN needs the points with their voxels: voxelize(..., keep_points=True)")
        points = PointFeatures(
            vox.point_feats, vox.grid, {("cell", 1): vox.inverse}
        )  # stride 1: the voxelizer's own map
        # the stem's input is the mean of each voxel's points (torchsparse's initial_voxelize)
        x = SparseTensor(vox.feats, vox.coords)
        x0 = self.stem(voxelize_mean(points, x))
        z0 = points.with_feats(devoxelize(x0, points))
        x1 = self.stage1(voxelize_mean(z0, x0))
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        z1 = z0.with_feats(devoxelize(x4, z0) + self.point_transforms[0](z0.feats))
        y1 = self._up(self.up1, voxelize_mean(z1, x4), x3)
        y2 = self._up(self.up2, y1, x2)
        z2 = z1.with_feats(devoxelize(y2, z1) + self.point_transforms[1](z1.feats))
        y3 = self._up(self.up3, voxelize_mean(z2, y2), x1)
        y4 = self._up(self.up4, y3, x0)
        return devoxelize(y4, z2) + self.point_transforms[2](z2.feats)

    @staticmethod
    def _up(up: nn.ModuleList, x: SparseTensor, skip: SparseTensor) -> SparseTensor:
        return up[1](cat([up[0](x), skip]))

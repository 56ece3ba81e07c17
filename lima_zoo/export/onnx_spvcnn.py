"""SPVCNN (point-voxel) as an ONNX graph: points and kernel maps in, per-point features out.

The voxel branch is the MinkUNet graph's own gather -> GEMM -> bucketed-sum convs on the same
kernel-map inputs (``onnx_builder.py``). The point branch adds two moves, written without a scatter
for the reason that graph has none (onnxruntime's CPU ScatterElements(add) is an order of magnitude
slower than the gathers below; docs/performance.md):

* **points -> voxels (mean).** The points of each level-0 voxel are summed with the bucketed
  tables of ``runtime.voxel_inputs.sum_tables`` (``cell_sum{w}``, a row per voxel listing its points; widths
  up to 131072 points in one voxel), then carried up level by level with the stride-2 maps' own
  tables (a coarse voxel's sum is its <= 8 children's), and divided by ``count{l}``. Only a
  level-0 table is needed however deep the mean, and every sum has at most 8 terms above level 0.
* **voxels -> points (trilinear).** ``corners{l}`` (8, N) are each point's 8 surrounding voxel rows
  at level l (in the graph's row order), ``weights{l}`` (8, N) their renormalised trilinear weights
  (absent corners weigh 0), exactly the engine's ``sparse/points.py`` look-ups: 8 Gathers, 8 Muls.

Inputs: :mod:`lima_zoo.runtime.point_voxel_inputs`.

Output ``features``: (N, 96 * width) per point in input order (or the head output, as for MinkUNet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.spvcnn import SPVCNN
from ..runtime.point_voxel_inputs import CELL_WIDTHS, POINT_VOXEL_INPUT_NAMES, point_input_shape
from ..runtime.voxel_inputs import DOWN_WIDTHS, input_shape
from ..sparse.nn import bn_affine
from .onnx_builder import Graph, add_head, finish_model

if TYPE_CHECKING:
    import onnx

__all__ = ["build_spvcnn_onnx"]


class PointVoxelGraph(Graph):
    """The voxel graph's convs plus the point branch's two moves; ``spvcnn`` mirrors SPVCNN.point_features."""

    def __init__(self):
        super().__init__()
        self._corner_reads: dict[int, list[tuple[str, str]]] = {}

    def voxel_mean(self, points: str, channels: int, level: int) -> str:
        """(M_level, C): the mean of the per-point ``points`` (N, C) in each voxel of ``level``."""
        summed = self.bucket_sums(self.op("Concat", [points, self.zero_row(channels)], axis=0), "cell_sum", CELL_WIDTHS)
        summed = self.op("Gather", [summed, "cell_rank"], "cell_sums", axis=0)
        for k in range(level):  # a level-(k+1) voxel sums its children (the stride-2 map's tables)
            children = self.op(
                "Concat", [self.op("Gather", [summed, f"down{k}_in"], axis=0), self.zero_row(channels)], axis=0
            )
            summed = self.op(
                "Gather", [self.bucket_sums(children, f"down{k}_sum", DOWN_WIDTHS), f"down{k}_parents"], "sums", axis=0
            )
        return self.op("Div", [summed, f"count{level}"], "mean")

    def devoxelize(self, x: str, level: int) -> str:
        """(N, C): every point's trilinear read of the level's voxel features ``x`` (M_level, C)."""
        if level not in self._corner_reads:  # each corner's rows (N,) and weights (N, 1), sliced once
            reads = []
            for k in range(8):
                at = self.tensor(np.array(k, np.int64), "corner")
                weight = self.op("Gather", [f"weights{level}", at], axis=0)
                reads.append(
                    (self.op("Gather", [f"corners{level}", at], axis=0), self.op("Unsqueeze", [weight, self.ints(1)]))
                )
            self._corner_reads[level] = reads
        out = None
        for rows, weight in self._corner_reads[level]:
            term = self.op("Mul", [self.op("Gather", [x, rows], axis=0), weight])
            out = term if out is None else self.op("Add", [out, term])
        return out

    def point_mlp(self, points: str, mlp: torch.nn.Sequential) -> str:
        """Linear -> BatchNorm1d (eval, folded into the Linear) -> ReLU on (N, C) points."""
        linear, norm = mlp[0], mlp[1]
        scale, shift = bn_affine(linear, norm)
        weight, bias = (linear.weight.t() * scale).detach(), shift.detach()
        return self.op(
            "Relu", [self.op("Add", [self.op("MatMul", [points, self.tensor(weight, "w")]), self.tensor(bias, "b")])]
        )

    def stage(self, x: str, level: int, stage: torch.nn.Sequential) -> tuple[str, int]:
        """A stride-2 conv-BN-ReLU then residual blocks: level -> level + 1."""
        x, level = self.conv_bn(x, level, stage[0].net[0], stage[0].net[1], relu=True)
        return self.blocks(x, level, stage[1:]), level

    def up(self, x: str, level: int, up: torch.nn.ModuleList, skip: str) -> tuple[str, int]:
        """A transposed conv-BN-ReLU, the skip concatenated, residual blocks: level -> level - 1."""
        x, level = self.conv_bn(x, level, up[0].net[0], up[0].net[1], relu=True)
        return self.blocks(self.op("Concat", [x, skip], axis=1), level, up[1]), level

    def blocks(self, x: str, level: int, blocks) -> str:
        for b in blocks:
            shortcut = None if isinstance(b.downsample, torch.nn.Identity) else (b.downsample[0], b.downsample[1])
            x = self.residual(x, level, (b.net[0], b.net[1]), (b.net[3], b.net[4]), shortcut)
        return x

    def spvcnn(self, net: SPVCNN, in_channels: int) -> str:
        """Mirrors SPVCNN.point_features (the parity test checks the two agree)."""
        mlps = net.point_transforms
        cs = [mlps[0][0].in_features, mlps[0][0].out_features, mlps[1][0].out_features]  # z0, z1, z2 widths
        x, _ = self.conv_bn(self.voxel_mean("point_feats", in_channels, 0), 0, net.stem[0], net.stem[1], relu=True)
        x0, _ = self.conv_bn(x, 0, net.stem[3], net.stem[4], relu=True)
        z0 = self.devoxelize(x0, 0)
        x1, level = self.stage(self.voxel_mean(z0, cs[0], 0), 0, net.stage1)
        x2, level = self.stage(x1, level, net.stage2)
        x3, level = self.stage(x2, level, net.stage3)
        x4, level = self.stage(x3, level, net.stage4)
        z1 = self.op("Add", [self.devoxelize(x4, 4), self.point_mlp(z0, net.point_transforms[0])])
        y1, level = self.up(self.voxel_mean(z1, cs[1], 4), 4, net.up1, x3)
        y2, level = self.up(y1, level, net.up2, x2)
        z2 = self.op("Add", [self.devoxelize(y2, 2), self.point_mlp(z1, net.point_transforms[1])])
        y3, level = self.up(self.voxel_mean(z2, cs[2], 2), 2, net.up3, x1)
        y4, level = self.up(y3, level, net.up4, x0)
        return self.op("Add", [self.devoxelize(y4, 0), self.point_mlp(z2, net.point_transforms[2])], "backbone")


def build_spvcnn_onnx(encoder) -> "onnx.ModelProto":
    """An SPVCNN encoder (eval mode, BN folded) as an ONNX model with this module's inputs."""
    from onnx import TensorProto, helper

    g = PointVoxelGraph()
    add_head(g, encoder, g.spvcnn(encoder.backbone, encoder.config.in_channels))
    inputs = [
        helper.make_tensor_value_info("point_feats", TensorProto.FLOAT, ["points", encoder.config.in_channels]),
        helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, []),
    ]
    for name in POINT_VOXEL_INPUT_NAMES[2:]:
        is_map = name.startswith(("subm", "down"))
        dtype = TensorProto.FLOAT if name.startswith(("count", "weights")) else TensorProto.INT64
        inputs.append(
            helper.make_tensor_value_info(name, dtype, input_shape(name) if is_map else point_input_shape(name))
        )
    return finish_model(g, inputs, "points")

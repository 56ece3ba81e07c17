"""SPVCNN (point-voxel) as an ONNX graph: points and kernel maps in, per-point features out.

The voxel branch is the MinkUNet graph's own gather -> GEMM -> bucketed-sum convs on the same
kernel-map inputs (``onnx_graph.py``). The point branch adds two moves, written without a scatter
for the reason that graph has none (onnxruntime's CPU ScatterElements(add) took 180-320 ms for
100k points x 96 channels, against 11-18 ms for the gathers below):

* **points -> voxels (mean).** The points of each level-0 voxel are summed with the bucketed
  tables of ``onnx_inputs.sum_tables`` (``cell_sum{w}``, a row per voxel listing its points; widths
  up to 131072 points in one voxel), then carried up level by level with the stride-2 maps' own
  tables (a coarse voxel's sum is its <= 8 children's), and divided by ``count{l}``. Only a
  level-0 table is needed however deep the mean, and every sum has at most 8 terms above level 0.
* **voxels -> points (trilinear).** ``corners{l}`` (8, N) are each point's 8 surrounding voxel rows
  at level l (in the graph's row order), ``weights{l}`` (8, N) their renormalised trilinear weights
  (absent corners weigh 0), exactly the engine's ``sparse/points.py`` look-ups: 8 Gathers, 8 Muls.

Inputs, in order (:func:`point_voxel_inputs` builds them; N points, M_l voxels at level l):

* ``point_feats`` (N, C_in) float32 — every point's columns (x, y, z[, intensity]).
* ``teacher_space`` () bool.
* the kernel-map inputs of ``onnx_graph.input_names()`` from ``subm0_in`` on.
* ``cell_sum{w}`` (m_w, w) int64, w in CELL_WIDTHS — the points of each level-0 voxel (N = padding);
  ``cell_rank`` (M_0,) int64 — each voxel's row among those bucket-sorted sums.
* per level l in POINT_LEVELS: ``count{l}`` (M_l, 1) float32 points per voxel, ``corners{l}`` (8, N)
  int64, ``weights{l}`` (8, N) float32.

Output ``features``: (N, 96 * width) per point in input order (or the head output, as for MinkUNet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.spvcnn import SPVCNN
from ..sparse import SparseTensor
from ..sparse.nn import bn_affine
from ..sparse.points import PointFeatures, corner_rows, voxel_rows
from ..voxelize import Voxels
from .onnx_graph import DOWN_WIDTHS, SUBM_WIDTHS, _Graph, _index_shape, add_head, finish_model, input_names
from .onnx_inputs import inverse_permutation, map_inputs, sum_tables

if TYPE_CHECKING:
    import onnx

__all__ = ["POINT_VOXEL_INPUT_NAMES", "CELL_WIDTHS", "POINT_LEVELS", "build_spvcnn_onnx", "point_voxel_inputs"]

# Points per level-0 voxel: exact up to 8, padded by <= 4x beyond 26 (rare: a dense patch near the sensor).
CELL_WIDTHS = SUBM_WIDTHS + (40, 64, 128, 512, 2048, 8192, 32768, 131072)
POINT_LEVELS = (0, 2, 4)  # where SPVCNN's point branch meets the voxels (strides 1, 4, 16)
POINT_VOXEL_INPUT_NAMES = (
    ["point_feats", "teacher_space", *input_names()[4:], *[f"cell_sum{w}" for w in CELL_WIDTHS], "cell_rank"]
    + [f"{name}{level}" for level in POINT_LEVELS for name in ("count", "corners", "weights")]
)


class _PointVoxelGraph(_Graph):
    """The voxel graph's convs plus the point branch's two moves; ``spvcnn`` mirrors SPVCNN.point_features."""

    def __init__(self):
        super().__init__()
        self._corner_reads: dict[int, list[tuple[str, str]]] = {}

    def voxel_mean(self, points: str, channels: int, level: int) -> str:
        """(M_level, C): the mean of the per-point ``points`` (N, C) in each voxel of ``level``."""
        summed = self.bucket_sums(self.op("Concat", [points, self.zero_row(channels)], axis=0), "cell_sum", CELL_WIDTHS)
        summed = self.op("Gather", [summed, "cell_rank"], "cell_sums", axis=0)
        for k in range(level):  # a level-(k+1) voxel sums its children (the stride-2 map's tables)
            children = self.op("Concat", [self.op("Gather", [summed, f"down{k}_in"], axis=0), self.zero_row(channels)], axis=0)
            summed = self.op("Gather", [self.bucket_sums(children, f"down{k}_sum", DOWN_WIDTHS), f"down{k}_parents"], "sums", axis=0)
        return self.op("Div", [summed, f"count{level}"], "mean")

    def devoxelize(self, x: str, level: int) -> str:
        """(N, C): every point's trilinear read of the level's voxel features ``x`` (M_level, C)."""
        if level not in self._corner_reads:  # each corner's rows (N,) and weights (N, 1), sliced once
            reads = []
            for k in range(8):
                at = self.tensor(np.array(k, np.int64), "corner")
                weight = self.op("Gather", [f"weights{level}", at], axis=0)
                reads.append((self.op("Gather", [f"corners{level}", at], axis=0), self.op("Unsqueeze", [weight, self.ints(1)])))
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
        return self.op("Relu", [self.op("Add", [self.op("MatMul", [points, self.tensor(weight, "w")]), self.tensor(bias, "b")])])

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


def _point_shape(name: str) -> list:
    """Symbolic shape of a point-branch input."""
    if name.startswith("cell_sum"):
        return ["cells_rows" + name[8:], int(name[8:])]
    if name == "cell_rank":
        return ["voxels_0"]
    level = name[-1]
    return [f"voxels_{level}", 1] if name.startswith("count") else [8, "points"]


def build_spvcnn_onnx(encoder) -> "onnx.ModelProto":
    """An SPVCNN encoder (eval mode, BN folded) as an ONNX model with this module's inputs."""
    from onnx import TensorProto, helper

    g = _PointVoxelGraph()
    add_head(g, encoder, g.spvcnn(encoder.backbone, encoder.config.in_channels))
    inputs = [helper.make_tensor_value_info("point_feats", TensorProto.FLOAT, ["points", encoder.config.in_channels]),
              helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, [])]  # fmt: skip
    for name in POINT_VOXEL_INPUT_NAMES[2:]:
        is_map = name.startswith(("subm", "down"))
        dtype = TensorProto.FLOAT if name.startswith(("count", "weights")) else TensorProto.INT64
        inputs.append(helper.make_tensor_value_info(name, dtype, _index_shape(name) if is_map else _point_shape(name)))
    return finish_model(g, inputs, "points")


def point_voxel_inputs(vox: Voxels) -> dict[str, np.ndarray]:
    """The graph's inputs for one batch voxelized with its points (``voxelize(..., keep_points=True)``).

    The look-ups are the PyTorch engine's own (``voxel_rows``, ``corner_rows``), renumbered into
    the graph's row order of each level, so both runtimes read the same voxels with the same weights.
    """
    base = SparseTensor(vox.feats.cpu(), vox.coords.cpu())
    arrays, ranks = map_inputs(base.cache)
    points = PointFeatures(vox.point_feats.cpu(), vox.grid.cpu(), {("cell", 1): vox.inverse.cpu()})
    for level in POINT_LEVELS:
        stride = 2**level
        at_level = SparseTensor.derived(torch.empty(len(base.cache.coords[stride]), 0), base, stride=stride)
        rows = voxel_rows(points, at_level).numpy()
        count = np.bincount(rows, minlength=at_level.num_voxels)
        arrays[f"count{level}"] = count[inverse_permutation(ranks[level])].astype(np.float32)[:, None]  # graph row order
        if level == 0:
            if count.max() > CELL_WIDTHS[-1]:
                raise ValueError(f"a voxel holds {count.max()} points; the ONNX graph sums at most {CELL_WIDTHS[-1]} per voxel "
                                 "(embed this scan with the torch runtime)")  # fmt: skip
            tables, order = sum_tables(ranks[0][rows], at_level.num_voxels, CELL_WIDTHS)
            arrays.update({f"cell_sum{w}": t for w, t in tables.items()})
            arrays["cell_rank"] = inverse_permutation(order)
        corners, weights = corner_rows(points, at_level)
        arrays[f"corners{level}"] = np.ascontiguousarray(ranks[level][corners.numpy()].T)
        arrays[f"weights{level}"] = np.ascontiguousarray(weights.numpy().T.astype(np.float32))
    arrays.update(point_feats=points.feats.float().numpy(), teacher_space=np.array(False))
    return {name: arrays[name] for name in POINT_VOXEL_INPUT_NAMES}

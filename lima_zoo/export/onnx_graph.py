"""A LiMAEncoder as a self-contained ONNX graph: voxel features + kernel maps in, features out.

What is inside the graph and what is not (measured, see docs/sparse-engine.md and
benchmarks/bench_onnx.py): kernel maps are *inputs*. Building them in the graph is possible (a
sort/TopK + cumsum formulation exports, ``searchsorted`` does not) but onnxruntime needs ~125 ms
for the level-0 map alone, while our runtime builds all maps in a few ms
(:func:`lima_zoo.export.onnx_runtime.graph_inputs`). The inputs are the torch engine's own
:class:`~lima_zoo.sparse.kmap.KernelMap` fields, so the graph and the PyTorch engine consume the
very same pairs.

Inputs (N_l = voxels at level l = stride 2**l, l = 0..4; P = pairs):

* ``feats`` (N_0, C_in) float32 — voxel features from voxelization.
* ``teacher_space`` () bool — False: backbone features; True: the distillation head's output.
* ``level_sizes`` (5,) int64 — N_0..N_4.
* ``subm{l}_in`` / ``subm{l}_out`` (P,) int64, ``subm{l}_bounds`` (28,) int64 — the 3x3x3
  submanifold map of level l (centre offset excluded; offset k owns pairs [bounds[k], bounds[k+1])).
* ``down{l}_in`` / ``down{l}_out`` (N_l,) int64, ``down{l}_bounds`` (9,) int64, l = 0..3 — the
  stride-2 map from level l to l+1 (every voxel has one parent; grouped by child offset).

Output: ``features`` — (N_0, 96) backbone features, or with ``teacher_space`` the (N_0, head_dim)
L2-normalised distillation head output (an ``If`` node, so the head costs nothing when unused).

How each op is accumulated, and why:

* submanifold conv: centre offset as one MatMul (+ folded BN shift), then per offset k
  Gather -> MatMul -> ScatterND(reduction="add"). Within one offset every output row appears at
  most once, so the scatter never has duplicate indices (onnxruntime's ScatterND splits indices
  over threads, and duplicate indices then race — the failure sparse-engine.md records).
* stride-2 conv: per child offset the same Gather -> MatMul -> ScatterND(add) into zeros (a parent
  has at most one child per offset).
* transposed conv: every fine voxel receives exactly one product, so no scatter at all: the
  per-offset products are concatenated (rows in ``down_in`` order) and gathered back into fine-row
  order with the inverse permutation (``TopK`` of ``down_in``, ascending).
* BatchNorm is folded into the conv kernels (eval mode), exactly as the PyTorch engine does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.minkunet import BasicBlock, ConvModule, MinkUNet
from ..sparse.nn import _folded

if TYPE_CHECKING:
    import onnx

__all__ = ["build_onnx_model", "export_onnx", "OPSET", "NUM_LEVELS", "input_names"]

OPSET = 18  # ScatterND reduction="add" needs >= 16; 18 is what onnxruntime >= 1.14 fully covers
NUM_LEVELS = 5  # MinkUNet strides 1, 2, 4, 8, 16
SUBM_VOLUME = 27


def input_names() -> list[str]:
    """Graph input names, in order."""
    names = ["feats", "teacher_space", "level_sizes"]
    for level in range(NUM_LEVELS):
        names += [f"subm{level}_in", f"subm{level}_out", f"subm{level}_bounds"]
    for level in range(NUM_LEVELS - 1):
        names += [f"down{level}_in", f"down{level}_out", f"down{level}_bounds"]
    return names


class _Graph:
    """Accumulates nodes and initializers; every ``op`` returns the name of its (first) output."""

    def __init__(self, prefix: str = ""):
        from onnx import helper

        self.helper = helper
        self.prefix = prefix  # a subgraph's names must not shadow the outer graph's
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._level_pairs: dict[tuple, tuple[list[str], list[str]]] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs) -> str:
        """Append a node; its output is ``output`` or a fresh name from ``hint``."""
        return self.multi_op(op_type, inputs, [output or self.name(hint or op_type.lower())], **attrs)[0]

    def multi_op(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs

    def tensor(self, value: torch.Tensor | np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def ints(self, *values: int) -> str:
        """A shared int64 1-D constant."""
        key = ("i64", values)
        if key not in self._consts:
            self._consts[key] = self.tensor(np.array(values, dtype=np.int64), "const")
        return self._consts[key]

    def pairs(self, kind: str, level: int, volume: int) -> tuple[list[str], list[str]]:
        """Per-offset (input rows, output rows) slices of a map input, built once per level."""
        key = (kind, level)
        if key not in self._level_pairs:
            bounds = f"{kind}{level}_bounds"
            ins, outs = [], []
            for k in range(volume):
                start = self.op("Slice", [bounds, self.ints(k), self.ints(k + 1)], "start")
                stop = self.op("Slice", [bounds, self.ints(k + 1), self.ints(k + 2)], "stop")
                ins.append(self.op("Slice", [f"{kind}{level}_in", start, stop], f"{kind}{level}_in{k}"))
                out = self.op("Slice", [f"{kind}{level}_out", start, stop], f"{kind}{level}_out{k}")
                outs.append(self.op("Unsqueeze", [out, self.ints(1)], f"{kind}{level}_idx{k}"))
            self._level_pairs[key] = (ins, outs)
        return self._level_pairs[key]

    # --------------------------------------------------------------------------- layers

    def scatter_offsets(self, acc: str, x: str, kernel: torch.Tensor, ins: list[str], outs: list[str], skip: int | None) -> str:
        """acc += for each offset k != skip: scatter(outs[k], x[ins[k]] @ kernel[k])."""
        for k in range(kernel.shape[0]):
            if k == skip:
                continue
            products = self.op("MatMul", [self.op("Gather", [x, ins[k]], axis=0), self.tensor(kernel[k], "w")])
            acc = self.op("ScatterND", [acc, outs[k], products], "acc", reduction="add")
        return acc

    def conv_bn(self, x: str, level: int, conv, norm, relu: bool) -> tuple[str, int]:
        """conv + eval-mode BN (folded) (+ ReLU) on level ``level``; returns (output, its level)."""
        kernel, shift = _folded(conv, norm)
        kernel, shift = kernel.detach(), shift.detach()
        if conv.kernel_size == 1:
            out = self.op("Add", [self.op("MatMul", [x, self.tensor(kernel[0], "w")]), self.tensor(shift, "shift")])
            out_level = level
        elif conv.stride == 1:
            if conv.kernel_size != 3 or conv.dilation != 1:
                raise ValueError(f"ONNX export supports 3x3x3 submanifold convs only, got kernel {conv.kernel_size} dilation {conv.dilation}")
            ins, outs = self.pairs("subm", level, SUBM_VOLUME)
            centre = SUBM_VOLUME // 2
            acc = self.op("Add", [self.op("MatMul", [x, self.tensor(kernel[centre], "w")]), self.tensor(shift, "shift")])
            out, out_level = self.scatter_offsets(acc, x, kernel, ins, outs, skip=centre), level
        elif not conv.transposed:
            ins, outs = self.pairs("down", level, 8)
            rows = self.op("Slice", ["level_sizes", self.ints(level + 1), self.ints(level + 2)])
            shape = self.op("Concat", [rows, self.ints(kernel.shape[2])], axis=0)
            zeros = self.op("ConstantOfShape", [shape], value=self.helper.make_tensor("zero", 1, [1], [0.0]))
            acc = self.op("Add", [zeros, self.tensor(shift, "shift")])
            out, out_level = self.scatter_offsets(acc, x, kernel, ins, outs, skip=None), level + 1
        else:
            out_level = level - 1
            ins, outs = self.pairs("down", out_level, 8)  # fine rows ins[k], their parents outs[k]
            parts = []
            for k in range(8):
                parents = self.op("Squeeze", [outs[k], self.ints(1)])
                parts.append(self.op("MatMul", [self.op("Gather", [x, parents], axis=0), self.tensor(kernel[k], "w")]))
            stacked = self.op("Concat", parts, axis=0)  # rows in down_in order
            inverse = self.inverse_permutation(f"down{out_level}_in")
            out = self.op("Add", [self.op("Gather", [stacked, inverse], axis=0), self.tensor(shift, "shift")])
        return (self.op("Relu", [out]) if relu else out), out_level

    def inverse_permutation(self, perm: str) -> str:
        """inv with inv[perm[i]] = i, via an ascending TopK over the whole permutation (no scatter)."""
        key = ("inverse", perm)
        if key not in self._consts:
            count = self.op("Shape", [perm])
            outputs = [self.name("sorted"), self.name("inverse")]
            self._consts[key] = self.multi_op("TopK", [perm, count], outputs, axis=0, largest=0, sorted=1)[1]
        return self._consts[key]

    def block(self, x: str, level: int, block: BasicBlock) -> str:
        out, _ = self.conv_bn(x, level, block.conv1, block.norm1, relu=True)
        out, _ = self.conv_bn(out, level, block.conv2, block.norm2, relu=False)
        residual = x
        if block.downsample is not None:
            residual, _ = self.module(x, level, block.downsample)
        return self.op("Relu", [self.op("Add", [out, residual])])

    def module(self, x: str, level: int, module: ConvModule) -> tuple[str, int]:
        return self.conv_bn(x, level, module.conv, module.norm, relu=module.relu is not None)

    def minkunet(self, x: str, net: MinkUNet) -> str:
        """Mirrors MinkUNet.forward (the parity test checks the two agree)."""
        level = 0
        for m in net.conv0:
            x, level = self.module(x, level, m)
        skips = [x]
        for i in range(1, 5):
            x, level = self.module(x, level, getattr(net, f"conv{i}"))
            for b in getattr(net, f"block{i}"):
                x = self.block(x, level, b)
            skips.append(x)
        for i in range(5, 9):
            x, level = self.module(x, level, getattr(net, f"conv{i}"))
            x = self.op("Concat", [x, skips[8 - i]], axis=1)
            for b in getattr(net, f"block{i}"):
                x = self.block(x, level, b)
        return x


def build_onnx_model(encoder) -> "onnx.ModelProto":
    """The encoder (eval mode, BN folded) as an ONNX model; see the module docstring for the I/O."""
    from onnx import TensorProto, helper

    backbone = encoder.backbone
    if not isinstance(backbone, MinkUNet):
        raise ValueError(f"ONNX export supports MinkUNet backbones, got {type(backbone).__name__}")
    g = _Graph()
    backbone_out = g.minkunet("feats", backbone)
    # The head runs only when asked for: onnxruntime executes every node of a graph whatever outputs
    # are requested, so a second output would cost ~5% of every backbone-only run.
    head, h = encoder.head.proj, _Graph(prefix="head/")
    projected = h.op("Add", [h.op("MatMul", [backbone_out, g.tensor(head.weight.detach().t(), "head_w")]), g.tensor(head.bias.detach(), "head_b")])
    # F.normalize: x / max(||x||, 1e-12)
    norm = h.op("Max", [h.op("ReduceL2", [projected, g.ints(1)], keepdims=1), g.tensor(np.array(1e-12, np.float32), "eps")])
    h.op("Div", [projected, norm], output="head_out")
    out_info = [helper.make_tensor_value_info("head_out", TensorProto.FLOAT, None)]
    teacher_branch = helper.make_graph(h.nodes, "teacher_head", [], out_info)
    backbone_branch = helper.make_graph([helper.make_node("Identity", [backbone_out], ["backbone_out"])], "backbone",
                                        [], [helper.make_tensor_value_info("backbone_out", TensorProto.FLOAT, None)])
    g.op("If", ["teacher_space"], output="features", then_branch=teacher_branch, else_branch=backbone_branch)

    c_in = encoder.config.in_channels
    inputs = [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["voxels", c_in]),
              helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, []),
              helper.make_tensor_value_info("level_sizes", TensorProto.INT64, [NUM_LEVELS])]
    for name in input_names()[3:]:
        if name.endswith("_bounds"):
            shape = [SUBM_VOLUME + 1 if name.startswith("subm") else 9]
        else:
            level = name.split("_")[0]
            shape = [f"pairs_{level}"] if name.startswith("subm") else [f"voxels_{level}"]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, shape))
    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["voxels", "channels"])]
    graph = helper.make_graph(g.nodes, "lima_encoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lima-zoo")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model


def export_onnx(encoder, out_dir: str | Path, tolerance: float = 1e-4) -> Path:
    """Write ``out_dir``/model.onnx (atomically) and check onnxruntime reproduces the PyTorch
    features of a reference scan to ``tolerance`` (max abs diff), in both feature spaces."""
    import onnx

    from ..atomic import atomic_path
    from ..synth.scan import street_scan
    from .onnx_runtime import OnnxEncoder

    out = Path(out_dir) / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_onnx_model(encoder.eval())
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        runner = OnnxEncoder(tmp, encoder.config)
        scan = street_scan(seed=0)[:, :4]
        for space in ("backbone", "teacher") if encoder.config.head_dim else ("backbone",):
            diff = float(np.abs(encoder.embed(scan, space=space) - runner.embed(scan, space=space)).max())
            if not diff <= tolerance:
                raise RuntimeError(f"{out}: onnxruntime differs from PyTorch by {diff:.3g} ({space} features; tolerance {tolerance:g})")
    return out

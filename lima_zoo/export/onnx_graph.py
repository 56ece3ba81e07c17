"""A LiMAEncoder as a self-contained ONNX graph: voxel features + kernel maps in, features out.

What is inside the graph and what is not (measured, see docs/sparse-engine.md and
benchmarks/bench_onnx.py): kernel maps are *inputs*. Building them in the graph is possible (a
sort/TopK + cumsum formulation exports, ``searchsorted`` does not) but onnxruntime needs ~125 ms
for the level-0 map alone, while our runtime builds and lays out all maps in ~20 ms
(:func:`lima_zoo.export.onnx_inputs.graph_inputs`). The inputs are the torch engine's own
:class:`~lima_zoo.sparse.kmap.KernelMap` pairs (rows renumbered), so the graph and the PyTorch
engine consume the very same pairs.

Inputs (N_l = voxels at level l = stride 2**l, l = 0..4; P = pairs; all built by
:func:`lima_zoo.export.onnx_inputs.graph_inputs`, which documents the layout):

* ``feats`` (N_0, C_in) float32 — voxel features from voxelization.
* ``teacher_space`` () bool — False: backbone features; True: the distillation head's output.
* ``voxel_order`` / ``voxel_rank`` (N_0,) int64 — level-0 rows into the graph's internal row order
  and back (every level's rows are grouped by neighbour-count bucket inside the graph).
* ``subm{l}_in`` (P,), ``subm{l}_bounds`` (28,) int64 — input rows of the 3x3x3 submanifold map of
  level l, grouped by offset (centre excluded; offset k owns pairs [bounds[k], bounds[k+1])).
* ``subm{l}_sum{w}`` (m_w, w) int64, w in SUBM_WIDTHS — which products each output row sums.
* ``down{l}_in`` / ``down{l}_out`` (N_l,), ``down{l}_bounds`` (9,), ``down{l}_sum{w}`` (w in
  DOWN_WIDTHS), ``down{l}_parents`` (N_{l+1},), ``down{l}_slot`` (N_l,), l = 0..3 — the stride-2
  map from level l to l+1 (every voxel has one parent; grouped by child offset).

Output: ``features`` — (N_0, 96) backbone features, or with ``teacher_space`` the (N_0, head_dim)
L2-normalised distillation head output (an ``If`` node, so the head costs nothing when unused).

How each conv sums its pairs without a scatter, and why: onnxruntime's CPU ScatterND copies its
whole (N, C) data input on every call (no in-place kernel), which cost 48% of the forward with one
scatter per offset; ScatterElements is slower still, and a single ScatterND over duplicate indices
races across threads (sparse-engine.md). So every conv is gather -> GEMM -> gather-and-reduce:

* per offset k: ``Gather(x, in_k) @ W_k`` (W_k a constant, so onnxruntime pre-packs it); the
  products are concatenated offset-major with one zero row appended;
* submanifold: each output row sums its products as ``ReduceSum(Gather(products, sum_w))`` per
  neighbour-count bucket; the buckets concatenate straight into the level's row order; the centre
  offset is a plain ``x @ W_centre`` (+ folded BN shift) added on top;
* stride-2: the same bucketed sum over parents, then one Gather into the coarse level's order;
* transposed: every fine voxel receives exactly one product: a single Gather (``down_slot``).
* BatchNorm is folded into the conv kernels (eval mode), exactly as the PyTorch engine does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import POINT_VOXEL_BACKBONES, RANGE_VIEW_BACKBONES
from ..models.minkunet import BasicBlock, ConvModule, MinkUNet
from ..sparse.nn import _folded

if TYPE_CHECKING:
    import onnx

__all__ = ["build_onnx_model", "export_onnx", "add_head", "finish_model", "OPSET", "NUM_LEVELS", "input_names"]

OPSET = 18  # every op used exists since opset 13; 18 is what onnxruntime >= 1.14 fully covers
NUM_LEVELS = 5  # MinkUNet strides 1, 2, 4, 8, 16
SUBM_VOLUME = 27
# Sum-bucket widths: an output row with n pairs is summed in the bucket of the smallest width >= n
# (missing pairs read a zero row). Exact up to 8, where nearly all rows are; the few rows above are
# padded by at most 30%. The last width is the most pairs a row can have (26 neighbours, 8 children).
SUBM_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 19, 26)
DOWN_WIDTHS = (1, 2, 3, 4, 6, 8)


def input_names() -> list[str]:
    """Graph input names, in order."""
    names = ["feats", "teacher_space", "voxel_order", "voxel_rank"]
    for level in range(NUM_LEVELS):
        names += [f"subm{level}_in", f"subm{level}_bounds"] + [f"subm{level}_sum{w}" for w in SUBM_WIDTHS]
    for level in range(NUM_LEVELS - 1):
        names += [f"down{level}_in", f"down{level}_out", f"down{level}_bounds"]
        names += [f"down{level}_sum{w}" for w in DOWN_WIDTHS] + [f"down{level}_parents", f"down{level}_slot"]
    return names


class _Graph:
    """Accumulates nodes and initializers; every ``op`` returns the name of its output."""

    def __init__(self, prefix: str = ""):
        from onnx import helper

        self.helper = helper
        self.prefix = prefix  # a subgraph's names must not shadow the outer graph's
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._level_pairs: dict[str, list[str]] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs) -> str:
        """Append a node; its output is ``output`` or a fresh name from ``hint``."""
        out = output or self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def tensor(self, value: torch.Tensor | np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = self.name(hint)
        # (np.ascontiguousarray would turn a 0-d scalar, e.g. a Gather index that drops its axis, into shape (1,))
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr) if arr.ndim else arr, name))
        return name

    def ints(self, *values: int) -> str:
        """A shared int64 1-D constant."""
        key = ("i64", values)
        if key not in self._consts:
            self._consts[key] = self.tensor(np.array(values, dtype=np.int64), "const")
        return self._consts[key]

    def pairs(self, name: str, volume: int) -> list[str]:
        """Per-offset slices of the map input ``name`` (e.g. "down2_out"), built once per graph."""
        if name not in self._level_pairs:
            bounds = name.split("_")[0] + "_bounds"
            slices = []
            for k in range(volume):
                start = self.op("Slice", [bounds, self.ints(k), self.ints(k + 1)], "start")
                stop = self.op("Slice", [bounds, self.ints(k + 1), self.ints(k + 2)], "stop")
                slices.append(self.op("Slice", [name, start, stop], f"{name}{k}"))
            self._level_pairs[name] = slices
        return self._level_pairs[name]

    # --------------------------------------------------------------------------- layers

    def products(self, x: str, kernel: torch.Tensor, rows: list[str], skip: int | None = None) -> str:
        """Concat over offsets k != skip of x[rows[k]] @ kernel[k], plus one zero row -> (P + 1, C_out)."""
        parts = [self.op("MatMul", [self.op("Gather", [x, rows[k]], axis=0), self.tensor(kernel[k], "w")])
                 for k in range(kernel.shape[0]) if k != skip]
        return self.op("Concat", [*parts, self.zero_row(kernel.shape[2])], "products", axis=0)

    def zero_row(self, channels: int) -> str:
        """A shared (1, channels) float zero: the row that the sum tables' padding reads."""
        key = ("zero_row", channels)
        if key not in self._consts:
            self._consts[key] = self.tensor(np.zeros((1, channels), np.float32), "zero_row")
        return self._consts[key]

    def bucket_sums(self, products: str, tables: str, widths: tuple[int, ...]) -> str:
        """Row sums of ``products`` picked by the per-bucket tables ``{tables}{w}``, buckets concatenated."""
        sums = []
        for w in widths:
            picked = self.op("Gather", [products, f"{tables}{w}"], axis=0)  # (m_w, w, C)
            # width 1 needs no sum: a Squeeze is free in onnxruntime, a ReduceSum would copy
            sums.append(self.op("Squeeze", [picked, self.ints(1)]) if w == 1 else
                        self.op("ReduceSum", [picked, self.ints(1)], "sum", keepdims=0))
        return self.op("Concat", sums, "sums", axis=0)

    def conv_bn(self, x: str, level: int, conv, norm, relu: bool) -> tuple[str, int]:
        """conv + eval-mode BN (folded) (+ ReLU) on level ``level``; returns (output, its level)."""
        kernel, shift = _folded(conv, norm)
        kernel, shift = kernel.detach(), self.tensor(shift.detach(), "shift")
        if conv.kernel_size == 1:
            out, out_level = self.op("Add", [self.op("MatMul", [x, self.tensor(kernel[0], "w")]), shift]), level
        elif conv.stride == 1:
            if conv.kernel_size != 3 or conv.dilation != 1:
                raise ValueError(f"ONNX export supports 3x3x3 submanifold convs only, got kernel {conv.kernel_size} dilation {conv.dilation}")
            centre = SUBM_VOLUME // 2
            products = self.products(x, kernel, self.pairs(f"subm{level}_in", SUBM_VOLUME), skip=centre)
            sums = self.bucket_sums(products, f"subm{level}_sum", SUBM_WIDTHS)  # already in row order
            own = self.op("Add", [self.op("MatMul", [x, self.tensor(kernel[centre], "w")]), shift])
            out, out_level = self.op("Add", [own, sums]), level
        elif not conv.transposed:
            products = self.products(x, kernel, self.pairs(f"down{level}_in", 8))
            sums = self.bucket_sums(products, f"down{level}_sum", DOWN_WIDTHS)  # parents in bucket order
            out = self.op("Add", [self.op("Gather", [sums, f"down{level}_parents"], axis=0), shift])
            out_level = level + 1
        else:
            out_level = level - 1  # fine voxel i has one product, at pair down_slot[i]
            products = self.products(x, kernel, self.pairs(f"down{out_level}_out", 8))
            out = self.op("Add", [self.op("Gather", [products, f"down{out_level}_slot"], axis=0), shift])
        return (self.op("Relu", [out]) if relu else out), out_level

    def residual(self, x: str, level: int, first: tuple, second: tuple, shortcut: tuple | None) -> str:
        """relu(conv-BN(relu(conv-BN(x))) + x or its conv-BN ``shortcut``): each argument a (conv, norm) pair."""
        out, _ = self.conv_bn(x, level, *first, relu=True)
        out, _ = self.conv_bn(out, level, *second, relu=False)
        residual = x if shortcut is None else self.conv_bn(x, level, *shortcut, relu=False)[0]
        return self.op("Relu", [self.op("Add", [out, residual])])

    def block(self, x: str, level: int, block: BasicBlock) -> str:
        shortcut = None if block.downsample is None else (block.downsample.conv, block.downsample.norm)
        return self.residual(x, level, (block.conv1, block.norm1), (block.conv2, block.norm2), shortcut)

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


def _index_shape(name: str) -> list:
    """Symbolic shape of an index input (dims named after what they count)."""
    head, tail = name.split("_", 1)
    if tail == "bounds":
        return [SUBM_VOLUME + 1 if head.startswith("subm") else 9]
    if tail.startswith("sum"):
        return [f"{head}_rows{tail[3:]}", int(tail[3:])]
    if head.startswith("subm"):
        return [f"pairs_{head}"]
    level = int(head[-1]) if head[-1].isdigit() else 0  # voxel_order / voxel_rank: level 0
    return [f"voxels_{level + 1 if tail == 'parents' else level}"]


def add_head(g: _Graph, encoder, backbone_out: str) -> None:
    """Append the ``features`` output: ``If(teacher_space)`` the distillation head on
    ``backbone_out`` (Linear + L2 normalisation), else ``backbone_out`` itself."""
    from onnx import TensorProto, helper

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


def finish_model(g: _Graph, inputs: list, rows: str) -> "onnx.ModelProto":
    """``g``'s nodes and initializers with ``inputs`` (value infos) as a model whose one output is
    ``features`` (``rows`` x channels), at this package's opset and IR version."""
    from onnx import TensorProto, helper

    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [rows, "channels"])]
    graph = helper.make_graph(g.nodes, "lima_encoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lima-zoo")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model


def build_onnx_model(encoder) -> "onnx.ModelProto":
    """The encoder (eval mode, BN folded) as an ONNX model; see the module docstring for the I/O
    (FRNet's range-view graph: ``onnx_frnet.py``; SPVCNN's point-voxel graph: ``onnx_spvcnn.py``)."""
    from onnx import TensorProto, helper

    if encoder.config.backbone in RANGE_VIEW_BACKBONES:
        from .onnx_frnet import build_frnet_onnx

        return build_frnet_onnx(encoder)
    if encoder.config.backbone in POINT_VOXEL_BACKBONES:
        from .onnx_spvcnn import build_spvcnn_onnx

        return build_spvcnn_onnx(encoder)
    if not isinstance(encoder.backbone, MinkUNet):
        raise ValueError(f"ONNX export has no graph writer for a {type(encoder.backbone).__name__} backbone "
                         f"({encoder.config.backbone}); export --format safetensors and embed with the torch runtime")  # fmt: skip
    g = _Graph()
    rows = g.op("Gather", ["feats", "voxel_order"], "rows", axis=0)  # into the graph's row order
    add_head(g, encoder, g.op("Gather", [g.minkunet(rows, encoder.backbone), "voxel_rank"], "backbone", axis=0))
    c_in = encoder.config.in_channels
    inputs = [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["voxels_0", c_in]),
              helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, [])]
    for name in input_names()[2:]:
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, _index_shape(name)))
    return finish_model(g, inputs, "voxels_0")


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

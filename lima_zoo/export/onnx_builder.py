"""The ONNX graph builder the sparse writers share: nodes and initializers, and the scatter-free
sparse convolution (gather -> GEMM -> bucketed gather-and-reduce) on the kernel-map inputs of
:mod:`lima_zoo.runtime.voxel_inputs`.

Why no scatter: onnxruntime's CPU ScatterND copies its whole (N, C) data input on every call (no
in-place kernel), ScatterElements is slower still, and a single ScatterND over duplicate indices
races across threads (docs/performance.md has the measurements). So every conv is:

* per offset k: ``Gather(x, in_k) @ W_k`` (W_k a constant, so onnxruntime pre-packs it); the
  products are concatenated offset-major with one zero row appended;
* submanifold: each output row sums its products as ``ReduceSum(Gather(products, sum_w))`` per
  neighbour-count bucket; the buckets concatenate straight into the level's row order; the centre
  offset is a plain ``x @ W_centre`` (+ folded BN shift) added on top;
* stride-2: the same bucketed sum over parents, then one Gather into the coarse level's order;
* transposed: every fine voxel receives exactly one product: a single Gather (``down_slot``).
* BatchNorm is folded into the conv kernels (eval mode), exactly as the PyTorch engine does.

The distillation head sits behind ``If(teacher_space)`` (:func:`add_head`), so it costs nothing
when only backbone features are asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..runtime.voxel_inputs import DOWN_WIDTHS, SUBM_VOLUME, SUBM_WIDTHS
from ..sparse.nn import folded

if TYPE_CHECKING:
    import onnx

__all__ = ["Graph", "add_head", "finish_model", "OPSET", "BACKBONE_OUT"]

OPSET = 18  # every op used exists since opset 13; 18 is what onnxruntime >= 1.14 fully covers
BACKBONE_OUT = "backbone_features"  # the (rows, out_dim) backbone features inside every graph


class Graph:
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
        parts = [
            self.op("MatMul", [self.op("Gather", [x, rows[k]], axis=0), self.tensor(kernel[k], "w")])
            for k in range(kernel.shape[0])
            if k != skip
        ]
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
            sums.append(
                self.op("Squeeze", [picked, self.ints(1)])
                if w == 1
                else self.op("ReduceSum", [picked, self.ints(1)], "sum", keepdims=0)
            )
        return self.op("Concat", sums, "sums", axis=0)

    def conv_bn(self, x: str, level: int, conv, norm, relu: bool) -> tuple[str, int]:
        """conv + eval-mode BN (folded) (+ ReLU) on level ``level``; returns (output, its level)."""
        kernel, shift = folded(conv, norm)
        kernel, shift = kernel.detach(), self.tensor(shift.detach(), "shift")
        if conv.kernel_size == 1:
            out, out_level = self.op("Add", [self.op("MatMul", [x, self.tensor(kernel[0], "w")]), shift]), level
        elif conv.stride == 1:
            if conv.kernel_size != 3 or conv.dilation != 1:
                raise ValueError(
                    f"ONNX export supports 3x3x3 submanifold convs only, got kernel {conv.kernel_size} dilation "
                    f"{conv.dilation}"
                )
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


def add_head(g: Graph, encoder, backbone_out: str) -> None:
    """Append the ``features`` output: ``If(teacher_space)`` the distillation head on
    ``backbone_out`` (Linear + L2 normalisation), else ``backbone_out`` itself. The backbone rows
    are also named ``BACKBONE_OUT``, where a segmentation head attaches (``onnx_segmenter.py``)."""
    from onnx import TensorProto, helper

    backbone_out = g.op("Identity", [backbone_out], output=BACKBONE_OUT)

    # The head runs only when asked for: onnxruntime executes every node of a graph whatever outputs
    # are requested, so a second output would cost ~5% of every backbone-only run.
    head, h = encoder.head.proj, Graph(prefix="head/")
    projected = h.op(
        "Add",
        [
            h.op("MatMul", [backbone_out, g.tensor(head.weight.detach().t(), "head_w")]),
            g.tensor(head.bias.detach(), "head_b"),
        ],
    )
    # F.normalize: x / max(||x||, 1e-12)
    norm = h.op(
        "Max", [h.op("ReduceL2", [projected, g.ints(1)], keepdims=1), g.tensor(np.array(1e-12, np.float32), "eps")]
    )
    h.op("Div", [projected, norm], output="head_out")
    out_info = [helper.make_tensor_value_info("head_out", TensorProto.FLOAT, None)]
    teacher_branch = helper.make_graph(h.nodes, "teacher_head", [], out_info)
    backbone_branch = helper.make_graph(
        [helper.make_node("Identity", [backbone_out], ["backbone_out"])],
        "backbone",
        [],
        [helper.make_tensor_value_info("backbone_out", TensorProto.FLOAT, None)],
    )
    g.op("If", ["teacher_space"], output="features", then_branch=teacher_branch, else_branch=backbone_branch)


def finish_model(g: Graph, inputs: list, rows: str) -> "onnx.ModelProto":
    """``g``'s nodes and initializers with ``inputs`` (value infos) as a model whose one output is
    ``features`` (``rows`` x channels), at this package's opset and IR version."""
    from onnx import TensorProto, helper

    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [rows, "channels"])]
    graph = helper.make_graph(g.nodes, "lima_encoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lima-zoo")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    return model

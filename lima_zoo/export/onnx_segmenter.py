"""A segmentation head inside an exported graph: the encoder's model.onnx gains a ``logits`` output
(rows x C) or a ``labels`` output (rows, int64 class indices) computed from its backbone features.

The eval-mode head (BatchNorm + Linear) is one affine map, folded into a single MatMul + Add on the
graph's ``BACKBONE_OUT`` rows; the graph's ``features`` output stays as it was, so the folder still
embeds. The rows are the graph's own (voxels for MinkUNet, points for SPVCNN and FRNet); the runtime
maps them to points as it does features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .onnx_builder import BACKBONE_OUT

if TYPE_CHECKING:
    import onnx

__all__ = ["add_segmentation_head", "HEAD_OUTPUTS"]

HEAD_OUTPUTS = {"logits": "logits", "ids": "labels"}  # --head-output -> the graph output's name


def add_segmentation_head(model: "onnx.ModelProto", weight: np.ndarray, bias: np.ndarray, output: str) -> None:
    """Add the head ``logits = features @ weight + bias`` ((out_dim, C), (C,)) to ``model`` in place,
    as the output ``logits``, or (``output="ids"``) as ``labels``: their argmax per row."""
    from onnx import TensorProto, helper, numpy_helper

    if output not in HEAD_OUTPUTS:
        raise ValueError(f"head output {output!r}: choose from {', '.join(HEAD_OUTPUTS)}")
    graph = model.graph
    if not any(BACKBONE_OUT in n.output for n in graph.node):
        raise ValueError(f"the graph has no {BACKBONE_OUT!r} rows to attach a head to; re-export the encoder")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), "seg_head_w"),
            numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), "seg_head_b"),
        ]
    )
    rows = graph.output[0].type.tensor_type.shape.dim[0].dim_param
    product = helper.make_node("MatMul", [BACKBONE_OUT, "seg_head_w"], ["seg_head_product"])
    graph.node.extend([product, helper.make_node("Add", ["seg_head_product", "seg_head_b"], ["logits"])])
    if output == "logits":
        graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [rows, len(bias)]))
    else:
        graph.node.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
        graph.output.append(helper.make_tensor_value_info("labels", TensorProto.INT64, [rows]))

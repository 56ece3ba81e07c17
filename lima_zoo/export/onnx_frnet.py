"""FRNet (range view) as an ONNX graph: one scan's points and pixels in, per-point features out.

A range-view network is dense 2-D convolutions plus per-point gathers and per-pixel max / sum
scatters, all standard ONNX ops, so unlike the sparse voxel nets (``onnx_minkunet.py``, hand-written
graph around kernel maps) it is traced from :meth:`FRNet.range_forward` with torch's TorchScript
exporter. The distillation head is then appended behind the same ``If(teacher_space)`` as for
MinkUNet (``onnx_builder.add_head``).

Inputs: :mod:`lima_zoo.runtime.range_inputs`. The range image's size is part of the graph (it is the
model's config.json contract).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..runtime.range_inputs import RANGE_INPUT_NAMES, range_feeds
from .onnx_builder import OPSET, Graph, add_head, finish_model

if TYPE_CHECKING:
    import onnx

__all__ = ["build_frnet_onnx"]


class _OneScan(nn.Module):
    """FRNet.range_forward with the batch fixed to one image: the module torch traces."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, point_feats: torch.Tensor, inverse: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.range_forward(point_feats, inverse, pixels, batch=1)


def build_frnet_onnx(encoder) -> "onnx.ModelProto":
    """An FRNet encoder (eval mode) as an ONNX model with the inputs of this module's docstring."""
    import onnx
    from onnx import TensorProto, helper

    from ..runtime.cells import range_project
    from ..synth.scan import street_scan

    # Any scan will do for tracing: every size is symbolic (points, pixels) and the graph has no branch on the data.
    scan = street_scan(seed=0)[:2000, : encoder.config.in_channels]
    example = tuple(range_feeds(range_project([scan], encoder.config.preprocess))[0][k] for k in RANGE_INPUT_NAMES[:3])
    buf = io.BytesIO()
    with (
        warnings.catch_warnings()
    ):  # TracerWarnings about Python ints (the image size: constants on purpose) and the exporter's deprecation note
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _OneScan(encoder.backbone).eval(),
            tuple(torch.from_numpy(a) for a in example),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=RANGE_INPUT_NAMES[:3],
            output_names=["backbone"],
            dynamic_axes={"point_feats": {0: "points"}, "inverse": {0: "points"}, "pixels": {0: "pixels"}},
        )
    traced = onnx.load_from_string(buf.getvalue()).graph
    g = Graph(prefix="lima/")
    g.nodes, g.initializers = list(traced.node), list(traced.initializer)
    add_head(g, encoder, "backbone")
    inputs = [*traced.input, helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, [])]
    return finish_model(g, inputs, "points")

"""FRNet (range view) as an ONNX graph: one scan's points and pixels in, per-point features out.

A range-view network is dense 2-D convolutions plus per-point gathers and per-pixel max / sum
scatters, all standard ONNX ops, so unlike the sparse voxel nets (``onnx_graph.py``, hand-written
graph around kernel maps) it is traced from :meth:`FRNet.range_forward` with torch's TorchScript
exporter. The distillation head is then appended behind the same ``If(teacher_space)`` as for
MinkUNet (``onnx_graph.add_head``).

Inputs (one scan per run; :func:`range_feeds` splits a batch, and BatchNorm in eval mode treats
scans independently, so a batch run scan by scan gives the same features):

* ``point_feats`` (N, C_in) float32 — every point's columns (x, y, z[, intensity]).
* ``inverse`` (N,) int64 — each point's row of ``pixels``.
* ``pixels`` (M, 4) int64 — the occupied pixels [0, row, col, 0] (range_view.range_project).
* ``teacher_space`` () bool — as for MinkUNet.

Output ``features``: (N, 96) backbone features (or the L2-normalised head output), one per point.
The range image's size is part of the graph (it is the model's config.json contract).
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..voxelize import Voxels
from .onnx_graph import OPSET, _Graph, add_head, finish_model

if TYPE_CHECKING:
    import onnx

__all__ = ["RANGE_INPUT_NAMES", "build_frnet_onnx", "range_feeds"]

RANGE_INPUT_NAMES = ["point_feats", "inverse", "pixels", "teacher_space"]


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

    from ..range_view import range_project
    from ..synth.scan import street_scan

    # Any scan will do for tracing: every size is symbolic (points, pixels) and the graph has no branch on the data.
    vox = range_project([encoder.prepare(street_scan(seed=0)[:2000])], encoder.config.preprocess)
    example = tuple(range_feeds(vox)[0][k] for k in RANGE_INPUT_NAMES[:3])
    buf = io.BytesIO()
    with warnings.catch_warnings():  # TracerWarnings about Python ints (the image size: constants on purpose) and the exporter's deprecation note
        warnings.simplefilter("ignore")
        torch.onnx.export(_OneScan(encoder.backbone).eval(), tuple(torch.from_numpy(a) for a in example), buf, dynamo=False,
                          opset_version=OPSET, input_names=RANGE_INPUT_NAMES[:3], output_names=["backbone"],
                          dynamic_axes={"point_feats": {0: "points"}, "inverse": {0: "points"}, "pixels": {0: "pixels"}})  # fmt: skip
    traced = onnx.load_from_string(buf.getvalue()).graph
    g = _Graph(prefix="lima/")
    g.nodes, g.initializers = list(traced.node), list(traced.initializer)
    add_head(g, encoder, "backbone")
    inputs = [*traced.input, helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, [])]
    return finish_model(g, inputs, "points")


def range_feeds(vox: Voxels) -> list[dict[str, np.ndarray]]:
    """A range_project batch -> one feed dict per scan (``pixels`` with batch index 0), in batch order.

    The points of scan b are contiguous (range_project concatenates the scans), as are its pixels (sorted by batch first).
    """
    coords = vox.coords.to(torch.int64).cpu()
    inverse = vox.inverse.to(torch.int64).cpu()
    feats = vox.point_feats.float().cpu()
    scans = int(coords[-1, 0]) + 1
    pixel_ends = torch.bincount(coords[:, 0], minlength=scans).cumsum(0).tolist()
    point_ends = torch.bincount(coords[inverse, 0], minlength=scans).cumsum(0).tolist()
    feeds, p0, q0 = [], 0, 0
    for p1, q1 in zip(pixel_ends, point_ends):
        pixels = coords[p0:p1].clone()
        pixels[:, 0] = 0
        feeds.append({"point_feats": feats[q0:q1].numpy(), "inverse": (inverse[q0:q1] - p0).numpy(), "pixels": pixels.numpy()})
        p0, q0 = p1, q1
    return feeds

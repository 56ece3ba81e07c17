"""MinkUNet as an ONNX graph: voxel features + kernel maps in, per-voxel features out.

Inputs: :mod:`lima_zoo.runtime.voxel_inputs` (kernel maps are inputs; the graph sums each conv's
pairs with the builder's scatter-free convs, :mod:`lima_zoo.export.onnx_builder`).

Output: ``features`` — (N_0, 96) backbone features, or with ``teacher_space`` the (N_0, head_dim)
L2-normalised distillation head output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models.minkunet import BasicBlock, ConvModule, MinkUNet
from ..runtime.voxel_inputs import input_names, input_shape
from .onnx_builder import Graph, add_head, finish_model

if TYPE_CHECKING:
    import onnx

__all__ = ["MinkUNetGraph", "build_minkunet_onnx"]


class MinkUNetGraph(Graph):
    """The builder plus MinkUNet's blocks; ``minkunet`` mirrors MinkUNet.forward."""

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


def build_minkunet_onnx(encoder) -> "onnx.ModelProto":
    """A MinkUNet encoder (eval mode, BN folded) as an ONNX model with the inputs of
    :mod:`lima_zoo.runtime.voxel_inputs`."""
    from onnx import TensorProto, helper

    if not isinstance(encoder.backbone, MinkUNet):
        raise ValueError(
            f"ONNX export has no graph writer for a {type(encoder.backbone).__name__} backbone "
            f"({encoder.config.backbone}); export --format safetensors and embed with the torch runtime"
        )
    g = MinkUNetGraph()
    rows = g.op("Gather", ["feats", "voxel_order"], "rows", axis=0)  # into the graph's row order
    add_head(g, encoder, g.op("Gather", [g.minkunet(rows, encoder.backbone), "voxel_rank"], "backbone", axis=0))
    c_in = encoder.config.in_channels
    inputs = [
        helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["voxels_0", c_in]),
        helper.make_tensor_value_info("teacher_space", TensorProto.BOOL, []),
    ]
    for name in input_names()[2:]:
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, input_shape(name)))
    return finish_model(g, inputs, "voxels_0")

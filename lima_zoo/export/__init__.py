"""Deployable artifacts: safetensors encoder folders, a self-contained ONNX graph and its onnxruntime
runner, converted torchsparse-lineage checkpoints. May import core, never training; onnx and
onnxruntime are imported only when used."""

from .convert import ConversionReport, convert_checkpoint
from .onnx_graph import build_onnx_model, export_onnx
from .onnx_inputs import graph_inputs
from .onnx_runtime import OnnxEncoder
from .safetensors import export_safetensors, load_encoder_source

__all__ = ["export_safetensors", "load_encoder_source", "build_onnx_model", "export_onnx", "OnnxEncoder", "graph_inputs",
           "convert_checkpoint", "ConversionReport"]

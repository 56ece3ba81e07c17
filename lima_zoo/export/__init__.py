"""Writing deployable artifacts: safetensors encoder folders, ONNX graphs (verified with the
runtime before they are kept), model cards and Hub uploads, converted torchsparse-lineage
checkpoints. May import core, never training; onnx is imported only when used. Reading an
exported model is :mod:`lima_zoo.runtime`'s job.
"""

from .convert import ConversionReport, convert_checkpoint
from .folder import convert_to_folder, export_folder
from .onnx_export import build_onnx_model, export_onnx
from .safetensors import export_safetensors

__all__ = [
    "export_folder",
    "convert_to_folder",
    "export_safetensors",
    "build_onnx_model",
    "export_onnx",
    "convert_checkpoint",
    "ConversionReport",
]

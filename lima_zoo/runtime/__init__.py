"""Everything that *reads* an exported model: the onnxruntime encoder and segmenter, and the builders of its graph
inputs (voxel kernel maps, SPVCNN's point-voxel look-ups, FRNet's range feeds). Imports no export
module and no click; onnxruntime is imported only when a model is opened.
"""

from .onnx_encoder import OnnxEncoder
from .onnx_segmenter import OnnxSegmenter

__all__ = ["OnnxEncoder", "OnnxSegmenter"]

"""lima-zoo: LiMA-pretrained LiDAR encoders and the tools to train, evaluate and export them.

Public API (loaded on first use, so ``import lima_zoo`` stays cheap and never imports torch,
timm, onnx or the training package):

    LiMAEncoder, LiMASegmenter, load_encoder, load_segmenter, create_encoder, list_models, get_model_info,
    load_points
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LiMAEncoder": "lima_zoo.encoder",
    "load_encoder": "lima_zoo.loading",
    "load_segmenter": "lima_zoo.loading",
    "create_encoder": "lima_zoo.loading",
    "list_models": "lima_zoo.registry",
    "get_model_info": "lima_zoo.registry",
    "load_points": "lima_zoo.io",
    "LiMASegmenter": "lima_zoo.segmenter",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lima_zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

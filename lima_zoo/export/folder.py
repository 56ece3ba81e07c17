"""Export folders, written whole or not at all: each is built and verified in a staging folder that
then replaces the output folder, so a crash leaves the old export as it was and no file of an
earlier export survives beside a new config.json.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..atomic import atomic_dir
from ..config import PreprocessConfig
from ..loading import load_encoder
from .convert import ConversionReport, convert_checkpoint
from .onnx_export import export_onnx
from .safetensors import export_safetensors

__all__ = ["export_folder", "convert_to_folder", "EXPORT_FILES"]

EXPORT_FILES = ("config.json", "model.safetensors", "model.onnx")  # what an export folder may hold


def export_folder(source: str | os.PathLike, out_dir: str | os.PathLike, formats: list[str]) -> list[str]:
    """Export ``source`` (an encoder folder or a training checkpoint) as ``formats`` ("safetensors",
    "onnx") into ``out_dir``, each verified; returns the file names written."""
    if "onnx" in formats:  # before minutes of loading and verifying: the extra is there or not
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install 'lima-zoo[onnx]'")
    encoder = load_encoder(source)
    written: list[str] = []
    with atomic_dir(Path(out_dir), EXPORT_FILES) as stage:
        if "safetensors" in formats:
            export_safetensors(encoder, stage)
            written += ["config.json", "model.safetensors"]
        if "onnx" in formats:
            if "safetensors" not in formats:
                encoder.save_config(stage)
                written.append("config.json")
            export_onnx(encoder, stage)
            written.append("model.onnx")
    return written


def convert_to_folder(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    prefix: str | None = None,
    head: str | None = None,
    preprocess: PreprocessConfig | None = None,
) -> tuple[object, ConversionReport]:
    """Convert a torchsparse-lineage checkpoint (``convert_checkpoint``) into a verified safetensors
    folder; returns (encoder, report of every key's fate)."""
    encoder, report = convert_checkpoint(checkpoint, prefix=prefix, head=head, preprocess=preprocess)
    with atomic_dir(Path(out_dir), EXPORT_FILES) as stage:
        export_safetensors(encoder, stage)
    return encoder, report

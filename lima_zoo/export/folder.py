"""Export folders, written whole or not at all: each is built and verified in a staging folder that
then replaces the output folder, so a crash leaves the old export as it was and no file of an
earlier export survives beside a new config.json.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..atomic import atomic_dir
from ..config import PreprocessConfig
from ..loading import load_encoder
from ..synth.scan import street_scan
from .convert import ConversionReport, convert_checkpoint
from .onnx_export import export_onnx, export_segmenter_onnx
from .onnx_segmenter import HEAD_OUTPUTS
from .safetensors import export_safetensors

__all__ = ["export_folder", "convert_to_folder", "EXPORT_FILES"]

# what an export folder may hold (a segmentation folder adds its head files and model card)
EXPORT_FILES = ("config.json", "model.safetensors", "model.onnx", "head.json", "head.safetensors", "README.md")


def export_folder(
    source: str | os.PathLike, out_dir: str | os.PathLike, formats: list[str], head_output: str = "logits"
) -> list[str]:
    """Export ``source`` (an encoder folder, a training checkpoint, or a segmentation folder: one with
    head.json) as ``formats`` ("safetensors", "onnx") into ``out_dir``, each verified; returns the
    file names written. A segmentation folder's ONNX graph carries the head, its output
    ``head_output`` ("logits" or "ids")."""
    if "onnx" in formats:  # before minutes of loading and verifying: the extra is there or not
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install 'lima-zoo[onnx]'")
    if head_output not in HEAD_OUTPUTS:
        raise ValueError(f"head output {head_output!r}: choose from {', '.join(HEAD_OUTPUTS)}")
    if (Path(source) / "head.json").is_file():
        return _export_segmenter(Path(source), Path(out_dir), formats, head_output)
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


def _export_segmenter(source: Path, out_dir: Path, formats: list[str], head_output: str) -> list[str]:
    """A segmentation folder's export: its head files (and model card) beside each verified format."""
    from ..segmenter import LiMASegmenter

    seg = LiMASegmenter.from_pretrained(source)
    written = ["config.json", "head.json"]
    with atomic_dir(out_dir, EXPORT_FILES) as stage:
        if "safetensors" in formats:
            export_safetensors(seg.encoder, stage)
            seg.save_head(stage)  # beside the verified encoder
            reloaded = LiMASegmenter.from_pretrained(stage)
            scan = street_scan(seed=0)[:, :4]
            if not (reloaded.predict_proba(scan) == seg.predict_proba(scan)).all():
                raise RuntimeError(f"{out_dir}: the reloaded segmenter differs from {source}")
            written += ["model.safetensors", "head.safetensors"]
        else:
            seg.encoder.save_config(stage)
            shutil.copyfile(source / "head.json", stage / "head.json")
        if "onnx" in formats:
            export_segmenter_onnx(seg, stage, head_output)
            written.append("model.onnx")
        if (source / "README.md").is_file():
            shutil.copyfile(source / "README.md", stage / "README.md")
            written.append("README.md")
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

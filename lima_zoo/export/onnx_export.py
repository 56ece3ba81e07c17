"""ONNX export's entry point: pick the graph writer of the encoder's backbone, write model.onnx
atomically, and verify it with onnxruntime against PyTorch before it is kept.

Writers: MinkUNet (``onnx_minkunet.py``), SPVCNN (``onnx_spvcnn.py``), FRNet (``onnx_frnet.py``);
their inputs are documented (and built) in :mod:`lima_zoo.runtime`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import POINT_VOXEL_BACKBONES, RANGE_VIEW_BACKBONES
from .onnx_frnet import build_frnet_onnx
from .onnx_minkunet import build_minkunet_onnx
from .onnx_spvcnn import build_spvcnn_onnx

if TYPE_CHECKING:
    import onnx

__all__ = ["build_onnx_model", "export_onnx", "export_segmenter_onnx"]


def build_onnx_model(encoder) -> "onnx.ModelProto":
    """The encoder (eval mode, BN folded) as an ONNX model: the writer of its backbone's graph."""
    if encoder.config.backbone in RANGE_VIEW_BACKBONES:
        return build_frnet_onnx(encoder)
    if encoder.config.backbone in POINT_VOXEL_BACKBONES:
        return build_spvcnn_onnx(encoder)
    return build_minkunet_onnx(encoder)


def export_onnx(encoder, out_dir: str | Path, tolerance: float = 1e-4) -> Path:
    """Write ``out_dir``/model.onnx (atomically) and check onnxruntime reproduces the PyTorch
    features of a reference scan to ``tolerance`` (max abs diff), in both feature spaces."""
    import onnx

    from ..atomic import atomic_path
    from ..runtime.onnx_encoder import OnnxEncoder
    from ..synth.scan import street_scan

    out = Path(out_dir) / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    model = build_onnx_model(encoder.eval())
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        runner = OnnxEncoder(tmp, encoder.config)
        scan = street_scan(seed=0)[:, :4]
        for space in ("backbone", "teacher") if encoder.config.head_dim else ("backbone",):
            diff = float(np.abs(encoder.embed(scan, space=space) - runner.embed(scan, space=space)).max())
            if not diff <= tolerance:
                raise RuntimeError(
                    f"{out}: onnxruntime differs from PyTorch by {diff:.3g} ({space} features; tolerance {tolerance:g})"
                )
    return out


def export_segmenter_onnx(segmenter, out_dir: str | Path, head_output: str = "logits", tolerance: float = 1e-4) -> Path:
    """Write ``out_dir``/model.onnx with the segmentation head in the graph (``head_output``:
    "logits" or "ids", :mod:`lima_zoo.export.onnx_segmenter`) and ``head.json``, atomically, and
    check onnxruntime reproduces PyTorch on a reference scan: the features and logits to
    ``tolerance``, and every class id whose top two logits are further apart than that."""
    import onnx

    from ..atomic import atomic_path
    from ..runtime.onnx_segmenter import OnnxSegmenter
    from ..synth.scan import street_scan
    from .onnx_segmenter import add_segmentation_head

    out = Path(out_dir) / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    segmenter.eval()
    model = build_onnx_model(segmenter.encoder)
    add_segmentation_head(model, *segmenter.folded_head(), output=head_output)
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
        runner = OnnxSegmenter(tmp, segmenter.config, segmenter.vocabulary)
        scan = street_scan(seed=0)[:, :4]
        features = float(np.abs(segmenter.embed(scan) - runner.embed(scan)).max())
        (logits,) = segmenter.scan_outputs([scan], None)
        top2 = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.zeros((len(logits), 2))
        clear = top2[:, 1] - top2[:, 0] > tolerance
        same = runner.predict(scan)[clear] == logits.argmax(1)[clear]
        diff = 0.0 if head_output == "ids" else float(np.abs(runner.scan_outputs([scan], None)[0] - logits).max())
        if not (features <= tolerance and diff <= tolerance and same.all()):
            raise RuntimeError(
                f"{out}: onnxruntime differs from PyTorch (features by {features:.3g}, logits by {diff:.3g}, "
                f"{int((~same).sum())} class ids; tolerance {tolerance:g})"
            )
    return out

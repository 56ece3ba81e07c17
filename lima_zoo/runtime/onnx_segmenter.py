"""Run an exported segmentation folder with onnxruntime: ``OnnxSegmenter.predict`` ==
``LiMASegmenter.predict``, without PyTorch.

The folder's model.onnx carries the head (``lima-zoo export`` of a segmentation folder): a
``logits`` output, or a ``labels`` output where it was exported with class ids only. Its
``head.json`` holds the class vocabulary. The graph's ``features`` output still embeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import read_config
from ..labels import Vocabulary, read_head_json
from ..segmentation import SegmentationOutputs
from .onnx_encoder import OnnxEncoder

__all__ = ["OnnxSegmenter", "ONNX_HEAD_FILES"]

ONNX_HEAD_FILES = ("head.json",)  # beside config.json and model.onnx


class OnnxSegmenter(SegmentationOutputs, OnnxEncoder):
    """A segmentation folder's model.onnx + config.json + head.json, run with onnxruntime."""

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        config,
        vocabulary: Vocabulary,
        info: dict | None = None,
        device: str | None = None,
        threads: int | None = None,
    ):
        super().__init__(onnx_path, config, device=device, threads=threads)
        outputs = {o.name for o in self.session.get_outputs()}
        head = "logits" if "logits" in outputs else "labels" if "labels" in outputs else None
        if head is None:
            raise ValueError(
                f"{self.path}: this graph has no segmentation head (no 'logits' or 'labels' output); export the "
                "segmentation folder with `lima-zoo export MODEL --format onnx`"
            )
        classes = self.session.get_outputs()[[o.name for o in self.session.get_outputs()].index(head)].shape
        if head == "logits" and isinstance(classes[-1], int) and classes[-1] != len(vocabulary.names):
            raise ValueError(
                f"{self.path}: {classes[-1]} logits per point but head.json names {len(vocabulary.names)} classes"
            )
        self.vocabulary, self.info, self.head_output = vocabulary, dict(info or {}), head
        self.outputs_ids = head == "labels"
        self.spaces = (*OnnxEncoder.spaces, head)

    extra_files = ONNX_HEAD_FILES  # what from_pretrained fetches beside config.json and model.onnx

    @classmethod
    def from_files(cls, files: dict[str, Path], device: str | None = None) -> "OnnxSegmenter":
        vocabulary, info = read_head_json(files["head.json"])
        return cls(files["model.onnx"], read_config(files["config.json"]), vocabulary, info, device=device)

    def scan_outputs(self, scans: list, intensity_range: float | None) -> list[np.ndarray]:
        """Per scan: (N, C) float32 logits, or (N,) int64 class indices for a graph with ``labels``."""
        return self.embed(list(scans), space=self.head_output, intensity_range=intensity_range)

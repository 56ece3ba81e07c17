"""What every segmentation runtime shares, without torch: logits -> probabilities and class ids.

:class:`SegmentationOutputs` is mixed into the PyTorch :class:`~lima_zoo.segmenter.LiMASegmenter`
and the onnxruntime :class:`~lima_zoo.runtime.OnnxSegmenter`; each provides ``logits`` (or, for a
graph exported with class ids only, ``labels``) per scan, and the two turn them into the same
probabilities and ids the same way (float64 softmax, argmax of the logits, first index on a tie).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .labels import Vocabulary

__all__ = ["SegmentationOutputs", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) float32 probabilities (computed in float64; NaN rows stay NaN)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


class SegmentationOutputs:
    """predict / predict_proba / class_names over a runtime's ``scan_outputs``."""

    vocabulary: Vocabulary
    outputs_ids: bool = False  # True: the model gives class ids only (an ONNX graph exported with ids)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    def scan_outputs(self, scans: list, intensity_range: float | None) -> list[np.ndarray]:
        """Per scan: (N, C) float32 logits, or (N,) int64 class indices where ``outputs_ids``."""
        raise NotImplementedError

    def _each(self, points: Any, intensity_range: float | None, fn) -> Any:
        many = isinstance(points, (list, tuple))
        outs = [fn(o) for o in self.scan_outputs(list(points) if many else [points], intensity_range)]
        return outs if many else outs[0]

    def predict_proba(self, points: Any, intensity_range: float | None = None) -> Any:
        """(N, >=3) points (or a list of scans) -> (N, C) float32 class probabilities, rows in input
        order (a list for a list)."""
        if self.outputs_ids:
            raise ValueError("this model outputs class ids only (exported with --head-output ids): no probabilities")
        return self._each(points, intensity_range, softmax)

    def predict(self, points: Any, intensity_range: float | None = None) -> Any:
        """(N, >=3) points (or a list of scans) -> (N,) int64 class indices into ``class_names``
        (evaluation id = index + 1), rows in input order (a list for a list)."""
        return self._each(
            points, intensity_range, lambda o: o.astype(np.int64) if self.outputs_ids else o.argmax(1).astype(np.int64)
        )

"""LiMASegmenter: an encoder with its segmentation head (BatchNorm + Linear), as ``lima-zoo eval``
trains it: per-point class ids and probabilities for a scan.

A segmentation folder is an encoder folder (config.json + model.safetensors, the fine-tuned
weights where the protocol fine-tuned) plus ``head.safetensors`` (the head) and ``head.json``
(the class names and the scores the head was evaluated with). Loading is strict, as for encoders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .encoder import LiMAEncoder
from .weights import load_safetensors, load_state_strict

__all__ = ["LiMASegmenter", "HEAD_FILES"]

HEAD_FILES = ("head.json", "head.safetensors")


class LiMASegmenter(nn.Module):
    """Encoder + BatchNorm1d(out_dim) + Linear(out_dim -> C). Class index c is ``class_names[c]``."""

    def __init__(self, encoder: LiMAEncoder, class_names: tuple[str, ...], info: dict | None = None):
        super().__init__()
        if not class_names:
            raise ValueError("a segmenter needs at least one class name")
        self.encoder, self.class_names, self.info = encoder, tuple(class_names), dict(info or {})
        self.norm = nn.BatchNorm1d(encoder.config.out_dim)
        self.classifier = nn.Linear(encoder.config.out_dim, len(self.class_names))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> "LiMASegmenter":
        """A segmentation folder (``lima-zoo eval --out RUN`` writes ``RUN/model``), loaded strictly."""
        folder = Path(folder)
        missing = [n for n in HEAD_FILES if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: not a segmentation model folder (missing {', '.join(missing)})")
        try:
            meta = json.loads((folder / "head.json").read_text(encoding="utf-8"))
            names = tuple(meta["class_names"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{folder / 'head.json'}: unreadable ({exc})") from None
        encoder = LiMAEncoder.from_pretrained(folder)
        seg = cls(encoder, names, {k: v for k, v in meta.items() if k != "class_names"})
        head = nn.Module()  # the head alone, so its file is checked key for key
        head.norm, head.classifier = seg.norm, seg.classifier
        load_state_strict(head, load_safetensors(folder / "head.safetensors"), folder / "head.safetensors")
        seg.name_or_path = str(folder)
        seg.eval()
        return seg.to(device) if device is not None else seg

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """The encoder's files, ``head.safetensors`` and ``head.json``, each written atomically."""
        from safetensors.torch import save_file

        out = self.encoder.save_pretrained(folder)
        head = {f"norm.{k}": v.detach().cpu().contiguous() for k, v in self.norm.state_dict().items()}
        head.update({f"classifier.{k}": v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()})
        with atomic_path(out / "head.safetensors") as tmp:
            save_file(head, str(tmp), metadata={"format": "pt"})
        with atomic_path(out / "head.json") as tmp:
            tmp.write_text(json.dumps({"class_names": list(self.class_names), **self.info}, indent=1) + "\n")
        return out

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, out_dim) encoder features -> (N, C) logits (eval-mode BatchNorm)."""
        return self.classifier(self.norm(features))

    @torch.inference_mode()
    def predict_proba(self, points, intensity_range: float | None = None) -> np.ndarray:
        """(N, >=3) points -> (N, C) float32 class probabilities, rows in input order."""
        self.eval()
        feats = torch.as_tensor(self.embed(points, intensity_range=intensity_range)).to(self.classifier.weight.device)
        return self.logits(feats.float()).softmax(1).cpu().numpy()

    def predict(self, points, intensity_range: float | None = None) -> np.ndarray:
        """(N, >=3) points -> (N,) int64 class indices into ``class_names``, rows in input order."""
        return self.predict_proba(points, intensity_range=intensity_range).argmax(1)

    def embed(self, points, intensity_range: float | None = None):
        """The encoder's per-point features (``LiMAEncoder.embed``)."""
        return self.encoder.embed(points, intensity_range=intensity_range)

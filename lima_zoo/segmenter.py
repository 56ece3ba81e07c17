"""LiMASegmenter: an encoder with its segmentation head (BatchNorm + Linear), as ``lima-zoo eval``
trains it: per-point class ids and probabilities for a scan.

A segmentation folder is an encoder folder (config.json + model.safetensors, the fine-tuned
weights where the protocol fine-tuned) plus ``head.safetensors`` (the head) and ``head.json`` (the
class vocabulary: names, evaluation ids, the map back to the dataset's raw ids; and the scores the
head was evaluated with). It loads from a folder, a Hub repo or a registered name, strictly, as
encoders do; ``lima_zoo.load_segmenter`` picks this or the onnxruntime runner.
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
from .labels import Vocabulary, read_head_json
from .segmentation import SegmentationOutputs
from .weights import load_safetensors, load_state_strict

__all__ = ["LiMASegmenter", "HEAD_FILES"]

HEAD_FILES = ("head.json", "head.safetensors")


class LiMASegmenter(SegmentationOutputs, nn.Module):
    """Encoder + BatchNorm1d(out_dim) + Linear(out_dim -> C). Class index c is ``class_names[c]``
    (evaluation id c + 1; ``vocabulary`` maps it to the dataset's raw ids)."""

    def __init__(self, encoder: LiMAEncoder, vocabulary: Vocabulary | tuple[str, ...], info: dict | None = None):
        super().__init__()
        self.vocabulary = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary(tuple(vocabulary))
        self.encoder, self.info = encoder, dict(info or {})
        self.norm = nn.BatchNorm1d(encoder.config.out_dim)
        self.classifier = nn.Linear(encoder.config.out_dim, len(self.class_names))

    @property
    def config(self):
        return self.encoder.config

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        backend: str = "torch",
        token: str | bool | None = None,
        force_download: bool = False,
    ) -> "LiMASegmenter":
        """A segmentation folder (``lima-zoo eval --out RUN`` writes ``RUN/model``), Hub repo
        (``org/repo[@rev]``) or registered name (``lima-zoo models``), loaded strictly. The
        arguments are :meth:`LiMAEncoder.from_pretrained`'s."""
        from .hub import model_files

        files, revision = model_files(
            name_or_path,
            revision,
            cache_dir,
            local_files_only,
            token=token,
            force_download=force_download,
            extra=HEAD_FILES,
        )
        return cls.from_files(files, str(name_or_path), revision, device=device, backend=backend)

    @classmethod
    def from_files(
        cls,
        files: dict[str, Path],
        name_or_path: str = "",
        revision: str = "",
        device: str | torch.device | None = None,
        backend: str = "torch",
    ) -> "LiMASegmenter":
        """A segmenter from its folder's files (``HEAD_FILES`` and the encoder's), strictly, in eval mode."""
        vocabulary, info = read_head_json(files["head.json"])
        encoder = LiMAEncoder.from_files(files, name_or_path, revision, backend=backend)
        seg = cls(encoder, vocabulary, info)
        head = nn.Module()  # the head alone, so its file is checked key for key
        head.norm, head.classifier = seg.norm, seg.classifier
        load_state_strict(head, load_safetensors(files["head.safetensors"]), files["head.safetensors"])
        seg.name_or_path, seg.revision = name_or_path, revision
        seg.eval()
        if device is not None:
            from .device import resolve_device

            seg.to(resolve_device(device))
        return seg

    @torch.no_grad()
    def folded_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The eval-mode head as one affine map: (out_dim, C) weight and (C,) bias, logits = x @ W + b."""
        n, lin = self.norm, self.classifier
        scale = n.weight.double() / torch.sqrt(n.running_var.double() + n.eps)
        shift = n.bias.double() - n.running_mean.double() * scale
        w = lin.weight.double()
        return (scale[:, None] * w.t()).float().cpu().numpy(), (w @ shift + lin.bias.double()).float().cpu().numpy()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """The encoder's files, ``head.safetensors`` and ``head.json``, each written atomically."""
        return self.save_head(self.encoder.save_pretrained(folder))

    def save_head(self, folder: str | os.PathLike) -> Path:
        """``head.safetensors`` and ``head.json`` (each atomically) beside an encoder already in ``folder``."""
        from safetensors.torch import save_file

        out = Path(folder)
        head = {f"norm.{k}": v.detach().cpu().contiguous() for k, v in self.norm.state_dict().items()}
        head.update({f"classifier.{k}": v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()})
        with atomic_path(out / "head.safetensors") as tmp:
            save_file(head, str(tmp), metadata={"format": "pt"})
        with atomic_path(out / "head.json") as tmp:
            tmp.write_text(json.dumps({**self.vocabulary.to_json(), **self.info}, indent=1) + "\n")
        return out

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, out_dim) encoder features -> (N, C) logits (eval-mode BatchNorm)."""
        return self.classifier(self.norm(features))

    @torch.inference_mode()
    def scan_outputs(self, scans: list, intensity_range: float | None) -> list[np.ndarray]:
        """Per scan: (N, C) float32 logits, as numpy."""
        self.eval()
        feats = self.encoder.embed(list(scans), intensity_range=intensity_range)
        device = self.classifier.weight.device
        return [self.logits(torch.as_tensor(f).to(device).float()).cpu().numpy() for f in feats]

    def embed(self, points, intensity_range: float | None = None):
        """The encoder's per-point features (``LiMAEncoder.embed``)."""
        return self.encoder.embed(points, intensity_range=intensity_range)

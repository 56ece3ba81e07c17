"""The frozen image teacher: a timm ViT whose last-block patch tokens are the distillation targets.

DINOv2 ViT-S/B/L by default (timm ``vit_*_patch14_dinov2``), created at the training image size
(224 x 448) so its position embeddings are resampled once. Feature map = last block output before
the final norm, prefix (CLS/register) tokens removed: (B, D, H/14, W/14). The teacher never trains:
it is built in eval mode, runs under no_grad, and ``.train(True)`` raises.

Weights: ``teacher.weights`` (a .safetensors / legacy .pth file — read with weights_only — or a
folder written by ``lima-zoo make-teacher``), else timm's pretrained tag from the Hugging Face cache,
else the Hub when it is reachable. Offline without weights is an error that says what to pass; a
randomly initialised teacher is never used silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..hub import OfflineError, hub_reachable
from ..weights import load_state_strict, read_state_dict  # .safetensors, or .pth with weights_only
from .config import TeacherConfig

__all__ = ["FrozenTeacher", "build_teacher", "images_to_input", "TEACHER_DIMS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHER_DIMS = {"vit_small_patch14_dinov2": 384, "vit_base_patch14_dinov2": 768, "vit_large_patch14_dinov2": 1024}
PRETRAINED_TAG = "lvd142m"


class FrozenTeacher(nn.Module):
    """forward: list of (H_i, W_i, 3) uint8 RGB images -> (B, D, h, w) float32 patch features."""

    def __init__(
        self, vit: nn.Module, image_size: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD, description: str = ""
    ):
        super().__init__()
        self.vit = vit
        self.image_size = tuple(image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.description = description
        self.amp = True  # bf16 autocast on CUDA (the trainer sets it from run.amp)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        super().train(False)

    @property
    def dim(self) -> int:
        return int(self.vit.embed_dim)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        if mode:
            raise RuntimeError("the teacher is frozen: it cannot be put in training mode")
        return super().train(False)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return images_to_input(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def forward(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        x = self.preprocess(images)
        # bf16 on CUDA, as the student's forward (run.amp); the features come back float32
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda and self.amp):
            return self.vit.forward_intermediates(x, indices=1, norm=False, intermediates_only=True)[0].float()


def images_to_input(
    images: Sequence[np.ndarray], size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, *size) float, resized (bilinear, antialiased) and normalised
    with mean / std (1, 3, 1, 1) on their device."""
    batch = []
    for img in images:
        x = (
            torch.tensor(img, device=mean.device).permute(2, 0, 1)[None].float() / 255.0
        )  # copies (PIL arrays are read-only)
        batch.append(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True))
    return (torch.cat(batch) - mean) / std


def _synthetic(folder: Path, image_size: tuple[int, int]) -> FrozenTeacher:
    from timm.models.vision_transformer import VisionTransformer

    meta = json.loads((folder / "teacher.json").read_text())
    if tuple(meta["vit"]["img_size"]) != tuple(image_size):
        raise ValueError(
            f"{folder}: teacher was made for images {meta['vit']['img_size']}; set teacher.image_size to it"
        )
    vit = VisionTransformer(**meta["vit"])
    load_state_strict(vit, read_state_dict(folder / "model.safetensors"), folder / "model.safetensors")
    return FrozenTeacher(vit, image_size, meta["mean"], meta["std"], description=meta.get("description", ""))


def build_teacher(cfg: TeacherConfig, device: torch.device | str = "cpu") -> FrozenTeacher:
    """The frozen teacher ``cfg`` describes, on ``device``."""
    weights = Path(cfg.weights) if cfg.weights else None
    if weights is not None and not weights.exists():
        raise FileNotFoundError(f"teacher.weights: {weights} does not exist")
    if cfg.name == "synthetic" or (weights is not None and (weights / "teacher.json").is_file()):
        if weights is None or not (weights / "teacher.json").is_file():
            raise ValueError("teacher.name=synthetic needs teacher.weights=<folder made by `lima-zoo make-teacher`>")
        return _synthetic(weights, cfg.image_size).to(device)
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        vit = timm.create_model(cfg.name, pretrained=False, img_size=tuple(cfg.image_size), num_classes=0)
    except RuntimeError as e:  # timm: unknown model
        raise ValueError(f"teacher.name: {e}") from None
    if weights is None:
        weights = _cached_pretrained(cfg.name)
    if weights is not None:
        state = read_state_dict(weights if weights.is_file() else weights / "model.safetensors")
        load_state_strict(vit, checkpoint_filter_fn(state, vit), weights)  # resamples position embeddings to our size
        how = f"weights {weights}"
    else:
        vit = timm.create_model(cfg.name, pretrained=True, img_size=tuple(cfg.image_size), num_classes=0)
        how = f"timm pretrained {cfg.name}.{PRETRAINED_TAG}"
    return FrozenTeacher(vit, cfg.image_size, description=f"{cfg.name} ({how})").to(device)


def _cached_pretrained(name: str) -> Path | None:
    """timm's pretrained weights from the HF cache; None if the Hub can fetch them; else OfflineError."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo = f"timm/{name}.{PRETRAINED_TAG}"
    hit = try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(hit, str):
        return Path(hit)
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise OfflineError(
            f"teacher {name}: pretrained weights ({repo}) are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the Hub "
            "cannot be reached. Pass teacher.weights=<model.safetensors or .pth>, or for CPU experiments use the "
            "synthetic teacher "
            "(`lima-zoo make-teacher DIR`, then teacher.name=synthetic teacher.weights=DIR)."
        )
    return None

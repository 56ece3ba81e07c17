"""LiMAEncoder: a MinkUNet backbone + distillation head + the preprocessing that feeds them.

``embed(points)`` is the whole path a user needs: points -> voxels -> backbone -> per-point features
in input order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import EncoderConfig
from .models import DistillationHead, MinkUNet
from .sparse import SparseTensor, set_backend
from .voxelize import Voxels, voxelize

__all__ = ["LiMAEncoder", "create_encoder"]


class LiMAEncoder(nn.Module):
    """LiDAR encoder.  forward: SparseTensor (M voxels, in_channels) -> SparseTensor (M, 96)."""

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        self.backbone = MinkUNet(c.backbone, in_channels=c.in_channels, bn_momentum=c.bn_momentum)
        self.head = DistillationHead(c.out_dim, c.head_dim)
        self.backend = "torch"

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.backbone(x)

    def set_backend(self, name: str) -> "LiMAEncoder":
        """Run the sparse convolutions with ``name`` ("torch", "spconv"); weights unchanged."""
        set_backend(self.backbone, name)
        self.backend = name
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def voxelize(self, scans: list[torch.Tensor]) -> Voxels:
        return voxelize([s.to(self.device) for s in scans], self.config.preprocess)

    @torch.inference_mode()
    def embed(self, points: np.ndarray | torch.Tensor, space: str = "backbone") -> np.ndarray | torch.Tensor:
        """Per-point features of one scan.

        points: (N, >=3) xyz [+ intensity in the scale ``config.preprocess.intensity_scale``].
        space: "backbone" -> (N, 96) features; "teacher" -> (N, head_dim) L2-normalised head output.
        Returns float32 (N, D) rows in input order: numpy for numpy input, else a tensor on the
        encoder's device.
        """
        if space not in ("backbone", "teacher"):
            raise ValueError(f"space must be 'backbone' or 'teacher', got {space!r}")
        as_numpy = isinstance(points, np.ndarray)
        pts = torch.as_tensor(points, dtype=torch.float32)
        if pts.dim() != 2 or pts.shape[1] < 3 or len(pts) == 0:
            raise ValueError(f"points must be a non-empty (N, >=3) array, got shape {tuple(pts.shape)}")
        if not bool(torch.isfinite(pts[:, : self.config.in_channels]).all()):
            raise ValueError("points contain NaN or Inf")
        was_training = self.training
        self.eval()
        try:
            vox = self.voxelize([pts])
            feats = self.backbone(SparseTensor(vox.feats, vox.coords)).feats
            if space == "teacher":
                feats = self.head(feats)
            out = feats[vox.inverse].float()
        finally:
            self.train(was_training)
        return out.cpu().numpy() if as_numpy else out


def create_encoder(name: str, pretrained: bool = False, backend: str = "torch") -> LiMAEncoder:
    """Build the registered variant ``name`` (see ``list_models()``) with fresh weights."""
    from .registry import get_model_info

    info = get_model_info(name)
    if pretrained:
        raise ValueError("pretrained=True: weights are loaded with LiMAEncoder.from_pretrained(name)")
    return LiMAEncoder(info.config).set_backend(backend)

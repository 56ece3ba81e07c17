"""The distillation loss: distance between unit student features and the detached fused targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss"]


def distillation_loss(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """student (N, D) head outputs, target (N, D) unit vectors, mask (N,) points with a target ->
    mean over masked points of ||normalize(student) - target||_2 (ScaLR's un-squared distance).
    With no masked point the loss is 0 but still part of the graph (every rank runs backward)."""
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ")
    # sqrt(x + eps): the norm's gradient is undefined at an exact match.
    diff = (F.normalize(student.float(), dim=1) - target.detach().float()).pow(2).sum(1).add(1e-12).sqrt()
    return (diff * mask.float()).sum() / mask.sum().clamp_min(1)

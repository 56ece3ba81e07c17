"""The distillation loss: distance between unit student features and the detached fused targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "point_distances", "averaged_loss"]


def distillation_loss(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """student (N, D) head outputs, target (N, D) unit vectors, mask (N,) points with a target ->
    mean over masked points of ||normalize(student) - target||_2 (ScaLR's un-squared distance).
    With no masked point the loss is 0 but still part of the graph (every rank runs backward)."""
    return _masked_mean(point_distances(student, target), mask)


def point_distances(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) ||normalize(student) - target||_2 per point, target detached."""
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ")
    # sqrt(x + eps): the norm's gradient is undefined at an exact match.
    return (F.normalize(student.float(), dim=1) - target.detach().float()).pow(2).sum(1).add(1e-12).sqrt()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask.float()).sum() / mask.sum().clamp_min(1)


def averaged_loss(
    dist: torch.Tensor, current: torch.Tensor, memory_only: torch.Tensor, average: str, memory_weight: float
) -> torch.Tensor:
    """Per-point distances (N,) -> one loss over current-camera points (N,) bool and memory-only points.

    ``joint``: one mean over every targeted point, memory-only points weighted ``memory_weight``;
    ``separate``: L_cur + memory_weight * L_mem, each the mean over its own points, so many easy
    remembered road points cannot dilute the current-camera term.
    """
    if average == "joint":
        w = current.float() + memory_weight * memory_only.float()
        return (dist * w).sum() / w.sum().clamp_min(1e-12)  # no target at all: 0, still in the graph
    if average == "separate":
        return _masked_mean(dist, current) + memory_weight * _masked_mean(dist, memory_only)
    raise ValueError(f"unknown loss average {average!r}; choose joint or separate")

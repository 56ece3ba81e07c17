"""Lovasz-softmax loss (Berman et al., CVPR 2018): a convex surrogate of per-class IoU.

For each class, the points' errors (1 - p for its members, p for the others) are sorted in
decreasing order and weighted by the gradient of the Lovasz extension of the Jaccard loss, i.e. by
how much each additional error raises 1 - IoU. Averaged over the classes present in the targets.
"""

from __future__ import annotations

import torch

__all__ = ["lovasz_softmax"]


def _jaccard_gradient(sorted_members: torch.Tensor) -> torch.Tensor:
    """(P,) 0/1 membership in error order -> (P,) increments of 1 - IoU along that order."""
    total = sorted_members.sum()
    intersection = total - sorted_members.cumsum(0)
    union = total + (1 - sorted_members).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """probs (N, C) softmax outputs, target (N,) class ids in 0..C-1 or ``ignore`` -> scalar loss."""
    keep = target != ignore
    probs, target = probs[keep], target[keep]
    if not len(target):
        return probs.sum() * 0.0
    losses = []
    for c in torch.unique(target).tolist():
        members = (target == c).float()
        errors = (members - probs[:, c]).abs()
        order = torch.argsort(errors, descending=True)
        losses.append(torch.dot(errors[order], _jaccard_gradient(members[order])))
    return torch.stack(losses).mean()

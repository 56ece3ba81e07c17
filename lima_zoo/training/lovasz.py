"""Lovasz-softmax loss (Berman et al., CVPR 2018): a convex surrogate of per-class IoU.

For each class, the points' errors (1 - p for its members, p for the others) are sorted in
decreasing order and weighted by the gradient of the Lovasz extension of the Jaccard loss, i.e. by
how much each additional error raises 1 - IoU. Averaged over the classes present in the targets.
"""

from __future__ import annotations

import torch

__all__ = ["lovasz_softmax"]


def _jaccard_gradient(sorted_members: torch.Tensor) -> torch.Tensor:
    """(K, P) 0/1 membership in each class's error order -> (K, P) increments of 1 - IoU along it."""
    total = sorted_members.sum(1, keepdim=True)
    intersection = total - sorted_members.cumsum(1)
    union = total + (1 - sorted_members).cumsum(1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, ignore: int = -100) -> torch.Tensor:
    """probs (N, C) softmax outputs, target (N,) class ids in 0..C-1 or ``ignore`` -> scalar loss."""
    keep = target != ignore
    probs, target = probs[keep], target[keep]
    if not len(target):
        return probs.sum() * 0.0
    present = torch.unique(target)  # (K,) classes in the targets
    # Every present class at once, as rows: one sort instead of one per class (the loss of a
    # linear probe step is mostly these sorts). Ties may be ordered either way: the Lovasz
    # extension's value does not depend on the order within a run of equal errors.
    members = (target[None, :] == present[:, None]).to(probs.dtype)  # (K, N)
    errors = (members - probs[:, present].T).abs()
    errors, order = errors.sort(dim=1, descending=True)
    return (errors * _jaccard_gradient(members.gather(1, order))).sum(1).mean()

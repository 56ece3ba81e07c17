"""Heads on top of the 96-d backbone features.

The distillation head maps backbone features into the teacher's feature space; it is trained with
the backbone during pretraining and kept apart from it so probes and fine-tuning use the backbone
features alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DistillationHead"]


class DistillationHead(nn.Module):
    """Linear(in_dim -> out_dim) + L2 normalisation.  (N, in_dim) -> (N, out_dim), unit rows.

    out_dim 0 is "no head" (an encoder converted from a backbone-only checkpoint): empty weights.
    """

    def __init__(self, in_dim: int = 96, out_dim: int = 768):
        super().__init__()
        self.proj = nn.Linear(in_dim, max(out_dim, 1))
        if out_dim == 0:  # keep the Linear's keys, with empty weights
            self.proj.weight = nn.Parameter(torch.empty(0, in_dim))
            self.proj.bias = nn.Parameter(torch.empty(0))
            self.proj.out_features = 0

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(feats), dim=1)

"""Long-term feature propagation: targets for current points from the frames in the memory bank.

1. Ego-motion: memory and current points are both in the global frame (each scan through its own
   pose), so the ego vehicle's motion and turns are already undone.
2. Cross-frame alignment: a voxel hash of global xyz (cell ``cell`` m). Each past frame contributes
   the mean feature of its points in the current point's cell; nothing if the cell is empty. A point
   on a moving object therefore never pulls a feature from where the object was more than a cell
   away; a static point keeps getting its remembered feature after the ego vehicle moved on.
3. Pooling over the frames that matched: mean (default) or max.
4. Temporal fusion where both exist (``lima.fusion``), else whichever exists:
   - blend: normalize(a * F_u + (1 - a) * F_pool);
   - confidence: the remembered share (1 - a) scaled by the memory's agreement with the current
     target, max(0, cos(F_u, F_pool)): a remembered feature that contradicts what the camera sees
     now (a moved object, a stale or occluded view) gives way to the current one;
   - a = 1 (either rule) keeps every current-camera target as it is and uses memory only where no
     current camera sees the point.
   Points outside every current camera but seen before get F_pool alone: the extra supervision a
   long horizon buys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .memory_bank import MemoryEntry

__all__ = ["cell_keys", "propagate", "fuse", "FUSIONS"]

FUSIONS = ("blend", "confidence")

_BITS = 21  # per axis: +-2^20 cells = +-315 km at 0.3 m


def cell_keys(xyz: torch.Tensor, cell: float) -> torch.Tensor:
    """(N, 3) metres -> (N,) int64 keys of their cells."""
    c = torch.floor(xyz.double() / cell).long() + (1 << (_BITS - 1))
    if bool(((c < 0) | (c >= (1 << _BITS))).any()):
        raise ValueError(
            f"coordinates beyond +-{(1 << (_BITS - 1)) * cell / 1000:.0f} km cannot be hashed with cell {cell}"
        )
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


def _frame_cells(entry: MemoryEntry, cell: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique cell keys (U,) of a past frame and the mean feature (U, D) in each."""
    keys = cell_keys(entry.xyz, cell)
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    feats = entry.feats.float()
    summed = feats.new_zeros(len(uniq), feats.shape[1]).index_add_(0, inv, feats)
    count = torch.bincount(inv, minlength=len(uniq)).to(feats)
    return uniq, summed / count[:, None]


def propagate(
    xyz: torch.Tensor, memory: list[MemoryEntry], cell: float, pool: str = "mean"
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Current global xyz (N, 3) -> pooled remembered features (N, D) (None without memory),
    has (N,) bool: some past frame had a point in the same cell, and frames (N,) int64: how many."""
    n = len(xyz)
    has = torch.zeros(n, dtype=torch.bool, device=xyz.device)
    if not memory:
        return None, has, torch.zeros(n, dtype=torch.int64, device=xyz.device)
    keys = cell_keys(xyz, cell)
    acc, hits = None, torch.zeros(n, device=xyz.device)
    for entry in memory:
        if not len(entry.xyz):
            continue
        uniq, mean = _frame_cells(entry, cell)
        pos = torch.searchsorted(uniq, keys).clamp_max(len(uniq) - 1)
        found = uniq[pos] == keys
        # A cell this frame did not see adds nothing: 0 to a sum, -inf to a max.
        vals = torch.where(
            found[:, None], mean[pos], torch.tensor(0.0 if pool == "mean" else -torch.inf, device=mean.device)
        )
        if acc is None:
            acc = vals
        else:
            acc = acc + vals if pool == "mean" else torch.maximum(acc, vals)
        hits += found.to(hits)
    if acc is None:
        return None, has, hits.long()
    has = hits > 0
    pooled = (
        acc / hits.clamp_min(1)[:, None] if pool == "mean" else torch.where(has[:, None], acc, torch.zeros_like(acc))
    )
    return pooled, has, hits.long()


def fuse(
    unified: torch.Tensor,
    valid: torch.Tensor,
    pooled: torch.Tensor | None,
    has: torch.Tensor,
    alpha: float,
    rule: str = "blend",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temporal fusion of current targets unified (N, D) (rows with valid (N,)) and remembered ones
    pooled (N, D) (rows with has (N,)) -> detached targets (N, D) L2-normalised and mask (N,) of points
    with one. ``rule``: blend | confidence (module docstring)."""
    if rule not in FUSIONS:
        raise ValueError(f"unknown fusion rule {rule!r}; choose from {', '.join(FUSIONS)}")
    if pooled is None:
        return unified.detach(), valid.clone()
    pooled = F.normalize(pooled, dim=1)
    both = valid & has
    memory_share = torch.full((len(pooled), 1), 1 - alpha, dtype=pooled.dtype, device=pooled.device)
    if rule == "confidence":
        agreement = (F.normalize(unified, dim=1) * pooled).sum(1, keepdim=True).clamp_min(0)
        memory_share = memory_share * agreement
    target = torch.where(valid[:, None], unified, pooled)
    target = torch.where(both[:, None], (1 - memory_share) * unified + memory_share * pooled, target)
    return F.normalize(target, dim=1).detach(), valid | has

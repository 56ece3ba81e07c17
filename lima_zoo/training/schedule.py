"""OneCycle that also works for very short runs (tests, benchmarks, smoke runs)."""

from __future__ import annotations

import torch

__all__ = ["one_cycle"]


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float | list[float], total_steps: int, warmup: float):
    """torch's OneCycleLR with the warm-up fraction clamped so both phases last at least one step
    (it divides by zero otherwise); under 4 steps, a constant learning rate at ``max_lr``."""
    if total_steps < 4:
        lrs = max_lr if isinstance(max_lr, list) else [max_lr] * len(optimizer.param_groups)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    pct = min(max(warmup, 2.5 / total_steps), 1 - 2.5 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct)

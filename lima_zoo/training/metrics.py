"""mIoU the standard way: one confusion matrix over the whole validation split, every point.

Labels use 0 as the ignore id and 1..C as classes. Points labelled 0 are left out. A class's IoU is
TP / (TP + FP + FN); a class absent from both labels and predictions has no IoU (NaN) and is left
out of the mean, so mIoU is the mean over the classes present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path

__all__ = ["ConfusionMatrix", "save_report"]


class ConfusionMatrix:
    """Accumulates (C, C) counts: rows = true class 1..C, columns = predicted class 1..C."""

    def __init__(self, class_names: tuple[str, ...]):
        self.class_names = tuple(class_names)
        self.matrix = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target (N,) ids in 1..C (target 0 = ignore; pred must be a class)."""
        c = len(self.class_names)
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        keep = target > 0
        if bool(((pred[keep] < 1) | (pred[keep] > c)).any()) or bool((target > c).any()):
            raise ValueError(f"ids must be in 1..{c} (targets may be 0 = ignore)")
        idx = (target[keep] - 1) * c + (pred[keep] - 1)
        self.matrix += torch.bincount(idx, minlength=c * c).view(c, c)

    def iou(self) -> np.ndarray:
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan"))).numpy()

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")

    def table(self) -> str:
        """Per-class IoU as an aligned text table (percent)."""
        width = max(len(n) for n in self.class_names + ("mIoU",))
        rows = [
            f"{n:<{width}}  {'   -  ' if np.isnan(v) else f'{100 * v:6.2f}'}"
            for n, v in zip(self.class_names, self.iou())
        ]
        return "\n".join(rows + [f"{'mIoU':<{width}}  {100 * self.miou():6.2f}"])


def save_report(cm: ConfusionMatrix, out: str | Path, title: str, extra: dict | None = None) -> dict:
    """Write ``metrics.json`` (mIoU, per-class IoU, confusion matrix) and ``iou.png`` (bar chart) in ``out``."""
    out = Path(out)
    iou = cm.iou()
    report = {
        "title": title,
        "miou": cm.miou(),
        "accuracy": cm.accuracy(),
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(cm.class_names, iou)},
        "confusion_matrix": cm.matrix.tolist(),
        **(extra or {}),
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return report
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(iou)), 4))
    ax.bar(range(len(iou)), np.nan_to_num(iou) * 100, color="#4c72b0")
    ax.set_xticks(range(len(iou)), cm.class_names, rotation=60, ha="right", fontsize=8)
    ax.axhline(100 * cm.miou(), color="k", ls="--", lw=1, label=f"mIoU {100 * cm.miou():.1f}")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "iou.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return report

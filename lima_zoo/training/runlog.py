"""What every training command shares: atomic checkpoints with a config check, and the run log
(JSONL, TensorBoard, a tqdm bar, a loss-curve PNG at the end)."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..encoder import load_weights_only

__all__ = ["save_checkpoint", "load_checkpoint", "RunLog", "loss_curve"]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": list(v) if isinstance(v, tuple) else v})
    return out


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save through a temporary file: a crash or Ctrl-C never leaves half a checkpoint. The run
    folder (``path``'s grandparent) is recorded, so a run folder that was moved still resumes."""
    with atomic_path(path) as tmp:
        torch.save({**state, "run_dir": str(_run_dir(path))}, tmp)
    return path


def last_checkpoint(out: Path, resume: bool) -> Path:
    """``out``/checkpoints/last.pt; with ``resume``, a missing one is refused here, before any work."""
    path = Path(out) / "checkpoints" / "last.pt"
    if resume and not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist, so there is nothing to continue (run without --resume to start)")
    return path


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint.resolve().parent.parent  # <run>/checkpoints/last.pt


def read_records(path: Path) -> list[dict]:
    """The records of a log.jsonl; a line torn by a crash mid-write (or any unparsable line) is skipped."""
    recs = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            recs.append(rec)
    return recs


def load_checkpoint(path: Path, config: dict, device: torch.device, free: tuple[str, ...] = ("run.",)) -> dict:
    """Load with weights_only (no arbitrary unpickling) and refuse a checkpoint whose config differs
    from ``config`` outside the ``free`` key prefixes (naming the keys that differ)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to resume from")
    state = load_weights_only(path, map_location=device)
    if not (isinstance(state, dict) and isinstance(state.get("config"), dict)):
        raise ValueError(f"{path}: not a lima-zoo training checkpoint (no 'config' in it)")
    mine, theirs = _flat(config), _flat(state["config"])
    old, new = state.get("run_dir"), str(_run_dir(path))
    if isinstance(old, str) and old != new:  # the run folder moved: paths inside it moved with it
        theirs = {k: new + v[len(old):] if isinstance(v, str) and (v == old or v.startswith(old + os.sep)) else v for k, v in theirs.items()}
    differ = sorted(k for k in set(mine) | set(theirs) if not k.startswith(free) and mine.get(k) != theirs.get(k))
    if differ:
        shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in differ[:4])
        raise ValueError(f"{path}: the checkpoint was made with a different config ({shown}{' ...' if len(differ) > 4 else ''}); "
                         "resume with the same settings")  # fmt: skip
    return state


class RunLog:
    """Appends one JSON record per step to ``out/log.jsonl`` (after dropping records past ``step`` on
    resume), mirrors ``scalars`` to TensorBoard and shows a tqdm bar. Inactive (no files, no bar)
    when ``enabled`` is False — the non-zero ranks of a DDP run."""

    def __init__(self, out: Path, total: int, step: int, scalars: tuple[str, ...], enabled: bool = True, desc: str = "train"):
        from tqdm import tqdm

        self.path, self.scalars, self.enabled = out / "log.jsonl", scalars, enabled
        self.bar = tqdm(total=total, initial=step, disable=not enabled, unit="step", desc=desc)
        self.writer = self.file = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # resuming: records past the checkpoint belong to the interrupted tail
            kept = [r for r in read_records(self.path) if r["step"] <= step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            self.writer = None

    def write(self, rec: dict) -> None:
        self.bar.update(1)
        if not self.enabled:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k in self.scalars:
                self.writer.add_scalar(f"train/{k}", rec[k], rec["step"])
        self.bar.set_postfix({k: f"{rec[k]:.4g}" for k in self.scalars[:2]})

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def loss_curve(log_path: Path, png: Path, keys: tuple[str, ...], ylabel: str = "loss") -> None:
    """Plot ``keys`` of a JSONL log against step into ``png`` (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    recs = read_records(log_path)
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in recs]
    for i, key in enumerate(keys):
        ax.plot(steps, [r[key] for r in recs], label=key, lw=1.2 if i == 0 else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    top = max(r[keys[0]] for r in recs)
    ax.set_ylim(bottom=0, top=max(1e-3, math.ceil(top * 10) / 10))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

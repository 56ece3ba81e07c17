"""The run skeleton that pretraining and downstream evaluation share: the run folder (refused before
any work when it holds a run and ``--resume`` was not asked, or when there is nothing to resume),
the per-step random seed, atomic checkpoints with a config check, config.json, the step loop with
its log (JSONL, TensorBoard, a tqdm bar, a loss-curve PNG at the end) and its interruption message.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

import torch

from ..atomic import atomic_path
from ..weights import load_weights_only

__all__ = [
    "step_seed",
    "step_generator",
    "start_run",
    "write_config",
    "save_checkpoint",
    "load_checkpoint",
    "run_steps",
    "RunLog",
    "loss_curve",
    "read_records",
]

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int) -> int:
    """The random seed of one step (or epoch) of a run seeded ``seed``: a function of both alone,
    so a resumed run draws what the uninterrupted one drew."""
    return seed * 1_000_003 + step


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded with :func:`step_seed`."""
    return torch.Generator().manual_seed(step_seed(seed, step))


def start_run(out: str | Path, resume: bool) -> Path:
    """The run's checkpoint path ``out``/checkpoints/last.pt, checked before any work: with
    ``resume`` it must exist; without, it must not (a finished or interrupted run is never overwritten)."""
    path = Path(out) / "checkpoints" / "last.pt"
    if resume and not path.is_file():
        raise FileNotFoundError(
            f"--resume: {path} does not exist, so there is nothing to continue (run without --resume to start)"
        )
    if not resume and path.exists():
        raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose another --out")
    return path


def write_config(out: Path, config: dict) -> None:
    """``out``/config.json (atomically): the whole configuration of the run."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


def run_steps(
    take_step: Callable[[], dict],
    step: int,
    total: int,
    run_log: "RunLog",
    checkpoint_every: int,
    save: Callable[[], object] | None,
    on_step: Callable[[dict], None] | None = None,
    after_step: Callable[[], None] | None = None,
    checkpoint: Path | None = None,
) -> None:
    """The step loop: ``take_step()`` returns the step's record (with its new ``step``); each record is
    logged and passed to ``on_step``; ``save()`` runs every ``checkpoint_every`` steps and after the
    last (None: this process does not save, e.g. a non-zero DDP rank); ``after_step`` runs after
    each step (a DDP barrier). Ctrl-C says where the run stands and re-raises."""
    try:
        while step < total:
            rec = take_step()
            step = rec["step"]
            run_log.write(rec)
            if on_step is not None:
                on_step(rec)
            if save is not None and (step % checkpoint_every == 0 or step == total):
                save()
            if after_step is not None:
                after_step()
    except KeyboardInterrupt:
        if save is not None:
            log.warning(
                "interrupted at step %d; the last checkpoint (%s) is intact — continue with --resume", step, checkpoint
            )
        raise
    finally:
        run_log.close()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(
            _flat(v, f"{prefix}{k}.")
            if isinstance(v, dict)
            else {f"{prefix}{k}": list(v) if isinstance(v, tuple) else v}
        )
    return out


def save_checkpoint(path: Path, state: dict) -> Path:
    """torch.save through a temporary file: a crash or Ctrl-C never leaves half a checkpoint. The run
    folder (``path``'s grandparent) is recorded, so a run folder that was moved still resumes."""
    with atomic_path(path) as tmp:
        torch.save({**state, "run_dir": str(_run_dir(path))}, tmp)
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
        theirs = {
            k: new + v[len(old) :] if isinstance(v, str) and (v == old or v.startswith(old + os.sep)) else v
            for k, v in theirs.items()
        }
    differ = sorted(k for k in set(mine) | set(theirs) if not k.startswith(free) and mine.get(k) != theirs.get(k))
    if differ:
        shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in differ[:4])
        raise ValueError(
            f"{path}: the checkpoint was made with a different config ({shown}{' ...' if len(differ) > 4 else ''}); "
            "resume with the same settings"
        )
    return state


class RunLog:
    """Appends one JSON record per step to ``out/log.jsonl`` (after dropping records past ``step`` on
    resume), mirrors ``scalars`` to TensorBoard and shows a tqdm bar. Inactive (no files, no bar)
    when ``enabled`` is False — the non-zero ranks of a DDP run."""

    def __init__(
        self, out: Path, total: int, step: int, scalars: tuple[str, ...], enabled: bool = True, desc: str = "train"
    ):
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

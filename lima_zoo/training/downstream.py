"""Downstream semantic segmentation: linear probing and few-shot fine-tuning, scored by mIoU.

Linear probing: the backbone is frozen and kept in eval mode; a BatchNorm + zero-initialised
Linear(96 -> C) trains on the full training split. Without augmentation the frozen backbone's
per-point features are computed once and cached (when they fit in ``cache_mb``), so the probe
trains in seconds. Fine-tuning: the whole network, head learning rate x10, on a percent subset.
Loss CE + 2.0 x Lovasz-softmax, AdamW + OneCycle. Evaluation: one confusion matrix over every point
of the validation split (voxel predictions mapped back to points), ignore label excluded.
Checkpoints and ``resume`` work as in pretraining: the data order is a function of (seed, epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_dir, atomic_path
from ..device import resolve_device
from ..encoder import LiMAEncoder
from ..loading import RANDOM_PREFIX, load_encoder
from ..sparse.allocator import reuse_freed_memory
from ..sparse.backends import check_trainable
from ..voxelize import Voxels
from .augment import augment_points
from .config import AugmentConfig, DownstreamConfig
from .datasets import Frame, FrameDataset, detect_format, open_dataset, project_points
from .lima.targets import select_cameras
from .lovasz import lovasz_softmax
from .metrics import ConfusionMatrix, save_report
from .run import (
    RunLog,
    load_checkpoint,
    loss_curve,
    run_steps,
    save_checkpoint,
    start_run,
    step_generator,
    write_config,
)
from .schedule import one_cycle

__all__ = ["Segmenter", "run_downstream", "score_segmenter", "evaluate", "in_cameras", "backbone_source"]

log = logging.getLogger(__name__)


class Segmenter(nn.Module):
    """Encoder + BatchNorm1d(out_dim) + Linear(out_dim -> C) (zero-initialised). forward: per-voxel logits."""

    def __init__(self, encoder: LiMAEncoder, num_classes: int, frozen: bool, bn_momentum: float):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        self.norm = nn.BatchNorm1d(encoder.config.out_dim, momentum=bn_momentum)
        self.classifier = nn.Linear(encoder.config.out_dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        for m in encoder.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
        if frozen:
            for p in encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Segmenter":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a probe never updates the backbone's BatchNorm statistics
        return self

    def features(self, batch: Voxels) -> torch.Tensor:
        """(N points, out_dim) backbone features of ``batch``, in input order."""
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.encoder.rows_to_points(self.encoder.backbone_rows(batch), batch)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(features))


def backbone_source(model: str, cfg: DownstreamConfig) -> str:
    """What ``eval --model`` names, as a :func:`~lima_zoo.loading.load_encoder` source: ``random``
    is a seeded initialisation of ``cfg.random_backbone``."""
    return f"{RANDOM_PREFIX}{cfg.random_backbone}" if model == "random" else model


def in_cameras(frame: Frame, cameras: tuple[str, ...] = ()) -> torch.Tensor:
    """(N,) bool: the frame's points that one of its cameras (only ``cameras``, if given) sees."""
    f = select_cameras(frame, cameras, "cameras")
    inside = torch.zeros(len(f.points), dtype=torch.bool)
    inside[project_points(torch.from_numpy(f.points[:, :3]), f.camera_views()).point] = True
    return inside


@torch.no_grad()
def evaluate(
    model: Segmenter, dataset: FrameDataset, batch: int = 2, camera_split: tuple[str, ...] | None = None
) -> dict[str, ConfusionMatrix]:
    """Confusion matrices over every labelled point of ``dataset`` (predictions 1..C): ``all``, and with
    ``camera_split`` (camera names; () = every camera) also ``inside`` / ``outside`` the current cameras."""
    model.eval()
    cms = {
        k: ConfusionMatrix(dataset.class_names)
        for k in (("all", "inside", "outside") if camera_split is not None else ("all",))
    }
    index = dataset.index()
    for i in range(0, len(index), batch):
        frames = [dataset.frame(s, k) for s, k in index[i : i + batch]]
        inputs = model.encoder.backbone_input([f.points for f in frames], intensity_range=255.0)
        pred = model.head(model.features(inputs)).argmax(1) + 1
        labels = torch.cat([torch.from_numpy(f.labels) for f in frames])
        cms["all"].update(pred, labels)
        if camera_split is not None:
            inside = torch.cat([in_cameras(f, camera_split) for f in frames])
            cms["inside"].update(pred[inside], labels[inside])
            cms["outside"].update(pred[~inside], labels[~inside])
    return cms


class _FeatureCache:
    """Frozen-backbone per-point features of every training frame (float16), computed once."""

    def __init__(self, model: Segmenter, dataset: FrameDataset):
        self.feats, self.labels = [], []
        model.eval()
        with torch.no_grad():
            for s, k in dataset.index():
                f = dataset.frame(s, k)
                self.feats.append(
                    model.features(model.encoder.backbone_input([f.points], intensity_range=255.0)).half().cpu()
                )
                self.labels.append(torch.from_numpy(f.labels))


def run_downstream(
    cfg: DownstreamConfig,
    model_name: str,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train a probe / fine-tune on ``data``'s training split, evaluate on ``cfg.eval_split``; returns
    the report also written to ``out/metrics.json``, with the per-class IoU ``table`` as text.

    Args:
        cfg: the protocol and its settings.
        model_name: any ``load_encoder`` source, or "random" (a seeded ``cfg.random_backbone``).
        data: a labelled dataset root (format detected).
        out: the run folder (checkpoints, log, metrics.json, iou.png).
        resume: continue from ``out/checkpoints/last.pt``.
        on_step: called with each step's log record.
    """
    if cfg.protocol == "none":
        raise ValueError("protocol 'none' trains nothing: score a segmentation model with score_segmenter")
    out = Path(out)
    ckpt = start_run(out, resume)
    device = resolve_device(cfg.device)
    reuse_freed_memory()
    linear = cfg.protocol == "linear"
    train_ds = open_dataset(data, "train", cfg.percent, labels=True)
    val_ds = open_dataset(data, cfg.eval_split, labels=True)
    if not train_ds.class_names:
        raise ValueError(
            f"{data}: the dataset names no classes (a sequence folder needs 'class_names' in calibration.json)"
        )
    if not linear:
        check_trainable(cfg.sparse_backend, device)
    encoder = load_encoder(backbone_source(model_name, cfg), device=device, backend=cfg.sparse_backend, seed=cfg.seed)
    model = Segmenter(encoder, len(train_ds.class_names), frozen=linear, bn_momentum=cfg.bn_momentum).to(device)
    index = train_ds.index()
    steps_per_epoch = max(1, len(index) // cfg.batch)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    head = list(model.norm.parameters()) + list(model.classifier.parameters())
    groups = [{"params": head, "lr": cfg.lr * cfg.head_lr_mult}] + (
        [] if linear else [{"params": list(encoder.parameters()), "lr": cfg.lr}]
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = one_cycle(optimizer, [g["lr"] for g in groups], total, cfg.warmup)
    config = {"downstream": dataclasses.asdict(cfg), "model": str(model_name), "data": str(data)}
    step = 0
    if resume:
        state = load_checkpoint(
            ckpt, config, device, free=("downstream.device", "downstream.checkpoint_every", "downstream.sparse_backend")
        )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    cache = None
    if linear and not cfg.augment:
        points = sum(len(train_ds.frame(s, k).points) for s, k in index[:3]) / min(3, len(index)) * len(index)
        if points * encoder.config.out_dim * 2 / 2**20 <= cfg.cache_mb:
            cache = _FeatureCache(model, train_ds)
    aug = AugmentConfig()
    protocol = "linear probe" if linear else "fine-tune"
    what = f"{protocol} of {model_name} on {len(index)} frames ({cfg.percent:g}% of train)"
    log.info("%s: %d steps%s", what, total, " on cached features" if cache else "")
    run_log = RunLog(out, total, step, ("loss", "lr", "loss_ce", "loss_lovasz"), desc=cfg.protocol)

    def take_step() -> dict:
        nonlocal step
        t0 = time.perf_counter()
        epoch, at = divmod(step, steps_per_epoch)
        order = torch.randperm(len(index), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).tolist()
        chosen = order[at * cfg.batch : (at + 1) * cfg.batch]
        gen = step_generator(cfg.seed, step)
        model.train()
        if cache is not None:
            feats = torch.cat([cache.feats[i] for i in chosen]).to(device).float()
            labels = torch.cat([cache.labels[i] for i in chosen]).to(device)
            logits = model.head(feats)
        else:
            frames = [train_ds.frame(*index[i]) for i in chosen]
            pts = [torch.from_numpy(f.points) for f in frames]
            if cfg.augment:
                pts = [augment_points(p, aug, gen) for p in pts]
            logits = model.head(
                model.features(encoder.backbone_input(pts, intensity_range=255.0))
            )  # per point, like the cached path
            labels = torch.cat([torch.from_numpy(f.labels) for f in frames]).to(device)
        target = labels - 1  # classes 1..C -> 0..C-1; the ignore id 0 becomes -1
        ce = F.cross_entropy(logits, target, ignore_index=-1) if bool((target >= 0).any()) else logits.sum() * 0
        lov = lovasz_softmax(logits.softmax(1), target, ignore=-1) if cfg.lovasz_weight > 0 else ce * 0
        loss = ce + cfg.lovasz_weight * lov
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        return {
            "step": step,
            "epoch": epoch,
            "loss": float(loss.detach()),
            "loss_ce": float(ce.detach()),
            "loss_lovasz": float(lov.detach()),
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "config": config,
        }
        save_checkpoint(ckpt, state)

    run_steps(take_step, step, total, run_log, cfg.checkpoint_every, save, on_step, checkpoint=ckpt)
    loss_curve(out / "log.jsonl", out / "loss.png", ("loss", "loss_ce", "loss_lovasz"))
    cms = evaluate(model, val_ds, cfg.batch, tuple(cfg.cameras) if cfg.camera_split else None)
    cm = cms["all"]
    split = {f"miou_{k}": c.miou() for k, c in cms.items() if k != "all"}
    report = save_report(
        cm,
        out,
        f"{what}; eval on {cfg.eval_split}",
        {
            "protocol": cfg.protocol,
            "percent": cfg.percent,
            "model": str(model_name),
            "dataset": detect_format(data),
            "split": cfg.eval_split,
            "steps": total,
            "val_frames": len(val_ds),
            **split,
        },
    )
    write_config(out, config)
    _save_segmenter(model, train_ds.class_names, report, out / "model")
    return {**report, "table": cm.table()}  # the table for the command line; metrics.json has the numbers


def _save_segmenter(model: Segmenter, class_names: tuple[str, ...], report: dict, folder: Path) -> None:
    """``folder``: the segmentation model the run scored (encoder, head, class vocabulary, its scores
    and a model card whose model-index carries them), written whole or not at all."""
    from ..export.card import render_card
    from ..export.folder import EXPORT_FILES
    from ..labels import vocabulary_for
    from ..segmenter import LiMASegmenter

    scores = {k: v for k, v in report.items() if k.startswith("miou") or k == "per_class_iou"}
    seg = LiMASegmenter(
        model.encoder,
        vocabulary_for(report["dataset"], class_names),
        {k: report[k] for k in ("protocol", "percent", "dataset", "split")} | scores,
    )
    seg.norm.load_state_dict(model.norm.state_dict())
    seg.classifier.load_state_dict(model.classifier.state_dict())
    with atomic_dir(folder, EXPORT_FILES) as stage:
        seg.eval().save_pretrained(stage)
        card = render_card(stage, str(folder), evals=[folder.parent / "metrics.json"])
        with atomic_path(stage / "README.md") as tmp:
            tmp.write_text(card, encoding="utf-8")


def score_segmenter(cfg: DownstreamConfig, model: str | Path, data: str | Path, out: str | Path) -> dict:
    """``eval --protocol none``: score a segmentation folder (``RUN/model``) on ``data``'s
    ``cfg.eval_split`` without training; returns (and writes to ``out/metrics.json``) the report."""
    from ..segmenter import LiMASegmenter

    out = Path(out)
    device = resolve_device(cfg.device)
    seg = LiMASegmenter.from_pretrained(model, device=device)
    val_ds = open_dataset(data, cfg.eval_split, labels=True)
    if tuple(seg.class_names) != tuple(val_ds.class_names):
        raise ValueError(
            f"{model}: its classes {list(seg.class_names)[:4]}... are not {data}'s {list(val_ds.class_names)[:4]}..."
        )
    seg.encoder.set_backend(cfg.sparse_backend)
    model_ = Segmenter(seg.encoder, len(seg.class_names), frozen=True, bn_momentum=cfg.bn_momentum).to(device)
    model_.norm.load_state_dict(seg.norm.state_dict())
    model_.classifier.load_state_dict(seg.classifier.state_dict())
    # inside / outside the cameras wherever the data has cameras (or camera_split asks)
    first = next(iter(val_ds.index()), None)
    has_cameras = first is not None and bool(select_cameras(val_ds.frame(*first), tuple(cfg.cameras)).cameras)
    cms = evaluate(model_, val_ds, cfg.batch, tuple(cfg.cameras) if cfg.camera_split or has_cameras else None)
    split = {f"miou_{k}": c.miou() for k, c in cms.items() if k != "all"}
    extra = {
        "protocol": "none",
        "model": str(model),
        "dataset": detect_format(data),
        "split": cfg.eval_split,
        "val_frames": len(val_ds),
        **split,
    }
    report = save_report(cms["all"], out, f"{model} scored on {cfg.eval_split}", extra)
    return {**report, "table": cms["all"].table()}

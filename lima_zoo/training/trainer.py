"""LiMA pretraining: a plain loop you can read top to bottom (nanoGPT / ScaLR style).

Per step, for each of B streams (one frame each): unified teacher targets of the current cameras
(cross-view aggregation) -> long-term propagation from the stream's memory bank -> fused target;
FIFO update. The student sees the augmented current scans plus B cross-sequence mixed scenes and
is pulled toward the targets. One GPU, many (torchrun / DDP: gloo on CPU, nccl on CUDA) or CPU.

Checkpoints (``<out>/checkpoints/last.pt``, atomic) hold the encoder, optimizer, scheduler, step and
the whole config; ``--resume`` continues exactly: the data order and augmentations are functions of
(seed, step), and the memory bank is rebuilt by re-running the frozen teacher on the frames it held.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_dir
from ..encoder import LiMAEncoder
from ..sparse.allocator import reuse_freed_memory
from ..sparse.backends import check_trainable
from ..voxelize import Voxels
from ..weights import load_state_strict
from .augment import augment_points
from .config import TrainConfig
from .datasets import open_dataset
from .datasets.frame import Frame
from .distributed import Placement, join, leave, placement
from .lima.long_horizon import CURRENT, MEMORY_ONLY, NO_TARGET, StreamTargets, recall, remember
from .lima.losses import averaged_loss, point_distances
from .lima.memory_bank import MemoryBank
from .lima.mixing import mix
from .lima.targets import frame_targets, select_cameras
from .loading import FrameSource, StepFrames, step_frames
from .run import RunLog, load_checkpoint, loss_curve, run_steps, save_checkpoint, start_run, step_seed, write_config
from .schedule import one_cycle
from .streams import StreamItem, StreamSampler
from .teacher import build_teacher

__all__ = ["train", "Distiller"]

log = logging.getLogger(__name__)


class Distiller(nn.Module):
    """What DDP wraps: the backbone's input batch -> head outputs (R, D), unit rows (R voxels or points)."""

    def __init__(self, encoder: LiMAEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: Voxels) -> torch.Tensor:
        return self.encoder.head(self.encoder.backbone_rows(batch))


def _resolve_inputs(cfg: TrainConfig, out: Path, rank: int, world: int) -> TrainConfig:
    """Fill in a generated synthetic world / synthetic teacher when the config asks for them."""
    from tqdm import tqdm

    data, teacher = cfg.data, cfg.teacher
    if not data.path:
        if not data.synthetic:
            raise ValueError("data.path is empty: pass --data PATH (or use a recipe with data.synthetic: true)")
        root = out / "data"
        if rank == 0 and not (root / "lima_splits.json").exists():
            from ..synth import generate

            log.info("generating a synthetic nuScenes-format world in %s ...", root)
            with tqdm(total=data.synthetic_scenes * data.synthetic_frames, unit="frame", desc="synthetic world") as bar:
                generate(
                    root,
                    "nuscenes",
                    data.synthetic_scenes,
                    data.synthetic_frames,
                    data.synthetic_seed,
                    data.synthetic_image_scale,
                    progress=bar.update,
                )
        data = dataclasses.replace(data, path=str(root))
    if teacher.name == "synthetic" and not teacher.weights:
        folder = out / "teacher"
        if rank == 0 and not (folder / "teacher.json").exists():
            from .synthetic_teacher import TEACHER_STEPS, make_synthetic_teacher, packaged_teacher

            packaged = packaged_teacher(tuple(teacher.image_size))
            if packaged is not None:  # the shipped make-teacher default: a first run skips minutes of ViT training
                names = ("teacher.json", "model.safetensors")
                with atomic_dir(folder, names) as stage:
                    for name in names:
                        (stage / name).write_bytes((packaged / name).read_bytes())
                meta = json.loads((folder / "teacher.json").read_text())
                log.info(
                    "synthetic teacher: the packaged one (%s; held-out patch accuracy %.3f), copied to %s",
                    meta["description"],
                    meta["heldout_patch_accuracy"],
                    folder,
                )
            else:
                log.info("making the synthetic teacher in %s (a ViT trained on other synthetic worlds) ...", folder)
                with tqdm(total=TEACHER_STEPS, unit="step", desc="synthetic teacher") as bar:
                    meta = make_synthetic_teacher(
                        folder,
                        steps=TEACHER_STEPS,
                        image_size=tuple(teacher.image_size),
                        progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
                    )
                log.info("  held-out patch accuracy %.3f", meta["heldout_patch_accuracy"])
        teacher = dataclasses.replace(teacher, weights=str(folder))
    if world > 1:
        dist.barrier()
    return dataclasses.replace(cfg, data=data, teacher=teacher)


class _Run:
    """State of one pretraining run; ``step()`` is one optimizer step."""

    def __init__(self, cfg: TrainConfig, out: Path, place: Placement):
        self.cfg, self.out, self.rank, self.world = cfg, out, place.rank, place.world
        rank, world = self.rank, self.world
        self.device = place.device
        self.dataset = open_dataset(
            cfg.data.path,
            cfg.data.split,
            cfg.data.percent,
            None if cfg.data.format == "auto" else cfg.data.format,
            labels=False,
        )
        if not self.dataset.sequences:
            raise ValueError(f"{cfg.data.path}: split {cfg.data.split!r} holds no sequences")
        first = select_cameras(self.dataset.frame(0, 0), cfg.data.cameras)  # an unknown name fails before any work
        cameras = min(len(first.cameras), cfg.lima.cameras_per_frame or len(first.cameras))
        if cfg.lima.frames > 1 and cfg.lima.memory_weight == 0 and cameras == 1 and rank == 0:
            log.warning(
                "lima.memory_weight=0 (the six-camera recipes' value) with one camera per frame: the points memory "
                "alone reaches get no target, and on a one-camera rig they are most of what LiMA adds "
                "(docs/method.md); set lima.memory_weight=1"
            )
        self.teacher = build_teacher(cfg.teacher, self.device)
        self.teacher.amp = cfg.run.amp
        if cfg.encoder.head_dim != self.teacher.dim:
            raise ValueError(
                f"encoder.head_dim={cfg.encoder.head_dim} but the teacher outputs {self.teacher.dim}-d features; set "
                f"encoder.head_dim={self.teacher.dim}"
            )
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.encoder = LiMAEncoder(cfg.encoder).to(self.device).train().set_backend(cfg.run.sparse_backend)
        model = Distiller(self.encoder)
        self.model = nn.parallel.DistributedDataParallel(model, **place.ddp_kwargs()) if world > 1 else model
        o = cfg.optim
        self.sampler = StreamSampler(
            [len(r) for _, r in self.dataset.sequences],
            o.streams,
            rank,
            world,
            cfg.run.seed,
            max_offset=cfg.lima.frames,
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch() // o.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has fewer frames per stream than optim.grad_accum={o.grad_accum}")
        self.total_steps = o.max_steps if o.max_steps > 0 else o.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = one_cycle(self.optimizer, o.lr, self.total_steps, o.warmup)
        self.bank = MemoryBank(o.streams, cfg.lima.frames - 1 if cfg.lima.memory_bank else 0)
        self.stream_start = [0] * o.streams  # position where each stream entered its sequence
        self.step_no = 0
        self.teacher_images = 0
        self.frame = FrameSource(self.dataset, cfg.data.cameras, cfg.lima.cameras_per_frame, cfg.run.seed)
        self._loader = None  # created at the first step, after a resume has set step_no

    # ---------------------------------------------------------------------------------- data

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.cfg.optim.grad_accum

    def next_frames(self, micro: int) -> tuple[list[StreamItem], list[Frame]]:
        """The stream items of ``micro`` and their frames, from the loader (``data.workers`` processes
        reading ahead, or inline), which starts at the first micro-step this run (or resume) takes."""
        o = self.cfg.optim
        if self._loader is None:
            steps = StepFrames(self.frame, self.sampler, self.micro_per_epoch, micro, self.total_steps * o.grad_accum)
            self._loader = step_frames(steps, self.cfg.data.workers, self.cfg.data.prefetch)
        got, items, frames = next(self._loader)
        if got != micro:
            raise RuntimeError(f"the frame loader is at micro-step {got}, the trainer at {micro}")
        return items, frames

    def _remembered(self, frames: list[Frame], keys: list[tuple[int, int]]) -> list:
        """Bank entries of past frames, the teacher run on them now (no-bank baseline, resume replay)."""
        targets, images = frame_targets(self.teacher, frames, self.cfg.lima.cva)
        self.teacher_images += images
        return [remember(f, t, k, self.cfg.lima) for f, t, k in zip(frames, targets, keys)]

    def _past(self, b: int, item: StreamItem, epoch: int) -> list:
        """The memory of stream b for ``item``: the bank, or (no bank) the teacher re-run on past frames."""
        lima = self.cfg.lima
        if lima.frames == 1:
            return []
        if lima.memory_bank:
            return self.bank.entries(b)
        keys = [
            (item.sequence, p)
            for p in range(max(self.stream_start[b], item.position - (lima.frames - 1)), item.position)
        ]
        return self._remembered([self.frame(*k, epoch) for k in keys], keys)

    def replay_bank(self, micro: int) -> None:
        """Rebuild each stream's bank (and sequence entry point) as they stood before ``micro``."""
        epoch = micro // self.micro_per_epoch
        lanes = self.sampler.epoch(epoch)
        for b in range(self.cfg.optim.streams):
            t = micro % self.micro_per_epoch
            history: list[StreamItem] = []  # this stream's earlier frames of the current sequence, newest first
            while not lanes[t][b].starts_sequence:
                t -= 1
                history.append(lanes[t][b])
            self.stream_start[b] = lanes[t][b].position
            if not (self.cfg.lima.memory_bank and self.cfg.lima.frames > 1):
                continue
            keys = [(i.sequence, i.position) for i in reversed(history[: self.cfg.lima.frames - 1])]
            for entry in self._remembered([self.frame(*k, epoch) for k in keys], keys):
                self.bank.push(b, entry)

    # ------------------------------------------------------------------------------ one step

    def micro_step(self, micro: int, gen: torch.Generator) -> dict[str, float]:
        cfg, lima = self.cfg, self.cfg.lima
        epoch = micro // self.micro_per_epoch
        items, frames = self.next_frames(micro)
        for b, i in enumerate(items):
            if i.starts_sequence:
                self.bank.reset(b)
                self.stream_start[b] = i.position
        current, images = frame_targets(self.teacher, frames, lima.cva)
        self.teacher_images += images
        points, targets = [], []
        depth = 0
        for b, (item, f, cur) in enumerate(zip(items, frames, current)):
            depth += (
                self.bank.depth(b) if lima.memory_bank else min(lima.frames - 1, item.position - self.stream_start[b])
            )
            targets.append(recall(cur, self._past(b, item, epoch), lima))
            if lima.memory_bank and lima.frames > 1:
                self.bank.push(b, remember(f, cur, (item.sequence, item.position), lima))
            points.append(torch.from_numpy(f.points))
        B = len(items)
        # Student scans: (points, targets, rows of the plain scans they came from). Every method sees
        # scans_per_stream scans per stream: the current scan, and a mixed scene (or, without mixing,
        # a second augmentation); with one scan per stream and mixing, the mixed scene alone.
        plain = [(points[b], targets[b], None) for b in range(B)]
        offsets = [0]
        for p in points:
            offsets.append(offsets[-1] + len(p))
        second = plain
        if lima.mixing != "none" and B >= 2:
            second = []
            for b in range(B):
                c = (b + 1) % B
                keep_a, keep_b = mix(lima.mixing, points[b], points[c], gen)
                rows = torch.cat([offsets[b] + keep_a.nonzero().squeeze(1), offsets[c] + keep_b.nonzero().squeeze(1)])
                tg = StreamTargets(
                    *(
                        torch.cat([getattr(targets[b], k)[keep_a], getattr(targets[c], k)[keep_b]])
                        for k in ("target", "kind", "frames")
                    )
                )
                second.append((torch.cat([points[b][keep_a], points[c][keep_b]]), tg, rows))
        groups = [plain, second] if lima.scans_per_stream == 2 else [second]
        scans = [augment_points(p, cfg.augment, gen) for group in groups for p, _, _ in group]
        batch = self.encoder.backbone_input(scans, intensity_range=255.0)  # frames carry 0-255 intensity
        amp = self.device.type == "cuda" and cfg.run.amp
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            rows = self.model(batch)
        per_point = self.encoder.rows_to_points(rows, batch)
        losses, at = [], 0
        for group in groups:
            n = sum(len(p) for p, _, _ in group)
            tgt = torch.cat([t.target for _, t, _ in group]).to(self.device)
            kind = torch.cat([t.kind for _, t, _ in group]).to(self.device)
            distance = point_distances(per_point[at : at + n], tgt)
            losses.append(
                averaged_loss(distance, kind == CURRENT, kind == MEMORY_ONLY, lima.loss_average, lima.memory_weight)
            )
            at += n
        mixed = second is not plain
        weights = [1.0, lima.mix_weight if mixed else 1.0] if len(groups) == 2 else [1.0]
        loss = sum(w * term for w, term in zip(weights, losses))
        loss_cons = torch.zeros((), device=self.device)
        if lima.consistency_weight > 0:
            n_plain = offsets[-1]
            rows = torch.cat([r for _, _, r in second]).to(self.device)
            loss_cons = point_distances(
                per_point[n_plain:], F.normalize(per_point[:n_plain][rows].float(), dim=1).detach()
            ).mean()
            loss = loss + lima.consistency_weight * loss_cons
        (loss / cfg.optim.grad_accum).backward()
        n_points = offsets[-1]
        kinds = torch.cat([t.kind for t in targets])
        return {
            "loss": float(loss.detach()),
            "loss_current": float(losses[0].detach()),
            "loss_mixed": float(losses[-1].detach()) if len(groups) == 2 else 0.0,
            "loss_consistency": float(loss_cons.detach()),
            "target_fraction": float((kinds != NO_TARGET).sum()) / n_points,
            "memory_only_fraction": float((kinds == MEMORY_ONLY).sum()) / n_points,
            "bank_depth": depth / B,
        }

    def step(self) -> dict[str, float]:
        o = self.cfg.optim
        self.teacher_images = 0
        t0 = time.perf_counter()
        logs = []
        for j in range(o.grad_accum):
            micro = self.step_no * o.grad_accum + j
            gen = torch.Generator().manual_seed(step_seed(self.cfg.run.seed, micro) * 4099 + self.rank)
            logs.append(self.micro_step(micro, gen))
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step_no += 1
        rec = {k: sum(d[k] for d in logs) / len(logs) for k in logs[0]}
        rec.update(
            step=self.step_no,
            epoch=(self.step_no - 1) // self.steps_per_epoch,
            lr=lr,
            teacher_images=self.teacher_images,
            seconds=time.perf_counter() - t0,
            bank_mb=self.bank.nbytes() / 2**20,
        )
        return rec

    # --------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        state = {
            "encoder": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_no,
            "world_size": self.world,
            "config": self.cfg.to_dict(),
        }
        return save_checkpoint(self.out / "checkpoints" / "last.pt", state)

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, self.cfg.to_dict(), self.device)
        if state["world_size"] != self.world:
            raise ValueError(
                f"{path}: written by {state['world_size']} processes, resuming with {self.world}; the data order "
                "would change"
            )
        load_state_strict(self.encoder, state["encoder"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_no = int(state["step"])
        self.replay_bank(self.step_no * self.cfg.optim.grad_accum)


def train(
    cfg: TrainConfig, out: str | Path, resume: bool = False, on_step: Callable[[dict], None] | None = None
) -> Path:
    """Run (or resume) pretraining into ``out``; returns the encoder folder ``out/encoder``.

    Args:
        cfg: the whole run configuration (a recipe with its ``--set`` overrides).
        out: the run folder (config.json, log.jsonl, checkpoints/last.pt, encoder/).
        resume: continue exactly from ``out/checkpoints/last.pt``.
        on_step: called with each step's log record (tests, benchmarks).
    """
    out = Path(out)
    ckpt = start_run(out, resume)  # before minutes of world / teacher generation
    place = placement(cfg.run.device)  # rank, world and this rank's own device (cuda:LOCAL_RANK)
    created = join(place)
    try:
        return _train(cfg, out, resume, on_step, place, ckpt)
    finally:
        leave(created)


def _train(cfg: TrainConfig, out: Path, resume: bool, on_step, place: Placement, ckpt: Path) -> Path:
    rank, world = place.rank, place.world
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    check_trainable(cfg.run.sparse_backend, place.device)  # before minutes of world / teacher generation
    reuse_freed_memory()  # large per-point tensors would otherwise page-fault afresh every step
    cfg = _resolve_inputs(cfg, out, rank, world)
    run = _Run(cfg, out, place)
    if resume:
        run.load_checkpoint(ckpt)
    if rank == 0:
        write_config(out, cfg.to_dict())
        log.info("sparse backend: %s (%s)", run.encoder.backend, run.encoder.backend_reason)
        log.info(
            "pretraining %s from %s on %s (%d frames, %d sequences); %d steps of %d streams x %d process(es)",
            cfg.encoder.backbone,
            run.teacher.description,
            cfg.data.path,
            len(run.dataset),
            len(run.dataset.sequences),
            run.total_steps,
            cfg.optim.streams,
            world,
        )
    scalars = (
        "loss",
        "lr",
        "loss_current",
        "loss_mixed",
        "target_fraction",
        "memory_only_fraction",
        "bank_depth",
        "seconds",
    )
    run_log = RunLog(out, run.total_steps, run.step_no, scalars, enabled=rank == 0, desc="pretrain")
    run_steps(
        run.step,
        run.step_no,
        run.total_steps,
        run_log,
        cfg.run.checkpoint_every,
        run.save_checkpoint if rank == 0 else None,
        on_step,
        after_step=dist.barrier if world > 1 else None,
        checkpoint=ckpt,
    )
    encoder_dir = out / "encoder"
    if rank == 0:
        run.encoder.eval().save_pretrained(encoder_dir)
        loss_curve(out / "log.jsonl", out / "loss.png", ("loss", "loss_current", "loss_mixed"), "distillation loss")
        log.info("encoder written to %s (LiMAEncoder.from_pretrained(%r))", encoder_dir, str(encoder_dir))
    if world > 1:
        dist.barrier()
    return encoder_dir

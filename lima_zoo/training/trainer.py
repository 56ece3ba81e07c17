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
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..atomic import atomic_path
from ..encoder import LiMAEncoder, resolve_device
from ..sparse import SparseTensor
from .augment import augment_points
from .config import TrainConfig
from .datasets import open_dataset
from .losses import distillation_loss
from .memory_bank import MemoryBank, MemoryEntry
from .mixing import mix
from .propagation import fuse, propagate
from .schedule import one_cycle
from .runlog import RunLog, load_checkpoint, loss_curve, save_checkpoint
from .streams import StreamItem, StreamSampler
from .targets import frame_targets
from .teacher import build_teacher

__all__ = ["train", "Distiller"]


class Distiller(nn.Module):
    """What DDP wraps: voxels (M, C) + coords (M, 4) -> head outputs (M, D) (unit rows)."""

    def __init__(self, encoder: LiMAEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.encoder.head(self.encoder.backbone(SparseTensor(feats, coords)).feats)


def _distributed() -> tuple[int, int]:
    """(rank, world) — initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _resolve_inputs(cfg: TrainConfig, out: Path, rank: int, world: int) -> TrainConfig:
    """Fill in a generated synthetic world / synthetic teacher when the config asks for them."""
    data, teacher = cfg.data, cfg.teacher
    if not data.path:
        if not data.synthetic:
            raise ValueError("data.path is empty: pass --data PATH (or use a recipe with data.synthetic: true)")
        root = out / "data"
        if rank == 0 and not (root / "lima_splits.json").exists():
            from ..synth import generate

            print(f"generating a synthetic nuScenes-format world in {root} ...", flush=True)
            generate(root, "nuscenes", data.synthetic_scenes, data.synthetic_frames, data.synthetic_seed, data.synthetic_image_scale)
        data = dataclasses.replace(data, path=str(root))
    if teacher.name == "synthetic" and not teacher.weights:
        folder = out / "teacher"
        if rank == 0 and not (folder / "teacher.json").exists():
            from .synthetic_teacher import make_synthetic_teacher

            print(f"making the synthetic teacher in {folder} (a ViT trained on other synthetic worlds) ...", flush=True)
            meta = make_synthetic_teacher(folder, image_size=tuple(teacher.image_size))
            print(f"  held-out patch accuracy {meta['heldout_patch_accuracy']:.3f}", flush=True)
        teacher = dataclasses.replace(teacher, weights=str(folder))
    if world > 1:
        dist.barrier()
    return dataclasses.replace(cfg, data=data, teacher=teacher)


class _Run:
    """State of one pretraining run; ``step()`` is one optimizer step."""

    def __init__(self, cfg: TrainConfig, out: Path, rank: int, world: int):
        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world
        self.device = resolve_device(cfg.run.device)
        self.dataset = open_dataset(cfg.data.path, cfg.data.split, cfg.data.percent, None if cfg.data.format == "auto" else cfg.data.format, labels=False)
        if not self.dataset.sequences:
            raise ValueError(f"{cfg.data.path}: split {cfg.data.split!r} holds no sequences")
        self.teacher = build_teacher(cfg.teacher, self.device)
        if cfg.encoder.head_dim != self.teacher.dim:
            raise ValueError(f"encoder.head_dim={cfg.encoder.head_dim} but the teacher outputs {self.teacher.dim}-d features; set encoder.head_dim={self.teacher.dim}")
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.encoder = LiMAEncoder(cfg.encoder).to(self.device).train()
        model = Distiller(self.encoder)
        self.model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        o = cfg.optim
        self.sampler = StreamSampler([len(r) for _, r in self.dataset.sequences], o.streams, rank, world, cfg.run.seed, max_offset=cfg.lima.frames)
        self.steps_per_epoch = self.sampler.steps_per_epoch() // o.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"an epoch has fewer frames per stream than optim.grad_accum={o.grad_accum}")
        self.total_steps = o.max_steps if o.max_steps > 0 else o.epochs * self.steps_per_epoch
        self.optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = one_cycle(self.optimizer, o.lr, self.total_steps, o.warmup)
        dtype = torch.float16 if cfg.lima.bank_dtype == "float16" else torch.float32
        self.bank = MemoryBank(o.streams, cfg.lima.frames - 1 if cfg.lima.memory_bank else 0, dtype)
        self.stream_start = [0] * o.streams  # position where each stream entered its sequence
        self.step_no = 0
        self.teacher_images = 0
        self._epochs: dict[int, list[list[StreamItem]]] = {}

    # ---------------------------------------------------------------------------------- data

    def items(self, micro: int) -> list[StreamItem]:
        """The B stream items of micro-step ``micro`` (one frame per stream)."""
        spe = self.steps_per_epoch * self.cfg.optim.grad_accum
        epoch = micro // spe
        if epoch not in self._epochs:
            self._epochs = {epoch: self.sampler.epoch(epoch)}
        return self._epochs[epoch][micro % spe]

    def _past(self, b: int, item: StreamItem) -> list[MemoryEntry]:
        """The memory of stream b for ``item``: the bank, or (no bank) the teacher re-run on past frames."""
        lima = self.cfg.lima
        if lima.frames == 1:
            return []
        if lima.memory_bank:
            return self.bank.entries(b)
        first = max(self.stream_start[b], item.position - (lima.frames - 1))
        frames = [self.dataset.frame(item.sequence, p) for p in range(first, item.position)]
        targets, images = frame_targets(self.teacher, frames, lima.cva)
        self.teacher_images += images
        return [MemoryEntry(t.xyz[t.valid], t.unified[t.valid], (item.sequence, p)) for t, p in zip(targets, range(first, item.position))]

    def replay_bank(self, micro: int) -> None:
        """Rebuild each stream's bank (and sequence entry point) as they stood before ``micro``."""
        spe = self.steps_per_epoch * self.cfg.optim.grad_accum
        self.items(micro)  # loads that epoch's schedule
        lanes = self._epochs[micro // spe]
        for b in range(self.cfg.optim.streams):
            t = micro % spe
            history: list[StreamItem] = []  # this stream's earlier frames of the current sequence, newest first
            while not lanes[t][b].starts_sequence:
                t -= 1
                history.append(lanes[t][b])
            self.stream_start[b] = lanes[t][b].position
            if not (self.cfg.lima.memory_bank and self.cfg.lima.frames > 1):
                continue
            keep = list(reversed(history[: self.cfg.lima.frames - 1]))
            targets, _ = frame_targets(self.teacher, [self.dataset.frame(i.sequence, i.position) for i in keep], self.cfg.lima.cva)
            for i, tg in zip(keep, targets):
                self.bank.push(b, tg.xyz, tg.unified, tg.valid, (i.sequence, i.position))

    # ------------------------------------------------------------------------------ one step

    def micro_step(self, micro: int, gen: torch.Generator) -> dict[str, float]:
        cfg, lima = self.cfg, self.cfg.lima
        items = self.items(micro)
        frames = [self.dataset.frame(i.sequence, i.position) for i in items]
        for b, i in enumerate(items):
            if i.starts_sequence:
                self.bank.reset(b)
                self.stream_start[b] = i.position
        current, images = frame_targets(self.teacher, frames, lima.cva)
        self.teacher_images += images
        points, targets, masks = [], [], []
        from_memory_only = 0
        for b, (item, f, cur) in enumerate(zip(items, frames, current)):
            pooled, has = propagate(cur.xyz, self._past(b, item), lima.cell, lima.pool)
            target, mask = fuse(cur.unified, cur.valid, pooled, has, lima.alpha)
            from_memory_only += int((mask & ~cur.valid).sum())
            if lima.memory_bank and lima.frames > 1:
                self.bank.push(b, cur.xyz, cur.unified, cur.valid, (item.sequence, item.position))
            points.append(torch.from_numpy(f.points))
            targets.append(target)
            masks.append(mask)
        scans = [augment_points(p, cfg.augment, gen) for p in points]
        scan_targets, scan_masks = list(targets), list(masks)
        B = len(items)
        if lima.mixing != "none" and B >= 2:
            for b in range(B):
                c = (b + 1) % B
                keep_a, keep_b = mix(lima.mixing, points[b], points[c], gen)
                scans.append(augment_points(torch.cat([points[b][keep_a], points[c][keep_b]]), cfg.augment, gen))
                scan_targets.append(torch.cat([targets[b][keep_a], targets[c][keep_b]]))
                scan_masks.append(torch.cat([masks[b][keep_a], masks[c][keep_b]]))
        vox = self.encoder.voxelize_points(scans, intensity_range=255.0)  # frames carry 0-255 intensity
        amp = self.device.type == "cuda" and cfg.run.amp
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            per_voxel = self.model(vox.feats, vox.coords)
        per_point = per_voxel[vox.inverse]
        sizes = [len(s) for s in scans]
        n_cur = sum(sizes[:B])
        tgt = torch.cat(scan_targets).to(self.device)
        msk = torch.cat(scan_masks).to(self.device)
        loss_cur = distillation_loss(per_point[:n_cur], tgt[:n_cur], msk[:n_cur])
        loss = loss_cur
        loss_mix = torch.zeros(())
        if len(scans) > B:
            loss_mix = distillation_loss(per_point[n_cur:], tgt[n_cur:], msk[n_cur:])
            loss = loss + lima.mix_weight * loss_mix
        (loss / cfg.optim.grad_accum).backward()
        n_points = sum(len(p) for p in points)
        return {"loss": float(loss.detach()), "loss_current": float(loss_cur.detach()), "loss_mixed": float(loss_mix.detach()),
                "target_fraction": float(sum(int(m.sum()) for m in masks)) / n_points, "memory_only_fraction": from_memory_only / n_points}  # fmt: skip

    def step(self) -> dict[str, float]:
        o = self.cfg.optim
        self.teacher_images = 0
        t0 = time.perf_counter()
        logs = []
        for j in range(o.grad_accum):
            micro = self.step_no * o.grad_accum + j
            gen = torch.Generator().manual_seed((self.cfg.run.seed * 1_000_003 + micro) * 4099 + self.rank)
            logs.append(self.micro_step(micro, gen))
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), o.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step_no += 1
        rec = {k: sum(d[k] for d in logs) / len(logs) for k in logs[0]}
        rec.update(step=self.step_no, epoch=(self.step_no - 1) // self.steps_per_epoch, lr=lr, teacher_images=self.teacher_images,
                   seconds=time.perf_counter() - t0, bank_mb=self.bank.nbytes() / 2**20)  # fmt: skip
        return rec

    # --------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        state = {"encoder": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step_no, "world_size": self.world, "config": self.cfg.to_dict()}  # fmt: skip
        return save_checkpoint(self.out / "checkpoints" / "last.pt", state)

    def load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, self.cfg.to_dict(), self.device)
        if state["world_size"] != self.world:
            raise ValueError(f"{path}: written by {state['world_size']} processes, resuming with {self.world}; the data order would change")
        from ..encoder import load_state_strict

        load_state_strict(self.encoder, state["encoder"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_no = int(state["step"])
        self.replay_bank(self.step_no * self.cfg.optim.grad_accum)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, on_step: Callable[[dict], None] | None = None) -> Path:
    """Run (or resume) pretraining into ``out``; returns the encoder folder ``out/encoder``."""
    out = Path(out)
    rank, world = _distributed()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    cfg = _resolve_inputs(cfg, out, rank, world)
    run = _Run(cfg, out, rank, world)
    ckpt = out / "checkpoints" / "last.pt"
    if resume:
        run.load_checkpoint(ckpt)
    elif ckpt.exists():
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        print(f"pretraining {cfg.encoder.backbone} from {run.teacher.description} on {cfg.data.path} ({len(run.dataset)} frames, "
              f"{len(run.dataset.sequences)} sequences); {run.total_steps} steps of {cfg.optim.streams} streams x {world} process(es)", flush=True)  # fmt: skip
    log = RunLog(out, run.total_steps, run.step_no, ("loss", "lr", "loss_current", "loss_mixed", "target_fraction", "memory_only_fraction", "seconds"),
                 enabled=rank == 0, desc="pretrain")  # fmt: skip
    try:
        while run.step_no < run.total_steps:
            rec = run.step()
            log.write(rec)
            if on_step is not None:
                on_step(rec)
            if rank == 0 and (run.step_no % cfg.run.checkpoint_every == 0 or run.step_no == run.total_steps):
                run.save_checkpoint()
            if world > 1:
                dist.barrier()
    except KeyboardInterrupt:
        if rank == 0:
            print(f"\ninterrupted at step {run.step_no}; the last checkpoint ({ckpt}) is intact — continue with --resume", flush=True)
        raise
    finally:
        log.close()
    encoder_dir = out / "encoder"
    if rank == 0:
        run.encoder.eval().save_pretrained(encoder_dir)
        loss_curve(out / "log.jsonl", out / "loss.png", ("loss", "loss_current", "loss_mixed"), "distillation loss")
        print(f"encoder written to {encoder_dir} (LiMAEncoder.from_pretrained({str(encoder_dir)!r}))", flush=True)
    if world > 1:
        dist.barrier()
    return encoder_dir

"""Make an offline image teacher for CPU experiments: a small ViT trained on a *different* synthetic world.

DINOv2 cannot be downloaded here, and a random ViT carries no appearance information, so the CPU
recipes distil a stand-in that does: a 4-block ViT (patch 8) trained to predict, for each patch,
the distribution of semantic classes rendered in it. Its images and labels come from worlds with
seeds starting at ``seed`` (default 1000), disjoint from the seeds datasets are generated with, so
the teacher never sees the evaluation split's scenes or labels. After training, its last-block
patch tokens (no head) are the teacher features, exactly like DINOv2's are used.

    lima-zoo make-teacher teachers/synthetic-vit      # writes teacher.json + model.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_path
from ..labels import NUSCENES_EVAL_CLASSES, NUSCENES_LUT
from .schedule import one_cycle
from .teacher import IMAGENET_MEAN, IMAGENET_STD, images_to_input

__all__ = ["make_synthetic_teacher", "render_training_images", "TEACHER_STEPS"]


def render_training_images(seed: int, scenes: int, frames: int, scale: float = 0.14) -> tuple[np.ndarray, np.ndarray]:
    """Six-camera images of ``scenes`` worlds from ``seed`` on: rgb (I, H, W, 3) uint8, labels (I, H, W)
    nuScenes evaluation ids (0 = sky / ignore)."""
    from ..synth.sensors import nuscenes_cameras, render_camera
    from ..synth.world import make_world, scene_seed

    rgb, lab = [], []
    for sc in range(scenes):
        world = make_world(scene_seed(seed, sc), frames * 0.5 + 1.0)
        for k in range(frames):
            for cam in nuscenes_cameras(scale):
                image = render_camera(world, 0.5 + k * 0.5 + cam.time_offset, cam)
                rgb.append(image.rgb)
                lab.append(NUSCENES_LUT[image.label])
    return np.stack(rgb), np.stack(lab)


def _patch_targets(labels: torch.Tensor, image_size: tuple[int, int], patch: int, classes: int) -> torch.Tensor:
    """(B, H0, W0) ids -> (B, h*w, classes) class frequencies of each patch after resizing."""
    lab = F.interpolate(labels[:, None].float(), size=image_size, mode="nearest")[:, 0].long()
    onehot = F.one_hot(lab, classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, patch).flatten(2).transpose(1, 2)


TEACHER_STEPS = 300  # optimizer steps of the teacher (lima-zoo make-teacher, and a run that makes its own)


PACKAGED_TEACHER = Path(__file__).with_name(
    "packaged_teacher"
)  # `lima-zoo make-teacher DIR` with its defaults, shipped


def packaged_teacher(image_size: tuple[int, int]) -> Path | None:
    """The shipped synthetic teacher's folder when it was trained at ``image_size`` (H, W), else None.

    A run whose recipe keeps make-teacher's defaults copies it instead of spending minutes training the
    same ViT; any other image size falls back to making one.
    """
    meta_file = PACKAGED_TEACHER / "teacher.json"
    if not meta_file.is_file() or not (PACKAGED_TEACHER / "model.safetensors").is_file():
        return None
    meta = json.loads(meta_file.read_text())
    return PACKAGED_TEACHER if tuple(meta["vit"]["img_size"]) == tuple(image_size) else None


def make_synthetic_teacher(
    out: str | Path,
    seed: int = 1000,
    scenes: int = 3,
    frames: int = 6,
    steps: int = TEACHER_STEPS,
    batch: int = 16,
    image_size: tuple[int, int] = (112, 224),
    dim: int = 128,
    depth: int = 4,
    patch: int = 8,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Train and save the teacher under ``out``; returns its metadata (also written to teacher.json).

    Args:
        out: the teacher folder (teacher.json + model.safetensors).
        seed: the first world seed of its training images; keep it apart from the datasets' seeds.
        scenes, frames: the size of its training worlds.
        steps, batch: the training schedule.
        image_size: (H, W) the teacher reads; a run's ``teacher.image_size`` must match it.
        dim, depth, patch: the ViT's width, blocks and patch size.
        progress: called with (step, loss) after each step.
    """
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    rgb, lab = render_training_images(seed, scenes, frames)
    held_rgb, held_lab = render_training_images(seed + 500, 1, 2)  # a held-out world for the accuracy report
    classes = len(NUSCENES_EVAL_CLASSES) + 1
    vit_kwargs = dict(
        img_size=list(image_size),
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=3.0,
        num_classes=0,
        global_pool="",
        class_token=True,
    )
    vit = VisionTransformer(**vit_kwargs)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    head = torch.nn.Linear(dim, classes)
    opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=0.05)
    sched = one_cycle(opt, 1e-3, steps, 0.1)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(lab)
    loss_value = float("nan")

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return (
            vit.forward_intermediates(x, indices=1, norm=False, intermediates_only=True)[0].flatten(2).transpose(1, 2)
        )

    for step in range(steps):
        idx = torch.randint(len(rgb), (batch,), generator=gen)
        x = images_to_input([rgb[i] for i in idx.tolist()], image_size, mean, std)
        if torch.rand((), generator=gen) < 0.5:  # horizontal flip: appearance, not position, should decide
            x, tgt = x.flip(-1), _patch_targets(labels[idx].flip(-1), image_size, patch, classes)
        else:
            tgt = _patch_targets(labels[idx], image_size, patch, classes)
        logits = head(tokens(x))
        loss = -(tgt * logits.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step, loss_value)
    vit.eval()
    with torch.no_grad():
        x = images_to_input(list(held_rgb), image_size, mean, std)
        tgt = _patch_targets(torch.from_numpy(held_lab), image_size, patch, classes)
        pred = head(tokens(x)).argmax(-1)
        valid = tgt.argmax(-1) > 0
        acc = float((pred == tgt.argmax(-1))[valid].float().mean())
    meta = {
        "vit": vit_kwargs,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "description": f"synthetic ViT (dim {dim}, depth {depth}, patch {patch}) trained {steps} steps "
        f"on worlds seeded from {seed}",
        "trained_on": {"seed": seed, "scenes": scenes, "frames": frames, "images": int(len(rgb))},
        "final_loss": loss_value,
        "heldout_patch_accuracy": acc,
    }
    out = Path(out)
    from safetensors.torch import save_file

    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp))
    with atomic_path(out / "teacher.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return meta

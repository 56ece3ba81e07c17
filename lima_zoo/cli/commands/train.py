"""``lima-zoo train`` (LiMA pretraining) and ``lima-zoo make-teacher`` (the offline synthetic teacher)."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import library_errors


@click.command("train", context_settings={"show_default": True})
@click.argument("recipe")
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True, file_okay=False),
    help="Dataset root (format detected); recipes with a synthetic world may omit it.",
)
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: checkpoints, logs, encoder/.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set optim.lr=0.002 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt exactly.")
@library_errors
def train_cmd(recipe, data_path, out_dir, overrides, resume):
    """Pretrain a LiMA encoder. RECIPE is a packaged recipe name or a YAML file.

    Packaged recipes: vit-s-minkunet34, vit-b-minkunet34, vit-l-minkunet34 (nuScenes, LiMA); baselines
    scalr-vit-b-minkunet34 (ScaLR-literal: 1 frame, one random camera) and single-frame-vit-b-minkunet34
    (1 frame, every camera); synthetic-tiny (CPU).
    Many GPUs: torchrun --nproc_per_node N -m lima_zoo.cli train RECIPE ...
    """
    from ...training.config import load_recipe
    from ...training.trainer import train

    sets = list(overrides) + ([f"data.path={data_path}"] if data_path else [])
    train(load_recipe(recipe, sets), out_dir, resume=resume)


@click.command("make-teacher", context_settings={"show_default": True})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--seed", default=1000, type=int, help="First world seed; keep it apart from the seeds your datasets use."
)
@click.option("--scenes", default=3, type=click.IntRange(min=1))
@click.option("--frames", default=6, type=click.IntRange(min=1))
@click.option("--steps", default=300, type=click.IntRange(min=1))
@library_errors
def make_teacher_cmd(out, seed, scenes, frames, steps):
    """Train the offline synthetic image teacher (a small ViT) on synthetic worlds of its own."""
    from tqdm import tqdm

    from ...training.synthetic_teacher import make_synthetic_teacher

    with tqdm(total=steps, unit="step", desc="teacher") as bar:
        meta = make_synthetic_teacher(
            out,
            seed,
            scenes,
            frames,
            steps,
            progress=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
        )
    click.echo(
        f"teacher written to {out}: {meta['description']}; held-out patch accuracy {meta['heldout_patch_accuracy']:.3f}"
    )


COMMANDS = [train_cmd, make_teacher_cmd]

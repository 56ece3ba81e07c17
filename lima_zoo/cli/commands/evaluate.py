"""``lima-zoo eval``: linear probing or fine-tuning for semantic segmentation, scored by mIoU."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import library_errors


@click.command("eval", context_settings={"show_default": True})
@click.option(
    "--protocol",
    type=click.Choice(["linear", "finetune", "none"]),
    default="linear",
    help="none: score a segmentation model folder (RUN/model) as it is, no training.",
)
@click.option(
    "--percent",
    default=100.0,
    type=click.FloatRange(0, 100, min_open=True),
    help="Share of the training split (1, 5, 10, 25, 100).",
)
@click.option(
    "--model", "-m", "model_name", required=True, help="Registered name, org/repo, encoder folder, or 'random'."
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Labelled dataset root (format detected).",
)
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a DownstreamConfig field, e.g. --set epochs=20.",
)
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt.")
@library_errors
def eval_cmd(protocol, percent, model_name, data_path, out_dir, overrides, resume):
    """Linear probing or fine-tuning for semantic segmentation, or (--protocol none) scoring a
    segmentation model; prints per-class IoU and mIoU."""
    from ...config import config_from_dict
    from ...training.config import DownstreamConfig, apply_overrides

    values = apply_overrides({"protocol": protocol, "percent": percent}, list(overrides))
    cfg = config_from_dict(DownstreamConfig, values, where="eval --set")
    from ...training.downstream import run_downstream, score_segmenter

    if protocol == "none":
        if resume:
            raise click.UsageError("--resume applies to a training protocol, not --protocol none")
        report = score_segmenter(cfg, model_name, data_path, out_dir)
    else:
        report = run_downstream(cfg, model_name, data_path, out_dir, resume=resume)
    click.echo(report["table"])
    split = [f"{k[5:]} the cameras {100 * report[k]:.2f}" for k in ("miou_inside", "miou_outside") if k in report]
    click.echo(
        f"mIoU {100 * report['miou']:.2f}"
        + (f" ({', '.join(split)})" if split else "")
        + f" -> {out_dir}/metrics.json, {out_dir}/iou.png"
    )


COMMANDS = [eval_cmd]

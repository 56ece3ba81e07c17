"""The model catalogue and the Hub: ``lima-zoo models``, ``info``, ``backends`` and ``push``."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import library_errors


@click.command("models")
def models_cmd() -> None:
    """List the registered encoder variants."""
    from ...catalog import model_rows
    from ...registry import MODELS

    rows = model_rows(MODELS)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


@click.command("info")
@click.argument("model")
@library_errors
def info_cmd(model: str) -> None:
    """Show a model's configuration, Hub repo, licence and local cache state."""
    from ...catalog import describe

    click.echo(describe(model))


@click.command("backends")
@click.option("--device", default="auto", show_default=True, help="The device auto decides for: auto | cpu | cuda[:N].")
@library_errors
def backends_cmd(device: str) -> None:
    """List the sparse-convolution backends (installed or not) and what ``auto`` picks here, and why."""
    from ...device import resolve_device
    from ...sparse.backends import BACKENDS, GPU_ONLY, INSTALL_HINTS, auto_backend, available_backends

    have = set(available_backends())
    for name in BACKENDS:
        where = " (GPUs only)" if name in GPU_ONLY else ""
        state = "available" if name in have else f"not installed: {INSTALL_HINTS[name]}"
        click.echo(f"{name:<14} {state}{where if name in have else ''}")
    dev = resolve_device(device)
    chosen, why = auto_backend(dev)
    click.echo(f"auto on {dev}: {chosen or 'measured'} - {why}")


@click.command("push")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Hub repo, org/name (created if needed).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--revision", default=None, help="Branch to commit to (created if needed; default main).")
@click.option(
    "--dry-run", is_flag=True, help="List exactly what would be uploaded and print the rendered card; no network."
)
@click.option(
    "--card-data", default=None, help="Per-model card data: a name under lima_zoo/model_cards/ or a YAML file."
)
@click.option(
    "--eval",
    "evals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="metrics.json from `lima-zoo eval` (repeatable); the card's results come from these.",
)
@click.option("--message", default=None, help="Commit message.")
@library_errors
def push_cmd(model_dir, repo_id, private, revision, dry_run, card_data, evals, message):
    """Upload MODEL_DIR (config.json, model.safetensors, model.onnx if present) and a rendered
    model card as README.md to the Hugging Face Hub, in one commit."""
    from ...export.push import plan_upload, push

    plan = plan_upload(model_dir, repo_id, card_data, list(evals))
    if dry_run:
        click.echo(plan.describe())
        click.echo("\n" + plan.card)
        return
    try:
        url = push(plan, private=private, revision=revision, message=message)
    except (ImportError, ValueError, OSError):  # OfflineError and PermissionError are OSErrors: their own message
        raise
    except Exception as exc:  # noqa: BLE001 - Hub HTTP errors: say what failed, never a traceback or the token
        raise click.ClickException(f"push to {repo_id} failed ({type(exc).__name__}): {exc}") from None
    click.echo(f"pushed {len(plan.files) + 1} files to {repo_id}: {url}")


COMMANDS = [models_cmd, info_cmd, backends_cmd, push_cmd]

"""The ``lima-zoo`` command line. Each command imports its implementation inside the function,
so ``lima-zoo --help`` never imports torch."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lima-zoo")
def main() -> None:
    """LiMA LiDAR encoders: features for your scans, training, evaluation and export."""


@main.command("models")
def models_cmd() -> None:
    """List the registered encoder variants."""
    from ..registry import MODELS

    click.echo(f"{'name':<20} {'backbone':<12} {'teacher':<26} hub repo")
    for name, info in sorted(MODELS.items()):
        c = info.config
        click.echo(f"{name:<20} {c.backbone:<12} {c.teacher:<26} {info.hub_repo}")


@main.command("backends")
def backends_cmd() -> None:
    """List the sparse-convolution backends importable here."""
    from ..sparse.backends import BACKENDS, available_backends

    have = set(available_backends())
    for name in BACKENDS:
        click.echo(f"{name:<12} {'available' if name in have else 'not installed'}")

"""The ``lima-zoo`` command group: one module per family of commands under ``commands/``, each
importing its library code inside the command, so ``lima-zoo --help`` never imports torch."""

from __future__ import annotations

import click

from .. import __version__
from .commands import data, embed, evaluate, export, hub, train, viz
from .common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lima-zoo")
def main() -> None:
    """LiMA LiDAR encoders: features for your scans, training, evaluation and export."""
    setup_logging()


for _module in (embed, viz, hub, data, train, evaluate, export):
    for _command in _module.COMMANDS:
        main.add_command(_command)

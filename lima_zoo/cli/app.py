"""The ``lima-zoo`` command group: one module per family of commands under ``commands/``, each
importing its library code inside the command, so ``lima-zoo --help`` never imports torch, and the
OpenMP thread settings (``lima_zoo.cpu``) are made before torch starts its pool."""

from __future__ import annotations

import logging

import click

from .. import __version__
from ..cpu import configure_threads
from .commands import data, embed, evaluate, export, hub, predict, serve, train, viz
from .common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lima-zoo")
def main() -> None:
    """LiMA LiDAR encoders: features for your scans, training, evaluation and export."""
    setup_logging()
    # before any command imports torch: OpenMP reads these when its thread pool starts
    logging.getLogger("lima_zoo.cli").debug("threads: %s", configure_threads().why)


for _module in (embed, predict, serve, viz, hub, data, train, evaluate, export):
    for _command in _module.COMMANDS:
        main.add_command(_command)

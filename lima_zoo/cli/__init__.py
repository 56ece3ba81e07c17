"""The ``lima-zoo`` command line: options parsed here, work done by the library."""

from .app import main

__all__ = ["main"]

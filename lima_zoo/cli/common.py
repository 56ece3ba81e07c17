"""What every command shares: library errors as one-line messages, the output-folder check, and
where log records go. Imports click only (``lima-zoo --help`` loads no torch)."""

from __future__ import annotations

import functools
import logging
import sys
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import click

__all__ = ["library_errors", "check_writable", "setup_logging", "LIBRARY_ERRORS"]

F = TypeVar("F", bound=Callable)

# What the library raises for a bad input, setting or environment (PointCloudError is a ValueError;
# OfflineError, FileNotFoundError and PermissionError are OSErrors; a missing extra is an ImportError;
# a failed verification is a RuntimeError). Anything else is a bug and keeps its traceback.
LIBRARY_ERRORS = (ValueError, OSError, ImportError, RuntimeError)


def library_errors(command: F) -> F:
    """Turn the library's errors into one-line messages (exit 1) and Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            sys.exit(130)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "torch":
                raise click.ClickException(
                    "this command needs PyTorch: pip install 'lima-zoo[torch]' (exported models run without it: "
                    "lima-zoo embed --runtime onnx)"
                ) from None
            raise click.ClickException(str(exc)) from None
        except LIBRARY_ERRORS as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def check_writable(folder: Path, option: str) -> None:
    """Fail now, naming the option and the path, when nothing can be written into ``folder``: the
    folder (and any missing parents) is made, a probe file written, and what the probe made is
    removed again, so a run that fails later (a model that does not load) leaves no empty folder."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lima-write-check-"):
            pass
    except OSError as e:
        raise click.UsageError(f"{option} {folder}: cannot write there ({e.strerror or e})") from None
    finally:
        for path in made:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break


class _ConsoleHandler(logging.Handler):
    """Notes (below WARNING) to the current sys.stdout, warnings and errors to the current sys.stderr,
    looked up at each record (so a redirected or captured stream is honoured)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def setup_logging() -> None:
    """The library's log records as plain lines on the console (once per process)."""
    logger = logging.getLogger("lima_zoo")
    if any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        return
    logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)

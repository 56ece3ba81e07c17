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

__all__ = [
    "library_errors",
    "check_writable",
    "setup_logging",
    "gather_scans",
    "run_summary",
    "model_options",
    "scan_options",
    "LIBRARY_ERRORS",
]

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


def gather_scans(paths: tuple[str, ...], inputs_from: Path | None, shard: str | None, verb: str) -> tuple:
    """The scans a command runs on: PATHS and --inputs-from expanded into (input, output name) pairs,
    this process's --shard of them; -> (inputs, (index, count), ignored files). A usage error when
    none is given or found."""
    from ..pipeline import collect_inputs, inputs_from_list, shard_of, take_shard

    if not paths and inputs_from is None:
        raise click.UsageError(f"give scans to {verb}: PATHS (files, globs, directories) and/or --inputs-from LIST")
    ignored: list[Path] = []
    try:
        listed = inputs_from_list(inputs_from) if inputs_from is not None else []
        inputs = collect_inputs(list(paths), ignored) + listed
        index, count = shard_of(shard)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not inputs:
        raise click.UsageError(
            f"no point-cloud files found in {' '.join(paths)}"
            + (f" ({len(ignored)} other files ignored)" if ignored else "")
        )
    total = len(inputs)
    inputs = take_shard(inputs, index, count)
    if count > 1:
        click.echo(f"shard {index}/{count}: {len(inputs)} of {total} scans")
    return inputs, (index, count), ignored


def _apply(options: list, command: F) -> F:
    for option in reversed(options):
        command = option(command)
    return command


def model_options(command: F) -> F:
    """--model, --device, --backend, --runtime and --local-files-only (embed, predict)."""
    return _apply(
        [
            click.option(
                "--model",
                "-m",
                required=True,  # no registered name has published weights yet: a default would only fail later
                help="A model folder, org/repo[@rev] or a registered name (`lima-zoo models`).",
            ),
            click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]"),
            click.option(
                "--backend",
                default="auto",
                show_default=True,
                help="Sparse backend: auto | torch | spconv | spconv-triton | torchsparse",
            ),
            click.option(
                "--runtime",
                type=click.Choice(["torch", "onnx"]),
                default="torch",
                show_default=True,
                help="onnx: run the model folder's model.onnx with onnxruntime.",
            ),
            click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving --model."),
        ],
        command,
    )


def scan_options(command: F) -> F:
    """PATHS and the options that say which scans a run reads and how (embed, predict)."""
    return _apply(
        [
            click.argument("paths", nargs=-1),
            click.option(
                "--inputs-from",
                type=click.Path(dir_okay=False, path_type=Path),
                help="A text file with one scan path per line (with or instead of PATHS).",
            ),
            click.option(
                "--shard",
                metavar="I/N",
                help="Run only every N-th input from the I-th (default: torchrun's RANK/WORLD_SIZE or a Slurm array "
                "task, if set).",
            ),
            click.option(
                "--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Scans per forward pass."
            ),
            click.option(
                "--load-dim",
                type=click.IntRange(min=3),
                help="float32 columns per point in raw .bin files (default 4; 5 for .pcd.bin).",
            ),
            click.option(
                "--use-dim", type=click.IntRange(min=3), help="Use the first N columns (default: x, y, z, intensity)."
            ),
            click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file exists."),
            click.option(
                "--prefetch",
                default=2,
                show_default=True,
                type=click.IntRange(min=0),
                help="Batches read ahead while the model runs (0: read, run, write in turn).",
            ),
        ],
        command,
    )


def run_summary(report, out_dir: Path, done: str, ignored: list[Path], dropped: str) -> None:
    """What an embed / predict run did (``done``: "embedded", "labelled"): scans, points, skips,
    non-finite points (``dropped`` says what became of them), ignored files; failures to stderr."""
    click.echo(
        f"{done} {report.done} scan(s), {report.points:,} points into {out_dir}"
        + (f", skipped {report.skipped} existing" if report.skipped else "")
        + (f" ({report.points / report.wall:,.0f} points/s)" if report.wall > 0 and report.points else "")
    )
    if report.dropped:
        click.echo(f"{report.dropped:,} points with NaN/Inf coordinates in {report.dropped_scans} scan(s) {dropped}")
    if ignored:
        exts = sorted({p.suffix.lower() or p.name for p in ignored})
        click.echo(
            f"ignored {len(ignored)} file(s) with no point-cloud extension "
            f"({', '.join(exts[:8])}{' ...' if len(exts) > 8 else ''})"
        )
    if report.failed:
        click.echo(f"{len(report.failed)} file(s) failed:", err=True)
        for _, why in report.failed:
            click.echo(f"  {why}", err=True)

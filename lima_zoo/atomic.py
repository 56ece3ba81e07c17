"""Atomic writes: a file (``atomic_path``) or a whole folder of files (``atomic_dir``) is written under
a temporary name beside its target and renamed over it only when complete, so a crash, Ctrl-C or
SIGKILL never leaves a half-written checkpoint, export or feature file.

Temporary names say whose they are: ``.<target>.lima-tmp@<host>@<pid>@<random><suffix>``. A SIGKILL
cannot run cleanup code, so every later write into the same folder removes the temporaries whose
process (on this host) is gone; those of live processes are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["atomic_path", "atomic_dir", "clean_stale_temporaries", "TMP_MARK"]

TMP_MARK = ".lima-tmp@"


def _prefix(name: str) -> str:
    return f".{name}{TMP_MARK}{socket.gethostname()}@{os.getpid()}@"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` left by killed processes of this host; returns them."""
    folder, host, removed = Path(folder), socket.gethostname(), []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{TMP_MARK}*"):
        parts = p.name.split(TMP_MARK, 1)[1].split("@")
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``.

    The temporary name keeps the target's suffixes (some writers choose a format by suffix).
    The file ends up with the permissions a plain ``open(target, "w")`` would give it (mkstemp
    makes it owner-only, which would hide exported models and features from a shared group).
    On any exception, KeyboardInterrupt included, the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=_prefix(target.name), suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, managed: Iterable[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` whole.

    ``target`` may be new, or a folder holding only ``managed`` file names (an earlier export): its
    old files all go, so no stale model from another run is left beside the new config. A folder
    with anything else in it is refused (ValueError) before any work. On an exception the staging
    folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{target}: exists and is not a folder")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in set(managed) and TMP_MARK not in p.name)
        if foreign:
            raise ValueError(
                f"{target}: holds files this export would not replace ({', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}); choose a new or empty folder"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    stage = Path(tempfile.mkdtemp(prefix=_prefix(target.name), dir=target.parent))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if target.exists():
            # Two renames, microseconds apart: a SIGKILL between them leaves no half-new folder, only
            # the old and the new export under temporary names (a later write cleans them up).
            old = Path(tempfile.mkdtemp(prefix=_prefix(target.name), dir=target.parent))
            os.replace(target, old)
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask can only be
    read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

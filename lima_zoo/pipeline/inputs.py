"""Which scans a run embeds and where each one's output goes: files, globs, directories and list
files expanded into (input, output name) pairs, and this process's shard of them.

Outputs keep each input's path relative to the folder (or glob base, or the list's common folder)
it was found under, so ``scans/a/001.bin`` becomes ``OUT/a/001.npy``.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..device import env_int
from ..io import POINT_SUFFIXES, point_suffix

__all__ = ["collect_inputs", "inputs_from_list", "shard_of", "take_shard"]


def _stem(path: Path) -> str:
    suffix = point_suffix(path)
    return path.name[: -len(suffix)] if path.name.lower().endswith(suffix) else path.stem


def collect_inputs(specs: list[str], ignored: list[Path] | None = None) -> list[tuple[Path, Path]]:
    """Expand files, globs and directories into (input file, output path without suffix) pairs.
    Files a directory holds with no point-cloud extension are appended to ``ignored``."""

    def readable(p: Path) -> bool:
        return p.name.lower().endswith(POINT_SUFFIXES)

    found: list[tuple[Path, Path]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            everything = sorted(p for p in path.rglob("*") if p.is_file())
            files = [p for p in everything if readable(p)]
            if ignored is not None:  # hidden files (.DS_Store, editor swap files) are not worth a mention
                ignored += [p for p in everything if not readable(p) and not p.name.startswith(".")]
            found += [(p, p.relative_to(path).parent / _stem(p)) for p in files]
        elif glob.has_magic(spec):
            base = Path(spec.split("*")[0].split("?")[0].split("[")[0])
            base = base if base.is_dir() and spec[len(str(base)) :].startswith(os.sep) else base.parent
            for p in sorted(Path(m) for m in glob.glob(spec, recursive=True)):
                if p.is_file():
                    found.append((p, p.relative_to(base).parent / _stem(p)))
        else:
            found.append((path, Path(_stem(path))))  # missing files are reported per file later
    return found


def inputs_from_list(list_file: Path) -> list[tuple[Path, Path]]:
    """One path per line (blank lines and ``#`` comments skipped; relative paths are relative to the
    current directory, as ``find`` writes them). Outputs keep each path relative to the listed
    files' common folder, so ``00/velodyne/000000.bin`` and ``01/velodyne/000000.bin`` stay apart."""
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--inputs-from {list_file}: unreadable ({exc})") from None
    paths = list(
        dict.fromkeys(Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    )
    if not paths:
        raise ValueError(f"--inputs-from {list_file}: no paths in it")
    absolute = [p.absolute() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return [(p, a.relative_to(root).parent / _stem(p)) for p, a in zip(paths, absolute)]


def shard_of(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """(index, count) of this process's share of the inputs: ``--shard i/n``; else torchrun's
    RANK / WORLD_SIZE; else a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT); else (0, 1)."""
    env = os.environ if env is None else env
    if spec is not None:
        index, sep, count = spec.partition("/")
        try:
            i, n = int(index), int(count)
        except ValueError:
            i = n = -1
        if not sep or n < 1 or not 0 <= i < n:
            raise ValueError(f"--shard {spec!r}: give i/n with 0 <= i < n, e.g. --shard 0/4")
        return i, n
    if env_int(env, "WORLD_SIZE", 1) > 1:
        rank, world = env_int(env, "RANK", 0), env_int(env, "WORLD_SIZE", 1)
        if rank >= world:
            raise ValueError(f"RANK={rank} with WORLD_SIZE={world}: a rank is 0..{world - 1} (check the launcher)")
        return rank, world
    if env.get("SLURM_ARRAY_TASK_COUNT"):
        step = max(1, env_int(env, "SLURM_ARRAY_TASK_STEP", 1))
        i = (env_int(env, "SLURM_ARRAY_TASK_ID", 0) - env_int(env, "SLURM_ARRAY_TASK_MIN", 0)) // step
        n = env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
        if not 0 <= i < n:
            raise ValueError(f"Slurm array task {env.get('SLURM_ARRAY_TASK_ID')} is outside its array of {n}")
        return i, n
    return 0, 1


def take_shard(inputs: list[tuple[Path, Path]], index: int, count: int) -> list[tuple[Path, Path]]:
    """Every count-th input from ``index`` on: disjoint across processes, the same on every run."""
    return inputs[index::count]

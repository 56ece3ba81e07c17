"""``lima-zoo embed``: per-point features for files, globs and directories of scans.

One output per input, keeping its path relative to the directory (or glob base) it was found under
(``scans/a/001.bin`` -> ``OUT/a/001.npy``). A bad file is reported and skipped; the rest finish.
"""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["collect_inputs", "inputs_from_list", "shard_of", "take_shard", "run_embed", "load_encoder", "read_batch", "embed_loaded", "EmbedReport"]


@dataclass
class EmbedReport:
    done: int = 0
    skipped: int = 0
    points: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # non-finite points left out (organised clouds' no-return pixels)
    dropped_scans: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "embed": 0.0, "write": 0.0})  # per stage (they overlap)
    wall: float = 0.0  # seconds from the first read to the last write


def _stem(path: Path) -> str:
    from ..io import point_suffix

    suffix = point_suffix(path)
    return path.name[: -len(suffix)] if path.name.lower().endswith(suffix) else path.stem


def collect_inputs(specs: list[str], ignored: list[Path] | None = None) -> list[tuple[Path, Path]]:
    """Expand files, globs and directories into (input file, output path without suffix) pairs.
    Files a directory holds with no point-cloud extension are appended to ``ignored``."""
    from ..io import POINT_SUFFIXES

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
    paths = list(dict.fromkeys(Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")))
    if not paths:
        raise ValueError(f"--inputs-from {list_file}: no paths in it")
    absolute = [p.absolute() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return [(p, a.relative_to(root).parent / _stem(p)) for p, a in zip(paths, absolute)]


def shard_of(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """(index, count) of this process's share of the inputs: ``--shard i/n``; else torchrun's
    RANK / WORLD_SIZE; else a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT); else (0, 1)."""
    from ..encoder import env_int

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
        return env_int(env, "RANK", 0), env_int(env, "WORLD_SIZE", 1)
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


def load_encoder(model: str, device: str = "auto", backend: str = "torch", local_files_only: bool = False, runtime: str = "torch"):
    """A LiMAEncoder (runtime "torch") or an OnnxEncoder (runtime "onnx") from a folder, repo id or name."""
    if runtime == "onnx":
        from ..export.onnx_runtime import OnnxEncoder

        return OnnxEncoder.from_pretrained(model, device=device, local_files_only=local_files_only)
    from ..encoder import LiMAEncoder, resolve_device

    return LiMAEncoder.from_pretrained(model, device=resolve_device(device), backend=backend, local_files_only=local_files_only)


def run_embed(
    inputs: list[tuple[Path, Path]],
    encoder,
    out_dir: Path,
    fmt: str = "npy",
    batch_size: int = 1,
    load_dim: int | None = None,
    use_dim: int | None = None,
    skip_existing: bool = False,
    ply_features: bool = False,
    progress: bool = True,
    keep_rows: bool = False,
    prefetch: int = 2,
    shard: tuple[int, int] = (0, 1),
    float16: bool = False,
    scans_per_part: int = 64,
    engine=None,
) -> EmbedReport:
    """Embed every input into ``out_dir``; per-file errors are collected, never raised.

    Points with NaN / Inf coordinates are left out (counted in the report); with ``keep_rows`` their
    rows stay in the output as NaN features, so output row i is input row i.

    prefetch: batches read ahead on a reader thread while the model runs (0: read, embed and write
    in turn); the writes of a batch overlap the next batch's forward. fmt "parquet-dataset": one
    Parquet dataset in ``out_dir`` (io/feature_dataset.py) for this ``shard``; a rerun resumes it
    (scans already listed are skipped whatever ``skip_existing`` says), features in float16 when
    asked. engine: where batches are read and embedded, a callable ``engine(batches, report)``
    yielding ``(loaded, failed, features)`` per batch, in order (embed_ray.RayEngine); None: here,
    with ``encoder``. Outputs are written by this process either way."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    report = EmbedReport()
    dataset = None
    if fmt == "parquet-dataset":
        from ..io.feature_dataset import FeatureDatasetWriter

        dataset = FeatureDatasetWriter(out_dir, _identity(encoder), shard, scans_per_part, float16)
    todo = []
    for src, rel in inputs:
        # a dataset names each scan by its input path relative to where it was found (a/001.bin)
        dst = out_dir / rel.parent / f"{rel.name}.{fmt}" if dataset is None else (rel.parent / src.name).as_posix()
        if dataset is not None and dst in dataset.done or dataset is None and skip_existing and dst.exists():
            report.skipped += 1
        else:
            todo.append((src, dst))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), unit="scan", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    model = str(getattr(encoder, "name_or_path", ""))
    produced = engine(batches, report) if engine is not None else _embed_here(batches, encoder, load_dim, use_dim, prefetch, report)

    def advance(scans: int) -> None:  # the rate counts written points, so it is refreshed after each write lands
        bar.update(scans)
        bar.set_postfix(points_per_s=f"{report.points / max(time.perf_counter() - start, 1e-9):,.0f}")

    with ThreadPoolExecutor(1, thread_name_prefix="embed-write") as writer:
        pending = None  # the previous batch's write (one in flight bounds memory)
        for loaded, failed, feats in produced:
            _record_failures(report, dataset, failed)
            bar.update(len(failed))
            if not loaded:
                continue
            if pending is not None:
                advance(pending.result())
            pending = writer.submit(_write_batch, loaded, feats, report, model, ply_features, keep_rows, dataset)
            if prefetch == 0:  # strictly one stage at a time
                advance(pending.result())
                pending = None
        if pending is not None:
            advance(pending.result())
    if dataset is not None:
        dataset.flush()
    bar.close()
    report.wall = time.perf_counter() - start
    return report


def _embed_here(batches, encoder, load_dim, use_dim, prefetch: int, report: EmbedReport):
    """Batches read ``prefetch`` ahead on a thread and embedded here: yields (loaded, failed, features)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="embed-read") as reader:
        ahead: deque = deque()  # reads of batches i .. i + prefetch
        submitted = 0
        for i in range(len(batches)):
            while submitted < len(batches) and submitted <= i + prefetch:
                ahead.append(reader.submit(read_batch, batches[submitted], load_dim, use_dim))
                submitted += 1
            loaded, failed, secs = ahead.popleft().result()
            report.seconds["read"] += secs
            loaded, rejected, feats, secs = embed_loaded(encoder, loaded)
            report.seconds["embed"] += secs
            yield loaded, failed + rejected, feats


def embed_loaded(encoder, loaded: list) -> tuple[list, list, list, float]:
    """Embed read scans -> (loaded, failed, features, seconds); a batch the model rejects (too large
    for memory, a bad value) fails as a whole, with the reason, and the run goes on."""
    t = time.perf_counter()
    if not loaded:
        return [], [], [], 0.0
    try:
        feats = _embed_batch(encoder, [c for c, _, _ in loaded])
    except (ValueError, RuntimeError) as exc:
        return [], [(src, dst, f"{src}: {exc}") for _, src, dst in loaded], [], time.perf_counter() - t
    return loaded, [], feats, time.perf_counter() - t


def _identity(encoder) -> dict[str, str]:
    """What a feature dataset records about the model that made it."""
    import hashlib
    import json

    config = json.dumps(encoder.config.to_dict(), sort_keys=True).encode()
    model = str(getattr(encoder, "name_or_path", ""))
    if model and Path(model).is_dir():  # one folder, however the path was spelled
        model = str(Path(model).resolve())
    return {"model": model, "revision": str(getattr(encoder, "revision", "") or ""),
            "config_sha256": hashlib.sha256(config).hexdigest(), "feature_dim": str(encoder.config.out_dim)}  # fmt: skip


def read_batch(batch, load_dim, use_dim):
    """-> (loaded [(cloud, src, dst)], failed [(src, dst, message)], seconds). On the reader thread."""
    from ..io import PointCloudError, load_points

    t, loaded, failed = time.perf_counter(), [], []
    for src, dst in batch:
        try:
            loaded.append((load_points(src, load_dim=load_dim, use_dim=use_dim), src, dst))
        except PointCloudError as exc:
            failed.append((src, dst, str(exc)))
    return loaded, failed, time.perf_counter() - t


def _record_failures(report: EmbedReport, dataset, failed) -> None:
    for src, dst, why in failed:
        report.failed.append((str(src), why))
        if dataset is not None:
            dataset.fail(dst, why)


def _write_batch(loaded, feats, report: EmbedReport, model: str, ply_features: bool, keep_rows: bool, dataset) -> int:
    """Write one embedded batch (per-file outputs, or into the dataset); returns scans handled. On
    the writer thread; the report's counters are only touched here and after the pool is joined."""
    import numpy as np

    from ..io import save_features

    t = time.perf_counter()
    for (cloud, src, dst), f in zip(loaded, feats):
        xyz = cloud.points[:, :3]
        rows = np.arange(len(f)) if cloud.kept is None else np.flatnonzero(cloud.kept)
        if cloud.kept is not None:
            report.dropped += int((~cloud.kept).sum())
            report.dropped_scans += 1
            if keep_rows:
                f, xyz, rows = _expand(f, cloud.kept), _expand(xyz, cloud.kept), np.arange(len(cloud.kept))
        try:
            if dataset is not None:
                dataset.add(dst, f, xyz, rows)
            else:
                meta = {"source": str(src), "model": model, "feature_dim": str(f.shape[1])}
                if cloud.origin is not None:  # georeferenced input, re-centred by the reader
                    meta["origin"] = ",".join(f"{v:.3f}" for v in cloud.origin)
                if cloud.kept is not None:
                    meta["non_finite_rows"] = "kept as NaN" if keep_rows else "dropped"
                save_features(dst, f, xyz, meta, ply_features=ply_features)
            report.done += 1
            report.points += len(f)
        except (OSError, ValueError) as exc:
            report.failed.append((str(src), f"{dst}: {exc}"))
    report.seconds["write"] += time.perf_counter() - t
    return len(loaded)


def _expand(values, kept):
    """(K, C) rows of the kept input rows -> (N, C) with NaN where a row was dropped."""
    import numpy as np

    full = np.full((len(kept), values.shape[1]), np.nan, dtype=values.dtype)
    full[kept] = values
    return full


def _embed_batch(encoder, clouds) -> list:
    """Scans of one batch share an intensity convention only if their formats agree; group them."""
    out: list = [None] * len(clouds)
    groups: dict = {}
    for i, c in enumerate(clouds):
        groups.setdefault(_intensity_range(c), []).append(i)
    for rng, idx in groups.items():
        feats = encoder.embed([clouds[i].points for i in idx], intensity_range=rng)
        for i, f in zip(idx, feats):
            out[i] = f
    return out


def _intensity_range(cloud) -> float | None:
    """The source's intensity range: from the format when it says, else 1.0 if every value is in
    [0, 1] (KITTI-style remission) and 255.0 otherwise."""
    if cloud.points.shape[1] < 4:
        return None
    if cloud.intensity_range is not None:
        return cloud.intensity_range
    return 1.0 if float(cloud.points[:, 3].max()) <= 1.0 else 255.0

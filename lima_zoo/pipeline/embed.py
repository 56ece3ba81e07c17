"""Embedding as a library: scans in, one feature file per scan (or one Parquet dataset) out.

Reading runs ``prefetch`` batches ahead on a thread and each batch's write overlaps the next
forward. A bad file is reported (in the report and, for a dataset, its manifest) and skipped; the
rest finish. Where the batches are read and embedded is an *engine*: here (the default), or a Ray
actor pool (:class:`~lima_zoo.pipeline.ray_engine.RayEngine`); this process writes either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np

from ..config import Checked, Range
from ..io import PointCloudError, load_points, save_features

__all__ = [
    "EmbedOptions",
    "EmbedReport",
    "FeatureFiles",
    "run_embed",
    "plan_outputs",
    "read_batch",
    "embed_loaded",
    "model_identity",
    "OUTPUT_FORMATS",
]

OUTPUT_FORMATS = ("npy", "safetensors", "parquet", "ply", "parquet-dataset")


@dataclass(frozen=True)
class EmbedOptions(Checked):
    """How a run embeds and writes (``lima-zoo embed``'s options).

    fmt: one file per scan (npy, safetensors, parquet, ply) or "parquet-dataset": one Parquet
        dataset in the output folder for this ``shard`` (a rerun resumes it; ``float16`` features,
        ``scans_per_part`` scans per part file).
    batch_size: scans per forward pass. load_dim / use_dim: columns of raw .bin files.
    skip_existing: skip inputs whose output file exists. ply_features: store the features in .ply.
    keep_rows: NaN / Inf points keep their rows as NaN features (output row i is input row i).
    prefetch: batches read ahead on a reader thread (0: read, embed and write in turn).
    shard: (index, count) of this process's share (names the dataset's parts and manifest).
    progress: show a tqdm bar.
    """

    fmt: str = "npy"
    batch_size: Annotated[int, Range(1, 100_000)] = 1
    load_dim: Annotated[int | None, Range(3, 64)] = None
    use_dim: Annotated[int | None, Range(3, 64)] = None
    skip_existing: bool = False
    ply_features: bool = False
    keep_rows: bool = False
    prefetch: Annotated[int, Range(0, 1024)] = 2
    shard: Annotated[tuple[int, int], Range(0, 10**9)] = (0, 1)
    float16: bool = False
    scans_per_part: Annotated[int, Range(1, 10**7)] = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.fmt not in OUTPUT_FORMATS:
            raise ValueError(f"format {self.fmt!r}: choose from {', '.join(OUTPUT_FORMATS)}")
        if self.float16 and self.fmt != "parquet-dataset":
            raise ValueError("float16 applies to the parquet-dataset format only")
        super().__post_init__()

    def replace(self, **changes) -> "EmbedOptions":
        return dataclasses.replace(self, **changes)


@dataclass
class EmbedReport:
    done: int = 0
    skipped: int = 0
    points: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # non-finite points left out (organised clouds' no-return pixels)
    dropped_scans: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: {"read": 0.0, "embed": 0.0, "write": 0.0}
    )  # per stage (they overlap)
    wall: float = 0.0  # seconds from the first read to the last write


class FeatureFiles:
    """Where a scan's output goes and how it is written: one feature file per scan (``fmt``, the
    per-file formats of ``OUTPUT_FORMATS``), keeping the input's path below ``out_dir``. ``predict``
    brings its own writer (label files) with the same two methods."""

    def __init__(self, fmt: str, ply_features: bool = False):
        self.fmt, self.ply_features = fmt, ply_features

    def output(self, out_dir: Path, rel: Path, src: Path) -> Path:
        return out_dir / rel.parent / f"{rel.name}.{self.fmt}"

    def write(self, dst: Path, values: np.ndarray, xyz: np.ndarray, meta: dict[str, str]) -> None:
        save_features(dst, values, xyz, meta, ply_features=self.ply_features)


def run_embed(
    inputs: list[tuple[Path, Path]],
    encoder: Any,
    out_dir: Path,
    options: EmbedOptions | None = None,
    engine: Callable | None = None,
    writer: Any = None,
    open_dataset: Callable | None = None,
) -> EmbedReport:
    """Embed every input into ``out_dir``; per-file errors are collected, never raised.

    Args:
        inputs: (input file, output name without suffix) pairs (:mod:`lima_zoo.pipeline.inputs`).
        encoder: anything with ``embed`` (a LiMAEncoder or an OnnxEncoder, from ``load_encoder``).
        out_dir: the output folder.
        options: how to embed and write (:class:`EmbedOptions`; default: its defaults).
        engine: where batches are read and embedded, a callable ``engine(batches, report)`` yielding
            ``(loaded, failed, features)`` per batch, in order (``RayEngine``); None: here.
        writer: names and writes each scan's output file (:class:`FeatureFiles` by default; the
            per-file formats only).
        open_dataset: for "parquet-dataset", makes the dataset writer to fill (default: a
            :class:`~lima_zoo.pipeline.parquet_dataset.FeatureDatasetWriter`), after the outputs
            are planned; the writer is closed here.
    """
    o = options or EmbedOptions()
    writer = writer or FeatureFiles(o.fmt, o.ply_features)

    report = EmbedReport()
    planned = plan_outputs(inputs, out_dir, o, writer)  # a clash of output names is refused before any work
    dataset = None
    if o.fmt == "parquet-dataset":
        from .parquet_dataset import FeatureDatasetWriter

        dataset = (
            open_dataset()
            if open_dataset is not None
            else FeatureDatasetWriter(out_dir, model_identity(encoder), o.shard, o.scans_per_part, o.float16)
        )
    try:
        todo = []
        for src, dst in planned:
            if dataset is not None and dst in dataset.done or dataset is None and o.skip_existing and dst.exists():
                report.skipped += 1
            else:
                todo.append((src, dst))
        start = time.perf_counter()
        _run_batches(todo, encoder, o, engine, dataset, report, writer)
        if dataset is not None:
            dataset.flush()
    finally:
        if dataset is not None:
            dataset.close()
    report.wall = time.perf_counter() - start
    return report


def plan_outputs(
    inputs: list[tuple[Path, Path]], out_dir: Path, options: EmbedOptions, writer: Any = None
) -> list[tuple[Path, object]]:
    """(input, output) per distinct input: the output file (a Path, named by ``writer``, default
    :class:`FeatureFiles`), or for a dataset the scan's name (a str). The same input given twice is
    embedded once; two inputs with one output (``a/x.bin`` and ``b/x.bin`` given as files) are
    refused, naming both, since one would overwrite the other."""
    writer = writer or FeatureFiles(options.fmt, options.ply_features)
    planned: list[tuple[Path, object]] = []
    seen_src: set[str] = set()
    owner: dict[str, Path] = {}
    for src, rel in inputs:
        key = os.path.realpath(src)
        if key in seen_src:
            continue
        seen_src.add(key)
        # a dataset names each scan by its input path relative to where it was found (a/001.bin)
        if options.fmt == "parquet-dataset":
            dst: object = (rel.parent / src.name).as_posix()
        else:
            dst = writer.output(out_dir, rel, src)
        if str(dst) in owner:
            raise ValueError(
                f"{owner[str(dst)]} and {src} would both be written as {dst}: give their common folder "
                "(outputs keep the paths below it) or list them with --inputs-from"
            )
        owner[str(dst)] = src
        planned.append((src, dst))
    return planned


def _run_batches(todo, encoder, o: EmbedOptions, engine, dataset, report: EmbedReport, writer) -> None:
    """Read, embed and write ``todo`` batch by batch, the write of one overlapping the next forward."""
    from tqdm import tqdm

    batches = [todo[i : i + o.batch_size] for i in range(0, len(todo), o.batch_size)]
    bar = tqdm(total=len(todo), unit="scan", disable=not o.progress, dynamic_ncols=True)
    start = time.perf_counter()
    model = str(getattr(encoder, "name_or_path", ""))
    produced = engine(batches, report) if engine is not None else _embed_here(batches, encoder, o, report)

    def advance(scans: int) -> None:  # the rate counts written points, so it is refreshed after each write lands
        bar.update(scans)
        bar.set_postfix(points_per_s=f"{report.points / max(time.perf_counter() - start, 1e-9):,.0f}")

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="embed-write") as pool:
            pending = None  # the previous batch's write (one in flight bounds memory)
            for loaded, failed, feats in produced:
                _record_failures(report, dataset, failed)
                bar.update(len(failed))
                if not loaded:
                    continue
                if pending is not None:
                    advance(pending.result())
                pending = pool.submit(_write_batch, loaded, feats, report, model, o, dataset, writer)
                if o.prefetch == 0:  # strictly one stage at a time
                    advance(pending.result())
                    pending = None
            if pending is not None:
                advance(pending.result())
    finally:
        bar.close()
    report.wall = time.perf_counter() - start
    return report


def _embed_here(batches, encoder, o: EmbedOptions, report: EmbedReport):
    """Batches read ``o.prefetch`` ahead on a thread and embedded here: yields (loaded, failed, features)."""
    with ThreadPoolExecutor(1, thread_name_prefix="embed-read") as reader:
        ahead: deque = deque()  # reads of batches i .. i + prefetch
        submitted = 0
        for i in range(len(batches)):
            while submitted < len(batches) and submitted <= i + o.prefetch:
                ahead.append(reader.submit(read_batch, batches[submitted], o.load_dim, o.use_dim))
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
    except (ValueError, RuntimeError, MemoryError) as exc:
        why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return [], [(src, dst, f"{src}: {why}") for _, src, dst in loaded], [], time.perf_counter() - t
    return loaded, [], feats, time.perf_counter() - t


def model_identity(encoder) -> dict[str, str]:
    """What a feature dataset records about the model that made it."""
    config = json.dumps(encoder.config.to_dict(), sort_keys=True).encode()
    model = str(getattr(encoder, "name_or_path", ""))
    if model and Path(model).is_dir():  # one folder, however the path was spelled
        model = str(Path(model).resolve())
    return {
        "model": model,
        "revision": str(getattr(encoder, "revision", "") or ""),
        "config_sha256": hashlib.sha256(config).hexdigest(),
        "feature_dim": str(encoder.config.out_dim),
    }


def read_batch(batch, load_dim, use_dim):
    """-> (loaded [(cloud, src, dst)], failed [(src, dst, message)], seconds). On the reader thread."""
    t, loaded, failed = time.perf_counter(), [], []
    for src, dst in batch:
        try:
            loaded.append((load_points(src, load_dim=load_dim, use_dim=use_dim), src, dst))
        except PointCloudError as exc:
            failed.append((src, dst, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a file the readers did not foresee is still only this file's failure
            failed.append((src, dst, f"{src}: {type(exc).__name__}: {exc}"))
    return loaded, failed, time.perf_counter() - t


def _record_failures(report: EmbedReport, dataset, failed) -> None:
    for src, dst, why in failed:
        report.failed.append((str(src), why))
        if dataset is not None:
            dataset.fail(dst, why)


def _write_batch(loaded, feats, report: EmbedReport, model: str, o: EmbedOptions, dataset, writer) -> int:
    """Write one embedded batch (per-file outputs, or into the dataset); returns scans handled. On
    the writer thread; the report's counters are only touched here and after the pool is joined."""
    t = time.perf_counter()
    for (cloud, src, dst), f in zip(loaded, feats):
        xyz = cloud.points[:, :3]
        rows = np.arange(len(f)) if cloud.kept is None else np.flatnonzero(cloud.kept)
        if cloud.kept is not None:
            report.dropped += int((~cloud.kept).sum())
            report.dropped_scans += 1
            if o.keep_rows:
                f, xyz, rows = _expand(f, cloud.kept), _expand(xyz, cloud.kept), np.arange(len(cloud.kept))
        try:
            if dataset is not None:
                dataset.add(dst, f, xyz, rows)
            else:
                meta = {"source": str(src), "model": model, "feature_dim": str(f.shape[1])}
                if cloud.origin is not None:  # georeferenced input, re-centred by the reader
                    meta["origin"] = ",".join(f"{v:.3f}" for v in cloud.origin)
                if cloud.kept is not None:
                    meta["non_finite_rows"] = "kept as NaN" if o.keep_rows else "dropped"
                writer.write(dst, f, xyz, meta)
            report.done += 1
            report.points += len(f)
        except (OSError, ValueError) as exc:
            report.failed.append((str(src), f"{dst}: {exc}"))
    report.seconds["write"] += time.perf_counter() - t
    return len(loaded)


def _expand(values, kept):
    """(K, C) rows of the kept input rows -> (N, C) with NaN where a row was dropped."""
    full = np.full((len(kept), values.shape[1]), np.nan, dtype=values.dtype)
    full[kept] = values
    return full


def _embed_batch(encoder, clouds) -> list:
    """Scans of one batch share an intensity convention only if their formats agree; group them."""
    out: list = [None] * len(clouds)
    groups: dict = {}
    for i, c in enumerate(clouds):
        groups.setdefault(c.source_intensity_range(), []).append(i)
    for rng, idx in groups.items():
        feats = encoder.embed([clouds[i].points for i in idx], intensity_range=rng)
        for i, f in zip(idx, feats):
            out[i] = f
    return out

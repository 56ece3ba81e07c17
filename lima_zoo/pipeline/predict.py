"""Labels as a library: scans in, one label file per scan (or one Parquet dataset) out.

``run_predict`` is the embed pipeline (:func:`~lima_zoo.pipeline.embed.run_embed`: inputs, lists,
shards, read-ahead, skip-existing, bad files reported and skipped) with a segmentation model in
place of the encoder and label writers in place of feature files:

    semantickitti  OUT/<path>/NNNNNN.label (a ``velodyne`` folder becomes ``predictions``): uint32,
                   raw ids (the inverse learning map) in the lower 16 bits, instance 0 above
    nuscenes       OUT/lidarseg/<split>/<lidar_token>_lidarseg.bin: uint8, raw category indices
                   (``ids="eval"``: the lidarseg challenge's ids 1-16), and OUT/<split>/submission.json;
                   the token is the scan's sample_data token when ``data`` (the dataset root) is given
    npy            OUT/<path>.npy: int32 class indices into ``class_names`` (-1: no prediction)
    parquet        one dataset in OUT (part files + a manifest per shard; a rerun resumes):
                   columns scan, point, label (int32) and, with probabilities, prob (float16 list)

Every point of the input file gets an entry (label files are read back by row); a point with
NaN / Inf coordinates gets "no prediction": id 0 (unlabelled) in the dataset formats, -1 as an
index. ``with_probs`` also writes each file's (N, C) float16 probabilities to OUT/probs/<same
path>.npy (NaN rows for points without a prediction).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ..atomic import atomic_path
from ..config import Checked, Range
from ..labels import Vocabulary
from ..segmentation import softmax
from .embed import EmbedOptions, EmbedReport, model_identity, run_embed
from .parquet_dataset import FeatureDatasetWriter

__all__ = ["PredictOptions", "run_predict", "PREDICT_FORMATS", "ID_KINDS", "nuscenes_lidar_tokens", "SUBMISSION_META"]

PREDICT_FORMATS = ("semantickitti", "nuscenes", "npy", "parquet")
ID_KINDS = ("index", "eval", "raw")
# the lidarseg challenge's submission.json: LiDAR in; the encoder was distilled from an image model
# pretrained on external data
SUBMISSION_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": True}
# per format: its file's dtype and the largest id it holds (SemanticKITTI's upper 16 bits are the instance)
_DTYPES = {"semantickitti": (np.uint32, 0xFFFF), "nuscenes": (np.uint8, 0xFF)}


@dataclass(frozen=True)
class PredictOptions(Checked):
    """How a run predicts and writes (``lima-zoo predict``'s options).

    fmt: one of ``PREDICT_FORMATS`` (module docstring). ids: "index" (into class_names), "eval"
        (index + 1, 0 = none) or "raw" (the dataset's raw ids); "" = raw for the dataset formats,
        index for npy and parquet. with_probs: also write probabilities. split: the nuScenes
        submission's split folder. The rest are :class:`~lima_zoo.pipeline.embed.EmbedOptions`'.
    """

    fmt: str = "npy"
    ids: str = ""
    with_probs: bool = False
    split: str = "val"
    batch_size: Annotated[int, Range(1, 100_000)] = 1
    load_dim: Annotated[int | None, Range(3, 64)] = None
    use_dim: Annotated[int | None, Range(3, 64)] = None
    skip_existing: bool = False
    prefetch: Annotated[int, Range(0, 1024)] = 2
    shard: Annotated[tuple[int, int], Range(0, 10**9)] = (0, 1)
    scans_per_part: Annotated[int, Range(1, 10**7)] = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.fmt not in PREDICT_FORMATS:
            raise ValueError(f"format {self.fmt!r}: choose from {', '.join(PREDICT_FORMATS)}")
        if self.ids not in ("", *ID_KINDS):
            raise ValueError(f"ids {self.ids!r}: choose from {', '.join(ID_KINDS)}")
        if self.fmt in _DTYPES and self.id_kind == "index":
            raise ValueError(f"format {self.fmt}: label files hold raw or evaluation ids (0 = unlabelled), not indices")
        if not self.split or not all(c.isalnum() or c in "-_" for c in self.split):
            raise ValueError(f"split {self.split!r}: a folder name of letters, digits, - and _ (e.g. val, test)")
        super().__post_init__()

    @property
    def id_kind(self) -> str:
        return self.ids or ("raw" if self.fmt in _DTYPES else "index")

    def embed_options(self) -> EmbedOptions:
        """The embed pipeline's options: every point keeps its row (label files are read by row)
        except in the dataset, whose ``point`` column says which input row a label belongs to."""
        return EmbedOptions(
            fmt="parquet-dataset" if self.fmt == "parquet" else "npy",
            batch_size=self.batch_size,
            load_dim=self.load_dim,
            use_dim=self.use_dim,
            skip_existing=self.skip_existing,
            keep_rows=self.fmt != "parquet",
            prefetch=self.prefetch,
            shard=self.shard,
            scans_per_part=self.scans_per_part,
            progress=self.progress,
        )


class _ScanOutputs:
    """A segmentation model as the embed pipeline runs it: per scan, its (N, C) logits (or, for a
    graph that outputs ids, its (N, 1) class indices) in place of features."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.name_or_path, self.revision = getattr(model, "name_or_path", ""), getattr(model, "revision", "")

    def embed(self, scans: list, intensity_range: float | None = None) -> list[np.ndarray]:
        outs = self.model.scan_outputs(list(scans), intensity_range)
        return [o.astype(np.float32)[:, None] for o in outs] if self.model.outputs_ids else outs


def _labels(values: np.ndarray, outputs_ids: bool, with_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) logits or (N, 1) indices (NaN rows: no prediction) -> (N,) int64 class indices (-1 for
    none) and, with ``with_probs``, (N, C) float16 probabilities."""
    missing = np.isnan(values).any(1)
    index = values[:, 0] if outputs_ids else np.where(missing[:, None], -np.inf, values).argmax(1)
    index = np.where(missing, -1, index).astype(np.int64)
    return index, (softmax(values).astype(np.float16) if with_probs else None)


class _LabelFiles:
    """Names and writes one label file per scan (the writer ``run_embed`` calls)."""

    def __init__(
        self, options: PredictOptions, vocabulary: Vocabulary, outputs_ids: bool, tokens: dict[str, str], out_dir: Path
    ):
        self.o, self.vocabulary, self.outputs_ids, self.tokens = options, vocabulary, outputs_ids, tokens
        self.out_dir = out_dir

    def output(self, out_dir: Path, rel: Path, src: Path) -> Path:
        if self.o.fmt == "nuscenes":
            name = self.tokens.get(os.path.realpath(src), rel.name.removesuffix(".pcd"))
            return out_dir / "lidarseg" / self.o.split / f"{name}_lidarseg.bin"
        if self.o.fmt == "semantickitti":
            parent = rel.parent.parent / "predictions" if rel.parent.name == "velodyne" else rel.parent
            return out_dir / parent / f"{rel.name}.label"
        return out_dir / rel.parent / f"{rel.name}.npy"

    def write(self, dst: Path, values: np.ndarray, xyz: np.ndarray, meta: dict[str, str]) -> None:
        index, probs = _labels(values, self.outputs_ids, self.o.with_probs)
        ids = self.vocabulary.ids(index, self.o.id_kind)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if probs is not None:  # first, so an existing label file means its probabilities exist too
            path = self.out_dir / "probs" / dst.relative_to(self.out_dir).with_suffix(".npy")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, probs)
        with atomic_path(dst) as tmp:
            if self.o.fmt == "npy":
                with open(tmp, "wb") as f:
                    np.save(f, ids.astype(np.int32))
            else:
                dtype, most = _DTYPES[self.o.fmt]
                if ids.size and ids.max() > most:
                    raise ValueError(f"ids up to {ids.max()} do not fit the format's ids (at most {most})")
                ids.astype(dtype).tofile(tmp)


class _LabelDataset(FeatureDatasetWriter):
    """The parquet dataset with ``label`` (int32 ids) and optionally ``prob`` (float16 lists) columns."""

    def __init__(self, out_dir, identity, options: PredictOptions, vocabulary: Vocabulary, outputs_ids: bool):
        self.o, self.vocabulary, self.outputs_ids = options, vocabulary, outputs_ids
        kind = f"labels:{options.id_kind}" + ("+probs" if options.with_probs else "")
        super().__init__(out_dir, {**identity, "values": kind}, options.shard, options.scans_per_part)

    def value_columns(self, values: np.ndarray, xyz: np.ndarray) -> dict:
        import pyarrow as pa

        index, probs = _labels(values, self.outputs_ids, self.o.with_probs)
        columns = {"label": self.vocabulary.ids(index, self.o.id_kind).astype(np.int32)}
        if probs is not None:
            columns["prob"] = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
        return columns


def nuscenes_lidar_tokens(root: str | os.PathLike) -> dict[str, str]:
    """{real path of each LiDAR file: its sample_data token} from a nuScenes root's tables."""
    root = Path(root)
    tables = sorted(root.glob("v1.0-*/sample_data.json"))
    if not tables:
        raise ValueError(f"--data {root}: no v1.0-*/sample_data.json (not a nuScenes root)")
    tokens = {}
    for table in tables:
        try:
            records = json.loads(table.read_text(encoding="utf-8"))
            for r in records:
                if "LIDAR" in r.get("filename", "").upper():
                    tokens[os.path.realpath(root / r["filename"])] = str(r["token"])
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"{table}: unreadable sample_data table ({exc})") from None
    return tokens


def run_predict(
    inputs: list[tuple[Path, Path]],
    model: Any,
    out_dir: Path,
    options: PredictOptions | None = None,
    data: str | os.PathLike | None = None,
) -> EmbedReport:
    """Predict every input into ``out_dir``; per-file errors are collected, never raised.

    Args:
        inputs: (input file, output name without suffix) pairs (:mod:`lima_zoo.pipeline.inputs`).
        model: a segmentation model (``load_segmenter``: LiMASegmenter or OnnxSegmenter).
        out_dir: the output folder.
        options: formats and how to run (:class:`PredictOptions`).
        data: a nuScenes root: names each scan's file by its LiDAR sample_data token.
    """
    o = options or PredictOptions()
    vocabulary = model.vocabulary
    vocabulary.ids(np.zeros(1, np.int64), o.id_kind)  # a model without raw ids is refused before any work
    if o.with_probs and model.outputs_ids:
        raise ValueError(
            f"{getattr(model, 'name_or_path', 'the model')}: exported with class ids only (--head-output ids), it has "
            "no probabilities to write; drop --with-probs or export with --head-output logits"
        )
    tokens = nuscenes_lidar_tokens(data) if data is not None and o.fmt == "nuscenes" else {}
    runner = _ScanOutputs(model)
    files = _LabelFiles(o, vocabulary, model.outputs_ids, tokens, Path(out_dir))
    if o.fmt == "nuscenes":
        meta = Path(out_dir) / o.split / "submission.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"meta": SUBMISSION_META}, indent=1) + "\n")

    def open_dataset():
        return _LabelDataset(out_dir, model_identity(runner), o, vocabulary, model.outputs_ids)

    return run_embed(inputs, runner, Path(out_dir), o.embed_options(), writer=files, open_dataset=open_dataset)

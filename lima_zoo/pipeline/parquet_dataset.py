"""Features of many scans as one Parquet dataset: part files of whole scans and a manifest per shard.

    OUT/part-00000-00000.parquet   columns scan, point, x, y, z, features (fixed-size list, D)
    OUT/part-00000-00001.parquet   ...
    OUT/manifest-00000-of-00002.json

``scan`` is the input's path relative to the folder it was found under, ``point`` its row in the
input file (so rows left out as NaN / Inf still line up with the source), ``features`` float32 or
float16. Every part carries the model id, revision and config hash in its schema metadata.

A part is written atomically, then the manifest that lists it; the manifest is the truth. A rerun
skips the scans the manifest lists and deletes parts it does not (the one a kill interrupted
between the two writes), so a killed run resumes with no scan twice. Shards (``--shard i/n``,
torchrun ranks) write disjoint part names and manifests into the same folder.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["FeatureDatasetWriter", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "lima-zoo parquet-dataset 1"


class FeatureDatasetWriter:
    """Buffer scans and write them ``scans_per_part`` at a time.  identity: model, revision and
    config_sha256 of the encoder; a folder written by another model (or dtype) is refused."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        identity: dict[str, str],
        shard: tuple[int, int] = (0, 1),
        scans_per_part: int = 64,
        float16: bool = False,
    ):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError(
                "--format parquet-dataset needs pyarrow (pip install 'lima-zoo[train]' or pyarrow)"
            ) from None
        self.out, (self.index, self.count) = Path(out_dir), shard
        self.scans_per_part, self.dtype = scans_per_part, "float16" if float16 else "float32"
        self.identity = {**identity, "dtype": self.dtype}
        self.manifest_path = self.out / f"manifest-{self.index:05d}-of-{self.count:05d}.json"
        self.manifest = {
            "format": MANIFEST_FORMAT,
            **self.identity,
            "shard": [self.index, self.count],
            "parts": [],
            "failed": {},
        }
        if self.manifest_path.exists():
            self._resume()
        self.done = {s for part in self.manifest["parts"] for s in part["scans"]}
        self._buffer: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()  # embed records failures from its main thread while the writer thread adds

    def _resume(self) -> None:
        try:
            old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{self.manifest_path}: unreadable manifest ({exc}); remove it to start this shard again"
            ) from None
        if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT or not isinstance(old.get("parts"), list):
            raise ValueError(f"{self.manifest_path}: not a {MANIFEST_FORMAT!r} manifest")
        differ = [f"{k} {old.get(k)!r} != {v!r}" for k, v in self.identity.items() if old.get(k) != v]
        if differ:
            raise ValueError(
                f"{self.manifest_path}: written by another model or dtype ({'; '.join(differ)}); use another --out"
            )
        self.manifest.update(parts=old["parts"], failed=old.get("failed", {}))
        listed = {p["file"] for p in self.manifest["parts"]}
        for orphan in self.out.glob(f"part-{self.index:05d}-*.parquet"):  # a kill between a part and its manifest
            if orphan.name not in listed:
                orphan.unlink()

    def add(self, scan: str, features: np.ndarray, xyz: np.ndarray, point: np.ndarray) -> None:
        """One scan: (N, D) features, (N, 3) xyz, (N,) input row of each feature row."""
        with self._lock:
            if scan in self.done:
                raise ValueError(f"{scan}: already in {self.manifest_path.name}")
            self._buffer.append((scan, features, xyz, point))
            self.done.add(scan)
            self.manifest["failed"].pop(scan, None)
            full = len(self._buffer) >= self.scans_per_part
        if full:
            self.flush()

    def fail(self, scan: str, message: str) -> None:
        """Record a scan that could not be embedded (written with the next manifest)."""
        with self._lock:
            self.manifest["failed"][scan] = message

    def flush(self) -> None:
        """Write the buffered scans as a part (if any), then the manifest."""
        with self._lock:
            if self._buffer:
                self._write_part()
            self._write_manifest()

    def _write_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        scans, feats, xyz, point = zip(*self._buffer)
        counts = [len(f) for f in feats]
        f = np.concatenate(feats).astype(self.dtype)
        xyz = np.concatenate(xyz).astype(np.float32)
        table = pa.table(
            {
                "scan": pa.DictionaryArray.from_arrays(
                    np.repeat(np.arange(len(scans), dtype=np.int32), counts), pa.array(scans)
                ),
                "point": np.concatenate(point).astype(np.int64),
                "x": xyz[:, 0],
                "y": xyz[:, 1],
                "z": xyz[:, 2],
                "features": pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), f.shape[1]),
            }
        ).replace_schema_metadata({f"lima_zoo.{k}": str(v) for k, v in self.identity.items()})
        name = f"part-{self.index:05d}-{len(self.manifest['parts']):05d}.parquet"
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / name) as tmp:
            pq.write_table(table, tmp)
        self.manifest["parts"].append({"file": name, "scans": list(scans), "points": int(sum(counts))})
        self._buffer = []

    def _write_manifest(self) -> None:
        parts = self.manifest["parts"]
        self.manifest.update(scans_done=sum(len(p["scans"]) for p in parts), points=sum(p["points"] for p in parts))
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")

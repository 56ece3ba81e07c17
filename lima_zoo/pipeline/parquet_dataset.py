"""Features of many scans as one Parquet dataset: part files of whole scans and a manifest per shard.

    OUT/part-00000-of-00002-00000.parquet   columns scan, point, x, y, z, features (fixed-size list, D)
    OUT/part-00000-of-00002-00001.parquet   ...
    OUT/_manifest-00000-of-00002.json       (underscored, like the lock: pyarrow.dataset skips them)
    OUT/_lock-00000-of-00002.json           while a run writes the shard: its pid, host and start

``scan`` is the input's path relative to the folder it was found under, ``point`` its row in the
input file (so rows left out as NaN / Inf still line up with the source), ``features`` float32 or
float16. Every part carries the model id, revision and config hash in its schema metadata.

A part is written atomically, then the manifest that lists it; the manifest is the truth. One
writer owns a shard at a time (the lock; a crashed holder's lock on this host is broken by its
successor, another host's is reported). A run deletes this shard's parts that its manifest does
not list (the one a kill interrupted between the two writes, or every part when the manifest was
removed to start again) before it writes, and skips the scans listed, so after any kill or
restart there is exactly one row per (scan, point). Shards (``--shard i/n``, torchrun ranks) write
disjoint part names and manifests into the same folder; a folder holds one shard count.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = ["FeatureDatasetWriter", "MANIFEST_FORMAT", "ShardLock"]

MANIFEST_FORMAT = "lima-zoo parquet-dataset 1"
_LAYOUT = re.compile(r"^_manifest-(\d{5})-of-(\d{5})\.json$")


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux), "" where unknown: a pid that was
    reused by a new process has another start."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _process_start(pid) in ("", start)


class ShardLock:
    """``path`` created exclusively (O_EXCL) with the holder's pid, host and start; released by
    ``release``. A lock whose holder is gone (same host, pid dead or reused) is broken once."""

    def __init__(self, path: Path):
        self.path, self.held = path, False
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "since": time.time(),
        }
        for attempt in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                stale = holder.get("host") == me["host"] and not _alive(
                    int(holder.get("pid", -1)), holder.get("start", "")
                )
                if stale and attempt == 0:
                    path.unlink(missing_ok=True)  # its run was killed: this run takes the shard over
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
                raise ValueError(
                    f"{path.parent}: this shard is being written by pid {holder.get('pid')} on host "
                    f"{holder.get('host')} (since {since}); wait for it, or if that run is gone, delete {path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # half-written by a holder that died at once: treated as another host's, reported

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class FeatureDatasetWriter:
    """Buffer scans and write them ``scans_per_part`` at a time.  identity: model, revision and
    config_sha256 of the encoder; a folder written by another model (or dtype) is refused.
    Holds the shard's lock from construction until ``close``."""

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
        self.layout = f"{self.index:05d}-of-{self.count:05d}"
        self.manifest_path = self.out / f"_manifest-{self.layout}.json"
        self.manifest = {
            "format": MANIFEST_FORMAT,
            **self.identity,
            "shard": [self.index, self.count],
            "parts": [],
            "failed": {},
        }
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_layout()
        self.lock = ShardLock(self.out / f"_lock-{self.layout}.json")
        try:
            self._migrate_old_manifest()
            if self.manifest_path.exists():
                self._resume()
            self._delete_unlisted_parts()
        except BaseException:
            self.lock.release()
            raise
        self.done = {s for part in self.manifest["parts"] for s in part["scans"]}
        self._buffer: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()  # embed records failures from its main thread while the writer thread adds

    def _check_layout(self) -> None:
        """One shard count per folder: parts of two layouts would hold the same scans twice."""
        counts = {int(m.group(2)) for p in self.out.glob("_manifest-*.json") if (m := _LAYOUT.match(p.name))}
        counts |= {int(p.stem.rsplit("-of-", 1)[1]) for p in self.out.glob("manifest-*-of-*.json") if "-of-" in p.stem}
        if counts - {self.count}:
            raise ValueError(
                f"{self.out}: holds a dataset written in {sorted(counts - {self.count})} shard(s); "
                f"this run writes shard {self.index}/{self.count}. Use the same shard count, or another --out"
            )

    def _migrate_old_manifest(self) -> None:
        """A folder written before manifests were underscored: take its manifest over."""
        old = self.out / f"manifest-{self.layout}.json"
        if old.exists() and not self.manifest_path.exists():
            os.replace(old, self.manifest_path)

    def _resume(self) -> None:
        try:
            old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{self.manifest_path}: unreadable manifest ({exc}); remove it to start this shard again "
                "(its parts are then deleted and every scan embedded anew)"
            ) from None
        if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT or not isinstance(old.get("parts"), list):
            raise ValueError(f"{self.manifest_path}: not a {MANIFEST_FORMAT!r} manifest")
        differ = [f"{k} {old.get(k)!r} != {v!r}" for k, v in self.identity.items() if old.get(k) != v]
        if differ:
            raise ValueError(
                f"{self.manifest_path}: written by another model or dtype ({'; '.join(differ)}); use another --out"
            )
        self.manifest.update(parts=old["parts"], failed=old.get("failed", {}))

    def _delete_unlisted_parts(self) -> None:
        """This shard's parts that the manifest does not list: a part a kill left before its manifest,
        or every part of a shard started again. (Older part names: ``part-<index>-<n>.parquet``.)"""
        listed = {p["file"] for p in self.manifest["parts"]}
        ours = list(self.out.glob(f"part-{self.layout}-*.parquet"))
        ours += [
            p
            for p in self.out.glob(f"part-{self.index:05d}-*.parquet")
            if re.fullmatch(r"part-\d{5}-\d{5}\.parquet", p.name)
        ]
        for orphan in ours:
            if orphan.name not in listed:
                orphan.unlink()

    def close(self) -> None:
        """Release the shard (after the last ``flush``)."""
        self.lock.release()

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

        scans, values, xyz, point = zip(*self._buffer)
        counts = [len(f) for f in values]
        table = pa.table(
            {
                "scan": pa.DictionaryArray.from_arrays(
                    np.repeat(np.arange(len(scans), dtype=np.int32), counts), pa.array(scans)
                ),
                "point": np.concatenate(point).astype(np.int64),
                **self.value_columns(np.concatenate(values), np.concatenate(xyz)),
            }
        ).replace_schema_metadata({f"lima_zoo.{k}": str(v) for k, v in self.identity.items()})
        name = f"part-{self.layout}-{len(self.manifest['parts']):05d}.parquet"
        with atomic_path(self.out / name) as tmp:
            pq.write_table(table, tmp)
        self.manifest["parts"].append({"file": name, "scans": list(scans), "points": int(sum(counts))})
        self._buffer = []

    def value_columns(self, values: np.ndarray, xyz: np.ndarray) -> dict:
        """The columns after ``scan`` and ``point`` of (R, D) values and (R, 3) xyz rows: x, y, z and
        ``features`` (a subclass stores other values, e.g. predict's labels)."""
        import pyarrow as pa

        f, xyz = values.astype(self.dtype), xyz.astype(np.float32)
        features = pa.FixedSizeListArray.from_arrays(pa.array(f.reshape(-1)), f.shape[1])
        return {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "features": features}

    def _write_manifest(self) -> None:
        parts = self.manifest["parts"]
        self.manifest.update(scans_done=sum(len(p["scans"]) for p in parts), points=sum(p["points"] for p in parts))
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1) + "\n")

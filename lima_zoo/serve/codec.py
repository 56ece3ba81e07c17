"""What travels over HTTP: a request body (the bytes of one point-cloud file) -> points, and
features -> a response body (npy, Arrow IPC or safetensors).

The body is read by the project's own readers, so a served scan is read exactly as
``lima-zoo embed`` reads a file. The bytes go to a fresh file in the server's private temporary
folder, named by the server (a counter and the suffix of a format from a fixed list): nothing the
client sends is ever a path, and nothing is unpickled (``allow_pickle=False`` throughout).
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from pathlib import Path

import numpy as np

from ..io import PointCloud, PointCloudError, load_points

__all__ = ["FORMATS", "MEDIA_TYPES", "BadRequest", "read_points", "encode_features", "format_of"]

# request format -> the suffix its reader dispatches on
FORMATS = {
    "bin": ".bin",
    "pcd.bin": ".pcd.bin",
    "npy": ".npy",
    "pcd": ".pcd",
    "ply": ".ply",
    "las": ".las",
    "laz": ".laz",
}
CONTENT_TYPES = {"application/x-npy": "npy", "application/octet-stream": "bin", "application/vnd.las": "las"}
MEDIA_TYPES = {
    "npy": "application/x-npy",
    "arrow": "application/vnd.apache.arrow.stream",
    "safetensors": "application/safetensors",
}

_counter = itertools.count()
_counter_lock = threading.Lock()


class BadRequest(ValueError):
    """A request the server refuses: ``status`` (400, 406, 413, 415, 422) and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def format_of(query: str | None, content_type: str | None) -> str:
    """The body's format: the ``format`` query parameter, else a Content-Type that names one
    (application/x-npy, application/vnd.las), else raw ``bin`` (curl and most clients send
    application/x-www-form-urlencoded or octet-stream for any bytes)."""
    if query is not None:
        if query not in FORMATS:
            raise BadRequest(415, f"format {query!r} is not one of {', '.join(FORMATS)}")
        return query
    return CONTENT_TYPES.get((content_type or "").split(";")[0].strip().lower(), "bin")


def read_points(body: bytes, fmt: str, scratch: Path, load_dim: int | None, use_dim: int | None) -> PointCloud:
    """The body's points (NaN / Inf rows left out, ``kept`` says which), read by ``load_points``."""
    if not body:
        raise BadRequest(400, "the request body is empty: send the bytes of one point-cloud file")
    with _counter_lock:
        n = next(_counter)
    path = scratch / f"request-{os.getpid()}-{n}{FORMATS[fmt]}"
    try:
        path.write_bytes(body)
        return load_points(path, load_dim=load_dim, use_dim=use_dim)
    except PointCloudError as exc:
        # the server's scratch path is not the client's business
        message = str(exc).replace(str(path), f"the {fmt} body")
        raise BadRequest(422, message) from None
    finally:
        path.unlink(missing_ok=True)


def encode_features(features: np.ndarray, accept: str, metadata: dict[str, str]) -> tuple[bytes, str]:
    """(N, D) features -> (body, media type) for the first media type of ``accept`` this server writes."""
    wanted = [part.split(";")[0].strip().lower() for part in (accept or "").split(",") if part.strip()]
    for media in wanted or ["application/x-npy"]:
        if media in ("*/*", "application/*", MEDIA_TYPES["npy"]):
            buf = io.BytesIO()
            np.save(buf, features, allow_pickle=False)
            return buf.getvalue(), MEDIA_TYPES["npy"]
        if media == MEDIA_TYPES["safetensors"]:
            from safetensors.numpy import save

            return save({"features": np.ascontiguousarray(features)}, metadata=metadata), media
        if media == MEDIA_TYPES["arrow"]:
            try:
                import pyarrow as pa
            except ImportError:
                continue
            column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
            table = pa.table({"features": column}).replace_schema_metadata(metadata)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return sink.getvalue().to_pybytes(), media
    raise BadRequest(406, f"Accept {accept!r}: this server answers {', '.join(MEDIA_TYPES.values())}")

"""The HTTP service (Starlette): ``POST /v1/embed`` and the health, model and metrics endpoints.

Every request is answered, none with a traceback: a bad request gets 400 / 401 / 406 / 408 / 413
/ 415 / 422 with a JSON ``{"error": ..., "status": ...}`` naming the problem, a full queue 503 with
Retry-After, a request the model did not finish in time 504, and anything unforeseen 500 (its
traceback goes to the server's log only). The model runs on the batcher's worker thread; request
handlers only read bodies, parse points (in a thread pool) and wait on futures.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from ..config import Checked, Range
from .batcher import Batcher, Job, QueueFull
from .codec import BadRequest, encode_features, format_of, read_points
from .metrics import Metrics

__all__ = ["ServeOptions", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions(Checked):
    """Limits and batching of the service (``lima-zoo serve``'s options).

    max_body_mb / max_points: larger requests get 413. max_batch_points / max_wait_ms: a batch is
    closed at this many points or after this wait. max_queue: waiting requests before 503.
    timeout_s: a request not answered by then gets 504. read_timeout_s: a body not received by then
    gets 408 (a slow or stalled client). token: the bearer token every /v1 request must carry
    (None: no authentication).
    """

    max_body_mb: Annotated[float, Range(0, 16_384, low_open=True)] = 256.0
    max_points: Annotated[int, Range(1, 10**9)] = 2_000_000
    max_batch_points: Annotated[int, Range(1, 10**9)] = 400_000
    max_wait_ms: Annotated[float, Range(0, 10_000)] = 5.0
    max_queue: Annotated[int, Range(1, 100_000)] = 64
    timeout_s: Annotated[float, Range(0, 86_400, low_open=True)] = 120.0
    read_timeout_s: Annotated[float, Range(0, 3_600, low_open=True)] = 30.0
    token: str | None = None


def _error(status: int, message: str, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _float_param(query, name: str, low: float, high: float) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(400, f"{name}={raw!r}: not a number") from None
    if not low < value <= high:
        raise BadRequest(400, f"{name}={raw!r}: must be in ({low:g}, {high:g}]")
    return value


def _int_param(query, name: str, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(400, f"{name}={raw!r}: give an integer {low}..{high}")
    return int(raw)


async def _read_body(request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,}")
    chunks, size = [], 0

    async def consume() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"the body exceeds {limit:,} bytes, this server's limit")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(consume(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(408, f"the body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


def create_app(encoder, options: ServeOptions, runtime: str = "torch", device: str = "cpu", ready_message: str = ""):
    """The ASGI app serving ``encoder`` (anything with ``embed``) under ``options``; logs
    ``ready_message`` once it serves."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    metrics = Metrics()
    config = encoder.config.to_dict()
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    identity = {
        "model": str(getattr(encoder, "name_or_path", "")),
        "revision": str(getattr(encoder, "revision", "") or ""),
        "config_sha256": config_sha,
    }
    state = {"ready": False}
    scratch = Path(tempfile.mkdtemp(prefix="lima-zoo-serve-"))
    batcher = Batcher(encoder.embed, options.max_batch_points, options.max_wait_ms, options.max_queue, metrics.batch)

    def authorised(request: Request) -> bool:
        if options.token is None:
            return True
        given = request.headers.get("authorization", "")
        return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), options.token.encode())

    async def embed(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await _embed(request)
        except BadRequest as exc:
            response = _error(exc.status, str(exc))
        except QueueFull as exc:
            response = _error(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"})
        metrics.request(response.status_code, time.perf_counter() - start)
        return response

    async def _embed(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "a bearer token is required (Authorization: Bearer <token>)")
        q = request.query_params
        unknown = sorted(set(q) - {"format", "load_dim", "use_dim", "intensity_range", "space", "dtype"})
        if unknown:
            raise BadRequest(400, f"unknown query parameter(s) {unknown}")
        fmt = format_of(q.get("format"), request.headers.get("content-type"))
        load_dim, use_dim = _int_param(q, "load_dim", 3, 64), _int_param(q, "use_dim", 3, 64)
        intensity = _float_param(q, "intensity_range", 0.0, 1e6)
        space = q.get("space", "backbone").replace("student", "backbone")
        if space not in ("backbone", "teacher"):
            raise BadRequest(400, f"space={q.get('space')!r}: student (or backbone) | teacher")
        if space == "teacher" and encoder.config.head_dim == 0:
            raise BadRequest(400, "space=teacher: this model has no distillation head")
        dtype = q.get("dtype", "float32")
        if dtype not in ("float32", "float16"):
            raise BadRequest(400, f"dtype={dtype!r}: float32 | float16")
        body = await _read_body(request, int(options.max_body_mb * 2**20), options.read_timeout_s)
        cloud = await run_in_threadpool(read_points, body, fmt, scratch, load_dim, use_dim)
        rows = len(cloud.kept) if cloud.kept is not None else len(cloud.points)
        if len(cloud.points) > options.max_points:
            raise BadRequest(
                413, f"{len(cloud.points):,} points; this server embeds at most {options.max_points:,} per request"
            )
        job = Job(cloud.points, intensity if intensity is not None else cloud.source_intensity_range(), space)
        future = batcher.submit(job)
        try:
            features = await asyncio.wait_for(asyncio.wrap_future(future), options.timeout_s)
        except asyncio.TimeoutError:
            return _error(504, f"the model did not answer within {options.timeout_s:g} s")
        except ValueError as exc:  # the points or their size, as embed refuses them
            raise BadRequest(413 if "GiB" in str(exc) else 422, str(exc)) from None
        if cloud.kept is not None:  # one row per input point: left-out rows are NaN
            full = np.full((rows, features.shape[1]), np.nan, dtype=features.dtype)
            full[cloud.kept] = features
            features = full
        features = features.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
        payload, media = encode_features(features, request.headers.get("accept", ""), identity)
        headers = {
            "X-Model-Id": identity["model"],
            "X-Model-Revision": identity["revision"],
            "X-Config-Sha256": config_sha,
            "X-Points": str(rows),
            "X-Points-Left-Out": str(rows - len(cloud.points)),
        }
        return Response(payload, media_type=media, headers=headers)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"alive": True})

    async def readyz(request: Request) -> Response:
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def models(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "a bearer token is required (Authorization: Bearer <token>)")
        return JSONResponse({**identity, "runtime": runtime, "device": device, "config": config})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(batcher.depth()), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)

    async def unforeseen(request: Request, exc: Exception) -> Response:
        log.exception("unforeseen error answering %s %s", request.method, request.url.path)
        metrics.request(500)
        return _error(500, "internal error (logged on the server)")

    @asynccontextmanager
    async def lifespan(app):
        state["ready"] = True
        if ready_message:
            log.info("%s", ready_message)
        yield
        state["ready"] = False
        await run_in_threadpool(batcher.stop)
        for leftover in scratch.iterdir():
            leftover.unlink(missing_ok=True)
        scratch.rmdir()

    routes = [
        Route("/v1/embed", embed, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: unforeseen}
    )

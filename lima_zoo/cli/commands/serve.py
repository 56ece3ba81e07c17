"""``lima-zoo serve``: an HTTP inference service (dynamic batching, limits, metrics)."""

from __future__ import annotations

import os

import click

from ..common import library_errors


@click.command("serve", context_settings={"show_default": True})
@click.argument("model")
@click.option(
    "--runtime",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    help="onnx: an exported folder, no torch needed.",
)
@click.option("--device", default="auto", help="auto | cpu | cuda[:N]")
@click.option("--backend", default="auto", help="Sparse backend of the torch runtime (auto: see lima-zoo backends).")
@click.option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, type=click.IntRange(0, 65535))
@click.option(
    "--max-body-mb", default=256.0, type=click.FloatRange(0, 16384, min_open=True), help="Larger bodies get 413."
)
@click.option(
    "--max-points", default=2_000_000, type=click.IntRange(1, 10**9), help="More points in one request get 413."
)
@click.option(
    "--max-batch-points", default=400_000, type=click.IntRange(1, 10**9), help="A batch closes at this many points."
)
@click.option(
    "--max-wait-ms", default=5.0, type=click.FloatRange(0, 10_000), help="...or after this wait (0: no batching wait)."
)
@click.option("--max-queue", default=64, type=click.IntRange(1, 100_000), help="Waiting requests before 503.")
@click.option(
    "--timeout-s", default=120.0, type=click.FloatRange(0, 86_400, min_open=True), help="Unanswered by then: 504."
)
@click.option(
    "--read-timeout-s",
    default=30.0,
    type=click.FloatRange(0, 3_600, min_open=True),
    help="A body not received by then: 408 (a slow or stalled client).",
)
@click.option(
    "--token-env", metavar="VAR", help="Require 'Authorization: Bearer <token>', the token read from this variable."
)
@click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving MODEL.")
@library_errors
def serve_cmd(
    model,
    runtime,
    device,
    backend,
    host,
    port,
    max_body_mb,
    max_points,
    max_batch_points,
    max_wait_ms,
    max_queue,
    timeout_s,
    read_timeout_s,
    token_env,
    local_files_only,
):
    """Serve MODEL (a folder, org/repo[@rev] or a registered name) over HTTP: POST a point-cloud file
    to /v1/embed, get its per-point features back. GET /healthz, /readyz, /v1/models, /metrics."""
    from ...serve import ServeOptions, serve

    token = None
    if token_env is not None:
        token = os.environ.get(token_env, "")
        if not token:
            raise click.UsageError(f"--token-env {token_env}: the variable is unset or empty")
    options = ServeOptions(
        max_body_mb=max_body_mb,
        max_points=max_points,
        max_batch_points=max_batch_points,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        timeout_s=timeout_s,
        read_timeout_s=read_timeout_s,
        token=token,
    )
    serve(model, runtime, device, backend, host, port, options, local_files_only)


COMMANDS = [serve_cmd]

"""``lima-zoo serve``: an HTTP inference service over the one loader and the encoders' ``embed``.

Dynamic batching (``batcher.py``), request and response bodies (``codec.py``), Prometheus metrics
(``metrics.py``) and the routes with their limits (``app.py``) need the ``[serve]`` extra
(Starlette + uvicorn); ``serve`` loads and warms the model, then runs uvicorn until SIGTERM /
SIGINT, after which in-flight requests finish and the process exits 0.
"""

from __future__ import annotations

import logging
import signal

from .app import ServeOptions, create_app

__all__ = ["ServeOptions", "create_app", "serve"]

log = logging.getLogger(__name__)


def serve(
    model: str,
    runtime: str = "torch",
    device: str = "auto",
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServeOptions | None = None,
    local_files_only: bool = False,
) -> None:
    """Load ``model`` (anything ``load_encoder`` takes), warm it up, and serve it until a signal.

    Args:
        model: a folder, org/repo[@rev] or a registered name.
        runtime: "torch" or "onnx" (an exported folder, no torch needed).
        device: "auto", "cpu" or "cuda[:N]".
        backend: the torch runtime's sparse-convolution library.
        host: the interface to listen on (127.0.0.1 unless told otherwise).
        port: the port (0..65535).
        options: limits and batching (:class:`ServeOptions`).
        local_files_only: never touch the network when resolving ``model``.
    """
    try:
        import uvicorn
    except ImportError:
        raise ImportError("lima-zoo serve needs Starlette and uvicorn: pip install 'lima-zoo[serve]'") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port}: give 0..65535")
    from ..loading import load_encoder
    from ..synth.scan import street_scan

    options = options or ServeOptions()
    encoder = load_encoder(model, runtime=runtime, device=device, backend=backend, local_files_only=local_files_only)
    encoder.embed(street_scan(seed=0)[:2000, :4])  # warm-up: the kernel, the allocator, the session
    where = str(getattr(encoder, "device", "cpu"))
    app = create_app(
        encoder,
        options,
        runtime,
        where,
        f"lima-zoo serve: {model} ({runtime} on {where}) ready at http://{host}:{port}",
    )
    # uvicorn drains on SIGTERM / SIGINT, then restores the handlers it found and raises the signal
    # again; with these in place that second delivery is only logged, and the process exits 0.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(options.timeout_s) + 5)
    log.info(
        "lima-zoo serve: stopped (%s); in-flight requests were answered",
        ", ".join(signal.Signals(s).name for s in stopped) or "done",
    )

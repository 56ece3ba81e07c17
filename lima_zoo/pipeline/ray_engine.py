"""The Ray engine of the embed pipeline: read and embed scans on a Ray cluster, write them here.

The scans become a Ray Dataset of (source, output) rows; ``map_batches`` runs them through a pool
of actors, each holding one model (on one GPU when the cluster has GPUs, else a share of the CPUs),
that read their scans and embed them with the same code as a local run (``read_batch``,
``embed_loaded``). The features stream back, in input order, to this process, which writes them
as a local run does: the same files, the same parquet-dataset with its manifest, so a rerun
resumes either way and a Ray run equals a local one.

Actors must see the input paths (a shared file system, or one machine); only this process writes.
That caps a run at what one writer can store (docs/performance.md); past that, run several drivers
with ``--shard i/n``.

``ray.init()`` joins the cluster in ``RAY_ADDRESS`` (or ``--ray-address``) and otherwise starts one
on this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["RayEngine"]


class RayEngine:
    """``engine(batches, report)`` for run_embed: yields (loaded, failed, features) per result batch.

    model, device, backend, local_files_only, runtime: as ``lima-zoo embed`` takes them, resolved in
    each actor. workers: actors (model replicas); None: one per GPU of the cluster, else one per
    two CPUs (at least one). address: a cluster to join (None: RAY_ADDRESS, or a local instance).
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        backend: str = "torch",
        local_files_only: bool = False,
        runtime: str = "torch",
        load_dim: int | None = None,
        use_dim: int | None = None,
        workers: int | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
    ):
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ValueError("--engine ray needs Ray Data: pip install 'lima-zoo[ray]'") from None
        self.model_args = dict(
            model=model, device=device, backend=backend, local_files_only=local_files_only, runtime=runtime
        )
        self.load_dim, self.use_dim, self.workers, self.address, self.num_cpus = (
            load_dim,
            use_dim,
            workers,
            address,
            num_cpus,
        )
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))  # before any output: a wrong address fails at once

    def __call__(self, batches: list[list[tuple[Path, object]]], report):
        import ray

        if not batches:
            return
        import logging

        # Ray's plan / progress lines and its C++ core's notes would drown run_embed's bar and summary.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(
                    address=self.address,
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or os.environ.get("RAY_ADDRESS") or "a local instance"
                raise ValueError(f"--engine ray: cannot start or join Ray ({where}): {exc}") from None
        try:
            yield from self._run(batches, report)
        except ray.exceptions.RayError as exc:  # an actor that could not load the model, a lost node
            raise ValueError(
                f"--engine ray: the run failed ({_first_line(exc)}); outputs written so far are kept, rerun to resume"
            ) from None
        finally:
            if started_here:
                ray.shutdown()

    def _placement(self) -> tuple[int, dict]:
        """(actors, resources per actor) from what the cluster holds."""
        import ray

        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), max(1, int(total.get("CPU", 1)))
        use_gpu = gpus > 0 and self.model_args["device"] != "cpu"
        workers = self.workers or (gpus if use_gpu else max(1, cpus // 2))
        if use_gpu:
            return workers, {"num_gpus": 1, "num_cpus": 1}
        if workers > cpus:
            raise ValueError(f"--workers {workers}: the Ray cluster has {cpus} CPU(s) and no GPU; give at most {cpus}")
        return workers, {"num_cpus": max(1, cpus // workers)}

    def _run(self, batches, report):
        import ray.data

        workers, resources = self._placement()
        rows = [{"src": str(src), "dst": str(dst)} for batch in batches for src, dst in batch]
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # outputs (and a dataset's parts) in input order, as a local run
        ctx.enable_progress_bars = False  # run_embed's bar counts the scans
        ds = ray.data.from_items(rows, override_num_blocks=len(batches)).map_batches(
            _EmbedActor,
            batch_size=len(batches[0]),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={
                **self.model_args,
                "load_dim": self.load_dim,
                "use_dim": self.use_dim,
                "threads": int(resources["num_cpus"]),
            },
            **resources,
        )
        as_dst = type(batches[0][0][1])  # Path for per-file outputs, str for a dataset's scan names
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            report.seconds["read"] += float(out["read_s"].sum())
            report.seconds["embed"] += float(out["embed_s"].sum())
            loaded, failed, feats = [], [], []
            for i, (src, dst, error) in enumerate(zip(out["src"], out["dst"], out["error"])):
                if error:
                    failed.append((Path(src), as_dst(dst), str(error)))
                    continue
                kept = out["kept"][i] if out["has_kept"][i] else None
                origin = out["origin"][i] if np.isfinite(out["origin"][i]).all() else None
                loaded.append(
                    (
                        _Returned(np.asarray(out["xyz"][i]), None if kept is None else np.asarray(kept, bool), origin),
                        Path(src),
                        as_dst(dst),
                    )
                )
                feats.append(np.asarray(out["features"][i]))
            yield loaded, failed, feats


class _Returned:
    """What the writer needs of a scan that came back from an actor (a PointCloud's xyz, kept, origin)."""

    def __init__(self, xyz: np.ndarray, kept: np.ndarray | None, origin: np.ndarray | None):
        self.points, self.kept, self.origin = xyz, kept, origin


class _EmbedActor:
    """One model in one Ray actor: a batch of (src, dst) rows in, their features (or errors) out."""

    def __init__(self, model, device, backend, local_files_only, runtime, load_dim, use_dim, threads):
        import torch

        from ..loading import load_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = load_encoder(
            model, runtime=runtime, device=device, backend=backend, local_files_only=local_files_only
        )
        self.load_dim, self.use_dim = load_dim, use_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .embed import embed_loaded, read_batch

        pairs = list(zip(batch["src"].tolist(), batch["dst"].tolist()))
        loaded, failed, read_s = read_batch([(Path(s), d) for s, d in pairs], self.load_dim, self.use_dim)
        loaded, rejected, feats, embed_s = embed_loaded(self.encoder, loaded)
        done = {src: (cloud, f) for (cloud, src, _), f in zip(loaded, feats)}
        errors = {src: why for src, _, why in failed + rejected}
        cols: dict[str, list] = {
            k: [] for k in ("src", "dst", "error", "xyz", "features", "has_kept", "kept", "origin")
        }
        for s, d in pairs:
            cloud, f = done.get(Path(s), (None, None))
            cols["src"].append(s)
            cols["dst"].append(d)
            cols["error"].append(errors.get(Path(s), ""))
            cols["xyz"].append(
                np.zeros((0, 3), np.float32) if cloud is None else np.ascontiguousarray(cloud.points[:, :3])
            )
            cols["features"].append(np.zeros((0, 1), np.float32) if f is None else f)
            cols["has_kept"].append(cloud is not None and cloud.kept is not None)
            cols["kept"].append(
                np.zeros(0, np.uint8) if cloud is None or cloud.kept is None else cloud.kept.astype(np.uint8)
            )
            cols["origin"].append(
                np.full(3, np.nan) if cloud is None or cloud.origin is None else np.asarray(cloud.origin, np.float64)
            )
        out = {k: _column(v) for k, v in cols.items()}
        n = len(pairs)  # the batch's seconds, spread over its rows so any re-batching still sums right
        out["read_s"], out["embed_s"] = np.full(n, read_s / n), np.full(n, embed_s / n)
        return out


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail in seconds on a cluster address nobody answers at (Ray itself retries for minutes)."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--engine ray: address {address!r} is not host:port (or ray://host:port, auto, local)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(
            f"--engine ray: nothing answers at {address} ({exc.strerror or exc}); is the cluster up (ray start --head)?"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The innermost error of a Ray exception, without Ray's traceback dump."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _column(values: list) -> np.ndarray:
    """A list of scalars or of arrays of differing lengths as one numpy column (object for ragged)."""
    if values and isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):  # item by item: a slice assignment would broadcast equal shapes
            col[i] = v
        return col
    return np.asarray(values)

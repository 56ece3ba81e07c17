"""``lima-zoo embed``: per-point features for files, globs, directories and lists of scans."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..common import check_writable, gather_scans, library_errors, model_options, run_summary, scan_options

FORMATS = ["npy", "safetensors", "parquet", "ply", "parquet-dataset"]


@click.command("embed")
@scan_options
@model_options
@click.option(
    "--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="npy",
    show_default=True,
    help="One file per scan, or parquet-dataset: one Parquet dataset in --out (part files + a manifest per shard; "
    "a rerun resumes).",
)
@click.option("--ply-features", is_flag=True, help="With --format ply, also store the features as vertex properties.")
@click.option(
    "--keep-rows",
    is_flag=True,
    help="Points with NaN/Inf coordinates get NaN feature rows (output row i = input row i) instead of being left out.",
)
@click.option(
    "--float16", is_flag=True, help="With --format parquet-dataset, store the features as float16 (half the bytes)."
)
@click.option(
    "--scans-per-part",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --format parquet-dataset, scans per part file.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: read and embed on a Ray cluster (RAY_ADDRESS or --ray-address, else a local one), one model per actor; "
    "outputs are written here.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="With --engine ray: model replicas (default: one per GPU, else one per 2 CPUs).",
)
@click.option(
    "--ray-address", help="With --engine ray: the cluster to join (default: RAY_ADDRESS, else start one here)."
)
@library_errors
def embed_cmd(
    paths,
    model,
    out_dir,
    fmt,
    device,
    backend,
    runtime,
    batch_size,
    load_dim,
    use_dim,
    skip_existing,
    ply_features,
    local_files_only,
    keep_rows,
    inputs_from,
    shard,
    float16,
    scans_per_part,
    prefetch,
    engine,
    workers,
    ray_address,
):
    """Write per-point features of each scan in PATHS (files, globs, directories) into --out."""
    from ...loading import load_encoder
    from ...pipeline import EmbedOptions, plan_outputs, run_embed

    if float16 and fmt != "parquet-dataset":
        raise click.UsageError("--float16 applies to --format parquet-dataset only")
    if engine != "ray" and (workers is not None or ray_address is not None):
        raise click.UsageError("--workers and --ray-address apply to --engine ray only")
    if runtime == "onnx" and backend not in ("torch", "auto"):
        raise click.UsageError("--backend applies to the torch runtime only")
    inputs, (index, count), ignored = gather_scans(paths, inputs_from, shard, "embed")
    options = EmbedOptions(
        fmt=fmt,
        batch_size=batch_size,
        load_dim=load_dim,
        use_dim=use_dim,
        skip_existing=skip_existing,
        ply_features=ply_features,
        keep_rows=keep_rows,
        prefetch=prefetch,
        shard=(index, count),
        float16=float16,
        scans_per_part=scans_per_part,
    )
    plan_outputs(inputs, out_dir, options)  # two inputs with one output name: refused before any work
    check_writable(out_dir, "--out")  # before the model loads and any scan is embedded
    # With Ray the actors run the model; this copy (on the CPU) checks --model and names the outputs.
    encoder = load_encoder(
        model,
        runtime=runtime,
        device="cpu" if engine == "ray" else device,
        backend=backend,
        local_files_only=local_files_only,
    )
    runner = None
    if engine == "ray":
        from ...pipeline.ray_engine import RayEngine

        runner = RayEngine(
            model, device, backend, local_files_only, runtime, load_dim, use_dim, workers=workers, address=ray_address
        )
    report = run_embed(inputs, encoder, out_dir, options, engine=runner)
    dropped = (
        "kept as NaN feature rows (--keep-rows)"
        if keep_rows
        else "left out (--keep-rows keeps them as NaN rows, aligned with the input)"
    )
    run_summary(report, out_dir, "embedded", ignored, dropped)
    if report.failed:
        sys.exit(1)


COMMANDS = [embed_cmd]

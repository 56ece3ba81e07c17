"""``lima-zoo embed``: per-point features for files, globs, directories and lists of scans."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..common import check_writable, library_errors

FORMATS = ["npy", "safetensors", "parquet", "ply", "parquet-dataset"]


@click.command("embed")
@click.argument("paths", nargs=-1)
# --model is required: no registered name has published weights yet, so a default would only fail later.
@click.option(
    "--model",
    "-m",
    required=True,
    help="A model folder (save_pretrained / export), org/repo[@rev] or a registered name (`lima-zoo models`).",
)
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
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option(
    "--backend",
    default="auto",
    show_default=True,
    help="Sparse backend: auto | torch | spconv | spconv-triton | torchsparse",
)
@click.option(
    "--runtime",
    type=click.Choice(["torch", "onnx"]),
    default="torch",
    show_default=True,
    help="onnx: run the model folder's model.onnx with onnxruntime.",
)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Scans per forward pass.")
@click.option(
    "--load-dim",
    type=click.IntRange(min=3),
    help="float32 columns per point in raw .bin files (default 4; 5 for .pcd.bin).",
)
@click.option("--use-dim", type=click.IntRange(min=3), help="Use the first N columns (default: x, y, z, intensity).")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file exists.")
@click.option("--ply-features", is_flag=True, help="With --format ply, also store the features as vertex properties.")
@click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving --model.")
@click.option(
    "--keep-rows",
    is_flag=True,
    help="Points with NaN/Inf coordinates get NaN feature rows (output row i = input row i) instead of being left out.",
)
@click.option(
    "--inputs-from",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A text file with one scan path per line (with or instead of PATHS).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Embed only every N-th input from the I-th (default: torchrun's RANK/WORLD_SIZE or a Slurm array task, "
    "if set).",
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
    "--prefetch",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="Batches read ahead while the model runs (0: read, embed, write in turn).",
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
    from ...pipeline import (
        EmbedOptions,
        collect_inputs,
        inputs_from_list,
        plan_outputs,
        run_embed,
        shard_of,
        take_shard,
    )

    if not paths and inputs_from is None:
        raise click.UsageError("give scans to embed: PATHS (files, globs, directories) and/or --inputs-from LIST")
    if float16 and fmt != "parquet-dataset":
        raise click.UsageError("--float16 applies to --format parquet-dataset only")
    if engine != "ray" and (workers is not None or ray_address is not None):
        raise click.UsageError("--workers and --ray-address apply to --engine ray only")
    if runtime == "onnx" and backend not in ("torch", "auto"):
        raise click.UsageError("--backend applies to the torch runtime only")
    ignored: list[Path] = []
    try:
        inputs = collect_inputs(list(paths), ignored) + (
            inputs_from_list(inputs_from) if inputs_from is not None else []
        )
        index, count = shard_of(shard)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not inputs:
        raise click.UsageError(
            f"no point-cloud files found in {' '.join(paths)}"
            + (f" ({len(ignored)} other files ignored)" if ignored else "")
        )
    total = len(inputs)
    inputs = take_shard(inputs, index, count)
    if count > 1:
        click.echo(f"shard {index}/{count}: {len(inputs)} of {total} scans")
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
    _summary(report, out_dir, keep_rows, ignored)
    if report.failed:
        sys.exit(1)


def _summary(report, out_dir: Path, keep_rows: bool, ignored: list[Path]) -> None:
    click.echo(
        f"embedded {report.done} scan(s), {report.points:,} points into {out_dir}"
        + (f", skipped {report.skipped} existing" if report.skipped else "")
        + (f" ({report.points / report.wall:,.0f} points/s)" if report.wall > 0 and report.points else "")
    )
    if report.dropped:
        kept = (
            "kept as NaN feature rows (--keep-rows)"
            if keep_rows
            else "left out (--keep-rows keeps them as NaN rows, aligned with the input)"
        )
        click.echo(f"{report.dropped:,} points with NaN/Inf coordinates in {report.dropped_scans} scan(s) {kept}")
    if ignored:
        exts = sorted({p.suffix.lower() or p.name for p in ignored})
        click.echo(
            f"ignored {len(ignored)} file(s) with no point-cloud extension "
            f"({', '.join(exts[:8])}{' ...' if len(exts) > 8 else ''})"
        )
    if report.failed:
        click.echo(f"{len(report.failed)} file(s) failed:", err=True)
        for _, why in report.failed:
            click.echo(f"  {why}", err=True)


COMMANDS = [embed_cmd]

"""``lima-zoo predict``: per-point class labels for files, globs, directories and lists of scans, in
the datasets' own label formats."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..common import check_writable, gather_scans, library_errors, model_options, run_summary, scan_options

FORMATS = ["semantickitti", "nuscenes", "npy", "parquet"]


@click.command("predict")
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
    help="semantickitti: NNNNNN.label (uint32 raw ids); nuscenes: lidarseg/<split>/<token>_lidarseg.bin (uint8) + "
    "<split>/submission.json; npy: int32 ids per scan; parquet: one dataset (scan, point, label[, prob]).",
)
@click.option(
    "--ids",
    type=click.Choice(["raw", "eval", "index"]),
    help="Which ids to write: raw (the dataset's own; default for semantickitti / nuscenes), eval (1..C, 0 = "
    "unlabelled; the nuScenes lidarseg challenge's) or index (0..C-1 into the model's classes, -1 = none; default "
    "for npy / parquet).",
)
@click.option(
    "--with-probs",
    is_flag=True,
    help="Also write class probabilities (float16): OUT/probs/<path>.npy, or a prob column.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --format nuscenes: the nuScenes root the scans come from; names each file by its LiDAR token.",
)
@click.option(
    "--split", default="val", show_default=True, help="With --format nuscenes: the submission's split folder."
)
@click.option(
    "--scans-per-part",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --format parquet, scans per part file.",
)
@library_errors
def predict_cmd(
    paths,
    inputs_from,
    shard,
    batch_size,
    load_dim,
    use_dim,
    skip_existing,
    prefetch,
    model,
    device,
    backend,
    runtime,
    local_files_only,
    out_dir,
    fmt,
    ids,
    with_probs,
    data,
    split,
    scans_per_part,
):
    """Write per-point class labels of each scan in PATHS (files, globs, directories) into --out,
    with a segmentation model (`lima-zoo eval --out RUN` writes RUN/model)."""
    from ...loading import load_segmenter
    from ...pipeline import PredictOptions, run_predict
    from ...pipeline.predict import nuscenes_lidar_tokens

    if data is not None and fmt != "nuscenes":
        raise click.UsageError("--data applies to --format nuscenes only")
    if runtime == "onnx" and backend not in ("torch", "auto"):
        raise click.UsageError("--backend applies to the torch runtime only")
    inputs, shard_of, ignored = gather_scans(paths, inputs_from, shard, "label")
    options = PredictOptions(
        fmt=fmt,
        ids=ids or "",
        with_probs=with_probs,
        split=split,
        batch_size=batch_size,
        load_dim=load_dim,
        use_dim=use_dim,
        skip_existing=skip_existing,
        prefetch=prefetch,
        shard=shard_of,
        scans_per_part=scans_per_part,
    )
    if data is not None:
        nuscenes_lidar_tokens(data)  # a wrong --data is refused before the model loads
    check_writable(out_dir, "--out")
    segmenter = load_segmenter(
        model, runtime=runtime, device=device, backend=backend, local_files_only=local_files_only
    )
    report = run_predict(inputs, segmenter, out_dir, options, data=data)
    run_summary(report, out_dir, "labelled", ignored, "labelled as no prediction (unlabelled, or -1 as an index)")
    if report.failed:
        sys.exit(1)


COMMANDS = [predict_cmd]

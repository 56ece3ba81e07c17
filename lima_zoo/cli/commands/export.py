"""``lima-zoo export`` (verified safetensors / ONNX folders) and ``lima-zoo convert``
(torchsparse-lineage checkpoints)."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import library_errors

EXPORT_FORMATS = ("safetensors", "onnx")


@click.command("export")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "formats", default="safetensors", show_default=True, help="Comma-separated: safetensors,onnx")
@click.option(
    "--head-output",
    type=click.Choice(["logits", "ids"]),
    default="logits",
    show_default=True,
    help="A segmentation folder's ONNX graph outputs its head's logits, or only the class ids.",
)
@library_errors
def export_cmd(source, out_dir, formats, head_output):
    """Export an encoder folder, a segmentation folder (RUN/model) or a training checkpoint
    (<run>/checkpoints/last.pt).

    safetensors: config.json + model.safetensors (+ the head), verified by a strict reload that
    reproduces the features (and probabilities). onnx: config.json + model.onnx (with the head in
    the graph, + head.json), verified against PyTorch with onnxruntime."""
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in wanted if f not in EXPORT_FORMATS]
    if bad or not wanted:
        raise click.BadParameter(
            f"unknown format(s) {', '.join(bad) or formats!r}; choose from {', '.join(EXPORT_FORMATS)}",
            param_hint="--format",
        )
    from ...export import export_folder

    try:
        written = export_folder(source, out_dir, wanted, head_output=head_output)
    except ImportError as exc:  # onnx or onnxruntime missing; the runner's own message already says how
        hint = "" if "lima-zoo[onnx]" in str(exc) else " (ONNX export needs: pip install 'lima-zoo[onnx]')"
        raise click.ClickException(f"{exc}{hint}") from None
    click.echo(f"exported {source} -> {out_dir} ({', '.join(written)}; verified)")


@click.command("convert")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", default=None, help="Key prefix of the backbone (default: detected, e.g. backbone_3d.).")
@click.option(
    "--head",
    default=None,
    help="Key prefix of the 3D head (default: detected, e.g. head_3d.conv_seg.); 'none' for a backbone alone.",
)
@click.option("--voxel-type", type=click.Choice(["cylindrical", "cartesian"]), default="cylindrical", show_default=True)
@click.option(
    "--voxel-size",
    default="0.1,1.0,0.1",
    show_default=True,
    help="Voxel size the weights were trained with (rho m, phi deg, z m for cylindrical).",
)
@click.option(
    "--intensity-scale",
    default=255.0,
    show_default=True,
    type=float,
    help="Intensity range the weights expect (255 nuScenes, 1 KITTI).",
)
@library_errors
def convert_cmd(checkpoint, out_dir, prefix, head, voxel_type, voxel_size, intensity_scale):
    """Convert a torchsparse-lineage MinkUNet or SPVCNN checkpoint (SuperFlow / LiMA / SPVNAS key names,
    .pth read with weights_only, or .safetensors) into an encoder folder, reporting every key left out."""
    from ...config import PreprocessConfig
    from ...export import convert_to_folder

    try:
        size = tuple(float(v) for v in voxel_size.split(","))
    except ValueError:
        raise ValueError(f"--voxel-size {voxel_size!r}: give three numbers, e.g. 0.1,1.0,0.1") from None
    pre = PreprocessConfig(voxel_type=voxel_type, voxel_size=size, intensity_scale=intensity_scale)
    encoder, report = convert_to_folder(checkpoint, out_dir, prefix=prefix, head=head, preprocess=pre)
    click.echo(report.summary())
    click.echo(
        f"wrote {out_dir} (config.json, model.safetensors; {encoder.config.backbone}, head_dim "
        f"{encoder.config.head_dim}; reload verified)"
    )


COMMANDS = [export_cmd, convert_cmd]

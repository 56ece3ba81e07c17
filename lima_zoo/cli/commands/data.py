"""``lima-zoo synth``: a synthetic driving world written in a real dataset format."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import click

from ..common import library_errors


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["nuscenes", "semantickitti", "waymo", "folder"]),
    default="nuscenes",
    show_default=True,
)
@click.option(
    "--scenes",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Driving sequences (every 4th is validation).",
)
@click.option(
    "--frames",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Keyframes (nuScenes, folder) or scans per sequence.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--image-scale",
    type=click.FloatRange(0.05, 1.0),
    help="Camera resolution relative to the real sensor's (default 0.25; KITTI 0.5).",
)
@click.option(
    "--sweeps",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="nuScenes: LiDAR sweeps before each keyframe.",
)
@click.option("--workers", type=click.IntRange(min=1), help="Processes rendering scenes (default: one per CPU core).")
@click.option(
    "--preview", is_flag=True, help="Also write preview.png: cameras with class-coloured points and a bird's-eye view."
)
@library_errors
def synth_cmd(out, fmt, scenes, frames, seed, image_scale, sweeps, workers, preview):
    """Generate a synthetic driving dataset in a real on-disk format under OUT."""
    missing = [
        m for m, need in (("PIL", True), ("matplotlib", preview)) if need and importlib.util.find_spec(m) is None
    ]
    if missing:
        needs = " and ".join("Pillow" if m == "PIL" else m for m in missing)
        raise click.ClickException(f"lima-zoo synth needs {needs}: pip install 'lima-zoo[synth]' (or [train])")
    if sweeps and fmt != "nuscenes":
        raise click.UsageError("--sweeps applies to --format nuscenes only")
    from tqdm import tqdm

    from ...synth import generate

    kwargs = {"sweeps": sweeps} if fmt == "nuscenes" else {}
    start = time.perf_counter()
    with tqdm(total=scenes * frames, unit="frame", desc=f"synth {fmt}") as bar:
        root = generate(out, fmt, scenes, frames, seed, image_scale, workers, bar.update, **kwargs)
    click.echo(f"wrote {scenes} x {frames} {fmt} frames to {root} in {time.perf_counter() - start:.1f} s")
    if preview:
        from ...training.datasets.preview import preview_world

        click.echo(f"preview: {preview_world(root, fmt, frames, Path(out) / 'preview.png')}")


COMMANDS = [synth_cmd]

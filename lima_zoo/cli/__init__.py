"""The ``lima-zoo`` command line. Each command imports its implementation inside the function,
so ``lima-zoo --help`` never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lima-zoo")
def main() -> None:
    """LiMA LiDAR encoders: features for your scans, training, evaluation and export."""


@main.command("embed")
@click.argument("paths", nargs=-1)
# --model is required: no registered name has published weights yet, so a default would only fail later.
@click.option("--model", "-m", required=True, help="A model folder (save_pretrained / export), org/repo[@rev] or a registered name (`lima-zoo models`).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--format", "fmt", type=click.Choice(["npy", "safetensors", "parquet", "ply", "parquet-dataset"]), default="npy", show_default=True,
              help="One file per scan, or parquet-dataset: one Parquet dataset in --out (part files + a manifest per shard; a rerun resumes).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--backend", default="torch", show_default=True, help="Sparse backend: torch | spconv | torchsparse")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1), help="Scans per forward pass.")
@click.option("--load-dim", type=click.IntRange(min=3), help="float32 columns per point in raw .bin files (default 4; 5 for .pcd.bin).")
@click.option("--use-dim", type=click.IntRange(min=3), help="Use the first N columns (default: x, y, z, intensity).")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file exists.")
@click.option("--ply-features", is_flag=True, help="With --format ply, also store the features as vertex properties.")
@click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving --model.")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True, help="onnx: run the model folder's model.onnx with onnxruntime.")
@click.option("--keep-rows", is_flag=True, help="Points with NaN/Inf coordinates get NaN feature rows (output row i = input row i) instead of being left out.")
@click.option("--inputs-from", type=click.Path(dir_okay=False, path_type=Path), help="A text file with one scan path per line (with or instead of PATHS).")
@click.option("--shard", metavar="I/N", help="Embed only every N-th input from the I-th (default: torchrun's RANK/WORLD_SIZE or a Slurm array task, if set).")
@click.option("--float16", is_flag=True, help="With --format parquet-dataset, store the features as float16 (half the bytes).")
@click.option("--scans-per-part", default=64, show_default=True, type=click.IntRange(min=1), help="With --format parquet-dataset, scans per part file.")
@click.option("--prefetch", default=2, show_default=True, type=click.IntRange(min=0), help="Batches read ahead while the model runs (0: read, embed, write in turn).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: read and embed on a Ray cluster (RAY_ADDRESS or --ray-address, else a local one), one model per actor; outputs are written here.")
@click.option("--workers", type=click.IntRange(min=1), help="With --engine ray: model replicas (default: one per GPU, else one per 2 CPUs).")
@click.option("--ray-address", help="With --engine ray: the cluster to join (default: RAY_ADDRESS, else start one here).")
def embed_cmd(paths, model, out_dir, fmt, device, backend, batch_size, load_dim, use_dim, skip_existing, ply_features, local_files_only, runtime, keep_rows,
              inputs_from, shard, float16, scans_per_part, prefetch, engine, workers, ray_address):  # fmt: skip
    """Write per-point features of each scan in PATHS (files, globs, directories) into --out."""
    from .embed import collect_inputs, inputs_from_list, run_embed, shard_of, take_shard

    if not paths and inputs_from is None:
        raise click.UsageError("give scans to embed: PATHS (files, globs, directories) and/or --inputs-from LIST")
    if float16 and fmt != "parquet-dataset":
        raise click.UsageError("--float16 applies to --format parquet-dataset only")
    if engine != "ray" and (workers is not None or ray_address is not None):
        raise click.UsageError("--workers and --ray-address apply to --engine ray only")
    ignored: list[Path] = []
    try:
        inputs = collect_inputs(list(paths), ignored) + (inputs_from_list(inputs_from) if inputs_from is not None else [])
        index, count = shard_of(shard)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not inputs:
        raise click.UsageError(f"no point-cloud files found in {' '.join(paths)}" + (f" ({len(ignored)} other files ignored)" if ignored else ""))
    total = len(inputs)
    inputs = take_shard(inputs, index, count)
    if count > 1:
        click.echo(f"shard {index}/{count}: {len(inputs)} of {total} scans")
    _check_writable(out_dir, "--out")  # before the model loads and any scan is embedded
    # With Ray the actors run the model; this copy (on the CPU) checks --model and names the outputs.
    encoder = _load_model(model, device="cpu" if engine == "ray" else device, backend=backend, local_files_only=local_files_only, runtime=runtime)
    try:
        runner = None
        if engine == "ray":
            from .embed_ray import RayEngine

            runner = RayEngine(model, device, backend, local_files_only, runtime, load_dim, use_dim, workers=workers, address=ray_address)
        report = run_embed(inputs, encoder, out_dir, fmt, batch_size, load_dim, use_dim, skip_existing, ply_features, keep_rows=keep_rows,
                           prefetch=prefetch, shard=(index, count), float16=float16, scans_per_part=scans_per_part, engine=runner)  # fmt: skip
    except ValueError as exc:  # a dataset folder written by another model, an unreadable manifest, no Ray, a failed Ray run
        raise click.ClickException(str(exc)) from None
    total = report.wall
    click.echo(
        f"embedded {report.done} scan(s), {report.points:,} points into {out_dir}"
        + (f", skipped {report.skipped} existing" if report.skipped else "")
        + (f" ({report.points / total:,.0f} points/s)" if total > 0 and report.points else "")
    )
    if report.dropped:
        click.echo(f"{report.dropped:,} points with NaN/Inf coordinates in {report.dropped_scans} scan(s) "
                   + ("kept as NaN feature rows (--keep-rows)" if keep_rows else "left out (--keep-rows keeps them as NaN rows, aligned with the input)"))  # fmt: skip
    if ignored:
        exts = sorted({p.suffix.lower() or p.name for p in ignored})
        click.echo(f"ignored {len(ignored)} file(s) with no point-cloud extension ({', '.join(exts[:8])}{' ...' if len(exts) > 8 else ''})")
    if report.failed:
        click.echo(f"{len(report.failed)} file(s) failed:", err=True)
        for _, why in report.failed:
            click.echo(f"  {why}", err=True)
        sys.exit(1)


def _check_writable(folder: Path, option: str) -> None:
    """Create ``folder`` and write a probe file into it, or fail naming the option and the path."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lima-write-check-"):
            pass
    except OSError as e:
        raise click.UsageError(f"{option} {folder}: cannot write there ({e.strerror or e})") from None


@main.command("viz")
@click.argument("scan", type=click.Path(path_type=Path), required=False)
@click.option("--model", "-m", required=True, help="A model folder, org/repo[@rev] or a registered name (`lima-zoo models`).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="out.png (figure), out.ply or out.rrd (coloured points).")
@click.option("--mode", type=click.Choice(["pca", "similarity"]), help="Colour by PCA of the features, or by cosine similarity to a query point (default: similarity when a query is given, else pca).")
@click.option("--query", "query_text", metavar="X,Y,Z", help="Query point: the scan's point nearest to x,y,z (metres).")
@click.option("--query-index", type=click.IntRange(min=0), help="Query point: this row of the file.")
@click.option("--query-class", metavar="NAME", help="With --data: query a point of this class (the one with the most same-class points around it in its image).")
@click.option("--queries", metavar="NAME,NAME,...", help="With --data: a grid, one row per class, each in the camera that shows its query best.")
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="A dataset (nuScenes, SemanticKITTI, Waymo, sequence folder, synthetic world) instead of SCAN: "
              "draw the paper's figure on its camera images, teacher similarity beside student similarity.")  # fmt: skip
@click.option("--sample", default="0", show_default=True, help="With --data: the frame (position in the split, SEQUENCE:POSITION, or a nuScenes sample token).")
@click.option("--split", type=click.Choice(["train", "val"]), help="With --data: the split --sample counts in (default val; train for a sequence folder).")
@click.option("--teacher", "teacher_spec", metavar="DIR|NAME|none", help="With --data: the image teacher (a teacher folder, a timm name, or none); default: the encoder's.")
@click.option("--format", "fmt", type=click.Choice(["png", "ply", "rrd"]), help="Default: from --out's suffix.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--load-dim", type=click.IntRange(min=3), help="float32 columns per point in raw .bin files (default 4; 5 for .pcd.bin).")
@click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving --model.")
def viz_cmd(scan, model, out, mode, query_text, query_index, query_class, queries, data_path, sample, split, teacher_spec, fmt, device, load_dim,
            local_files_only):  # fmt: skip
    """Draw an encoder's features for SCAN: bird's-eye and range views coloured by PCA or by
    similarity to a query point (PNG), or write them as coloured points (PLY, rerun .rrd).
    With --data instead of SCAN: the paper's query figure on a dataset frame's camera images."""
    from .viz import parse_query, run_viz, run_viz_sample

    suffix = out.suffix.lower().lstrip(".")
    fmt = fmt or suffix
    if fmt not in ("png", "ply", "rrd"):
        raise click.UsageError(f"--out {out}: name a .png, .ply or .rrd file (or pass --format)")
    if suffix != fmt:
        raise click.UsageError(f"--out {out} does not end in .{fmt} (--format {fmt})")
    if (scan is None) == (data_path is None):
        raise click.UsageError("give a SCAN file or --data DATASET (not both)")
    if data_path is None:
        for name, value in (("--query-class", query_class), ("--queries", queries), ("--teacher", teacher_spec), ("--split", split)):
            if value is not None:
                raise click.UsageError(f"{name} needs --data DATASET (a scan file has no labels or cameras)")
    elif fmt != "png" or mode == "pca":
        raise click.UsageError("with --data the figure is the similarity one on camera images: --out a .png, no --mode pca")
    try:
        query_xyz = parse_query(query_text) if query_text is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    query_list = None if queries is None else [q.strip() for q in queries.split(",") if q.strip()]
    if fmt == "png":
        from ..viz.figure import require_matplotlib

        try:
            require_matplotlib()  # before the model loads
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    _check_writable(out.parent if str(out.parent) else Path("."), "--out")
    encoder = _load_model(model, device=device, backend="torch", local_files_only=local_files_only)
    try:
        if data_path is not None:
            result = run_viz_sample(data_path, sample, split, encoder, out, teacher_spec, query_xyz, query_index, query_class, query_list)
            click.echo(f"wrote {out}: {result['panels']} camera panel(s), {result['points']:,} points, query point(s) {result['queries']}, "
                       f"teacher {result['teacher'] or 'none'}")  # fmt: skip
            return
        result = run_viz(scan, encoder, out, fmt, mode, query_xyz, query_index, load_dim=load_dim)
    except (ImportError, ValueError, OSError) as exc:  # PointCloudError is a ValueError; OfflineError an OSError
        raise click.ClickException(str(exc)) from None
    query = "" if result["query"] is None else f", query point {result['query']} at {tuple(round(v, 2) for v in result['query_xyz'])}"
    dropped = f" ({result['dropped']:,} NaN/Inf points left out)" if result["dropped"] else ""
    click.echo(f"wrote {out}: {result['mode']} of {result['points']:,} points{query}{dropped}")


@main.command("models")
def models_cmd() -> None:
    """List the registered encoder variants."""
    from ..registry import MODELS
    from .info import model_rows

    rows = model_rows(MODELS)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


@main.command("info")
@click.argument("model")
def info_cmd(model: str) -> None:
    """Show a model's configuration, Hub repo, licence and local cache state."""
    from .info import describe

    try:
        click.echo(describe(model))
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("backends")
def backends_cmd() -> None:
    """List the sparse-convolution backends importable here."""
    from ..sparse.backends import BACKENDS, available_backends

    have = set(available_backends())
    for name in BACKENDS:
        click.echo(f"{name:<12} {'available' if name in have else 'not installed'}")


@main.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["nuscenes", "semantickitti", "waymo", "folder"]), default="nuscenes", show_default=True)
@click.option("--scenes", default=4, show_default=True, type=click.IntRange(min=1), help="Driving sequences (every 4th is validation).")
@click.option("--frames", default=10, show_default=True, type=click.IntRange(min=1), help="Keyframes (nuScenes, folder) or scans per sequence.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-scale", type=click.FloatRange(0.05, 1.0), help="Camera resolution relative to the real sensor's (default 0.25; KITTI 0.5).")
@click.option("--sweeps", default=0, show_default=True, type=click.IntRange(min=0), help="nuScenes: LiDAR sweeps before each keyframe.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes rendering scenes (default: one per CPU core).")
@click.option("--preview", is_flag=True, help="Also write preview.png: cameras with class-coloured points and a bird's-eye view.")
def synth_cmd(out, fmt, scenes, frames, seed, image_scale, sweeps, workers, preview):
    """Generate a synthetic driving dataset in a real on-disk format under OUT."""
    import importlib.util
    import time

    missing = [m for m, need in (("PIL", True), ("matplotlib", preview)) if need and importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(f"lima-zoo synth needs {' and '.join('Pillow' if m == 'PIL' else m for m in missing)}: "
                                   "pip install 'lima-zoo[synth]' (or [train])")  # fmt: skip

    from tqdm import tqdm

    from ..synth import generate

    kwargs = {"sweeps": sweeps} if fmt == "nuscenes" else {}
    if sweeps and fmt != "nuscenes":
        raise click.UsageError("--sweeps applies to --format nuscenes only")
    start = time.perf_counter()
    with tqdm(total=scenes * frames, unit="frame", desc=f"synth {fmt}") as bar:
        root = generate(out, fmt, scenes, frames, seed, image_scale, workers, bar.update, **kwargs)
    click.echo(f"wrote {scenes} x {frames} {fmt} frames to {root} in {time.perf_counter() - start:.1f} s")
    if preview:
        from ..training.datasets import open_dataset
        from ..training.datasets.preview import save_preview

        ds = open_dataset(root, split="all" if fmt in ("nuscenes", "semantickitti") else "train", kind=fmt)
        path = save_preview(ds.frame(0, min(frames - 1, frames // 2)), ds.class_names, Path(out) / "preview.png")
        click.echo(f"preview: {path}")


@main.command("train", context_settings={"show_default": True})
@click.argument("recipe")
@click.option("--data", "data_path", type=click.Path(exists=True, file_okay=False), help="Dataset root (format detected); recipes with a synthetic world may omit it.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder: checkpoints, logs, encoder/.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. --set optim.lr=0.002 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt exactly.")
def train_cmd(recipe, data_path, out_dir, overrides, resume):
    """Pretrain a LiMA encoder. RECIPE is a packaged recipe name or a YAML file.

    Packaged recipes: vit-s-minkunet34, vit-b-minkunet34, vit-l-minkunet34 (nuScenes, LiMA); baselines
    scalr-vit-b-minkunet34 (ScaLR-literal: 1 frame, one random camera) and single-frame-vit-b-minkunet34
    (1 frame, every camera); synthetic-tiny (CPU).
    Many GPUs: torchrun --nproc_per_node N -m lima_zoo.cli train RECIPE ...
    """
    from ..training.config import load_recipe
    from ..training.trainer import train

    sets = list(overrides) + ([f"data.path={data_path}"] if data_path else [])
    try:
        cfg = load_recipe(recipe, sets)
        train(cfg, out_dir, resume=resume)
    except (ValueError, OSError) as exc:  # FileNotFoundError, FileExistsError are OSErrors
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)


@main.command("eval", context_settings={"show_default": True})
@click.option("--protocol", type=click.Choice(["linear", "finetune"]), default="linear")
@click.option("--percent", default=100.0, type=click.FloatRange(0, 100, min_open=True), help="Share of the training split (1, 5, 10, 25, 100).")
@click.option("--model", "-m", "model_name", required=True, help="Registered name, org/repo, encoder folder, or 'random'.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, file_okay=False), help="Labelled dataset root (format detected).")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a DownstreamConfig field, e.g. --set epochs=20.")
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoints/last.pt.")
def eval_cmd(protocol, percent, model_name, data_path, out_dir, overrides, resume):
    """Linear probing or fine-tuning for semantic segmentation; prints per-class IoU and mIoU."""
    from ..config import config_from_dict
    from ..training.config import DownstreamConfig, apply_overrides

    try:
        values = apply_overrides({"protocol": protocol, "percent": percent}, list(overrides))
        cfg = config_from_dict(DownstreamConfig, values, where="eval --set")
        from ..training.downstream import run_downstream

        report = run_downstream(cfg, model_name, data_path, out_dir, resume=resume)
    except (ValueError, OSError) as exc:  # FileNotFoundError, FileExistsError are OSErrors
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"mIoU {100 * report['miou']:.2f} -> {out_dir}/metrics.json, {out_dir}/iou.png")


EXPORT_FORMATS = ("safetensors", "onnx")
EXPORT_FILES = ("config.json", "model.safetensors", "model.onnx")  # what an export folder may hold


@main.command("export")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "formats", default="safetensors", show_default=True, help="Comma-separated: safetensors,onnx")
def export_cmd(source, out_dir, formats):
    """Export an encoder folder or a training checkpoint (<run>/checkpoints/last.pt).

    safetensors: config.json + model.safetensors, verified by a strict reload that reproduces the
    features. onnx: config.json + model.onnx, verified against PyTorch with onnxruntime."""
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in wanted if f not in EXPORT_FORMATS]
    if bad or not wanted:
        raise click.BadParameter(f"unknown format(s) {', '.join(bad) or formats!r}; choose from {', '.join(EXPORT_FORMATS)}", param_hint="--format")
    from ..atomic import atomic_dir
    from ..export import export_onnx, export_safetensors, load_encoder_source

    written = []
    try:
        encoder = load_encoder_source(source)
        # Built and verified in a staging folder that then replaces --out whole: a crash leaves the
        # old export as it was, and no file of an earlier export survives beside the new config.
        with atomic_dir(out_dir, EXPORT_FILES) as stage:
            if "safetensors" in wanted:
                export_safetensors(encoder, stage)
                written += ["config.json", "model.safetensors"]
            if "onnx" in wanted:
                if "safetensors" not in wanted:
                    encoder.save_config(stage)
                    written.append("config.json")
                export_onnx(encoder, stage)
                written.append("model.onnx")
    except ImportError as exc:  # onnx or onnxruntime missing; the runner's own message already says how
        hint = "" if "lima-zoo[onnx]" in str(exc) else " (ONNX export needs: pip install 'lima-zoo[onnx]')"
        raise click.ClickException(f"{exc}{hint}") from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {source} -> {out_dir} ({', '.join(written)}; verified)")


@main.command("convert")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", default=None, help="Key prefix of the backbone (default: detected, e.g. backbone_3d.).")
@click.option("--head", default=None, help="Key prefix of the 3D head (default: detected, e.g. head_3d.conv_seg.); 'none' for a backbone alone.")
@click.option("--voxel-type", type=click.Choice(["cylindrical", "cartesian"]), default="cylindrical", show_default=True)
@click.option("--voxel-size", default="0.1,1.0,0.1", show_default=True, help="Voxel size the weights were trained with (rho m, phi deg, z m for cylindrical).")
@click.option("--intensity-scale", default=255.0, show_default=True, type=float, help="Intensity range the weights expect (255 nuScenes, 1 KITTI).")
def convert_cmd(checkpoint, out_dir, prefix, head, voxel_type, voxel_size, intensity_scale):
    """Convert a torchsparse-lineage MinkUNet or SPVCNN checkpoint (SuperFlow / LiMA / SPVNAS key names,
    .pth read with weights_only, or .safetensors) into an encoder folder, reporting every key left out."""
    from ..atomic import atomic_dir
    from ..config import PreprocessConfig
    from ..export import export_safetensors
    from ..export.convert import convert_checkpoint

    try:
        size = tuple(float(v) for v in voxel_size.split(","))
        pre = PreprocessConfig(voxel_type=voxel_type, voxel_size=size, intensity_scale=intensity_scale)
        encoder, report = convert_checkpoint(checkpoint, prefix=prefix, head=head, preprocess=pre)
        with atomic_dir(out_dir, EXPORT_FILES) as stage:
            export_safetensors(encoder, stage)
    except (ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    click.echo(f"wrote {out_dir} (config.json, model.safetensors; {encoder.config.backbone}, head_dim {encoder.config.head_dim}; reload verified)")


@main.command("push")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="Hub repo, org/name (created if needed).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--revision", default=None, help="Branch to commit to (created if needed; default main).")
@click.option("--dry-run", is_flag=True, help="List exactly what would be uploaded and print the rendered card; no network.")
@click.option("--card-data", default=None, help="Per-model card data: a name under lima_zoo/model_cards/ or a YAML file.")
@click.option("--eval", "evals", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="metrics.json from `lima-zoo eval` (repeatable); the card's results come from these.")
@click.option("--message", default=None, help="Commit message.")
def push_cmd(model_dir, repo_id, private, revision, dry_run, card_data, evals, message):
    """Upload MODEL_DIR (config.json, model.safetensors, model.onnx if present) and a rendered
    model card as README.md to the Hugging Face Hub, in one commit."""
    from ..export.push import plan_upload, push

    try:
        plan = plan_upload(model_dir, repo_id, card_data, list(evals))
        if dry_run:
            click.echo(plan.describe())
            click.echo("\n" + plan.card)
            return
        url = push(plan, private=private, revision=revision, message=message)
    except (ImportError, ValueError, OSError) as exc:  # OfflineError and PermissionError are OSErrors
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Hub HTTP errors: say what failed, never a traceback or the token
        raise click.ClickException(f"push to {repo_id} failed ({type(exc).__name__}): {exc}") from None
    click.echo(f"pushed {len(plan.files) + 1} files to {repo_id}: {url}")


@main.command("make-teacher", context_settings={"show_default": True})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=1000, type=int, help="First world seed; keep it apart from the seeds your datasets use.")
@click.option("--scenes", default=3, type=click.IntRange(min=1))
@click.option("--frames", default=6, type=click.IntRange(min=1))
@click.option("--steps", default=300, type=click.IntRange(min=1))
def make_teacher_cmd(out, seed, scenes, frames, steps):
    """Train the offline synthetic image teacher (a small ViT) on synthetic worlds of its own."""
    from tqdm import tqdm

    from ..training.synthetic_teacher import make_synthetic_teacher

    with tqdm(total=steps, unit="step", desc="teacher") as bar:
        meta = make_synthetic_teacher(out, seed, scenes, frames, steps, progress=lambda s, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    click.echo(f"teacher written to {out}: {meta['description']}; held-out patch accuracy {meta['heldout_patch_accuracy']:.3f}")


def _load_model(model: str, device: str, backend: str, local_files_only: bool, runtime: str = "torch"):
    from ..hub import OfflineError
    from .embed import load_encoder

    if runtime == "onnx" and backend != "torch":
        raise click.UsageError("--backend applies to the torch runtime only")
    try:
        return load_encoder(model, device, backend, local_files_only, runtime)
    except (ImportError, ValueError, OSError, OfflineError) as exc:
        raise click.ClickException(str(exc)) from None

"""``lima-zoo viz``: an encoder's features drawn on a scan, or the paper's query figure on a dataset frame."""

from __future__ import annotations

from pathlib import Path

import click

from ..common import check_writable, library_errors


@click.command("viz")
@click.argument("scan", type=click.Path(path_type=Path), required=False)
@click.option(
    "--model", "-m", required=True, help="A model folder, org/repo[@rev] or a registered name (`lima-zoo models`)."
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="out.png (figure), out.ply or out.rrd (coloured points).",
)
@click.option(
    "--mode",
    type=click.Choice(["pca", "similarity"]),
    help="Colour by PCA of the features, or by cosine similarity to a query point "
    "(default: similarity when a query is given, else pca).",
)
@click.option("--query", "query_text", metavar="X,Y,Z", help="Query point: the scan's point nearest to x,y,z (metres).")
@click.option("--query-index", type=click.IntRange(min=0), help="Query point: this row of the file.")
@click.option(
    "--query-class",
    metavar="NAME",
    help="With --data: query a point of this class (the one with the most same-class points around it in its image).",
)
@click.option(
    "--queries",
    metavar="NAME,NAME,...",
    help="With --data: a grid, one row per class, each in the camera that shows its query best.",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    help="A dataset (nuScenes, SemanticKITTI, Waymo, sequence folder, synthetic world) instead of SCAN: "
    "draw the paper's figure on its camera images, teacher similarity beside student similarity.",
)
@click.option(
    "--sample",
    default="0",
    show_default=True,
    help="With --data: the frame (position in the split, SEQUENCE:POSITION, or a nuScenes sample token).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val"]),
    help="With --data: the split --sample counts in (default val; train for a sequence folder).",
)
@click.option(
    "--teacher",
    "teacher_spec",
    metavar="DIR|NAME|none",
    help="With --data: the image teacher (a teacher folder, a timm name, or none); default: the encoder's.",
)
@click.option(
    "--labels",
    is_flag=True,
    help="Colour SCAN by the class a segmentation model (--model RUN/model) predicts: a PNG with a legend, or a PLY "
    "with a label property.",
)
@click.option("--format", "fmt", type=click.Choice(["png", "ply", "rrd"]), help="Default: from --out's suffix.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option(
    "--load-dim",
    type=click.IntRange(min=3),
    help="float32 columns per point in raw .bin files (default 4; 5 for .pcd.bin).",
)
@click.option("--local-files-only", is_flag=True, help="Never touch the network when resolving --model.")
@library_errors
def viz_cmd(
    scan,
    model,
    out,
    mode,
    query_text,
    query_index,
    query_class,
    queries,
    data_path,
    sample,
    split,
    teacher_spec,
    labels,
    fmt,
    device,
    load_dim,
    local_files_only,
):
    """Draw an encoder's features for SCAN: bird's-eye and range views coloured by PCA or by
    similarity to a query point (PNG), or write them as coloured points (PLY, rerun .rrd).
    With --labels: a segmentation model's predicted classes. With --data instead of SCAN: the
    paper's query figure on a dataset frame's camera images."""
    from ...loading import load_encoder, load_segmenter

    suffix = out.suffix.lower().lstrip(".")
    fmt = fmt or suffix
    if fmt not in ("png", "ply", "rrd"):
        raise click.UsageError(f"--out {out}: name a .png, .ply or .rrd file (or pass --format)")
    if suffix != fmt:
        raise click.UsageError(f"--out {out} does not end in .{fmt} (--format {fmt})")
    if (scan is None) == (data_path is None):
        raise click.UsageError("give a SCAN file or --data DATASET (not both)")
    if data_path is None:
        for name, value in (
            ("--query-class", query_class),
            ("--queries", queries),
            ("--teacher", teacher_spec),
            ("--split", split),
        ):
            if value is not None:
                raise click.UsageError(f"{name} needs --data DATASET (a scan file has no labels or cameras)")
    elif fmt != "png" or mode == "pca":
        raise click.UsageError(
            "with --data the figure is the similarity one on camera images: --out a .png, no --mode pca"
        )
    try:
        query_xyz = parse_query(query_text) if query_text is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    query_list = None if queries is None else [q.strip() for q in queries.split(",") if q.strip()]
    if labels and (data_path is not None or mode is not None or query_text is not None or query_index is not None):
        raise click.UsageError(
            "--labels colours a SCAN by predicted class: no --data, --mode, --query or --query-index"
        )
    if fmt == "png":
        from ...viz.figure import require_matplotlib

        require_matplotlib()  # before the model loads
    check_writable(out.parent if str(out.parent) else Path("."), "--out")
    load = load_segmenter if labels else load_encoder
    encoder = load(model, device=device, local_files_only=local_files_only)
    if data_path is not None:
        from ...training.query_figure import draw_query_figure

        result = draw_query_figure(
            data_path, sample, split, encoder, out, teacher_spec, query_xyz, query_index, query_class, query_list
        )
        click.echo(
            f"wrote {out}: {result['panels']} camera panel(s), {result['points']:,} points, query point(s) "
            f"{result['queries']}, "
            f"teacher {result['teacher'] or 'none'}"
        )
        return
    from ...viz.scan_figure import draw_scan

    result = draw_scan(scan, encoder, out, fmt, mode, query_xyz, query_index, load_dim=load_dim, labels=labels)
    query = (
        ""
        if result["query"] is None
        else f", query point {result['query']} at {tuple(round(v, 2) for v in result['query_xyz'])}"
    )
    dropped = f" ({result['dropped']:,} NaN/Inf points left out)" if result["dropped"] else ""
    if labels:
        top = ", ".join(f"{n} {c:,}" for n, c in list(result["classes"].items())[:5])
        click.echo(f"wrote {out}: predicted classes of {result['points']:,} points ({top}){dropped}")
        return
    click.echo(f"wrote {out}: {result['mode']} of {result['points']:,} points{query}{dropped}")


def parse_query(text: str) -> tuple[float, float, float]:
    """'x,y,z' (metres, the scan's frame) -> a tuple; ValueError naming the option otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(abs(v) < float("inf") for v in values):
        raise ValueError(f"--query {text!r}: give three numbers x,y,z in metres, e.g. --query 12.5,-3,0.2")
    return values  # type: ignore[return-value]


COMMANDS = [viz_cmd]

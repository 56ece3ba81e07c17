"""Model cards: ``lima_zoo/model_cards/template.md`` + per-model data (YAML) + evaluation JSONs -> README.md.

Numbers live in one place: the results table and the Hub ``model-index`` are both built from the
``metrics.json`` files ``lima-zoo eval`` writes; the per-model YAML holds only prose (what the
weights were trained on, recipe, limitations). Everything architectural (voxelization, widths,
teacher) is read from the model folder's config.json, so a card cannot contradict its weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..config import POINT_VOXEL_BACKBONES, read_config
from ..labels import read_head_json
from ..models import parameter_count

__all__ = ["render_card", "card_data_path", "CARDS_DIR", "evaluation_results"]

CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
REQUIRED_DATA = ("title", "description", "trained_on", "datasets", "recipe", "limitations")
TAGS = [
    "lidar",
    "point-cloud",
    "feature-extraction",
    "self-supervised",
    "knowledge-distillation",
    "autonomous-driving",
    "lima-zoo",
]
DATASET_NAMES = {
    "nuscenes": "nuScenes",
    "semantickitti": "SemanticKITTI",
    "waymo": "Waymo Open Dataset",
    "folder": "sequence folder",
}


def card_data_path(name_or_path: str | Path | None, config) -> Path:
    """The per-model YAML: a path, a name under model_cards/, or (None) chosen from the config —
    the synthetic card for synthetic-teacher encoders, else the neutral 'custom' card."""
    if name_or_path is None:
        name_or_path = "synthetic-tiny" if config.teacher == "synthetic" else "custom"
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CARDS_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))
    raise ValueError(f"card data {str(name_or_path)!r}: neither a file nor one of {', '.join(known)}")


def _read_card_data(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: unreadable card data ({e})") from None
    missing = [k for k in REQUIRED_DATA if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: card data is missing {', '.join(missing)}")
    return data


def evaluation_results(paths: list[Path]) -> list:
    """huggingface_hub EvalResults (mIoU, in %) from ``lima-zoo eval`` metrics.json files."""
    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            float(report["miou"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not a lima-zoo evaluation JSON with an 'miou' ({type(e).__name__}: {e})"
            ) from None
        reports.append(report)
    return [_result(r) for r in reports]


def _result(report: dict):
    """One EvalResult from an evaluation report (metrics.json, or a segmentation folder's head.json)."""
    from huggingface_hub import EvalResult

    protocol = {"linear": "linear probe", "finetune": "fine-tune"}.get(
        report.get("protocol"), str(report.get("protocol", "?"))
    )
    percent = report.get("percent")
    if percent is not None and float(percent) != 100:
        protocol += f", {float(percent):g}% labels"
    dataset = str(report.get("dataset", "unknown"))
    return EvalResult(
        task_type="semantic-segmentation",
        task_name="LiDAR semantic segmentation",
        dataset_type=dataset,
        dataset_name=DATASET_NAMES.get(dataset, dataset),
        dataset_split=str(report.get("split", "val")),
        metric_type="mIoU",
        metric_name=f"mIoU ({protocol})",
        metric_value=round(100 * float(report["miou"]), 2),
    )


def render_card(
    model_dir: str | Path, repo_id: str, card_data: str | Path | None = None, evals: list[Path] = ()
) -> str:
    """README.md text for the encoder (or segmentation) folder ``model_dir`` published as ``repo_id``;
    a segmentation folder's card adds its classes (with their IoU) and ``predict`` usage.

    Args:
        model_dir: the encoder folder; its config.json fills the card's architecture rows.
        repo_id: the Hub repo the card describes.
        card_data: a card-data name under ``lima_zoo/model_cards/`` or a YAML file.
        evals: metrics.json files from ``lima-zoo eval``: the results table and model-index.
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = read_config(model_dir / "config.json")
    data = _read_card_data(card_data_path(card_data, config))
    results = evaluation_results(list(evals))
    classes, label_format = _classes(model_dir)
    if classes and not results:  # a segmentation folder carries the scores its head was evaluated with
        _, info = read_head_json(model_dir / "head.json")
        results = [_result(info)] if "miou" in info else []
    meta = ModelCardData(
        library_name="lima-zoo",
        license=data.get("license", "other"),
        pipeline_tag=None if classes else "feature-extraction",
        tags=[*TAGS, "semantic-segmentation"] if classes else TAGS,
        datasets=list(data["datasets"]) or None,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    pre = config.preprocess
    card = ModelCard.from_template(
        meta,
        template_path=str(CARDS_DIR / "template.md"),
        repo_id=repo_id,
        title=data["title"],
        description=" ".join(str(data["description"]).split()),
        trained_on=" ".join(str(data["trained_on"]).split()),
        recipe=data["recipe"],
        limitations=list(data["limitations"]),
        results=results,
        classes=classes,
        label_format=label_format,
        has_onnx=(model_dir / "model.onnx").is_file(),
        out_dim=config.out_dim,
        head_dim=config.head_dim,
        backbone=config.backbone,
        backbone_family=_FAMILIES[config.backbone.rstrip("0123456789")],
        params=f"{parameter_count(config.backbone, config.in_channels, config.width) / 1e6:.1f}M",
        teacher=config.teacher,
        input_columns="x, y, z, intensity" if pre.use_dim == 4 else "x, y, z",
        intensity_scale=f"{pre.intensity_scale:g}",
        grid_kind="range image" if pre.range_image else "voxelization",
        onnx_inputs=_ONNX_INPUTS[
            "range" if pre.range_image else "point_voxel" if config.backbone in POINT_VOXEL_BACKBONES else "voxel"
        ],
        grid=_grid_text(pre),
    )
    return str(card)


def _classes(model_dir: Path) -> tuple[list[dict], str]:
    """A segmentation folder's classes for the card (name, evaluation id, raw id, IoU) and its label
    format; ([], "") for an encoder folder."""
    if not (model_dir / "head.json").is_file():
        return [], ""
    vocabulary, info = read_head_json(model_dir / "head.json")
    ious = info.get("per_class_iou") or {}
    raw = vocabulary.raw_ids or (None,) * (len(vocabulary.names) + 1)
    rows = []
    for i, name in enumerate(vocabulary.names):
        iou = ious.get(name)
        rows.append(
            {
                "name": name,
                "eval_id": i + 1,
                "raw_id": "-" if raw[i + 1] is None else raw[i + 1],
                "iou": "-" if iou is None else f"{100 * float(iou):.2f}",
            }
        )
    return rows, vocabulary.dataset


_ONNX_INPUTS = {  # what each graph layout takes, for the card
    "range": (
        "Its inputs are one scan's points, their pixels and the occupied pixels, which the lima-zoo runtime lays out "
        "(`lima_zoo.runtime.range_inputs.range_feeds`); it runs one scan per call."
    ),
    "point_voxel": (
        "Its inputs are the points, the kernel maps and each point's voxel look-ups, which the lima-zoo runtime "
        "builds (`lima_zoo.runtime.point_voxel_inputs`)."
    ),
    "voxel": (
        "Its inputs are the voxel features and the kernel maps, which the lima-zoo runtime builds "
        "(`lima_zoo.runtime.voxel_inputs.graph_inputs`)."
    ),
}
_FAMILIES = {
    "minkunet": "torchsparse-lineage MinkUNet",
    "spvcnn": "SPVNAS-lineage point-voxel SPVCNN",
    "frnet": "range-view FRNet",
}


def _grid_text(pre) -> str:
    """How the card states the points -> cells step of ``pre`` (PreprocessConfig)."""
    if pre.range_image:
        r = pre.range_image
        seen_from = f", seen from ({', '.join(f'{v:g}' for v in r.origin)}) m" if any(r.origin) else ""
        inclination = f"{r.fov_up:g} to {r.fov_down:g} degrees inclination"
        return f"{r.height} x {r.width} pixels, {inclination}{seen_from}; the points of a pixel keep their own features"
    units = "rho m, phi degrees, z m" if pre.voxel_type == "cylindrical" else "x, y, z in m"
    size = " x ".join(f"{v:g}" for v in pre.voxel_size)
    return f"{pre.voxel_type}, voxel size {size} ({units}), first point of each voxel"

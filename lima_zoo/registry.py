"""Named variants: encoders ("vit-b-minkunet34") and segmentation models, an encoder with the head
``lima-zoo eval`` trains ("vit-b-minkunet34-nuscenes-lp": linear probe, "-ft": fine-tuned) ->
config, Hub repo, revision, licence, paper. ``published`` says whether weights exist under the
name; none do yet, and loading one says so.

Plain data plus one decorator-free dict, in the spirit of timm's registry: a variant is looked up by
name, an unknown name is an error that suggests the closest ones.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .config import EncoderConfig, PreprocessConfig

__all__ = ["ModelInfo", "MODELS", "list_models", "get_model_info"]

PAPER = (
    "Xu et al., Beyond One Shot, Beyond One Perspective: Cross-View and Long-Horizon Distillation for Better LiDAR "
    "Representations, ICCV 2025 (arXiv:2507.05260)"
)


@dataclass(frozen=True)
class ModelInfo:
    """A registered variant. ``revision`` pins the Hub commit the loader asks for; ``task`` is
    "features" (an encoder) or "segmentation" (an encoder with a head, for LiMASegmenter)."""

    name: str
    config: EncoderConfig
    hub_repo: str
    revision: str
    license: str
    paper: str = PAPER
    description: str = ""
    task: str = "features"
    published: bool = False


# registered name's backbone part -> (EncoderConfig.backbone, how the description names it)
_BACKBONES = {
    "minkunet34": ("minkunet34", "MinkUNet-34"),
    "spvcnn": ("spvcnn34", "SPVCNN (MinkUNet-34 voxel branch + point branch)"),
    "frnet": ("frnet34", "FRNet-34 (range view, the 32 x 480 nuScenes range image)"),
}
_TEACHERS = {
    "s": ("vit_small_patch14_dinov2", 384),
    "b": ("vit_base_patch14_dinov2", 768),
    "l": ("vit_large_patch14_dinov2", 1024),
}


def _lima(teacher_size: str, backbone: str) -> ModelInfo:
    name = f"vit-{teacher_size}-{backbone}"
    (arch, title), (teacher, head_dim) = _BACKBONES[backbone], _TEACHERS[teacher_size]
    return ModelInfo(
        name=name,
        config=EncoderConfig(backbone=arch, head_dim=head_dim, teacher=teacher, preprocess=PreprocessConfig()),
        hub_repo=f"lima-zoo/{name}",
        revision="main",
        license="cc-by-nc-sa-4.0",  # trained on nuScenes: the weights inherit its licence
        description=f"{title} distilled from DINOv2 ViT-{teacher_size.upper()}/14 with LiMA on nuScenes",
    )


_DATASETS = {"nuscenes": "nuScenes-lidarseg (16 classes)", "semantickitti": "SemanticKITTI (19 classes)"}
_PROTOCOLS = {
    "lp": "a linear probe (BatchNorm + Linear) on the frozen encoder",
    "ft": "the fine-tuned encoder and head",
}


def _segmenter(encoder: ModelInfo, dataset: str, protocol: str) -> ModelInfo:
    name = f"{encoder.name}-{dataset}-{protocol}"
    return ModelInfo(
        name=name,
        config=encoder.config,
        hub_repo=f"lima-zoo/{name}",
        revision="main",
        license=encoder.license,  # both datasets' labels are non-commercial too
        description=f"{encoder.description}; semantic segmentation on {_DATASETS[dataset]} with {_PROTOCOLS[protocol]}",
        task="segmentation",
    )


_ENCODERS = [_lima(size, bb) for bb in _BACKBONES for size in _TEACHERS]
MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        *_ENCODERS,
        *(_segmenter(e, dataset, protocol) for e in _ENCODERS for dataset in _DATASETS for protocol in _PROTOCOLS),
    ]
}


def list_models(task: str | None = None) -> list[str]:
    """Names of every registered variant (of ``task``: "features" or "segmentation"), sorted."""
    return sorted(n for n, info in MODELS.items() if task is None or info.task == task)


def get_model_info(name: str) -> ModelInfo:
    """The registered variant ``name``; an unknown name raises with the closest names."""
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered: {', '.join(list_models())}") from None

"""Training configuration: nested frozen dataclasses, read from a YAML recipe plus ``--set a.b=c``.

Every LiMA choice the paper leaves open is a field here (docs/method.md). Unknown
keys are refused with the valid ones listed; overrides are type-checked; the whole config is saved in
every checkpoint. Recipes live in ``lima_zoo/training/recipes/*.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from ..config import SEED, Checked, EncoderConfig, Range, config_from_dict
from ..sparse.backends import check_backend

__all__ = [
    "DataConfig",
    "DownstreamConfig",
    "TeacherConfig",
    "LimaConfig",
    "AugmentConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_recipe",
    "apply_overrides",
    "list_recipes",
    "RECIPE_DIR",
]

RECIPE_DIR = Path(__file__).with_name("recipes")


@dataclass(frozen=True)
class DataConfig(Checked):
    """Where frames come from. An empty ``path`` with ``synthetic`` set generates a world under the
    run's output folder (``<out>/data``) on first use."""

    path: str = ""
    format: str = "auto"  # auto | nuscenes | semantickitti | waymo | folder
    split: str = "train"
    percent: Annotated[float, Range(0, 100, low_open=True)] = 100.0
    synthetic: bool = False
    synthetic_scenes: Annotated[int, Range(1, 10_000)] = 6
    synthetic_frames: Annotated[int, Range(1, 100_000)] = 10
    synthetic_seed: Annotated[int, SEED] = 0
    synthetic_image_scale: Annotated[float, Range(0.05, 1.0)] = 0.15
    cameras: tuple[str, ...] = ()  # use only these cameras (e.g. [CAM_FRONT]); empty = every camera
    # processes reading frames ahead of the step (training/loading.py); 0 = inline
    workers: Annotated[int, Range(0, 256)] = 0
    prefetch: Annotated[int, Range(1, 64)] = 2  # steps each worker reads ahead

    def __post_init__(self) -> None:
        if self.workers < 0 or self.prefetch < 1:
            raise ValueError(f"data: invalid workers={self.workers} (>= 0) or prefetch={self.prefetch} (>= 1)")
        super().__post_init__()


@dataclass(frozen=True)
class TeacherConfig(Checked):
    """The frozen image model. ``name`` is a timm model (DINOv2 by default) or "synthetic", a small ViT
    made by ``lima-zoo make-teacher`` on a different synthetic world. ``weights``: a local file or
    folder; empty = timm's pretrained weights from the Hugging Face cache (or Hub when online)."""

    name: str = "vit_base_patch14_dinov2"
    weights: str = ""
    image_size: Annotated[tuple[int, int], Range(8, 8192)] = (224, 448)  # H, W the images are resized to


@dataclass(frozen=True)
class LimaConfig(Checked):
    """LiMA's choices (docs/method.md); the benchmark rows are settings of these."""

    frames: Annotated[int, Range(1, 100)] = 6  # 1 = single-frame distillation
    memory_bank: bool = True  # False: re-run the teacher on every past frame (what the bank saves)
    # cell: 3-D cells of past LiDAR points | reproject: current points into past cameras' 2-D maps
    align: str = "reproject"
    cell: Annotated[float, Range(0, 100, low_open=True)] = (
        0.3  # m, voxel-hash cell matching current points to remembered ones (align=cell)
    )
    check: str = (
        "agreement"  # align=reproject: none | occlusion | agreement (occlusion + free-space moving-object guard)
    )
    depth_cells: Annotated[int, Range(1, 4096)] = (
        32  # z-buffer cells across an image's width (align=reproject; benchmarks/memory_probe.py)
    )
    depth_tolerance: Annotated[tuple[float, float], Range(0, 1000)] = (
        0.5,
        0.1,
    )  # m + fraction of depth a sample may differ from the past LiDAR
    pool: str = "mean"  # mean | max over the frames that matched
    recency: Annotated[float, Range(0, 1, low_open=True)] = (
        1.0  # align=reproject, mean pooling: a frame k steps back weighs recency**(k-1)
    )
    view_range: Annotated[float, Range(0, 1e4)] = (
        0.0  # m; align=reproject, > 0: a remembered view seen at depth d weighs exp(-d / view_range)
    )
    alpha: Annotated[float, Range(0, 1)] = 0.5  # temporal fusion weight of the current unified feature
    fusion: str = "blend"  # blend | confidence (memory's share scaled by its agreement with the current target)
    cva: str = "mean"  # mean | center (weights by closeness to the image centre)
    cameras_per_frame: Annotated[int, Range(0, 64)] = (
        0  # > 0: distil only this many randomly drawn cameras per scan (ScaLR: 1); 0 = all
    )
    loss_average: str = "joint"  # joint: one mean over every target | separate: L_cur + memory_weight * L_mem
    memory_weight: Annotated[float, Range(0, 1000)] = (
        1.0  # lambda: weight of memory-only points (in the joint mean, or of L_mem); six-camera recipes: 0
    )
    mixing: str = "lasermix"  # lasermix | polarmix | none
    scans_per_stream: Annotated[int, Range(1, 2)] = (
        2  # student scans per stream and step: 2 = current + mixed (no mixing: a second augmentation)
    )
    mix_weight: Annotated[float, Range(0, 1000)] = 1.0
    consistency_weight: Annotated[float, Range(0, 1000)] = (
        0.0  # > 0 (needs mixing, 2 scans): pull a mixed point's feature to its unmixed one
    )
    bank_dtype: str = "float16"

    def __post_init__(self) -> None:
        checks = {  # the numeric fields are checked by their Range
            "align": self.align in ("cell", "reproject"),
            "check": self.check in ("none", "occlusion", "agreement"),
            "pool": self.pool in ("mean", "max"),
            "fusion": self.fusion in ("blend", "confidence"),
            "cva": self.cva in ("mean", "center"),
            "loss_average": self.loss_average in ("joint", "separate"),
            "mixing": self.mixing in ("lasermix", "polarmix", "none"),
            "bank_dtype": self.bank_dtype in ("float16", "float32"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"lima: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.consistency_weight > 0 and (self.mixing == "none" or self.scans_per_stream != 2):
            raise ValueError(
                "lima.consistency_weight > 0 compares mixed and unmixed scenes: it needs mixing and scans_per_stream=2"
            )
        super().__post_init__()


@dataclass(frozen=True)
class AugmentConfig(Checked):
    """Applied to the student's input only, after pairing."""

    flip: bool = True
    rotate: bool = True
    scale: Annotated[tuple[float, float], Range(0, 10, low_open=True)] = (0.95, 1.05)


@dataclass(frozen=True)
class OptimConfig(Checked):
    lr: Annotated[float, Range(0, 10, low_open=True)] = 0.01
    weight_decay: Annotated[float, Range(0, 10)] = 0.01
    warmup: Annotated[float, Range(0, 1)] = 0.2  # OneCycle warm-up fraction
    epochs: Annotated[int, Range(1, 1_000_000)] = 100
    max_steps: Annotated[int, Range(0, 10**9)] = 0  # > 0 caps the run at this many optimizer steps
    streams: Annotated[int, Range(1, 1024)] = 4  # sequences walked in parallel per data-parallel rank
    grad_accum: Annotated[int, Range(1, 1024)] = 1
    grad_clip: Annotated[float, Range(0, 1e6)] = 0.0  # 0 = off


@dataclass(frozen=True)
class RunConfig(Checked):
    seed: Annotated[int, SEED] = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, on CUDA only
    checkpoint_every: Annotated[int, Range(1, 10**9)] = 500
    log_every: Annotated[int, Range(1, 10**9)] = 10
    threads: Annotated[int, Range(0, 1024)] = 0  # torch threads per process; 0 = leave torch's default
    # which library runs the sparse convs: torch (our engine: the fused kernel on CPU, gather-mm-scatter
    # on CUDA; deterministic) | spconv (its CUDA wheels' implicit GEMM on GPU; one thread on CPU) | torchsparse
    sparse_backend: str = "auto"

    def __post_init__(self) -> None:
        check_backend(self.sparse_backend)
        super().__post_init__()


@dataclass(frozen=True)
class TrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    lima: LimaConfig = field(default_factory=LimaConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DownstreamConfig(Checked):
    """Linear probing (frozen backbone in eval mode, BatchNorm + zero-initialised Linear(96 -> C)) or
    fine-tuning (whole network, head lr x ``head_lr_mult``) with CE + ``lovasz_weight`` x Lovasz-softmax."""

    protocol: str = "linear"  # linear | finetune | none (score a segmentation model as it is)
    percent: Annotated[float, Range(0, 100, low_open=True)] = (
        100.0  # of the training split, by the dataset's subset rule
    )
    epochs: Annotated[int, Range(1, 1_000_000)] = 10
    max_steps: Annotated[int, Range(0, 10**9)] = 0
    batch: Annotated[int, Range(1, 1024)] = 2  # scans per step
    lr: Annotated[float, Range(0, 10, low_open=True)] = 0.001
    head_lr_mult: Annotated[float, Range(0, 10_000, low_open=True)] = 10.0
    weight_decay: Annotated[float, Range(0, 10)] = 0.01
    warmup: Annotated[float, Range(0, 1)] = 0.2
    lovasz_weight: Annotated[float, Range(0, 100)] = 2.0
    bn_momentum: Annotated[float, Range(0, 1)] = 0.02
    augment: bool = True  # flips / rotation / scale of training scans (a linear probe without it caches features)
    eval_split: str = "val"
    random_backbone: str = "minkunet34"  # the architecture of --model random
    seed: Annotated[int, SEED] = 0
    device: str = "auto"
    checkpoint_every: Annotated[int, Range(1, 10**9)] = 200
    cache_mb: Annotated[int, Range(0, 10**7)] = 2048  # largest feature cache a linear probe may keep in memory
    camera_split: bool = False  # also report mIoU on points inside / outside the current cameras
    cameras: tuple[str, ...] = ()  # the cameras of that split (empty = every camera)
    sparse_backend: str = "auto"  # as RunConfig.sparse_backend

    def __post_init__(self) -> None:
        check_backend(self.sparse_backend)
        if self.protocol not in ("linear", "finetune", "none"):
            raise ValueError(f"protocol must be 'linear', 'finetune' or 'none', got {self.protocol!r}")
        super().__post_init__()


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (value parsed as YAML: 3, 0.5, true, [1, 2], text) to a nested dict."""
    import yaml

    out = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.002")
        node, parts = out, key.split(".")
        for i, part in enumerate(parts[:-1]):
            sub = node.setdefault(part, {})
            if not isinstance(sub, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = sub
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:  # a tag (!!python/...) or broken syntax: never executed, reported
            why = str(exc).splitlines()[0]
            raise ValueError(f"--set {item!r}: the value is not plain YAML ({why})") from None
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def load_recipe(recipe: str, overrides: list[str] | None = None) -> TrainConfig:
    """A packaged recipe name or a YAML path, with overrides -> TrainConfig (strict)."""
    import yaml

    path = Path(recipe)
    if not path.is_file():
        path = RECIPE_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise ValueError(
                f"{recipe!r} is neither a YAML file nor a packaged recipe; recipes: {', '.join(list_recipes())}"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    data = apply_overrides(data, overrides or [])
    return config_from_dict(TrainConfig, data, where=str(path))

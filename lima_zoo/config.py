"""Frozen configs that travel with the weights (saved whole in ``config.json``).

``EncoderConfig`` says which network to build and ``PreprocessConfig`` how raw points become its
input. Reading is strict: an unknown key, a wrong type or a newer format version is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

__all__ = [
    "RangeImageConfig",
    "PreprocessConfig",
    "EncoderConfig",
    "FORMAT_VERSION",
    "backbone_out_dim",
    "config_from_dict",
    "RANGE_VIEW_BACKBONES",
    "POINT_VOXEL_BACKBONES",
    "KITTI_RANGE_IMAGE",
    "Range",
    "Checked",
    "check_ranges",
    "numeric_fields",
    "read_config",
]

FORMAT_VERSION = 1

RANGE_VIEW_BACKBONES = ("frnet18", "frnet34")  # read a range image (preprocess.range_image), not voxels
POINT_VOXEL_BACKBONES = ("spvcnn18", "spvcnn34")  # voxels plus every point (voxelize(..., keep_points=True))
BACKBONES = (
    "minkunet14",
    "minkunet18",
    "minkunet34",
    *POINT_VOXEL_BACKBONES,
    *RANGE_VIEW_BACKBONES,
)  # models/__init__.py builds each


@dataclass(frozen=True)
class Range:
    """The values a numeric config field may take: ``low <= v <= high`` (an open end excludes it;
    None: unbounded). A tuple field's every element is checked; a float must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def __str__(self) -> str:
        def text(v: float | None, unbounded: str) -> str:
            return unbounded if v is None else str(int(v)) if float(v).is_integer() else f"{v:g}"

        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{text(self.low, '-inf')}, {text(self.high, 'inf')}{right}"


SEED = Range(0, 2**31 - 1)  # seeds are mixed with step numbers into 64-bit generator seeds


def _integer(hint: Any) -> bool:
    """Whether an (unwrapped) field type holds ints: int, int | None, tuple[int, ...]."""
    return hint is int or any(_integer(a) for a in typing.get_args(hint) if a is not Ellipsis)


@functools.cache
def _field_ranges(cls: type) -> dict[str, tuple[Range, bool]]:
    """{field: (its Range, whether it holds ints)} for every ranged field of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        f.name: (
            next(m for m in hints[f.name].__metadata__ if isinstance(m, Range)),
            _integer(hints[f.name].__origin__),
        )
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Annotated
        and any(isinstance(m, Range) for m in hints[f.name].__metadata__)
    }


def check_ranges(config: Any) -> None:
    """Raise ValueError naming the first field of ``config`` (a dataclass) outside its Range (or,
    for an int field, not an int)."""
    for name, (allowed, integer) in _field_ranges(type(config)).items():
        value = getattr(config, name)
        for v in value if isinstance(value, tuple) else (value,):
            if v is None:
                continue
            if integer and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{name} must be an integer in {allowed}, got {value!r}")
            if not allowed.allows(v):
                raise ValueError(f"{name} must be in {allowed}, got {value!r}")


def numeric_fields(cls: type) -> dict[str, bool]:
    """{field: has a Range} for every int / float field (alone, optional or in a tuple) of ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    ranged = _field_ranges(cls)

    def numeric(hint: Any) -> bool:
        if typing.get_origin(hint) is Annotated:
            return numeric(typing.get_args(hint)[0])
        if hint in (int, float):
            return True
        return any(numeric(a) for a in typing.get_args(hint) if a is not Ellipsis)

    return {f.name: f.name in ranged for f in dataclasses.fields(cls) if numeric(hints[f.name])}


class Checked:
    """Base of the configs: every ranged field is checked when an instance is made (from a file, a
    ``--set`` or Python), before any work. Subclasses with checks of their own call
    ``super().__post_init__()`` after them."""

    def __post_init__(self) -> None:
        check_ranges(self)


def backbone_out_dim(width: float = 1.0) -> int:
    """Channels a backbone of ``width`` outputs: the last plane of every one of them, 96, scaled."""
    return max(1, round(96 * width))


@dataclass(frozen=True)
class RangeImageConfig(Checked):
    """The range image a range-view backbone (FRNet) reads, from the sensor's beam geometry.

    A point at yaw = -atan2(y, x) and pitch = asin(z / range) (sensor frame, degrees) falls in column
    ``floor((yaw / 180 + 1) / 2 * width)`` (straight ahead in the middle, as FRNet) and row
    ``floor((fov_up - pitch) / (fov_up - fov_down) * height)`` (row 0 at the top), both clamped
    into the image, so a beam just outside the field of view lands on the edge row.
    Defaults: nuScenes' 32-beam HDL-32E as FRNet sets it up (32 x 480, +10 / -30 degrees);
    ``KITTI_RANGE_IMAGE`` is its 64-beam HDL-64E setting. height and width are multiples of 8
    (the 2-D CNN halves them three times and puts the levels back together). ``origin``: the
    sensor's position in the frame the points are given in, subtracted before the angles (0 for
    scans in the sensor frame, as nuScenes' and KITTI's are; Waymo's readers give vehicle-frame
    points, its TOP LiDAR sits at about (1.43, 0, 2.18)).
    """

    height: Annotated[int, Range(8, 4096)] = 32
    width: Annotated[int, Range(8, 65536)] = 480
    fov_up: Annotated[float, Range(-90, 90)] = 10.0
    fov_down: Annotated[float, Range(-90, 90)] = -30.0
    origin: Annotated[tuple[float, float, float], Range(-1e4, 1e4)] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.origin) != 3:
            raise ValueError(f"origin must be three numbers (x, y, z in m), got {self.origin}")
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 8 or v % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {v}")
        if not -90.0 <= self.fov_down < self.fov_up <= 90.0:
            raise ValueError(
                f"need -90 <= fov_down < fov_up <= 90 degrees, got fov_up={self.fov_up}, fov_down={self.fov_down}"
            )
        super().__post_init__()


KITTI_RANGE_IMAGE = RangeImageConfig(height=64, width=512, fov_up=3.0, fov_down=-25.0)  # FRNet's SemanticKITTI setting


@dataclass(frozen=True)
class PreprocessConfig(Checked):
    """How a point cloud becomes voxels.

    voxel_type: "cylindrical" (voxel_size = rho m, phi degrees, z m) or "cartesian" (x, y, z m).
    use_dim: input columns fed to the network: x, y, z and, with 4, the intensity column.
    intensity_scale: the range the model expects intensity in: 255.0 (nuScenes, 0-255) or 1.0
        (KITTI remission, 0-1). Readers rescale a scan whose convention differs.
    range_image: where a range-view backbone's points go (rows x columns of the sensor's beams);
        None for voxel backbones, which read voxel_type / voxel_size instead.
    """

    voxel_type: str = "cylindrical"
    voxel_size: Annotated[tuple[float, float, float], Range(0, 100, low_open=True)] = (0.1, 1.0, 0.1)
    use_dim: Annotated[int, Range(3, 4)] = 4
    intensity_scale: Annotated[float, Range(0, 1e6, low_open=True)] = 255.0
    range_image: RangeImageConfig | None = None

    def __post_init__(self) -> None:
        if self.voxel_type not in ("cylindrical", "cartesian"):
            raise ValueError(f"voxel_type must be 'cylindrical' or 'cartesian', got {self.voxel_type!r}")
        if len(self.voxel_size) != 3 or any(float(v) <= 0 for v in self.voxel_size):
            raise ValueError(f"voxel_size must be three positive numbers, got {self.voxel_size}")
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        if self.use_dim not in (3, 4):
            raise ValueError(f"use_dim must be 3 (xyz) or 4 (xyz + intensity), got {self.use_dim}")
        super().__post_init__()


@dataclass(frozen=True)
class EncoderConfig(Checked):
    """The architecture: backbone, its input/output widths, distillation head and teacher.

    head_dim 0 means the encoder has no distillation head (a backbone converted from a checkpoint
    that had none); its teacher-space features are then refused, never made up.
    """

    backbone: str = "minkunet34"
    in_channels: Annotated[int, Range(3, 4)] = 4
    # channel multiplier of every layer (torchsparse's cr); 0.5: a quarter of the compute
    width: Annotated[float, Range(0, 4, low_open=True)] = 1.0
    # the backbone's output channels; None: what ``width`` gives (96 at 1)
    out_dim: Annotated[int | None, Range(1, 4096)] = None
    head_dim: Annotated[int, Range(0, 65536)] = 768
    teacher: str = "vit_base_patch14_dinov2"
    bn_momentum: Annotated[float, Range(0, 1)] = 0.05
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    format_version: Annotated[int, Range(1, 1000)] = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        range_view = self.backbone in RANGE_VIEW_BACKBONES
        if (
            range_view and self.preprocess.range_image is None
        ):  # recorded in config.json, so embed projects every scan alike
            object.__setattr__(self, "preprocess", dataclasses.replace(self.preprocess, range_image=RangeImageConfig()))
        if not range_view and self.preprocess.range_image is not None:
            raise ValueError(
                f"preprocess.range_image is for range-view backbones ({', '.join(RANGE_VIEW_BACKBONES)}); a "
                f"{self.backbone} reads voxels"
            )
        if self.in_channels != self.preprocess.use_dim:
            raise ValueError(f"in_channels={self.in_channels} but preprocess.use_dim={self.preprocess.use_dim}")
        if not 0 < self.width <= 4:
            raise ValueError(f"width must be in (0, 4], got {self.width}")
        if self.out_dim is None:
            object.__setattr__(self, "out_dim", backbone_out_dim(self.width))
        if self.out_dim != backbone_out_dim(self.width):
            raise ValueError(
                f"a {self.backbone} of width {self.width} outputs {backbone_out_dim(self.width)} channels; "
                f"out_dim={self.out_dim}"
            )
        super().__post_init__()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build a (nested) frozen dataclass from a dict; unknown keys and bad types raise ValueError
    naming ``where`` and the field. The one place every config (encoder, training, downstream) is
    type-checked: ints are not bools, floats accept ints but not strings, tuples come from lists,
    unions take the first arm that fits."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    if cls is EncoderConfig and kwargs.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{where}: format_version {kwargs['format_version']} is newer than this lima-zoo supports "
            f"({FORMAT_VERSION}); upgrade lima-zoo"
        )
    try:
        return cls(**kwargs)
    except ValueError as e:  # a value of the right type but out of range (__post_init__)
        raise ValueError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _coerce(arm, value, where)
            except ValueError:
                if isinstance(value, dict) and dataclasses.is_dataclass(arm):
                    raise  # a section that is there but wrong: its own message says what is wrong
                continue
        raise ValueError(f"{where}: expected {' or '.join(_name(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, got {value!r}")
        return None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    if hint is Any:
        return value
    raise TypeError(f"{where}: config field type {hint!r} has no reader")  # a programming error, not user input


def _name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def read_config(path: str | os.PathLike) -> EncoderConfig:
    """config.json -> EncoderConfig; unknown keys or a newer format version raise naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable config ({exc})") from None
    return config_from_dict(EncoderConfig, data, where=str(path))

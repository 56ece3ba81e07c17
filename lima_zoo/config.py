"""Frozen configs that travel with the weights (saved whole in ``config.json``).

``EncoderConfig`` says which network to build and ``PreprocessConfig`` how raw points become its
input. Reading is strict: an unknown key, a wrong type or a newer format version is an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

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


def backbone_out_dim(width: float = 1.0) -> int:
    """Channels a backbone of ``width`` outputs: the last plane of every one of them, 96, scaled."""
    return max(1, round(96 * width))


@dataclass(frozen=True)
class RangeImageConfig:
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

    height: int = 32
    width: int = 480
    fov_up: float = 10.0
    fov_down: float = -30.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

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


KITTI_RANGE_IMAGE = RangeImageConfig(height=64, width=512, fov_up=3.0, fov_down=-25.0)  # FRNet's SemanticKITTI setting


@dataclass(frozen=True)
class PreprocessConfig:
    """How a point cloud becomes voxels.

    voxel_type: "cylindrical" (voxel_size = rho m, phi degrees, z m) or "cartesian" (x, y, z m).
    use_dim: input columns fed to the network: x, y, z and, with 4, the intensity column.
    intensity_scale: the range the model expects intensity in: 255.0 (nuScenes, 0-255) or 1.0
        (KITTI remission, 0-1). Readers rescale a scan whose convention differs.
    range_image: where a range-view backbone's points go (rows x columns of the sensor's beams);
        None for voxel backbones, which read voxel_type / voxel_size instead.
    """

    voxel_type: str = "cylindrical"
    voxel_size: tuple[float, float, float] = (0.1, 1.0, 0.1)
    use_dim: int = 4
    intensity_scale: float = 255.0
    range_image: RangeImageConfig | None = None

    def __post_init__(self) -> None:
        if self.voxel_type not in ("cylindrical", "cartesian"):
            raise ValueError(f"voxel_type must be 'cylindrical' or 'cartesian', got {self.voxel_type!r}")
        if len(self.voxel_size) != 3 or any(float(v) <= 0 for v in self.voxel_size):
            raise ValueError(f"voxel_size must be three positive numbers, got {self.voxel_size}")
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        if self.use_dim not in (3, 4):
            raise ValueError(f"use_dim must be 3 (xyz) or 4 (xyz + intensity), got {self.use_dim}")
        if self.intensity_scale <= 0:
            raise ValueError(f"intensity_scale must be positive, got {self.intensity_scale}")


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture: backbone, its input/output widths, distillation head and teacher.

    head_dim 0 means the encoder has no distillation head (a backbone converted from a checkpoint
    that had none); its teacher-space features are then refused, never made up.
    """

    backbone: str = "minkunet34"
    in_channels: int = 4
    width: float = 1.0  # channel multiplier of every layer (torchsparse's cr); 0.5: a quarter of the compute
    out_dim: int | None = None  # the backbone's output channels; None: what ``width`` gives (96 at 1)
    head_dim: int = 768
    teacher: str = "vit_base_patch14_dinov2"
    bn_momentum: float = 0.05
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    format_version: int = FORMAT_VERSION

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
        if self.head_dim < 0:
            raise ValueError(f"head_dim must be positive (or 0: no distillation head), got {self.head_dim}")

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

"""Encoders: the backbones (one per file) and heads, built by name from an EncoderConfig.

Every backbone answers the same questions: ``out_channels``; ``point_output`` (False: its rows are
voxels, mapped back to points through the voxelizer's inverse map; True: one row per input point);
and, for point-output backbones, ``point_features(voxels)``. The encoder, trainer and heads ask
nothing else, so adding a backbone touches this file and the config's list of names.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import RangeImageConfig
from .frnet import FRNET_LAYERS, FRNet
from .heads import DistillationHead
from .minkunet import LAYERS, MinkUNet, convert_torchsparse_state_dict
from .spvcnn import SPVCNN, SPVCNN_LAYERS

__all__ = [
    "MinkUNet",
    "SPVCNN",
    "FRNet",
    "LAYERS",
    "SPVCNN_LAYERS",
    "FRNET_LAYERS",
    "BACKBONE_LAYERS",
    "DistillationHead",
    "build_backbone",
    "parameter_count",
    "convert_torchsparse_state_dict",
]

# name -> residual blocks per stage, for every backbone (the converter matches checkpoints deepest first)
BACKBONE_LAYERS: dict[str, tuple[int, ...]] = {**LAYERS, **SPVCNN_LAYERS, **FRNET_LAYERS}


def build_backbone(
    name: str,
    in_channels: int = 4,
    width: float = 1.0,
    bn_momentum: float = 0.05,
    range_image: RangeImageConfig | None = None,
) -> nn.Module:
    """The backbone ``name`` (minkunet14/18/34, spvcnn18/34, frnet18/34) with fresh weights;
    ``range_image``: the image a range-view backbone reads (default: nuScenes')."""
    if name in LAYERS:
        return MinkUNet(name, in_channels=in_channels, width=width, bn_momentum=bn_momentum)
    if name in SPVCNN_LAYERS:
        return SPVCNN(name, in_channels=in_channels, width=width, bn_momentum=bn_momentum)
    if name in FRNET_LAYERS:
        return FRNet(name, in_channels=in_channels, width=width, bn_momentum=bn_momentum, range_image=range_image)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_LAYERS)}")


def parameter_count(name: str, in_channels: int = 4, width: float = 1.0) -> int:
    """Parameters of a backbone, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_backbone(name, in_channels=in_channels, width=width).parameters())

"""Encoders: MinkUNet backbones and heads."""

from .heads import DistillationHead
from .minkunet import LAYERS, MinkUNet, convert_torchsparse_state_dict

__all__ = ["MinkUNet", "LAYERS", "DistillationHead", "convert_torchsparse_state_dict"]

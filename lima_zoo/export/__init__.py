"""Deployable artifacts: safetensors encoder folders (verified by a strict reload). May import core, never training."""

from .safetensors import export_safetensors, load_encoder_source

__all__ = ["export_safetensors", "load_encoder_source"]

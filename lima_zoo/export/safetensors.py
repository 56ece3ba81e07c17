"""Export an encoder as config.json + model.safetensors (encoder only, canonical key names).

Sources: an encoder folder, or a training checkpoint written by ``lima-zoo train`` (its ``encoder``
state and ``config.encoder``). Checkpoints are read with ``torch.load(weights_only=True)``, never
unpickled. The export is verified: the folder is reloaded strictly and must give identical
features on a reference scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import EncoderConfig, config_from_dict
from ..encoder import LiMAEncoder, load_state_strict, load_weights_only

__all__ = ["load_encoder_source", "export_safetensors"]


def load_encoder_source(path: str | Path) -> LiMAEncoder:
    """An encoder from a folder (config.json + model.safetensors) or a lima-zoo training checkpoint."""
    path = Path(path)
    if path.is_dir():
        return LiMAEncoder.from_pretrained(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or encoder folder")
    state = load_weights_only(path)
    if not (isinstance(state, dict) and "encoder" in state and isinstance(state.get("config"), dict) and "encoder" in state["config"]):
        raise ValueError(f"{path}: not a lima-zoo training checkpoint (expected 'encoder' weights and 'config.encoder'); "
                         "pass an encoder folder or <run>/checkpoints/last.pt")  # fmt: skip
    encoder = LiMAEncoder(config_from_dict(EncoderConfig, state["config"]["encoder"], where=f"{path}: config.encoder"))
    load_state_strict(encoder, state["encoder"], path)
    return encoder.eval()


def export_safetensors(encoder: LiMAEncoder, out: str | Path) -> Path:
    """Write ``out``/config.json + model.safetensors and check a strict reload reproduces the features."""
    from ..synth.scan import street_scan

    out = encoder.save_pretrained(out)
    scan = street_scan(seed=0)[:, :4]
    reloaded = LiMAEncoder.from_pretrained(out)
    a, b = encoder.eval().embed(scan), reloaded.embed(scan)
    diff = float(np.abs(a - b).max())
    if diff != 0.0:
        raise RuntimeError(f"{out}: the reloaded export differs from the source encoder (max |diff| {diff:g})")
    return out

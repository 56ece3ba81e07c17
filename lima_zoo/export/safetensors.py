"""Export an encoder as config.json + model.safetensors (encoder only, canonical key names).

The export is verified: the folder is reloaded strictly and must give identical features on a
reference scan. (Reading the source, a folder or a training checkpoint, is ``load_encoder``'s job.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..encoder import LiMAEncoder

__all__ = ["export_safetensors"]


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

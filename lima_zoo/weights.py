"""Reading weights and configs safely: safetensors files, legacy checkpoints (``weights_only``, never
arbitrary unpickling), strict state-dict loading that lists every mismatch, and config.json.

Every loader in the package (encoders, checkpoints, converted lineage weights, the image teacher)
reads through these functions, so each failure names the file and says what is wrong with it.
(config.json is read by :func:`lima_zoo.config.read_config`, which needs no torch.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_safetensors", "load_weights_only", "load_state_strict", "read_state_dict"]


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a truncated or foreign file is a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: one clear message naming the file
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
    unpickling. Errors name the file and say which of the two things went wrong: the file holds
    pickled objects (refused, with how to re-save it) or it is not a readable checkpoint."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types; each gets one clear message
        text = str(e)
        # torch's message is a page long; what follows "WeightsUnpickler error:" is what matters
        tail = text.split("WeightsUnpickler error:", 1)[-1]
        why = next((line.strip() for line in tail.splitlines() if line.strip()), "").split(". ")[0]
        # torch names the refused class in several wordings across versions ("Unsupported global:
        # GLOBAL m.C was not an allowed global", "Trying to load unsupported GLOBAL m.f whose module m
        # is blocked"); all of them carry "GLOBAL <name>".
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        if found or "Unsupported global" in text:
            raise ValueError(
                f"{path}: the checkpoint holds pickled Python objects besides tensors "
                f"({found.group(1) if found else why}), "
                "and lima-zoo never unpickles untrusted files. On a machine where you trust it, re-save the weights "
                "only: "
                "torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pth')"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {why})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or a .pth/.pt checkpoint (weights_only), unwrapping the usual
    ``state_dict`` / ``model`` / ``module`` nesting."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    obj = load_weights_only(path)
    for key in ("state_dict", "model", "module", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"{path}: no tensors found (expected a state dict, or one under 'state_dict' / 'model')")
    return tensors


def load_state_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike = "state dict"
) -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped tensor at once."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{source}: weights do not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(
                    f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else "")
                )
        raise ValueError("\n".join(parts))
    module.load_state_dict(state, strict=True)

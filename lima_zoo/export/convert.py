"""Convert a torchsparse-lineage MinkUNet or SPVCNN checkpoint (SuperFlow / LiMA / SPVNAS) into a lima-zoo encoder.

Those checkpoints (mmengine/mmdet3d training runs with a torchsparse ``MinkUNetBackbone``, or
SPVNAS's ``SPVCNN``) keep the backbone under a prefix such as ``backbone_3d.`` (pretraining) or
``backbone.`` (segmentation), with the same module names and kernel-offset order as ours
(``conv0.0.conv.kernel``, ``block1.0.norm1.weight``, ... for MinkUNet; ``stem.0.kernel``,
``stage1.1.net.0.kernel``, ``point_transforms.0.0.weight``, ... for SPVCNN; see
``lima_zoo.sparse.kmap``); the backbone and its depth are detected from the keys. The 3D projection head of a
pretraining run (SuperFlow: ``head_3d.conv_seg``, a Linear 96 -> 64) becomes our distillation head.

Reading is safe: ``.safetensors`` directly, ``.pth``/``.pt`` only with
``torch.load(weights_only=True)`` — a checkpoint that needs full unpickling is refused with the way
to re-save it. Every key of the file is accounted for in a :class:`ConversionReport`: mapped to the
backbone, mapped to the head, or left out (printed, never silently dropped). A checkpoint without a
head is converted only when asked (``head="none"``) and then has no teacher-space features.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import EncoderConfig, PreprocessConfig
from ..encoder import LiMAEncoder
from ..models import BACKBONE_LAYERS, build_backbone, convert_torchsparse_state_dict
from ..weights import load_state_strict, read_state_dict

__all__ = ["convert_checkpoint", "ConversionReport", "BACKBONE_PREFIXES", "HEAD_PREFIXES"]

# Where the lineage keeps its backbone / 3D head, most specific first ("" = a bare backbone).
BACKBONE_PREFIXES = ("module.backbone_3d.", "backbone_3d.", "module.backbone.", "backbone.", "model.backbone.", "")
HEAD_PREFIXES = ("module.head_3d.conv_seg.", "head_3d.conv_seg.", "head_3d.", "head.proj.")


@dataclass
class ConversionReport:
    """Which file keys went where."""

    source: str
    backbone_prefix: str
    head_prefix: str | None
    backbone_keys: int = 0
    head_keys: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.backbone_keys} backbone tensors from prefix {self.backbone_prefix!r}"]
        if self.head_prefix is None:
            lines.append("  no distillation head: teacher-space features are unavailable (head_dim 0)")
        else:
            lines.append(f"  head from {self.head_prefix!r}: {', '.join(self.head_keys)}")
        if self.unmapped:
            shown = ", ".join(self.unmapped[:12]) + (
                f" ... (+{len(self.unmapped) - 12})" if len(self.unmapped) > 12 else ""
            )
            lines.append(f"  left out ({len(self.unmapped)} keys, not part of the encoder): {shown}")
        else:
            lines.append("  left out: nothing")
        return "\n".join(lines)


@functools.cache  # asked for per prefix and depth while detecting, then once more
def _own_backbone_keys(backbone: str) -> frozenset[str]:
    with torch.device("meta"):  # names only: no memory, no initialisation
        return frozenset(build_backbone(backbone).state_dict())


def _detect_backbone(state: dict, prefix: str | None) -> tuple[str, str]:
    """(prefix, backbone) under which the file's keys best match one of our backbones."""
    prefixes = [prefix] if prefix is not None else list(BACKBONE_PREFIXES)
    # Deepest first: a -34's keys contain every key of the shallower nets of its family.
    depths = sorted(BACKBONE_LAYERS, key=lambda d: sum(BACKBONE_LAYERS[d]), reverse=True)
    best = (0, "", "")
    for p in prefixes:
        names = {k[len(p) :] for k in state if k.startswith(p)}
        for depth in depths:
            own = _own_backbone_keys(depth)
            if own <= names:
                return p, depth  # complete match
            best = max(best, (len(names & own), p, depth))
    hits, p, depth = best
    where = (
        f"prefix {prefix!r}"
        if prefix is not None
        else f"any of the prefixes {', '.join(repr(x) for x in BACKBONE_PREFIXES)}"
    )
    raise ValueError(
        f"no complete MinkUNet or SPVCNN backbone under {where}: best match {hits} tensors of {depth} under {p!r}; "
        "pass --prefix if the backbone lives elsewhere"
    )


def _find_head(state: dict, head: str | None) -> tuple[str, dict[str, torch.Tensor]] | None:
    candidates = list(HEAD_PREFIXES) if head is None else [head]
    for p in candidates:
        w, b = state.get(p + "weight"), state.get(p + "bias")
        if w is not None and b is not None and w.dim() == 2 and w.shape[1] == 96:
            return p, {"head.proj.weight": w, "head.proj.bias": b}
    if head is not None:
        raise ValueError(f"no Linear(96 -> D) head at {head!r} (expected {head}weight of shape (D, 96) and {head}bias)")
    return None


def convert_checkpoint(
    path: str | Path,
    prefix: str | None = None,
    head: str | None = None,
    preprocess: PreprocessConfig | None = None,
    teacher: str = "vit_base_patch14_dinov2",
) -> tuple[LiMAEncoder, ConversionReport]:
    """Checkpoint -> (LiMAEncoder loaded strictly, report of every key).

    Args:
        path: a ``.safetensors`` or ``.pth`` / ``.pt`` file (read with ``weights_only``).
        prefix: the backbone's key prefix (default: detected among BACKBONE_PREFIXES).
        head: the 3D head's key prefix (default: detected among HEAD_PREFIXES); "none" converts a
            checkpoint without a head (head_dim 0). Without "none", a missing head is an error.
        preprocess: the voxelization the weights were trained with (default: LiMA's cylindrical
            0.1 m x 1 deg x 0.1 m, which SuperFlow also uses).
        teacher: the image model the head's features belong to, recorded in the config.
    """
    state = read_state_dict(path)
    prefix, depth = _detect_backbone(state, prefix)
    found = None if head == "none" else _find_head(state, head)
    if found is None and head != "none":
        raise ValueError(
            f"{path}: no distillation/projection head found (looked for {', '.join(HEAD_PREFIXES)}). "
            "Pass --head PREFIX if it lives elsewhere, or --head none to convert the backbone alone "
            "(the encoder then has no teacher-space features)"
        )
    own = _own_backbone_keys(depth)
    backbone_state = {k: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in own}
    converted, _ = convert_torchsparse_state_dict(backbone_state, prefix)
    report = ConversionReport(str(path), prefix, found[0] if found else None, backbone_keys=len(converted))
    weights = {f"backbone.{k}": v for k, v in converted.items()}
    head_dim = 0
    if not found:  # head_dim 0: an empty Linear(96 -> 0), so loading stays strict
        weights.update({"head.proj.weight": torch.empty(0, 96), "head.proj.bias": torch.empty(0)})
    else:
        head_prefix, head_state = found
        weights.update(head_state)
        head_dim = int(head_state["head.proj.weight"].shape[0])
        report.head_keys = [head_prefix + "weight", head_prefix + "bias"]
    used = set(backbone_state) | set(report.head_keys)
    report.unmapped = sorted(k for k in state if k not in used)
    in_channels = int(
        weights[
            "backbone.conv0.0.conv.kernel" if "backbone.conv0.0.conv.kernel" in weights else "backbone.stem.0.kernel"
        ].shape[1]
    )
    pre = preprocess or PreprocessConfig()
    if pre.use_dim != in_channels:
        pre = dataclasses.replace(pre, use_dim=in_channels)
    config = EncoderConfig(backbone=depth, in_channels=in_channels, head_dim=head_dim, teacher=teacher, preprocess=pre)
    encoder = LiMAEncoder(config)
    load_state_strict(encoder, weights, path)
    return encoder.eval(), report

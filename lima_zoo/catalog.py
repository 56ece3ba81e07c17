"""The model catalogue as text: the table of registered variants (``lima-zoo models``) and one
model's description (``lima-zoo info``): configuration, Hub repo, licence, local cache state."""

from __future__ import annotations

import json

__all__ = ["model_rows", "describe"]


def _param_count(config) -> int:
    """Backbone parameters of a variant."""
    from .models import parameter_count

    return parameter_count(config.backbone, config.in_channels, config.width)


def _cached_path(info) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(info.hub_repo, "model.safetensors", revision=info.revision)
    return hit if isinstance(hit, str) else None


def model_rows(models: dict) -> list[tuple]:
    rows = [("name", "task", "params", "feature dim", "teacher dim", "hub repo", "published", "cached")]
    for name, info in sorted(models.items(), key=lambda kv: (kv[1].task != "features", kv[0])):
        c = info.config
        rows.append(
            (
                name,
                info.task,
                f"{_param_count(c) / 1e6:.1f}M",
                c.out_dim,
                c.head_dim,
                info.hub_repo,
                "yes" if info.published else "not yet",
                "yes" if _cached_path(info) else "no",
            )
        )
    return rows


def describe(model: str) -> str:
    from pathlib import Path

    from .registry import MODELS

    if model in MODELS:
        info = MODELS[model]
        cached = _cached_path(info)
        lines = [
            f"{info.name}: {info.description}",
            f"  task:      {info.task}",
            f"  hub repo:  {info.hub_repo} @ {info.revision}"
            + ("" if info.published else " (no weights published yet)"),
            f"  licence:   {info.license}",
            f"  paper:     {info.paper}",
            f"  params:    {_param_count(info.config) / 1e6:.2f}M (backbone)",
            f"  cached:    {cached or 'no (not downloaded; see docs/training.md for making weights locally)'}",
            "  config:    " + json.dumps(info.config.to_dict(), indent=2).replace("\n", "\n  "),
        ]
        return "\n".join(lines)
    if Path(model).is_dir():
        from .config import read_config

        config = read_config(Path(model) / "config.json")
        return (
            f"{model} (local folder)\n  params: {_param_count(config) / 1e6:.2f}M (backbone)\n  config: "
            + json.dumps(config.to_dict(), indent=2)
        )
    from .registry import get_model_info

    get_model_info(model)  # raises with suggestions
    return ""

"""What every backbone checks and scales the same way: its depth name and channel multiplier."""

from __future__ import annotations

__all__ = ["scaled", "check_architecture"]


def scaled(channels: int, width: float) -> int:
    """A layer's channels at the channel multiplier ``width`` (torchsparse's ``cr``), at least 1."""
    return max(1, round(channels * width))


def check_architecture(family: str, depth: str, depths: dict, width: float) -> tuple[int, ...]:
    """The blocks per stage of ``depth``; an unknown depth or a width outside (0, 4] is a ValueError."""
    if depth not in depths:
        raise ValueError(f"unknown {family} depth {depth!r}; choose one of {sorted(depths)}")
    if not 0 < width <= 4:
        raise ValueError(f"{family} width must be in (0, 4], got {width}")
    return depths[depth]

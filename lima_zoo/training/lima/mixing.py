"""Cross-sequence mixing: two streams' current scans become one scene; every point keeps its own target.

LaserMix (default): split the inclination (pitch) range into bands and take alternate bands from
each scan — both scans are in their own LiDAR frame with the sensor at the origin, so bands line
up. PolarMix-style: swap an azimuth sector of scan A for the same sector of scan B.
"""

from __future__ import annotations

import math

import torch

__all__ = ["lasermix", "polarmix", "mix"]


def lasermix(
    a: torch.Tensor,
    b: torch.Tensor,
    gen: torch.Generator,
    bands: tuple[int, ...] = (2, 3, 4, 5, 6),
    pitch_range: tuple[float, float] = (-25.0, 3.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points a (Na, >=3), b (Nb, >=3) -> keep_a (Na,) bool, keep_b (Nb,) bool: even bands from a, odd from b."""
    n = bands[int(torch.randint(len(bands), (1,), generator=gen))]
    lo, hi = (math.radians(v) for v in pitch_range)

    def band(p: torch.Tensor) -> torch.Tensor:
        pitch = torch.atan2(p[:, 2], torch.hypot(p[:, 0], p[:, 1]))
        return ((pitch - lo) / (hi - lo) * n).floor().clamp(0, n - 1).long()

    return band(a) % 2 == 0, band(b) % 2 == 1


def polarmix(
    a: torch.Tensor, b: torch.Tensor, gen: torch.Generator, sector: float = math.pi / 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap a random azimuth sector of width ``sector`` (radians) from b into a."""
    start = float(torch.rand((), generator=gen)) * 2 * math.pi - math.pi

    def inside(p: torch.Tensor) -> torch.Tensor:
        return torch.remainder(torch.atan2(p[:, 1], p[:, 0]) - start, 2 * math.pi) < sector

    return ~inside(a), inside(b)


def mix(kind: str, a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "lasermix":
        return lasermix(a, b, gen)
    if kind == "polarmix":
        return polarmix(a, b, gen)
    raise ValueError(f"unknown mixing {kind!r}; choose lasermix, polarmix or none")

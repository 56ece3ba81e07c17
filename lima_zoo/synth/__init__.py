"""The procedural driving world and writers of real dataset formats (numpy + Pillow, deterministic by seed).

``generate(out, format, scenes, frames, seed)`` writes one dataset; ``street_scan`` is a quick single
scan for tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["generate", "SYNTH_FORMATS"]

SYNTH_FORMATS = ("nuscenes", "semantickitti", "waymo", "folder")


def generate(
    out: str | Path,
    format: str = "nuscenes",
    scenes: int = 4,
    frames: int = 10,
    seed: int = 0,
    image_scale: float | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    **kwargs,
) -> Path:
    """Write a synthetic dataset in ``format`` under ``out``; returns the dataset root.

    Args:
        out: the dataset root to write.
        format: "nuscenes", "semantickitti", "waymo" or "folder" (a sequence folder).
        scenes: driving sequences (every 4th is validation).
        frames: keyframes (nuScenes, folder) or scans per sequence.
        seed: the world seed (deterministic output).
        image_scale: camera resolution relative to the real sensor's (default per format).
        workers: processes rendering scenes (default: one per CPU core).
        progress: called with the number of frames finished since the last call.
        **kwargs: format options (nuScenes: ``sweeps``).
    """
    if scenes < 1 or frames < 1:
        raise ValueError(f"scenes and frames must be >= 1 (got scenes={scenes}, frames={frames})")
    common = dict(scenes=scenes, frames=frames, seed=seed, workers=workers, progress=progress, **kwargs)
    if image_scale is not None:
        if not 0.05 <= image_scale <= 1.0:
            raise ValueError(f"image_scale must be in [0.05, 1] (got {image_scale})")
        common["image_scale"] = image_scale
    if format == "nuscenes":
        from .nuscenes_format import write_nuscenes

        return write_nuscenes(out, **common)
    if format == "semantickitti":
        from .kitti_format import write_semantickitti

        return write_semantickitti(out, **common)
    if format == "waymo":
        from .waymo_format import write_waymo

        return write_waymo(out, **common)
    if format == "folder":
        from .folder_format import write_sequence_folder

        return write_sequence_folder(out, **common)
    raise ValueError(f"unknown synthetic format {format!r}; choose from {', '.join(SYNTH_FORMATS)}")

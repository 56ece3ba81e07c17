"""Points -> per-point features: the part every runtime of an encoder shares, without torch.

:class:`FeatureExtractor.embed` checks the arguments and the points (columns, finiteness, range),
refuses a batch too big for free memory before it is voxelized and again after, and hands back
one row per input point in input order, as numpy for numpy input. A runtime says how its arrays
are made and run through the hooks ``prepare``, ``voxelize``, ``count_voxels``, ``feature_rows``,
``rows_to_points`` and ``split``: the PyTorch :class:`~lima_zoo.encoder.LiMAEncoder` with tensors,
the onnxruntime :class:`~lima_zoo.runtime.OnnxEncoder` with numpy; neither imports the other, and
this module imports torch only to ask a CUDA device for its free memory.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import EncoderConfig

__all__ = [
    "FeatureExtractor",
    "check_points",
    "model_columns",
    "ensure_fits",
    "ensure_points_fit",
    "available_memory",
    "INFERENCE_BYTES_PER_VOXEL",
    "VOXELIZE_BYTES_PER_POINT",
    "MAX_COORDINATE_M",
]

# Coordinates further out than this are not a LiDAR scan in a local frame (sensor ranges are < 1 km;
# georeferenced files are re-centred by the readers); float32 voxel keys would also lose the grid.
MAX_COORDINATE_M = 100_000.0
# Peak inference memory per voxel, measured with MinkUNet-34 (the largest backbone) on CPU in fp32
# (benchmarks/bench_large_scan.py; docs/performance.md).
INFERENCE_BYTES_PER_VOXEL = 3400
# Peak memory of voxelization per input point (float64 grid positions, cells, keys and their sort),
# measured at 190-222 bytes on 2M points (with and without the point columns kept).
VOXELIZE_BYTES_PER_POINT = 240


class FeatureExtractor:
    """Points -> per-point features, shared by the PyTorch encoder and the onnxruntime runner.

    A subclass provides ``config`` (EncoderConfig), ``device`` and the hooks below, and sets
    ``point_output`` when its rows are points rather than voxels (SPVCNN, FRNet).
    """

    config: EncoderConfig
    name_or_path: str = ""  # what it was loaded from (set by from_pretrained and the CLI)
    revision: str = ""  # the Hub commit it was loaded at ("" for a local folder)
    point_output: bool = False  # rows of feature_rows: one per voxel (False) or one per input point (True)
    spaces: tuple[str, ...] = ("backbone", "teacher")  # what ``embed(space=...)`` can return

    # ------------------------------------------------------------------ what a runtime provides
    def prepare(self, points: Any, intensity_range: float | None = None) -> Any:
        """(N, >=3) points -> the runtime's float32 array with the columns the model reads, checked
        (:func:`check_points`), intensity rescaled from ``intensity_range`` to the model's."""
        raise NotImplementedError

    def voxelize(self, scans: Sequence[Any]) -> Any:
        """Prepared scans -> one batch of the backbone's cells (voxels, or range-image pixels)."""
        raise NotImplementedError

    def count_voxels(self, scans: Sequence[Any], limit: int | None = None) -> int:
        """The voxels ``voxelize`` would make of ``scans``, counted in memory bounded by a chunk
        (stopping once past ``limit``)."""
        raise NotImplementedError

    def feature_rows(self, batch: Any, space: str) -> Any:
        """(R, D) float features of ``batch`` in ``space`` ("backbone" | "teacher"): R voxels, or
        R points where ``point_output``."""
        raise NotImplementedError

    def rows_to_points(self, rows: Any, batch: Any) -> Any:
        """(R, D) rows -> (N, D), one per input point in input order."""
        return rows if self.point_output else rows[batch.inverse]

    def split(self, rows: Any, sizes: list[int]) -> list:
        """(N, D) rows of the whole batch -> float32 (N_i, D) arrays of consecutive ``sizes``."""
        raise NotImplementedError

    def output(self, array: Any, as_numpy: bool) -> Any:
        """What ``embed`` hands back: ``array`` as numpy when the input was numpy (default: as is)."""
        return array

    # -------------------------------------------------------------------------- the shared part
    def embed(
        self,
        points: Any,
        space: str = "backbone",
        return_voxels: bool = False,
        intensity_range: float | None = None,
        check_memory: bool = True,
    ):
        """Per-point features.

        Args:
            points: one (N, >=3) array (x, y, z[, intensity]) or a list of them (run as one batch).
            space: "backbone" -> (N, 96) features; "teacher" -> (N, head_dim) L2-normalised head
                output in the teacher's feature space.
            return_voxels: also return the batch's voxels (voxel backbones only).
            intensity_range: the scans' intensity range (1.0 KITTI, 255.0 nuScenes) when it differs
                from ``config.preprocess.intensity_scale``.
            check_memory: refuse (ValueError) a batch whose voxelization or forward would not fit in
                the device's free memory (a merged map of millions of points), instead of letting
                the machine swap or die.

        Returns:
            float32 (N, D), rows in input order — numpy for numpy input, else the runtime's array
            (a tensor on the encoder's device) — or a list of them for a list input. With
            ``return_voxels`` also the voxel coords (M, 4) int32 [batch, i, j, k] and voxel
            features (M, D) of the batch.
        """
        if space not in self.spaces:
            raise ValueError(f"space must be one of {', '.join(map(repr, self.spaces))}, got {space!r}")
        if space == "teacher" and self.config.head_dim == 0:
            raise ValueError("this encoder has no distillation head (head_dim 0), so it has no teacher-space features")
        many = isinstance(points, (list, tuple))
        scans = list(points) if many else [points]
        if not scans:
            raise ValueError("no scans given")
        if return_voxels and self.point_output:
            raise ValueError(f"return_voxels: a {self.config.backbone} outputs one feature per point, not per voxel")
        as_numpy = type(scans[0]).__module__ == "numpy"
        prepared = [self.prepare(s, intensity_range) for s in scans]
        sizes = [len(s) for s in prepared]
        if check_memory and self.config.preprocess.range_image is None:  # a range image's pixels are bounded
            ensure_points_fit(sum(sizes), self.device, lambda limit: self.count_voxels(prepared, limit))
        batch = self.voxelize(prepared)
        if check_memory:
            ensure_fits(len(batch.feats), self.device, sum(sizes))
        rows = self.feature_rows(batch, space)
        outs = [self.output(t, as_numpy) for t in self.split(self.rows_to_points(rows, batch), sizes)]
        result = outs if many else outs[0]
        if return_voxels:
            return result, self.output(batch.coords, as_numpy), self.output(self.split(rows, [len(rows)])[0], as_numpy)
        return result


def model_columns(pts: Any, config: EncoderConfig, intensity_range: float | None, xp: types.ModuleType) -> Any:
    """(N, >=3) float32 points (numpy or torch, ``xp`` their namespace) -> the columns the model
    reads, checked (:func:`check_points`), intensity rescaled from ``intensity_range`` (e.g. 1.0
    for KITTI) to the model's ``intensity_scale``: the one ``prepare`` both runtimes run."""
    if pts.ndim == 2 and pts.shape[1] >= 3:
        pts = pts[:, : min(config.in_channels, pts.shape[1])]
    check_points(pts, xp)
    scale = config.preprocess.intensity_scale
    if pts.shape[1] >= 4 and intensity_range is not None and intensity_range != scale:
        pts = xp.concatenate([pts[:, :3], pts[:, 3:4] * (scale / intensity_range), pts[:, 4:]], 1)
    return pts


def check_points(pts: Any, xp: types.ModuleType) -> None:
    """Refuse (ValueError) (N, C) points that are no scan: non-finite coordinates or intensity, or
    coordinates beyond ``MAX_COORDINATE_M``. ``xp``: numpy or torch, the namespace of ``pts``."""
    if pts.ndim != 2 or pts.shape[1] < 3 or len(pts) == 0:
        raise ValueError(f"points must be a non-empty (N, >=3) array, got shape {tuple(pts.shape)}")
    bad_xyz = int((~xp.isfinite(pts[:, :3]).all(1)).sum())
    if bad_xyz:
        raise ValueError(f"{bad_xyz:,} of {len(pts):,} points have NaN or Inf coordinates")
    if pts.shape[1] >= 4 and not bool(xp.isfinite(pts[:, 3]).all()):
        raise ValueError(f"{int((~xp.isfinite(pts[:, 3])).sum()):,} points have a NaN or Inf intensity")
    far = int(sum(((pts[:, k] > MAX_COORDINATE_M) | (pts[:, k] < -MAX_COORDINATE_M)).sum() for k in range(3)))
    if far:
        raise ValueError(
            f"{far:,} of {len(pts):,} points lie beyond {MAX_COORDINATE_M:g} m of the origin: give points in "
            "the sensor's (or a local) frame, re-centred as the LAS reader does for georeferenced files"
        )


def available_memory(device: Any) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or Linux's MemAvailable; None where unknown."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ensure_points_fit(points: int, device: Any, count_voxels: Callable[[int], int], free: int | None = None) -> None:
    """Raise ValueError, before anything of the size of the scans is allocated, when voxelizing
    ``points`` points or the forward over their voxels would not fit in 90% of the free memory.
    Small batches pass at once (even one voxel per point would fit); for a large one the voxels
    are counted (``count_voxels(limit)``, in bounded memory, stopping past what would fit) first."""
    free = available_memory(device) if free is None else free
    if free is None:
        return
    prep = points * VOXELIZE_BYTES_PER_POINT
    if prep > 0.9 * free:
        raise ValueError(
            f"{points:,} points would need ~{prep / 2**30:.1f} GiB on {device} to voxelize, but only "
            f"{free / 2**30:.1f} GiB is free: crop the map into tiles (or embed fewer scans per batch), "
            "or pass check_memory=False to try anyway"
        )
    if points * INFERENCE_BYTES_PER_VOXEL <= 0.9 * free:
        return
    limit = int(0.9 * free / INFERENCE_BYTES_PER_VOXEL)
    ensure_fits(count_voxels(limit), device, points, free, at_least=True)


def ensure_fits(voxels: int, device: Any, points: int = 0, free: int | None = None, at_least: bool = False) -> None:
    """Raise ValueError when a forward over ``voxels`` voxels would need more than 90% of the free
    memory (``at_least``: the count stopped early, the scan has at least that many)."""
    free = available_memory(device) if free is None else free
    need = voxels * INFERENCE_BYTES_PER_VOXEL
    if free is not None and need > 0.9 * free:
        raise ValueError(
            f"{points:,} points -> {'at least ' if at_least else ''}{voxels:,} voxels would need "
            f"{'more than ' if at_least else '~'}{need / 2**30:.1f} GiB on {device}, but only "
            f"{free / 2**30:.1f} GiB is free: crop the map into tiles (or embed fewer scans per batch), or pass "
            "check_memory=False to try anyway"
        )

"""Points -> per-point features: the part every runtime of an encoder shares.

:class:`FeatureExtractor` turns raw scans into the model's input (columns, intensity convention,
finiteness), voxelizes them, refuses a batch too big for free memory, and maps voxel features back
to points in input order. A runtime only says how its input becomes feature rows: the PyTorch
:class:`~lima_zoo.encoder.LiMAEncoder` and the onnxruntime
:class:`~lima_zoo.runtime.OnnxEncoder` both build on it, and neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import EncoderConfig
from .range_view import range_project
from .voxelize import Voxels, count_voxels, voxelize

__all__ = ["FeatureExtractor", "ensure_fits", "ensure_points_fit", "available_memory", "INFERENCE_BYTES_PER_VOXEL"]

ArrayLike = np.ndarray | torch.Tensor


class FeatureExtractor:
    """Points -> per-point features, shared by the PyTorch encoder and the onnxruntime runner.

    A subclass provides ``config`` (EncoderConfig), ``device`` and ``feature_rows(batch, space)``,
    and sets ``point_output`` when its rows are points rather than voxels (SPVCNN, FRNet).
    """

    config: EncoderConfig
    name_or_path: str = ""  # what it was loaded from (set by from_pretrained and the CLI)
    revision: str = ""  # the Hub commit it was loaded at ("" for a local folder)
    point_output: bool = False  # rows of feature_rows: one per voxel (False) or one per input point (True)

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def feature_rows(self, batch: Voxels, space: str) -> torch.Tensor:
        """(R, D) float features of ``batch`` in ``space`` ("backbone" | "teacher"): R voxels, or
        R points where ``point_output``."""
        raise NotImplementedError

    def rows_to_points(self, rows: torch.Tensor, batch: Voxels) -> torch.Tensor:
        """(R, D) rows -> (N, D), one per input point in input order."""
        return rows if self.point_output else rows[batch.inverse]

    def prepare(self, points: ArrayLike, intensity_range: float | None = None) -> torch.Tensor:
        """(N, >=3) points -> float32 tensor on the encoder's device with the columns the model
        reads, intensity rescaled from ``intensity_range`` (e.g. 1.0 for KITTI) to the model's."""
        pts = torch.as_tensor(points).to(self.device, torch.float32)
        if pts.dim() != 2 or pts.shape[1] < 3 or len(pts) == 0:
            raise ValueError(f"points must be a non-empty (N, >=3) array, got shape {tuple(pts.shape)}")
        use = min(self.config.in_channels, pts.shape[1])
        pts = pts[:, :use]
        bad_xyz = int((~torch.isfinite(pts[:, :3]).all(1)).sum())
        if bad_xyz:
            raise ValueError(f"{bad_xyz:,} of {len(pts):,} points have NaN or Inf coordinates")
        if use >= 4 and not bool(torch.isfinite(pts[:, 3]).all()):
            raise ValueError(f"{int((~torch.isfinite(pts[:, 3])).sum()):,} points have a NaN or Inf intensity")
        far = int((pts[:, :3].abs() > MAX_COORDINATE_M).any(1).sum())
        if far:
            raise ValueError(
                f"{far:,} of {len(pts):,} points lie beyond {MAX_COORDINATE_M:g} m of the origin: give points in "
                "the sensor's (or a local) frame, re-centred as the LAS reader does for georeferenced files"
            )
        if use >= 4 and intensity_range is not None and intensity_range != self.config.preprocess.intensity_scale:
            pts = pts.clone()
            pts[:, 3] *= self.config.preprocess.intensity_scale / intensity_range
        return pts

    def voxelize(self, scans: Sequence[torch.Tensor]) -> Voxels:
        """Prepared scans -> one batch of the backbone's cells: range-image pixels where the config
        has a range image (FRNet), else voxels (with every point kept where the backbone reads points)."""
        if self.config.preprocess.range_image is not None:
            return range_project(list(scans), self.config.preprocess)
        return voxelize(list(scans), self.config.preprocess, keep_points=self.point_output)

    def backbone_input(self, scans: Sequence[ArrayLike], intensity_range: float | None = None) -> Voxels:
        """Raw (N_i, >=3) scans -> the backbone's input batch on the encoder's device (``prepare`` each,
        then voxelize)."""
        return self.voxelize([self.prepare(s, intensity_range) for s in scans])

    @torch.inference_mode()
    def embed(
        self,
        points: ArrayLike | Sequence[ArrayLike],
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
            check_memory: refuse (ValueError) a batch whose forward would not fit in the device's
                free memory (a merged map of millions of points), instead of letting the machine
                swap or die.

        Returns:
            float32 (N, D), rows in input order — numpy for numpy input, else a tensor on the
            encoder's device — or a list of them for a list input. With ``return_voxels`` also the
            voxel coords (M, 4) int32 [batch, i, j, k] and voxel features (M, D) of the batch.
        """
        if space not in ("backbone", "teacher"):
            raise ValueError(f"space must be 'backbone' or 'teacher', got {space!r}")
        if space == "teacher" and self.config.head_dim == 0:
            raise ValueError("this encoder has no distillation head (head_dim 0), so it has no teacher-space features")
        many = isinstance(points, (list, tuple))
        scans = list(points) if many else [points]
        if not scans:
            raise ValueError("no scans given")
        if return_voxels and self.point_output:
            raise ValueError(f"return_voxels: a {self.config.backbone} outputs one feature per point, not per voxel")
        as_numpy = isinstance(scans[0], np.ndarray)
        prepared = [self.prepare(s, intensity_range) for s in scans]
        if check_memory:  # before voxelizing: a merged map's voxelization alone can take gigabytes
            ensure_points_fit(prepared, self.config, self.device)
        vox = self.voxelize(prepared)
        if check_memory:
            ensure_fits(len(vox.feats), vox.feats.device, sum(len(s) for s in scans))
        feats = self.feature_rows(vox, space)
        per_point = self.rows_to_points(feats, vox).float()
        convert = (lambda t: t.cpu().numpy()) if as_numpy else (lambda t: t)
        outs = [convert(t) for t in torch.split(per_point, [len(s) for s in scans])]
        result = outs if many else outs[0]
        if return_voxels:
            return result, convert(vox.coords), convert(feats.float())
        return result


# Coordinates further out than this are not a LiDAR scan in a local frame (sensor ranges are < 1 km;
# georeferenced files are re-centred by the readers); float32 voxel keys would also lose the grid.
MAX_COORDINATE_M = 100_000.0

# Peak inference memory per voxel, measured with MinkUNet-34 (the largest backbone) on CPU in fp32
# (benchmarks/bench_large_scan.py; docs/performance.md).
INFERENCE_BYTES_PER_VOXEL = 3400
# Peak memory of voxelization per input point (float64 grid positions, cells, keys and their sort),
# measured at 190-222 bytes on 2M points (with and without the point columns kept).
VOXELIZE_BYTES_PER_POINT = 240


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or Linux's MemAvailable; None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ensure_points_fit(
    scans: Sequence[torch.Tensor], config: EncoderConfig, device: torch.device, free: int | None = None
) -> None:
    """Raise ValueError, before anything of the size of the scans is allocated, when voxelizing them
    or the forward over their voxels would not fit in 90% of the free memory. Small batches pass at
    once (even one voxel per point would fit); a large one has its voxels counted in bounded memory."""
    free = available_memory(device) if free is None else free
    points = sum(len(s) for s in scans)
    if free is None or config.preprocess.range_image is not None:  # a range image's pixels are bounded
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
    ensure_fits(count_voxels(list(scans), config.preprocess), device, points, free)


def ensure_fits(voxels: int, device: torch.device, points: int = 0, free: int | None = None) -> None:
    """Raise ValueError when a forward over ``voxels`` voxels would need more than 90% of the free memory."""
    free = available_memory(device) if free is None else free
    need = voxels * INFERENCE_BYTES_PER_VOXEL
    if free is not None and need > 0.9 * free:
        raise ValueError(
            f"{points:,} points -> {voxels:,} voxels would need ~{need / 2**30:.1f} GiB on {device}, but only "
            f"{free / 2**30:.1f} GiB "
            "is free: crop the map into tiles (or embed fewer scans per batch), or pass check_memory=False to try "
            "anyway"
        )

"""LiMAEncoder: a backbone (MinkUNet, SPVCNN, FRNet) + distillation head + the preprocessing contract that feeds them.

    encoder = LiMAEncoder.from_pretrained("vit-b-minkunet34")   # or "org/repo@rev" or a folder
    feats = encoder.embed(points)                               # (N, 96), one row per input point

A saved encoder is a folder with ``config.json`` (the frozen :class:`EncoderConfig`) and
``model.safetensors`` (backbone + head). Loading is strict: missing, unexpected or mis-shaped
tensors are an error that lists them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .config import EncoderConfig, read_config
from .device import resolve_device
from .features import FeatureExtractor, model_columns
from .models import DistillationHead, build_backbone
from .range_view import range_project
from .runtime.cells import count_voxels
from .sparse import SparseTensor, set_backend
from .sparse.backends import auto_backend, gpu_candidates
from .voxelize import Voxels, voxelize
from .weights import load_safetensors, load_state_strict

__all__ = ["LiMAEncoder"]

log = logging.getLogger(__name__)


class LiMAEncoder(nn.Module, FeatureExtractor):
    """LiDAR encoder.  backbone_rows: Voxels -> (R, config.out_dim), R voxels (MinkUNet) or R points (SPVCNN, FRNet)."""

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        self.backbone = build_backbone(
            c.backbone, c.in_channels, c.width, c.bn_momentum, range_image=c.preprocess.range_image
        )
        self.point_output = bool(self.backbone.point_output)
        self.head = DistillationHead(c.out_dim, c.head_dim)
        self.backend = "torch"
        self.backend_reason = "asked for"
        self._time_backends = False  # "auto" on a GPU: time the candidates on the first batch

    def backbone_rows(self, batch: Voxels) -> torch.Tensor:
        """Backbone features of ``batch`` in the current train/eval mode, with autograd:
        (M voxels, D) for a voxel backbone, (N points, D) where ``point_output`` (rows_to_points maps either)."""
        if self._time_backends and batch.feats.is_cuda:
            self._choose_backend(batch)
        if self.point_output:
            return self.backbone.point_features(batch)
        return self.backbone(SparseTensor(batch.feats, batch.coords)).feats

    # ------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        backend: str = "torch",
        token: str | bool | None = None,
        force_download: bool = False,
    ) -> "LiMAEncoder":
        """Load a registered name, a Hub repo ("org/repo" or "org/repo@revision") or a local folder.

        Args:
            name_or_path: the folder, ``org/repo[@revision]`` or a registered name.
            revision: the Hub revision (overrides ``@rev`` and the registry's).
            cache_dir: the Hugging Face cache to use (default: HF_HOME's).
            local_files_only: never touch the network.
            device: where the weights go ("auto", "cpu", "cuda[:N]"); None keeps the CPU.
            backend: the sparse-convolution library ("torch", "spconv", "torchsparse").
            token: for private repos (default: huggingface_hub's login / HF_TOKEN).
            force_download: fetch again even when cached (a branch such as ``main`` that moved).

        The Hugging Face cache is tried first. The folder's model.onnx under onnxruntime, with the
        same ``embed``:
        :meth:`lima_zoo.runtime.OnnxEncoder.from_pretrained` (same arguments); any source and
        runtime: :func:`lima_zoo.load_encoder`.
        """
        from .hub import model_files

        files, revision = model_files(
            name_or_path, revision, cache_dir, local_files_only, token=token, force_download=force_download
        )
        return cls.from_files(files, str(name_or_path), revision, device=device, backend=backend)

    @classmethod
    def from_files(
        cls,
        files: dict[str, Path],
        name_or_path: str = "",
        revision: str = "",
        device: str | torch.device | None = None,
        backend: str = "torch",
    ) -> "LiMAEncoder":
        """An encoder from its config.json and model.safetensors (strict load), in eval mode."""
        encoder = cls(read_config(files["config.json"]))
        load_state_strict(encoder, load_safetensors(files["model.safetensors"]), files["model.safetensors"])
        encoder.eval()
        encoder.name_or_path, encoder.revision = name_or_path, revision
        if device is not None:
            encoder.to(resolve_device(device))
        return encoder.set_backend(backend)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors (each atomically) into ``save_directory``."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "lima_zoo_format": str(self.config.format_version)})
        return self.save_config(out)

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write config.json (atomically) into ``save_directory``."""
        out = Path(save_directory)
        with atomic_path(out / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return out

    def set_backend(self, name: str) -> "LiMAEncoder":
        """Run the sparse convolutions with ``name``: "torch", "spconv", "spconv-triton",
        "torchsparse", or "auto" (the torch engine on a CPU; on a GPU the fastest installed backend,
        timed on the first batch). ``backend`` / ``backend_reason`` say what runs and why."""
        self._time_backends = False
        if name == "auto":
            chosen, why = auto_backend(self.device)
            if chosen is None:  # a GPU: decided on the first batch
                self._time_backends, chosen = True, "torch"
            set_backend(self.backbone, chosen)
            self.backend, self.backend_reason = ("auto" if self._time_backends else chosen), f"auto: {why}"
            return self
        set_backend(self.backbone, name)
        self.backend, self.backend_reason = name, "asked for"
        return self

    def _choose_backend(self, batch: Voxels) -> None:
        """Time one eval-mode forward of ``batch`` with every installed GPU backend (after a warm-up
        each) and keep the fastest; logged, and recorded in ``backend_reason``."""
        self._time_backends = False
        was_training, seconds = self.training, {}
        self.eval()
        try:
            for name in gpu_candidates():
                try:
                    set_backend(self.backbone, name)
                    with torch.inference_mode():
                        for attempt in range(2):
                            torch.cuda.synchronize(batch.feats.device)
                            start = time.perf_counter()
                            self.backbone_rows(batch)
                            torch.cuda.synchronize(batch.feats.device)
                            if attempt:
                                seconds[name] = time.perf_counter() - start
                except Exception as exc:  # noqa: BLE001 - a backend that fails here is not chosen
                    log.warning("sparse backend %s failed its timing run (%s): not chosen", name, exc)
        finally:
            self.train(was_training)
        chosen = min(seconds, key=seconds.get) if seconds else "torch"
        set_backend(self.backbone, chosen)
        timings = ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in sorted(seconds.items(), key=lambda kv: kv[1]))
        self.backend, self.backend_reason = chosen, f"auto: fastest forward on the first batch ({timings})"
        log.info("sparse backend: %s (%s)", chosen, self.backend_reason)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----------------------------------------------------------- FeatureExtractor's hooks (torch)

    def prepare(self, points, intensity_range: float | None = None) -> torch.Tensor:
        """(N, >=3) points -> float32 tensor on the encoder's device with the columns the model
        reads, checked, intensity rescaled from ``intensity_range`` (e.g. 1.0 for KITTI) to the model's."""
        pts = torch.as_tensor(points)
        if self.device.type == "cuda" and pts.device.type == "cpu":  # pinned: the copy to the GPU runs async
            pts = pts.to(torch.float32).pin_memory()
        return model_columns(pts.to(self.device, torch.float32, non_blocking=True), self.config, intensity_range, torch)

    def voxelize(self, scans) -> Voxels:
        """Prepared scans -> one batch of the backbone's cells: range-image pixels where the config
        has a range image (FRNet), else voxels (with every point kept where the backbone reads points)."""
        if self.config.preprocess.range_image is not None:
            return range_project(list(scans), self.config.preprocess)
        return voxelize(list(scans), self.config.preprocess, keep_points=self.point_output)

    def backbone_input(self, scans, intensity_range: float | None = None) -> Voxels:
        """Raw (N_i, >=3) scans -> the backbone's input batch on the encoder's device (``prepare``
        each, then voxelize)."""
        return self.voxelize([self.prepare(s, intensity_range) for s in scans])

    def count_voxels(self, scans, limit: int | None = None) -> int:
        return count_voxels([s.detach().cpu().numpy() for s in scans], self.config.preprocess, limit=limit)

    def feature_rows(self, batch: Voxels, space: str) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                feats = self.backbone_rows(batch)
                return self.head(feats) if space == "teacher" else feats
        finally:
            self.train(was_training)

    def split(self, rows: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        return [t.float() for t in torch.split(rows, sizes)]

    def output(self, array: torch.Tensor, as_numpy: bool):
        return array.cpu().numpy() if as_numpy else array

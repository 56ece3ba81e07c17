"""LiMAEncoder: a backbone (MinkUNet, SPVCNN, FRNet) + distillation head + the preprocessing contract that feeds them.

    encoder = LiMAEncoder.from_pretrained("vit-b-minkunet34")   # or "org/repo@rev" or a folder
    feats = encoder.embed(points)                               # (N, 96), one row per input point

A saved encoder is a folder with ``config.json`` (the frozen :class:`EncoderConfig`) and
``model.safetensors`` (backbone + head). Loading is strict: missing, unexpected or mis-shaped
tensors are an error that lists them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .atomic import atomic_path
from .config import EncoderConfig
from .features import FeatureExtractor, read_config
from .models import DistillationHead, build_backbone
from .sparse import SparseTensor, set_backend
from .voxelize import Voxels

__all__ = ["LiMAEncoder", "FeatureExtractor", "create_encoder", "load_state_strict"]


class LiMAEncoder(nn.Module, FeatureExtractor):
    """LiDAR encoder.  backbone_rows: Voxels -> (R, config.out_dim), R voxels (MinkUNet) or R points (SPVCNN, FRNet)."""

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        self.backbone = build_backbone(c.backbone, c.in_channels, c.width, c.bn_momentum, range_image=c.preprocess.range_image)
        self.point_output = bool(self.backbone.point_output)
        self.head = DistillationHead(c.out_dim, c.head_dim)
        self.backend = "torch"

    def backbone_rows(self, batch: Voxels) -> torch.Tensor:
        """Backbone features of ``batch`` in the current train/eval mode, with autograd:
        (M voxels, D) for a voxel backbone, (N points, D) where ``point_output`` (rows_to_points maps either)."""
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

        The Hugging Face cache is tried first; ``force_download=True`` fetches again (a branch such as
        ``main`` that moved). token: for private repos (default: huggingface_hub's login / HF_TOKEN).
        The folder's model.onnx under onnxruntime, with the same ``embed``:
        :meth:`lima_zoo.export.OnnxEncoder.from_pretrained` (same arguments).
        """
        from .hub import fetch_model_files, loaded_revision, resolve_source

        source = resolve_source(name_or_path, revision)
        files = fetch_model_files(source, cache_dir, local_files_only, token=token, force_download=force_download)
        config = read_config(files["config.json"])
        encoder = cls(config)
        load_state_strict(encoder, load_safetensors(files["model.safetensors"]), files["model.safetensors"])
        encoder.eval()
        encoder.name_or_path, encoder.revision = str(name_or_path), loaded_revision(files, source)
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
        """Run the sparse convolutions with ``name`` ("torch", "spconv", "torchsparse")."""
        set_backend(self.backbone, name)
        self.backend = name
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def feature_rows(self, batch: Voxels, space: str) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            feats = self.backbone_rows(batch)
            return self.head(feats) if space == "teacher" else feats
        finally:
            self.train(was_training)

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
                f"{path}: the checkpoint holds pickled Python objects besides tensors ({found.group(1) if found else why}), "
                "and lima-zoo never unpickles untrusted files. On a machine where you trust it, re-save the weights only: "
                "torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pth')"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {why})") from None


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike = "state dict") -> None:
    """load_state_dict that reports every missing, unexpected and mis-shaped tensor at once."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{source}: weights do not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise ValueError("\n".join(parts))
    module.load_state_dict(state, strict=True)


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r} is negative")
    return value


def resolve_device(device: str | torch.device, env: Mapping[str, str] | None = None, cuda_devices: int | None = None,
                   option: str = "device") -> torch.device:
    """The device to run on. "auto" -> cuda when a GPU is visible, else cpu. A CUDA device without an
    index is ``cuda:LOCAL_RANK``: under torchrun each process owns the GPU of its local rank (and an
    explicit ``cuda:N`` that is not it is an error: two processes on one GPU halve its memory).
    env / cuda_devices default to os.environ and the visible GPU count (tests pass fakes); option
    names the setting in error messages."""
    env = os.environ if env is None else env
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    text = str(device)
    if text == "auto":
        text = "cuda" if cuda_devices > 0 else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"{option}={device!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type != "cuda":
        return dev
    if cuda_devices == 0:
        raise ValueError(f"{option}={device!r} but no CUDA device is visible here")
    local_rank = env_int(env, "LOCAL_RANK", 0)
    if dev.index is None:
        dev = torch.device("cuda", local_rank)
    elif env_int(env, "WORLD_SIZE", 1) > 1 and dev.index != local_rank:
        raise ValueError(f"{option}={device!r} under torchrun: the process with LOCAL_RANK={local_rank} owns cuda:{local_rank}; "
                         "ask for cuda or auto")  # fmt: skip
    if dev.index >= cuda_devices:
        raise ValueError(f"LOCAL_RANK={local_rank} needs cuda:{dev.index}, but only {cuda_devices} GPU(s) are visible "
                         "(more processes per node than GPUs? check --nproc_per_node and CUDA_VISIBLE_DEVICES)"
                         if dev.index == local_rank else f"{option}={device!r}: only {cuda_devices} GPU(s) are visible")  # fmt: skip
    return dev


def create_encoder(name: str, pretrained: bool = False, backend: str = "torch", **kwargs) -> LiMAEncoder:
    """Build the registered variant ``name`` (see ``list_models()``): fresh weights, or with
    ``pretrained=True`` its published weights via :meth:`LiMAEncoder.from_pretrained`."""
    from .registry import get_model_info

    info = get_model_info(name)
    if pretrained:
        return LiMAEncoder.from_pretrained(name, backend=backend, **kwargs)
    return LiMAEncoder(info.config).set_backend(backend)

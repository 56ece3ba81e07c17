"""One way in: ``load_encoder(source, runtime=...)`` for every caller (Python API, CLI, training,
evaluation, viz, export, serving).

A source is one of:

* a model folder (config.json + model.safetensors, or + model.onnx for the onnx runtime);
* a Hub repo ``org/repo[@revision]`` or a registered name (``lima-zoo models``), through the
  Hugging Face cache (:mod:`lima_zoo.hub`);
* a lima-zoo training checkpoint file (``<run>/checkpoints/last.pt``, read with ``weights_only``);
* ``random:<backbone>``: freshly initialised weights (seeded), the baseline of an evaluation.

``LiMAEncoder.from_pretrained`` and ``OnnxEncoder.from_pretrained`` are the two runtimes' own
constructors from a folder or repo; this module chooses between them and adds the sources that
are not model folders.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoder import LiMAEncoder
    from .features import FeatureExtractor
    from .segmentation import SegmentationOutputs

__all__ = ["load_encoder", "load_segmenter", "load_checkpoint_encoder", "create_encoder", "RUNTIMES", "RANDOM_PREFIX"]

RUNTIMES = ("torch", "onnx")
RANDOM_PREFIX = "random:"


def load_encoder(
    source: str | os.PathLike,
    runtime: str = "torch",
    device: Any = None,
    backend: str = "auto",
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    seed: int = 0,
) -> "FeatureExtractor":
    """An encoder ready to ``embed``: a :class:`~lima_zoo.encoder.LiMAEncoder` (runtime "torch") or
    a :class:`~lima_zoo.runtime.OnnxEncoder` (runtime "onnx").

    Args:
        source: a folder, ``org/repo[@rev]``, a registered name, a training checkpoint file, or
            ``random:<backbone>`` (torch only; ``seed`` seeds the initialisation).
        runtime: "torch" or "onnx" (the folder's model.onnx under onnxruntime).
        device: "auto", "cpu", "cuda[:N]" or a torch.device; None keeps the CPU.
        backend: the sparse-convolution library of the torch runtime ("auto": the torch engine on a
            CPU, the fastest installed one on a GPU; "torch", "spconv", "spconv-triton", ...).
        revision: the Hub revision (overrides ``@rev``).
        cache_dir: the Hugging Face cache to use.
        local_files_only: never touch the network.
        token: a Hub token for private repos.
        force_download: fetch again even when cached.
        seed: the initialisation seed of a ``random:`` source.
    """
    hub = _hub_options(runtime, backend, revision, cache_dir, local_files_only, token, force_download)
    text = str(source)
    if runtime == "onnx":
        if text.startswith(RANDOM_PREFIX) or Path(text).is_file():
            raise ValueError(
                f"{text}: the onnx runtime loads an exported folder (lima-zoo export --format onnx), not {text!r}"
            )
        from .runtime import OnnxEncoder

        return OnnxEncoder.from_pretrained(text, device=device, **hub)
    if importlib.util.find_spec("torch") is None:
        raise ImportError(
            "the torch runtime needs PyTorch: pip install 'lima-zoo[torch]'; an exported model runs without it "
            "(runtime='onnx', lima-zoo embed --runtime onnx)"
        )
    from .encoder import LiMAEncoder

    if text.startswith(RANDOM_PREFIX):
        encoder = _random_encoder(text[len(RANDOM_PREFIX) :], seed)
    elif text and Path(text).is_file():
        encoder = load_checkpoint_encoder(text)
    else:
        return LiMAEncoder.from_pretrained(text, device=device, backend=backend, **hub)
    encoder.name_or_path = text
    if device is not None:
        from .device import resolve_device

        encoder.to(resolve_device(device))
    return encoder.set_backend(backend)


def load_segmenter(
    source: str | os.PathLike,
    runtime: str = "torch",
    device: Any = None,
    backend: str = "auto",
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> "SegmentationOutputs":
    """A segmentation model ready to ``predict``: a :class:`~lima_zoo.segmenter.LiMASegmenter`
    (runtime "torch") or a :class:`~lima_zoo.runtime.OnnxSegmenter` (runtime "onnx", the folder's
    model.onnx with its head). ``source``: a segmentation folder (``lima-zoo eval`` writes
    ``RUN/model``; ``lima-zoo export`` copies it), ``org/repo[@rev]`` or a registered name; the
    other arguments are :func:`load_encoder`'s."""
    hub = _hub_options(runtime, backend, revision, cache_dir, local_files_only, token, force_download)
    text = str(source)
    if Path(text).is_file() or text.startswith(RANDOM_PREFIX):
        raise ValueError(f"{text}: a segmentation model is a folder (lima-zoo eval --out RUN writes RUN/model)")
    if runtime == "onnx":
        from .runtime import OnnxSegmenter

        return OnnxSegmenter.from_pretrained(text, device=device, **hub)
    from .segmenter import LiMASegmenter

    return LiMASegmenter.from_pretrained(text, device=device, backend=backend, **hub)


def _hub_options(runtime, backend, revision, cache_dir, local_files_only, token, force_download) -> dict:
    """The loaders' shared checks (runtime, backend) and the Hub keyword arguments they pass on."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: choose from {', '.join(RUNTIMES)}")
    if runtime == "onnx" and backend not in ("torch", "auto"):
        raise ValueError("backend applies to the torch runtime only (onnxruntime runs the whole graph)")
    return {
        "revision": revision,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
        "token": token,
        "force_download": force_download,
    }


def _random_encoder(backbone: str, seed: int) -> "LiMAEncoder":
    import torch

    from .config import EncoderConfig
    from .encoder import LiMAEncoder

    try:
        config = EncoderConfig(backbone=backbone)  # the config's own check names the backbones
    except ValueError as exc:
        raise ValueError(f"{RANDOM_PREFIX}{backbone}: {exc}") from None
    torch.manual_seed(seed)
    return LiMAEncoder(config)


def load_checkpoint_encoder(path: str | os.PathLike) -> "LiMAEncoder":
    """The encoder of a lima-zoo training checkpoint (its ``encoder`` state and ``config.encoder``),
    read with ``weights_only`` and loaded strictly, in eval mode."""
    from .config import EncoderConfig, config_from_dict
    from .encoder import LiMAEncoder
    from .weights import load_state_strict, load_weights_only

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or encoder folder")
    state = load_weights_only(path)
    if not (
        isinstance(state, dict)
        and "encoder" in state
        and isinstance(state.get("config"), dict)
        and "encoder" in state["config"]
    ):
        raise ValueError(
            f"{path}: not a lima-zoo training checkpoint (expected 'encoder' weights and 'config.encoder'); "
            "pass an encoder folder or <run>/checkpoints/last.pt"
        )
    encoder = LiMAEncoder(config_from_dict(EncoderConfig, state["config"]["encoder"], where=f"{path}: config.encoder"))
    load_state_strict(encoder, state["encoder"], path)
    return encoder.eval()


def create_encoder(name: str, pretrained: bool = False, backend: str = "torch", **kwargs) -> "LiMAEncoder":
    """Build the registered variant ``name`` (see ``list_models()``): fresh weights, or with
    ``pretrained=True`` its published weights through :func:`load_encoder` (``kwargs`` go there)."""
    from .encoder import LiMAEncoder
    from .registry import get_model_info

    info = get_model_info(name)
    if pretrained:
        return load_encoder(name, backend=backend, **kwargs)
    return LiMAEncoder(info.config).set_backend(backend)

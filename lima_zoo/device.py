"""Which device a process runs on: ``auto``, CPU, or the GPU of its torchrun local rank.

Environment integers (LOCAL_RANK, WORLD_SIZE, Slurm's array variables) are read through
:func:`env_int`, which names the variable when its value is not a non-negative integer. torch is
imported only to resolve a device, so the torch-free runtime can shard its inputs with env_int.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["env_int", "resolve_device"]


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


def resolve_device(
    device: str | torch.device,
    env: Mapping[str, str] | None = None,
    cuda_devices: int | None = None,
    option: str = "device",
) -> torch.device:
    """The device to run on. "auto" -> cuda when a GPU is visible, else cpu. A CUDA device without an
    index is ``cuda:LOCAL_RANK``: under torchrun each process owns the GPU of its local rank (and an
    explicit ``cuda:N`` that is not it is an error: two processes on one GPU halve its memory).

    Args:
        device: "auto", "cpu", "cuda", "cuda:N" or a torch.device.
        env: the environment (default os.environ; tests pass fakes).
        cuda_devices: the visible GPU count (default: torch's).
        option: the setting's name in error messages.
    """
    import torch

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
        raise ValueError(
            f"{option}={device!r} under torchrun: the process with LOCAL_RANK={local_rank} owns cuda:{local_rank}; "
            "ask for cuda or auto"
        )
    if dev.index >= cuda_devices:
        raise ValueError(
            f"LOCAL_RANK={local_rank} needs cuda:{dev.index}, but only {cuda_devices} GPU(s) are visible "
            "(more processes per node than GPUs? check --nproc_per_node and CUDA_VISIBLE_DEVICES)"
            if dev.index == local_rank
            else f"{option}={device!r}: only {cuda_devices} GPU(s) are visible"
        )
    return dev

"""Where each training process runs: rank, world size and device from the torchrun environment.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (the process's index on its node). Each rank must own
one GPU, ``cuda:LOCAL_RANK``, or all eight ranks of a node pile onto cuda:0. ``placement`` is a pure
function of the environment and the visible GPU count, so it is unit-tested without a GPU; ``join``
/ ``leave`` wrap the process group around a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

__all__ = ["Placement", "placement", "join", "leave"]


@dataclass(frozen=True)
class Placement:
    """rank / world: this process among all; local_rank: among this node's; device: the one it owns;
    backend: the process-group backend for that device (nccl on CUDA, gloo on CPU)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    def ddp_kwargs(self) -> dict:
        """DistributedDataParallel's device arguments: the rank's GPU, or none on CPU."""
        if self.device.type == "cuda":
            return {"device_ids": [self.device.index], "output_device": self.device.index}
        return {}


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
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


def placement(requested: str = "auto", env: Mapping[str, str] | None = None, cuda_devices: int | None = None) -> Placement:
    """The placement of this process. requested: run.device ("auto", "cpu", "cuda", "cuda:N").

    Under torchrun (WORLD_SIZE > 1) "auto" / "cuda" mean cuda:LOCAL_RANK; an explicit "cuda:N" must be
    that same GPU (two ranks on one GPU would silently halve its memory). Without CUDA, "auto" is CPU
    and a CUDA request is an error.
    """
    env = os.environ if env is None else env
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    world = max(1, _int_env(env, "WORLD_SIZE", 1))
    rank, local_rank = _int_env(env, "RANK", 0), _int_env(env, "LOCAL_RANK", 0)
    if rank >= world:
        raise ValueError(f"RANK={rank} but WORLD_SIZE={world}")
    text = str(requested)
    if text == "auto":
        text = "cuda" if cuda_devices > 0 else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"run.device={requested!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if cuda_devices == 0:
            raise ValueError(f"run.device={requested!r} but no CUDA device is visible here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif world > 1 and device.index != local_rank:
            raise ValueError(f"run.device={requested!r} under torchrun: rank {rank} (LOCAL_RANK={local_rank}) owns cuda:{local_rank}; "
                             "use run.device=cuda or auto")  # fmt: skip
        if device.index >= cuda_devices:
            raise ValueError(f"LOCAL_RANK={local_rank} needs cuda:{device.index}, but only {cuda_devices} GPU(s) are visible "
                             "(more processes per node than GPUs? check --nproc_per_node and CUDA_VISIBLE_DEVICES)")  # fmt: skip
    elif device.type != "cpu":
        raise ValueError(f"run.device={requested!r}: only cpu and cuda are supported")
    return Placement(rank, world, local_rank, device, "nccl" if device.type == "cuda" else "gloo")


def join(p: Placement) -> bool:
    """Pin this process to its GPU and, with several processes, join the process group. Returns
    whether this call created the group (so only it destroys it)."""
    if p.device.type == "cuda":
        torch.cuda.set_device(p.device)
    if p.world > 1 and not dist.is_initialized():
        dist.init_process_group(p.backend)
        return True
    return False


def leave(created: bool) -> None:
    """Destroy the process group this run created (a run inside someone else's group leaves it be)."""
    if created and dist.is_initialized():
        dist.destroy_process_group()

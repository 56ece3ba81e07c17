"""Where each training process runs: rank, world size and device from the torchrun environment.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (the process's index on its node). Each rank must own
one GPU, ``cuda:LOCAL_RANK``, or all eight ranks of a node pile onto cuda:0 (the rule is core's
``encoder.resolve_device``, which embedding shares). ``placement`` is a pure function of the
environment and the visible GPU count, so it is unit-tested without a GPU; ``join`` / ``leave``
wrap the process group around a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from ..device import env_int, resolve_device

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


def placement(
    requested: str = "auto", env: Mapping[str, str] | None = None, cuda_devices: int | None = None
) -> Placement:
    """The placement of this process. requested: run.device ("auto", "cpu", "cuda", "cuda:N").

    The device follows ``encoder.resolve_device`` (under torchrun "auto" / "cuda" mean
    cuda:LOCAL_RANK, and an explicit "cuda:N" must be that same GPU); training runs on cpu or cuda.
    """
    env = os.environ if env is None else env
    world = max(1, env_int(env, "WORLD_SIZE", 1))
    rank, local_rank = env_int(env, "RANK", 0), env_int(env, "LOCAL_RANK", 0)
    if rank >= world:
        raise ValueError(f"RANK={rank} but WORLD_SIZE={world}")
    device = resolve_device(requested, env, cuda_devices, option="run.device")
    if device.type not in ("cpu", "cuda"):
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

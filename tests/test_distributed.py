"""Rank placement under torchrun, tested by faking its environment and the visible GPU count."""

from __future__ import annotations

import pytest
import torch

from lima_zoo.training.distributed import placement


def test_single_process_defaults():
    p = placement("auto", env={}, cuda_devices=0)
    assert (p.rank, p.world, p.local_rank, p.device, p.backend) == (0, 1, 0, torch.device("cpu"), "gloo")
    assert p.ddp_kwargs() == {}
    assert placement("auto", env={}, cuda_devices=1).device == torch.device("cuda", 0)


@pytest.mark.parametrize("local_rank", [0, 3, 7])
def test_each_torchrun_rank_owns_its_gpu(local_rank):
    env = {"WORLD_SIZE": "16", "RANK": str(8 + local_rank), "LOCAL_RANK": str(local_rank)}  # node 1 of 2
    for requested in ("auto", "cuda"):
        p = placement(requested, env=env, cuda_devices=8)
        assert p.device == torch.device("cuda", local_rank) and p.backend == "nccl" and p.rank == 8 + local_rank
        assert p.ddp_kwargs() == {"device_ids": [local_rank], "output_device": local_rank}
    assert placement(f"cuda:{local_rank}", env=env, cuda_devices=8).device.index == local_rank


def test_cpu_ranks_use_gloo():
    p = placement("cpu", env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, cuda_devices=8)
    assert p.device == torch.device("cpu") and p.backend == "gloo" and p.ddp_kwargs() == {}
    assert placement("auto", env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, cuda_devices=0).backend == "gloo"


@pytest.mark.parametrize(
    "requested,env,gpus,message",
    [
        (
            "cuda",
            {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "5"},
            4,
            r"LOCAL_RANK=5 needs cuda:5, but only 4 GPU\(s\) are visible",
        ),
        ("cuda:0", {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, 2, r"LOCAL_RANK=1 owns cuda:1"),
        ("cuda", {}, 0, "no CUDA device is visible"),
        ("auto", {"WORLD_SIZE": "2", "RANK": "2"}, 0, "RANK=2 but WORLD_SIZE=2"),
        ("auto", {"LOCAL_RANK": "one"}, 0, "LOCAL_RANK='one' is not an integer"),
        ("tpu", {}, 0, "not a device"),
        ("mps", {}, 0, "only cpu and cuda"),
    ],
)
def test_impossible_placements_are_clear(requested, env, gpus, message):
    with pytest.raises(ValueError, match=message):
        placement(requested, env=env, cuda_devices=gpus)


def test_embedding_under_torchrun_takes_the_local_rank_gpu():
    """Core's resolve_device is the rule training's placement builds on: auto / cuda = cuda:LOCAL_RANK."""
    from lima_zoo.device import resolve_device

    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}
    assert resolve_device("auto", env, cuda_devices=4) == torch.device("cuda", 3)
    assert resolve_device("cuda", {}, cuda_devices=1) == torch.device("cuda", 0)
    assert resolve_device("auto", env, cuda_devices=0) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device='cuda:0' under torchrun"):
        resolve_device("cuda:0", env, cuda_devices=4, option="--device")

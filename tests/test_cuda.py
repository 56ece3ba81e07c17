"""The GPU path (marked ``cuda``: skipped with the reason on a machine without CUDA). Run them where
a GPU is: ``pytest -m cuda`` (benchmarks/bench_cuda.py runs them first)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from lima_zoo import LiMAEncoder
from lima_zoo.config import EncoderConfig
from lima_zoo.models import MinkUNet
from lima_zoo.sparse import SparseTensor, set_backend
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize

pytestmark = pytest.mark.cuda

SMALL = EncoderConfig(backbone="minkunet14", width=0.5, head_dim=16)


def _batch(device: str):
    from lima_zoo.config import PreprocessConfig

    return voxelize([torch.from_numpy(street_scan(seed=3)[:, :4]).to(device)], PreprocessConfig())


def test_engine_forward_and_backward_on_cuda_match_the_cpu():
    torch.manual_seed(0)
    cpu = MinkUNet("minkunet14", width=0.5).train()
    gpu = MinkUNet("minkunet14", width=0.5).train()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    outs = []
    for net, dev in ((cpu, "cpu"), (gpu, "cuda")):
        vox = _batch(dev)
        out = net(SparseTensor(vox.feats, vox.coords)).feats
        out.square().mean().backward()
        outs.append((out.detach().cpu(), {n: p.grad.cpu() for n, p in net.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-3, atol=1e-3)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-2, atol=1e-3, msg=name)


def test_kernel_maps_and_voxels_stay_on_the_gpu():
    vox = _batch("cuda")
    assert vox.coords.is_cuda and vox.inverse.is_cuda
    maps = SparseTensor(vox.feats, vox.coords).cache.build_unet_maps(5)
    assert all(m.in_idx.is_cuda and (d is None or d.in_idx.is_cuda) for m, d in maps)


@pytest.mark.skipif(importlib.util.find_spec("spconv_triton") is None, reason="spconv-triton is not installed")
def test_spconv_triton_matches_the_torch_engine():
    torch.manual_seed(0)
    net = MinkUNet("minkunet14", width=0.5).cuda().eval()
    vox = _batch("cuda")
    with torch.inference_mode():
        want = net(SparseTensor(vox.feats, vox.coords)).feats
        set_backend(net, "spconv-triton")
        got = net(SparseTensor(vox.feats, vox.coords)).feats
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_auto_picks_a_backend_on_the_first_batch():
    torch.manual_seed(0)
    enc = LiMAEncoder(SMALL).cuda().eval().set_backend("auto")
    assert enc.backend == "auto"
    feats = enc.embed(street_scan(seed=1)[:, :4])
    assert enc.backend in ("torch", "spconv", "spconv-triton", "torchsparse")
    assert enc.backend_reason.startswith("auto: fastest forward") and np.isfinite(feats).all()


def test_embed_checks_the_gpus_free_memory():
    from lima_zoo.features import available_memory

    free = available_memory(torch.device("cuda", 0))
    assert free == torch.cuda.mem_get_info(0)[0] or abs(free - torch.cuda.mem_get_info(0)[0]) < 2**28


def test_onnx_runtime_on_the_cuda_provider(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (pip install 'lima-zoo[onnx-gpu]')")
    from lima_zoo.export import export_onnx
    from lima_zoo.runtime import OnnxEncoder

    torch.manual_seed(0)
    enc = LiMAEncoder(SMALL).eval()
    runner = OnnxEncoder(export_onnx(enc, tmp_path), enc.config, device="cuda")
    scan = street_scan(seed=2)[:, :4]
    assert runner.providers[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(runner.embed(scan), enc.embed(scan), atol=1e-3)


def test_a_training_step_on_cuda_with_bf16_autocast(tmp_path):
    from lima_zoo.synth import generate
    from lima_zoo.training.config import load_recipe
    from lima_zoo.training.synthetic_teacher import make_synthetic_teacher
    from lima_zoo.training.trainer import train

    world = generate(tmp_path / "w", "nuscenes", scenes=3, frames=3, seed=5, image_scale=0.1, workers=1)
    make_synthetic_teacher(
        tmp_path / "t", seed=2000, scenes=1, frames=1, steps=2, batch=2, image_size=(56, 112), dim=32, depth=1
    )
    cfg = load_recipe(
        "synthetic-tiny",
        [
            f"data.path={world}",
            "data.synthetic=false",
            f"teacher.weights={tmp_path / 't'}",
            "teacher.image_size=[56, 112]",
            "encoder.head_dim=32",
            "optim.max_steps=2",
            "run.device=cuda",
            "run.amp=true",
        ],
    )
    losses = []
    train(cfg, tmp_path / "run", on_step=lambda rec: losses.append(rec["loss"]))
    assert len(losses) == 2 and all(np.isfinite(losses))

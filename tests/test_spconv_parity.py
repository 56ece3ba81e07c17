"""The same weights on the torch and a foreign backend (spconv; torchsparse where installed)
give the same features.

spconv 2.3.8's CPU compute races with more than one torch thread (traveller59/spconv#679), so the
parity runs at one thread; ours is checked separately at any thread count.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import num_threads, random_sparse

from lima_zoo.config import PreprocessConfig
from lima_zoo.models import MinkUNet
from lima_zoo.sparse import Conv3d, SparseTensor, set_backend
from lima_zoo.sparse.backends import spconv_cpu_unguarded
from lima_zoo.voxelize import voxelize

FOREIGN = [
    pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} not installed"))
    for name in ("spconv", "torchsparse")
]


def _run_both(module, make_input, foreign="spconv"):
    outs = []
    with num_threads(1), torch.inference_mode():
        for backend in ("torch", foreign):
            set_backend(module, backend)
            outs.append(module(make_input()).feats)
    set_backend(module, "torch")
    return outs


@pytest.mark.parametrize("foreign", FOREIGN)
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 2), (5, 1)])
def test_submanifold_conv(kernel_size, dilation, foreign):
    feats, coords = random_sparse(grid=10, density=0.3, dtype=torch.float32)
    conv = Conv3d(3, 8, kernel_size, dilation=dilation)
    a, b = _run_both(conv, lambda: SparseTensor(feats, coords), foreign)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("foreign", FOREIGN)
def test_down_and_up_conv(foreign):
    feats, coords = random_sparse(grid=10, density=0.3, dtype=torch.float32)
    net = torch.nn.Sequential(Conv3d(3, 8, 2, stride=2), Conv3d(8, 8, 3), Conv3d(8, 5, 2, stride=2, transposed=True))
    a, b = _run_both(net, lambda: SparseTensor(feats, coords), foreign)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("foreign", FOREIGN)
@pytest.mark.parametrize("voxel_type,size", [("cylindrical", (0.1, 1.0, 0.1)), ("cartesian", (0.1, 0.1, 0.1))])
def test_whole_minkunet34(street_points, voxel_type, size, foreign):
    vox = voxelize([torch.from_numpy(street_points)], PreprocessConfig(voxel_type=voxel_type, voxel_size=size))
    torch.manual_seed(0)
    net = MinkUNet("minkunet34").eval()
    for m in net.modules():  # non-trivial BN statistics so every layer matters
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    a, b = _run_both(net, lambda: SparseTensor(vox.feats, vox.coords), foreign)
    diff = (a - b).abs().max().item()
    print(
        f"\nMinkUNet-34 torch vs {foreign} ({voxel_type}, {len(vox.coords)} voxels): max |diff| = {diff:.3g}, max "
        f"|y| = {a.abs().max():.3g}"
    )
    assert diff < 1e-4


@pytest.mark.parametrize("foreign", FOREIGN)
def test_backward_through_every_backend(foreign):
    """Training runs on a foreign backend: input and weight gradients match the torch engine's."""
    feats, coords = random_sparse(grid=10, density=0.3, dtype=torch.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        Conv3d(3, 8, 3), Conv3d(8, 8, 2, stride=2), Conv3d(8, 8, 3), Conv3d(8, 5, 2, stride=2, transposed=True)
    )
    grads = []
    with num_threads(1):
        for backend in ("torch", foreign):
            set_backend(net, backend)
            net.zero_grad()
            x = feats.clone().requires_grad_(True)
            net(SparseTensor(x, coords)).feats.square().sum().backward()
            grads.append([x.grad, *(p.grad for p in net.parameters())])
    set_backend(net, "torch")
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("spconv") is None, reason="spconv not installed")
def test_spconv_on_cpu_is_right_at_two_threads_or_refuses(street_points):
    """spconv's CPU kernels race at >1 thread (spconv#679): its forward runs on one thread (same
    features as the torch engine, torch's thread count restored); a conv autograd would differentiate
    at 2 threads is refused instead of training on wrong gradients."""
    vox = voxelize([torch.from_numpy(street_points)], PreprocessConfig())
    torch.manual_seed(0)
    net = MinkUNet("minkunet14", width=0.5).eval()
    with num_threads(2), torch.inference_mode():
        want = net(SparseTensor(vox.feats, vox.coords)).feats
        set_backend(net, "spconv")
        got = net(SparseTensor(vox.feats, vox.coords)).feats
        assert torch.get_num_threads() == 2
    assert (want - got).abs().max().item() < 1e-4
    net.train()
    with (
        num_threads(2),
        pytest.raises(ValueError, match=r"CPU backward is wrong with more than one thread.*run.threads=1"),
    ):
        net(SparseTensor(vox.feats, vox.coords))
    with num_threads(2), spconv_cpu_unguarded():  # benchmarks time spconv as its users run it
        net(SparseTensor(vox.feats, vox.coords)).feats.sum().backward()
    set_backend(net, "torch")

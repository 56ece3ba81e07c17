"""Every conv kind of the torch engine against dense conv3d; gradients; errors; determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import num_threads, random_sparse

from lima_zoo.sparse import Conv3d, SparseTensor, kernel_offsets
from lima_zoo.sparse.functional import sparse_conv


def densify(feats: torch.Tensor, coords: torch.Tensor, grid: int, batches: int, scale: int = 1) -> torch.Tensor:
    """(N, C) on coords -> (B, C, G, G, G) dense volume; coords divided by ``scale`` first."""
    dense = feats.new_zeros(batches, feats.shape[1], grid, grid, grid)
    b, x, y, z = coords.long().T
    dense[b, :, x // scale, y // scale, z // scale] = feats
    return dense


def sample(dense: torch.Tensor, coords: torch.Tensor, scale: int = 1) -> torch.Tensor:
    b, x, y, z = coords.long().T
    return dense[b, :, x // scale, y // scale, z // scale]


def odd_kernel_to_dense(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """(K, Cin, Cout), x fastest -> (Cout, Cin, kx, ky, kz)."""
    return kernel.reshape(k, k, k, kernel.shape[1], kernel.shape[2]).permute(4, 3, 2, 1, 0)


def even_kernel_to_dense(kernel: torch.Tensor) -> torch.Tensor:
    """(8, Cin, Cout), z fastest -> (Cout, Cin, 2, 2, 2)."""
    return kernel.reshape(2, 2, 2, kernel.shape[1], kernel.shape[2]).permute(4, 3, 0, 1, 2)


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_submanifold_matches_dense(kernel_size, dilation):
    feats, coords = random_sparse(grid=9, density=0.3)
    conv = Conv3d(3, 5, kernel_size, dilation=dilation, bias=True).double()
    out = conv(SparseTensor(feats, coords))
    dense_w = odd_kernel_to_dense(conv.kernel.detach(), kernel_size)
    ref = F.conv3d(
        densify(feats, coords, 9, 2),
        dense_w,
        conv.bias.detach(),
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
    )
    assert torch.equal(out.coords, coords)
    torch.testing.assert_close(out.feats, sample(ref, coords), rtol=1e-12, atol=1e-12)


def test_downsample_matches_dense_strided_conv():
    feats, coords = random_sparse(grid=8, density=0.25)
    conv = Conv3d(3, 4, 2, stride=2).double()
    out = conv(SparseTensor(feats, coords))
    ref = F.conv3d(densify(feats, coords, 8, 2), even_kernel_to_dense(conv.kernel.detach()), stride=2)
    assert out.stride == 2
    expected_coords = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2 * 2], 1), dim=0)
    assert torch.equal(out.coords, expected_coords.to(torch.int32))
    torch.testing.assert_close(out.feats, sample(ref, out.coords, scale=2), rtol=1e-12, atol=1e-12)


def test_transposed_matches_dense_transposed_conv():
    feats, coords = random_sparse(grid=8, density=0.25)
    down = Conv3d(3, 4, 2, stride=2).double()
    up = Conv3d(4, 6, 2, stride=2, transposed=True).double()
    coarse = down(SparseTensor(feats, coords))
    fine = up(coarse)
    w = even_kernel_to_dense(up.kernel.detach()).transpose(0, 1)  # conv_transpose3d: (Cin, Cout, ...)
    ref = F.conv_transpose3d(densify(coarse.feats.detach(), coarse.coords, 4, 2, scale=2), w, stride=2)
    assert fine.stride == 1 and torch.equal(fine.coords, coords)
    torch.testing.assert_close(fine.feats, sample(ref, coords), rtol=1e-12, atol=1e-12)


def test_strided_coordinates_at_stride_two():
    """A tensor built at stride 2 (coords multiples of 2) convolves like its level-1 version."""
    feats, coords = random_sparse(grid=6, density=0.3)
    conv = Conv3d(3, 4, 3).double()
    at1 = conv(SparseTensor(feats, coords)).feats
    c2 = coords.clone()
    c2[:, 1:] *= 2
    at2 = conv(SparseTensor(feats, c2, stride=2)).feats
    torch.testing.assert_close(at1, at2, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["subm", "down", "up"])
def test_gradcheck(kind):
    feats, coords = random_sparse(grid=4, density=0.4, batches=1, channels=2, seed=3)
    x = SparseTensor(feats, coords)
    if kind == "subm":
        kmap = x.cache.submanifold_map(1, 3, 1)
    else:
        kmap = x.cache.downsample_map(1)
        if kind == "up":
            kmap = kmap.transposed()
    inp = torch.randn(kmap.n_in, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(kmap.volume, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sparse_conv(a, b, kmap), (inp, w))


def test_kernel_offset_order_is_torchsparse():
    off3 = kernel_offsets(3)
    assert off3[0].tolist() == [-1, -1, -1] and off3[1].tolist() == [0, -1, -1]  # x fastest
    assert off3[13].tolist() == [0, 0, 0]
    off2 = kernel_offsets(2)
    assert off2[1].tolist() == [0, 0, 1] and off2[4].tolist() == [1, 0, 0]  # z fastest


@pytest.mark.parametrize(
    "feats,coords,message",
    [
        (torch.zeros(2, 3), torch.tensor([[0, 1, 2, 3], [0, -1, 0, 0]], dtype=torch.int32), "non-negative"),
        (torch.zeros(2, 3), torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=torch.int32), "duplicate"),
        (torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int64), "int32"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), r"\(N, 4\)"),
        (torch.zeros(3, 3), torch.zeros(2, 4, dtype=torch.int32), "rows"),
        (torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32), "float"),
    ],
)
def test_bad_coordinates_raise(feats, coords, message):
    with pytest.raises(ValueError, match=message):
        SparseTensor(feats, coords)


def test_not_multiple_of_stride_raises():
    with pytest.raises(ValueError, match="multiples"):
        SparseTensor(torch.zeros(1, 3), torch.tensor([[0, 1, 2, 2]], dtype=torch.int32), stride=2)


def test_transposed_without_downsampled_level_raises():
    feats, coords = random_sparse(grid=4, density=0.5)
    c2 = coords.clone()
    c2[:, 1:] *= 2
    with pytest.raises(ValueError, match="no stride-1 level"):
        Conv3d(3, 3, 2, stride=2, transposed=True).double()(SparseTensor(feats, c2, stride=2))


def test_unsorted_input_rows_keep_their_order():
    feats, coords = random_sparse(grid=7, density=0.3)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(1))
    conv = Conv3d(3, 4, 3).double()
    sorted_out = conv(SparseTensor(feats, coords)).feats
    perm_out = conv(SparseTensor(feats[perm], coords[perm])).feats
    torch.testing.assert_close(perm_out, sorted_out[perm], rtol=1e-12, atol=1e-12)


def test_kernel_map_is_cached_and_reused():
    feats, coords = random_sparse(grid=6, density=0.3)
    x = SparseTensor(feats, coords)
    a = Conv3d(3, 3, 3).double()(x)
    b = Conv3d(3, 3, 3).double()(a)
    assert b.cache is x.cache and len(x.cache.kmaps) == 1


def test_backward_thread_count_independent(small_street_points):
    """Training gradients equal between 1 and 2 threads (within float tolerance)."""
    from lima_zoo.config import PreprocessConfig
    from lima_zoo.voxelize import voxelize

    vox = voxelize([torch.from_numpy(small_street_points)], PreprocessConfig())
    conv = Conv3d(4, 16, 3)
    grads = []
    for n in (1, 2):
        with num_threads(n):
            conv.zero_grad()
            conv(SparseTensor(vox.feats, vox.coords)).feats.square().sum().backward()
            grads.append(conv.kernel.grad.clone())
    # Weight gradients are sums over thousands of rows; GEMM may split that reduction by thread.
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * grads[0].abs().max().item())


def test_missing_backend_says_how_to_install(monkeypatch):
    import importlib.util

    from lima_zoo.sparse.backends import check_backend

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"'torchsparse' is not installed \(it is not on PyPI: build it from source"):
        check_backend("torchsparse")
    with pytest.raises(ValueError, match=r"spconv-cu120"):
        check_backend("spconv")


_GRADS = """
import hashlib, sys, torch
from lima_zoo.config import PreprocessConfig
from lima_zoo.models import MinkUNet
from lima_zoo.sparse import SparseTensor
from lima_zoo.sparse.allocator import reuse_freed_memory
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize
print(reuse_freed_memory())
torch.manual_seed(0)
net = MinkUNet("minkunet14", width=0.5)
vox = voxelize([torch.from_numpy(street_scan(seed=1, azimuth_steps=256))], PreprocessConfig())
net(SparseTensor(vox.feats, vox.coords)).feats.square().sum().backward()
print(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in net.parameters())).hexdigest())
"""


def test_reusing_freed_memory_changes_no_number():
    """glibc's heap instead of a fresh mmap per large tensor: the same gradients to the bit, and
    LIMA_ZOO_MALLOC=system keeps glibc's defaults."""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    runs = {}
    for mode in ("", "system"):
        env = {**os.environ, "LIMA_ZOO_MALLOC": mode, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _GRADS], env=env, capture_output=True, text=True, timeout=600, check=True
        )
        runs[mode] = out.stdout.split()
    assert runs[""][0] == "True" and runs["system"][0] == "False"
    assert runs[""][1] == runs["system"][1]

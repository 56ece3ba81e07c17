"""The fused CPU kernel against the pure-PyTorch path: every conv kind, gradients, bit-identical
results at 1 and 2 threads, the LIMA_ZOO_KERNEL switch and the fallback without a compiler."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import num_threads, random_sparse, with_bn_statistics

from lima_zoo.sparse import SparseTensor, fused
from lima_zoo.sparse.functional import sparse_conv

HAVE_TOOLCHAIN = shutil.which("ninja") is not None and (shutil.which("c++") or shutil.which("g++")) is not None


@pytest.fixture
def kernel(monkeypatch):
    """Run a block of code under LIMA_ZOO_KERNEL=<mode>."""

    def use(mode: str) -> None:
        monkeypatch.setenv(fused.KERNEL_ENV, mode)

    return use


@pytest.fixture(scope="module")
def built():
    if not HAVE_TOOLCHAIN:
        pytest.skip("no C++ compiler or ninja here: the pure-PyTorch path is used")
    module = fused.fused_module()
    assert module is not None, (
        f"a compiler and ninja are present but the fused kernel did not build: {fused._state.get('error')}"
    )
    return module


def maps(coords: torch.Tensor) -> dict:
    x = SparseTensor(torch.zeros(len(coords), 1), coords)
    down = x.cache.downsample_map(1)
    return {
        "subm3": x.cache.submanifold_map(1, 3, 1),
        "subm3-dilated": x.cache.submanifold_map(1, 3, 2),
        "subm5": x.cache.submanifold_map(1, 5, 1),
        "down": down,
        "up": down.transposed(),
    }


def run(kmap, x, w, bias=None):
    """Forward and both gradients of sum(out * probe)."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    out = sparse_conv(x, w, kmap, bias)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * probe).sum().backward()
    return out.detach(), x.grad, w.grad


@pytest.mark.parametrize("kind", ["subm3", "subm3-dilated", "subm5", "down", "up"])
def test_fused_matches_pure_pytorch_fp64(built, kernel, kind):
    feats, coords = random_sparse(grid=10, density=0.3, channels=5, seed=1)
    kmap = maps(coords)[kind]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(kmap.n_in, 5, generator=g, dtype=torch.float64)
    w = torch.randn(kmap.volume, 5, 7, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    kernel("torch")
    ref = run(kmap, x, w, b)
    kernel("fused")
    got = run(kmap, x, w, b)
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["subm3", "down", "up"])
def test_fused_gradcheck(built, kernel, kind):
    kernel("fused")
    _, coords = random_sparse(grid=4, density=0.4, batches=1, seed=3)
    kmap = maps(coords)[kind]
    x = torch.randn(kmap.n_in, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(kmap.volume, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k, c: sparse_conv(a, k, kmap, c), (x, w, b))


@pytest.mark.parametrize("channels", [(16, 32), (96, 96)])
@pytest.mark.parametrize("kind", ["subm3", "down", "up"])
def test_fused_is_bit_identical_at_1_and_2_threads(built, kernel, small_street_points, kind, channels):
    """Blocks and tiles depend on the map and channels only, never on the thread count."""
    from lima_zoo.config import PreprocessConfig
    from lima_zoo.voxelize import voxelize

    kernel("fused")
    vox = voxelize([torch.from_numpy(small_street_points)], PreprocessConfig())
    kmap = maps(vox.coords)[kind]
    c_in, c_out = channels
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(kmap.n_in, c_in, generator=g), torch.randn(kmap.volume, c_in, c_out, generator=g)
    results = []
    for n in (1, 2):
        with num_threads(n):
            results.append(run(kmap, x, w))
    assert kmap.n_out > 4 * fused._tile_rows(c_in, c_out), "the scan must span several blocks"
    for a, b in zip(*results):
        assert torch.equal(a, b)
    kernel("torch")
    for r, o in zip(run(kmap, x, w), results[0]):  # and it computes what the pure-PyTorch path does
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


def test_unsorted_pairs_are_sorted_once_and_kept(built, kernel):
    kernel("fused")
    feats, coords = random_sparse(grid=7, density=0.3, seed=5)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(1))
    kmap = maps(coords[perm])["subm3"]
    in_idx, out_idx, starts = fused._plan(kmap, 64)
    for k in range(kmap.volume):
        seg = out_idx[kmap.bounds[k] : kmap.bounds[k + 1]]
        assert bool((seg[1:] > seg[:-1]).all())
    assert fused._plan(kmap, 64)[2] is starts  # cached on the map
    pairs = lambda i, o: sorted(zip(i.tolist(), o.tolist()))  # noqa: E731
    assert pairs(in_idx, out_idx) == pairs(kmap.in_idx, kmap.out_idx)


def test_bad_kernel_choice_names_the_variable(kernel):
    kernel("fast")
    with pytest.raises(ValueError, match="LIMA_ZOO_KERNEL='fast'.*auto, fused, torch"):
        fused.kernel_choice()


def test_torch_choice_never_builds(kernel, monkeypatch):
    kernel("torch")
    monkeypatch.setattr(fused, "_build", lambda: pytest.fail("built under LIMA_ZOO_KERNEL=torch"))
    monkeypatch.setattr(fused, "_state", {})
    assert fused.fused_module() is None and not fused.uses_fused(torch.zeros(1, 1))


def test_without_a_compiler_auto_falls_back_once_and_fused_says_why(kernel, monkeypatch, caplog):
    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(fused, "_build", no_compiler)
    monkeypatch.setattr(fused, "_state", {})
    kernel("auto")
    feats, coords = random_sparse(grid=5, density=0.4)
    kmap = maps(coords)["subm3"]
    w = torch.randn(27, 3, 4, dtype=torch.float64)
    out = sparse_conv(feats, w, kmap)
    sparse_conv(feats, w, kmap)
    err = caplog.text
    assert err.count("not available") == 1 and "Ninja is required" in err and "pure-PyTorch" in err
    kernel("torch")
    torch.testing.assert_close(out, sparse_conv(feats, w, kmap), rtol=0, atol=0)  # the same path
    kernel("fused")
    with pytest.raises(ValueError, match="LIMA_ZOO_KERNEL=fused.*Ninja is required"):
        sparse_conv(feats, w, kmap)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_inference_epilogue_residual_relu_matches_separate_passes(built, kernel, grad, scaled):
    """Under inference the fused pass scales (an eval-mode BN's per-channel scale), adds the bias and
    the residual and applies ReLU per block; with autograd (or on the pure path) the kernel is
    scaled first and the rest runs after the conv. Same numbers either way."""
    from lima_zoo.sparse.backends import conv3d

    feats, coords = random_sparse(grid=9, density=0.3, channels=4, seed=6)
    x = SparseTensor(feats, coords)
    g = torch.Generator().manual_seed(7)
    w, b = torch.randn(27, 4, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    res = x.replace_feats(torch.randn(len(coords), 6, generator=g, dtype=torch.float64))
    scale = torch.rand(6, generator=g, dtype=torch.float64) + 0.5 if scaled else None
    kernel("torch")
    ref = torch.relu(conv3d(x, w if scale is None else w * scale, b, 3, 1, 1, False).feats + res.feats)
    kernel("fused")
    with torch.set_grad_enabled(grad):
        got = conv3d(x, w, b, 3, 1, 1, False, residual=res, relu=True, scale=scale).feats
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert (got == 0).any() and not torch.equal(res.feats, got)  # ReLU clipped, the residual is untouched


def test_minkunet_eval_forward_fused_matches_pure(built, kernel, small_street_points):
    from lima_zoo.config import PreprocessConfig
    from lima_zoo.models import MinkUNet
    from lima_zoo.voxelize import voxelize

    vox = voxelize([torch.from_numpy(small_street_points)], PreprocessConfig())
    torch.manual_seed(0)
    net = with_bn_statistics(MinkUNet("minkunet18"))  # eval mode, BN not the identity: its scale is applied per block
    outs = []
    for mode in ("torch", "fused"):
        kernel(mode)
        with torch.inference_mode():
            outs.append(net(SparseTensor(vox.feats, vox.coords)).feats)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5 * outs[0].abs().max().item())

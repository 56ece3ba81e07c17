"""Shared fixtures: small realistic scans and thread-count control."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, and counted, where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible here (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="session")
def street_points() -> np.ndarray:
    """A full ~34k-point 32-beam street scan (N, 5) float32."""
    from lima_zoo.synth.scan import street_scan

    return street_scan(seed=0)


@pytest.fixture(scope="session")
def small_street_points() -> np.ndarray:
    """A sparse ~8k-point scan for quick network tests."""
    from lima_zoo.synth.scan import street_scan

    return street_scan(seed=1, azimuth_steps=256)


def random_sparse(grid: int, density: float, batches: int = 2, channels: int = 3, seed: int = 0, dtype=torch.float64):
    """Random occupied cells of a (batches, grid^3) volume -> (feats, coords int32)."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batches, grid, grid, grid, generator=g) < density
    coords = occ.nonzero().to(torch.int32)
    feats = torch.randn(len(coords), channels, generator=g, dtype=dtype)
    return feats, coords


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's --master_port in tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_bn_statistics(enc, seed: int = 0):
    """Non-trivial BatchNorm statistics and affine weights (fresh BN is the identity in eval mode), so
    folding and eval-mode normalisation are exercised; returns ``enc`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return enc.eval()


def check_point_output_encoder(enc, pts: np.ndarray, cell_of_point: np.ndarray, folder, drop_key: str) -> np.ndarray:
    """What every point-output backbone (SPVCNN, FRNet) must do: one finite row per point in input
    order (a permuted scan gives the permuted rows), bit-identical reruns, the same features at
    another thread count, two points of one cell (voxel / pixel: ``cell_of_point``) with their own
    features, and a strict save / load (``drop_key`` removed from the weights is named). Returns the features."""
    from safetensors.torch import load_file, save_file

    from lima_zoo import LiMAEncoder

    feats = enc.embed(pts)
    assert feats.shape == (len(pts), enc.config.out_dim) and np.isfinite(feats).all()
    assert np.array_equal(enc.embed(pts), feats)
    perm = np.random.default_rng(1).permutation(len(pts))
    np.testing.assert_allclose(
        enc.embed(pts[perm])[np.argsort(perm)], feats, rtol=1e-4, atol=1e-5
    )  # every point, not only lone ones
    shared = np.flatnonzero(np.bincount(cell_of_point)[cell_of_point] > 1)
    a = shared[0]
    b = shared[cell_of_point[shared] == cell_of_point[a]][1]
    assert not np.allclose(feats[a], feats[b])  # two points of one cell keep their own features
    with num_threads(1 if torch.get_num_threads() > 1 else 2):
        np.testing.assert_allclose(enc.embed(pts), feats, rtol=1e-4, atol=1e-5)
    folder = enc.save_pretrained(folder)
    again = LiMAEncoder.from_pretrained(folder)
    assert again.config == enc.config and np.array_equal(again.embed(pts), feats)
    state = load_file(folder / "model.safetensors")
    state.pop(drop_key)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"missing \(1\): {drop_key}"):
        LiMAEncoder.from_pretrained(folder)
    return feats


def check_gradients_reach_every_parameter(enc, pts: np.ndarray) -> None:
    """A train-mode batch of two scans (points 0-2000 and 2000-3500) through the backbone and the
    head: one row per point, and every parameter gets a non-zero gradient."""
    enc.train()
    batch = enc.backbone_input([pts[:2000, :4], pts[2000:3500, :4]])
    rows = enc.head(enc.backbone_rows(batch))
    assert rows.shape == (3500, enc.config.head_dim)
    rows.square().sum().backward()
    dead = [
        n for n, p in enc.named_parameters() if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
    assert not dead, dead


def check_onnx_point_runner(enc, folder, scans: list[np.ndarray]) -> None:
    """What every point-output backbone's ONNX export (SPVCNN, FRNet) must do: ``enc`` (eval mode)
    saved and exported to ``folder`` (the export verifies a nuScenes-size scan itself, max abs diff
    <= 1e-4); the onnxruntime runner gives one row per point of each scan of the batch ``scans``,
    equal to PyTorch's to 1e-4 in both feature spaces; and a MinkUNet graph under this config is
    refused, naming the layout."""
    from lima_zoo import LiMAEncoder
    from lima_zoo.config import EncoderConfig
    from lima_zoo.export import export_onnx
    from lima_zoo.runtime import OnnxEncoder

    enc.save_pretrained(folder)
    export_onnx(enc, folder)
    runner = OnnxEncoder.from_pretrained(folder)
    assert runner.point_output
    for space, dim in (("backbone", enc.config.out_dim), ("teacher", enc.config.head_dim)):
        got, want = runner.embed(scans, space=space), enc.embed(scans, space=space)
        assert [g.shape for g in got] == [w.shape for w in want] == [(len(s), dim) for s in scans]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
    voxel_graph = folder / "voxel"
    export_onnx(LiMAEncoder(EncoderConfig(backbone="minkunet14", width=0.25, head_dim=16)).eval(), voxel_graph)
    (folder / "model.onnx").write_bytes((voxel_graph / "model.onnx").read_bytes())
    with pytest.raises(
        ValueError, match=f"model.onnx: its inputs .* not this lima-zoo's {enc.config.backbone} graph layout"
    ):
        OnnxEncoder.from_pretrained(folder)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(
    cache: os.PathLike, repo_id: str, model_dir, names=("config.json", "model.safetensors"), commit: str = HUB_COMMIT
) -> None:
    """The real huggingface_hub cache layout: refs/main -> snapshots/<commit>/<files> (``names``
    copied from ``model_dir``)."""
    root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(root, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(commit)
    for name in names:
        with open(os.path.join(model_dir, name), "rb") as src, open(os.path.join(snap, name), "wb") as dst:
            dst.write(src.read())

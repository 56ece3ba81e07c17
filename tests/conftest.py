"""Shared fixtures: small realistic scans and thread-count control."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch


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

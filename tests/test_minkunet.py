"""MinkUNet structure, voxelization, embed and checkpoint key mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import num_threads

from lima_zoo import create_encoder, list_models
from lima_zoo.config import PreprocessConfig
from lima_zoo.models import MinkUNet, convert_torchsparse_state_dict
from lima_zoo.sparse import SparseTensor
from lima_zoo.voxelize import grid_indices, voxelize


def test_minkunet34_size_and_output(small_street_points):
    net = MinkUNet("minkunet34").eval()
    # 37.87M parameters, as the torchsparse MinkUNet-34 of SuperFlow / LiMA.
    assert sum(p.numel() for p in net.parameters()) == 37_873_280
    assert net.block4[5].conv2.kernel.shape == (27, 256, 256)
    assert net.block5[0].downsample.conv.kernel.shape == (1, 384, 256)  # 256 up + 128 skip
    vox = voxelize([torch.from_numpy(small_street_points)], PreprocessConfig())
    with torch.inference_mode():
        out = net(SparseTensor(vox.feats, vox.coords))
    assert out.feats.shape == (len(vox.coords), 96) and out.stride == 1


@pytest.mark.parametrize("depth,blocks", [("minkunet14", 1), ("minkunet18", 2)])
def test_smaller_depths(depth, blocks):
    net = MinkUNet(depth)
    assert len(net.block4) == blocks and len(net.block8) == blocks


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5])
def test_width_scales_every_layer_and_the_config_agrees(width, small_street_points):
    from lima_zoo.config import EncoderConfig, backbone_out_dim
    from lima_zoo.encoder import LiMAEncoder

    net = MinkUNet("minkunet14", width=width)
    assert net.out_channels == backbone_out_dim(width) == round(96 * width)
    assert net.conv0[0].conv.kernel.shape == (27, 4, round(32 * width))
    assert net.block4[0].conv2.kernel.shape[1:] == (round(256 * width),) * 2
    enc = LiMAEncoder(EncoderConfig(backbone="minkunet14", width=width, head_dim=16))
    assert enc.config.out_dim == round(96 * width)
    feats = enc.embed(small_street_points[:3000])
    assert feats.shape == (3000, round(96 * width)) and np.isfinite(feats).all()


def test_width_rejects_bad_values():
    from lima_zoo.config import EncoderConfig

    with pytest.raises(ValueError, match="outputs 48 channels; out_dim=96"):
        EncoderConfig(width=0.5, out_dim=96)
    for bad in (0.0, -1.0, 5.0):
        with pytest.raises(ValueError, match="width must be in"):
            EncoderConfig(width=bad)
    with pytest.raises(ValueError, match="width must be in"):
        MinkUNet("minkunet14", width=0.0)


def test_voxelize_first_point_and_inverse():
    pts = torch.tensor([[1.0, 0.0, 0.0, 10.0], [1.01, 0.0, 0.01, 20.0], [5.0, 5.0, 1.0, 30.0]])
    cfg = PreprocessConfig(voxel_type="cartesian", voxel_size=(0.1, 0.1, 0.1))
    vox = voxelize([pts], cfg)
    assert len(vox.coords) == 2
    assert vox.inverse[0] == vox.inverse[1] != vox.inverse[2]
    torch.testing.assert_close(vox.feats[vox.inverse[0]], pts[0])  # first point, not the mean
    assert (vox.coords[:, 1:] >= 0).all()


def test_cylindrical_cells():
    cfg = PreprocessConfig()  # rho 0.1 m, phi 1 degree, z 0.1 m
    deg = torch.deg2rad(torch.tensor([0.5, 90.5, -89.5], dtype=torch.float64))  # cell centres
    pts = torch.stack(
        [10 * torch.cos(deg), 10 * torch.sin(deg), torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64)], 1
    )
    cells = grid_indices(pts, cfg)
    # Same radius -> same rho cell; +90 and -90 degrees from the first point -> phi cells +-90.
    assert cells[0, 0] == cells[1, 0] == cells[2, 0]
    assert (cells[1, 1] - cells[0, 1]).item() == 90 and (cells[2, 1] - cells[0, 1]).item() == -90


def test_voxelize_batches_and_sorted(small_street_points):
    a = torch.from_numpy(small_street_points)
    vox = voxelize([a, a[::2]], PreprocessConfig())
    assert set(vox.coords[:, 0].tolist()) == {0, 1}
    keys = vox.coords.long()
    lex = ((keys[:, 0] * 4096 + keys[:, 1]) * 4096 + keys[:, 2]) * 4096 + keys[:, 3]
    assert (lex[1:] > lex[:-1]).all()
    assert len(vox.inverse) == len(a) + len(a[::2])


@pytest.mark.parametrize("name", list_models("features"))
def test_create_encoder_embed_in_input_order(name, small_street_points):
    enc = create_encoder(name)
    feats = enc.embed(small_street_points)
    assert feats.shape == (len(small_street_points), 96) and feats.dtype == np.float32
    perm = np.random.default_rng(0).permutation(len(small_street_points))
    # Voxel features come from the first point of each voxel, so permuting can change which point
    # represents a voxel; compare on points that are alone in their voxel.
    vox = voxelize([torch.from_numpy(small_street_points)], enc.config.preprocess)
    alone = np.bincount(vox.inverse.numpy())[vox.inverse.numpy()] == 1
    permuted = enc.embed(small_street_points[perm])
    inv = np.argsort(perm)
    np.testing.assert_allclose(permuted[inv][alone], feats[alone], rtol=1e-4, atol=1e-4)
    teacher = enc.embed(small_street_points[:2000], space="teacher")
    assert teacher.shape[1] == enc.config.head_dim
    np.testing.assert_allclose(np.linalg.norm(teacher, axis=1), 1.0, rtol=1e-5)


def test_embed_rejects_bad_points():
    enc = create_encoder("vit-s-minkunet34")
    with pytest.raises(ValueError, match="N, >=3"):
        enc.embed(np.zeros((10, 2), np.float32))
    bad = np.zeros((10, 4), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        enc.embed(bad)


def test_forward_bitwise_deterministic_and_thread_independent(street_points):
    torch.manual_seed(0)
    net = MinkUNet("minkunet34").eval()
    vox = voxelize([torch.from_numpy(street_points)], PreprocessConfig())
    outs = []
    with torch.inference_mode():
        for n in (2, 2, 1):
            with num_threads(n):
                outs.append(net(SparseTensor(vox.feats, vox.coords)).feats.clone())
    assert torch.equal(outs[0], outs[1]), "run to run must be bitwise equal"
    diff = (outs[0] - outs[2]).abs().max().item()
    print(f"\n1 vs 2 threads: max |diff| = {diff:.3g}")
    assert diff <= 1e-5


def test_torchsparse_state_dict_maps_onto_ours(small_street_points):
    """A checkpoint in the torchsparse lineage's layout (prefix, 2-D 1x1 kernels) loads strictly."""
    torch.manual_seed(0)
    ours = MinkUNet("minkunet34").eval()
    foreign = {}
    for k, v in ours.state_dict().items():
        if k.endswith(".kernel") and v.shape[0] == 1:
            v = v[0]  # torchsparse stores 1x1x1 kernels as (C_in, C_out)
        foreign["backbone_3d." + k] = v.clone()
    foreign["head.weight"] = torch.zeros(3)
    converted, skipped = convert_torchsparse_state_dict(foreign, prefix="backbone_3d.")
    assert skipped == ["head.weight"]
    loaded = MinkUNet("minkunet34").eval()
    loaded.load_state_dict(converted, strict=True)
    vox = voxelize([torch.from_numpy(small_street_points)], PreprocessConfig())
    with torch.inference_mode():
        a = ours(SparseTensor(vox.feats, vox.coords)).feats
        b = loaded(SparseTensor(vox.feats, vox.coords)).feats
    assert torch.equal(a, b)

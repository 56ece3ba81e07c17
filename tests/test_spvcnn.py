"""SPVCNN: the point branch's look-ups against a direct numpy reference, then the network as an encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import check_gradients_reach_every_parameter, check_point_output_encoder

from lima_zoo import LiMAEncoder
from lima_zoo.config import EncoderConfig, PreprocessConfig
from lima_zoo.export.convert import convert_checkpoint
from lima_zoo.sparse import SparseTensor
from lima_zoo.sparse.points import PointFeatures, devoxelize, voxelize_mean
from lima_zoo.voxelize import voxelize

SMALL = EncoderConfig(
    backbone="spvcnn18",
    width=0.25,
    head_dim=16,
    preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.4, 0.4, 0.4)),
)


def _numpy_trilinear(cells: dict, feats: np.ndarray, grid: np.ndarray, stride: int) -> np.ndarray:
    """Each point: the voxels at floor(g / s) + {0, 1}^3 that exist, weighted by trilinear weights, renormalised."""
    out = np.zeros((len(grid), feats.shape[1]))
    for n, (b, *g) in enumerate(grid):
        pos = np.asarray(g, dtype=np.float64) / stride
        base = np.floor(pos).astype(int)
        frac = pos - base
        total = 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    row = cells.get((int(b), base[0] + dx, base[1] + dy, base[2] + dz))
                    if row is None:
                        continue
                    w = (
                        (frac[0] if dx else 1 - frac[0])
                        * (frac[1] if dy else 1 - frac[1])
                        * (frac[2] if dz else 1 - frac[2])
                    )
                    out[n] += w * feats[row]
                    total += w
        out[n] /= total + 1e-8
    return out


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_point_voxel_moves_match_a_direct_numpy_reference(stride):
    rng = np.random.default_rng(0)
    xyz = np.concatenate([rng.uniform(0, 6, (400, 3)), rng.uniform(0, 6, (300, 3)) + [0, 0, 0]])
    batch = [torch.from_numpy(xyz[:400]).float(), torch.from_numpy(xyz[400:]).float()]
    vox = voxelize(
        batch, PreprocessConfig(voxel_type="cartesian", voxel_size=(0.5, 0.5, 0.5), use_dim=3), keep_points=True
    )
    assert torch.equal(torch.floor(vox.grid[:, 1:]).long(), vox.coords[vox.inverse][:, 1:].long())
    x = SparseTensor(torch.zeros(len(vox.coords), 5, dtype=torch.float64), vox.coords)
    s = 1
    while s < stride:  # the coarser levels' coordinates, recorded as the U-Net's downsampling records them
        x.cache.downsample_map(s)
        s *= 2
    level = x.cache.level_coords(stride).numpy()
    feats = torch.randn(len(level), 5, dtype=torch.float64)
    x = SparseTensor.derived(feats, x, stride=stride)
    points = PointFeatures(torch.randn(len(vox.grid), 5, dtype=torch.float64), vox.grid)
    cells = {tuple(c): i for i, c in enumerate(level.tolist())}
    want = _numpy_trilinear(cells, feats.numpy(), vox.grid.double().numpy(), stride)
    np.testing.assert_allclose(devoxelize(x, points).numpy(), want, rtol=1e-5, atol=1e-6)  # float32 weights
    # voxelize_mean: the mean of the points in each stride-s cell
    mean = voxelize_mean(points, x).feats.numpy()
    g = vox.grid.double().numpy()
    keys = [(int(row[0]), *np.floor(row[1:] / stride).astype(int).tolist()) for row in g]
    for key in list(cells)[:50]:
        members = [i for i, k in enumerate(keys) if k == key]
        np.testing.assert_allclose(mean[cells[key]], points.feats.numpy()[members].mean(0), rtol=1e-9)


def test_torchsparse_key_names_and_shapes():
    """Names from SPVNAS's SPVCNN (stem / stageN / upN / point_transforms), written out by hand."""
    state = LiMAEncoder(EncoderConfig(backbone="spvcnn18")).backbone.state_dict()
    expected = {
        "stem.0.kernel": (27, 4, 32),
        "stem.4.running_var": (32,),
        "stage1.0.net.0.kernel": (8, 32, 32),
        "stage1.1.net.3.kernel": (27, 32, 32),
        "stage2.1.downsample.0.kernel": (1, 32, 64),
        "stage4.2.net.4.weight": (256,),
        "up1.0.net.0.kernel": (8, 256, 256),
        "up1.1.0.net.0.kernel": (27, 384, 256),
        "up1.1.0.downsample.1.weight": (256,),
        "up4.1.1.net.3.kernel": (27, 96, 96),
        "point_transforms.0.0.weight": (256, 32),
        "point_transforms.2.1.running_mean": (96,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "stage1.1.downsample.0.kernel" not in state  # 32 -> 32: an identity shortcut, as in SPVNAS
    assert (
        sum(
            v.numel()
            for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        == 21_776_160
    )  # SPVNAS: 21.8M


def test_spvcnn_encoder_one_row_per_point_in_order_deterministic_and_strict(tmp_path, small_street_points):
    torch.manual_seed(0)
    enc = LiMAEncoder(SMALL).eval()
    pts = small_street_points[:3000, :4]
    voxel = voxelize([torch.from_numpy(pts)], SMALL.preprocess).inverse.numpy()
    feats = check_point_output_encoder(enc, pts, voxel, tmp_path / "spv", "backbone.point_transforms.1.0.weight")
    assert feats.shape == (3000, 24)
    with pytest.raises(ValueError, match="outputs one feature per point"):
        enc.embed(pts, return_voxels=True)


def test_spvcnn_gradients_reach_every_parameter(small_street_points):
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(LiMAEncoder(SMALL), small_street_points)


def test_onnx_export_of_spvcnn_matches_pytorch(tmp_path, small_street_points):
    """The point-voxel graph against the PyTorch encoder: a batch of two scans, both feature spaces,
    non-trivial BN statistics (conv and point-MLP folding), a voxel holding 60 points (a wide sum
    bucket); the runner refuses a MinkUNet graph under an SPVCNN config; the card names the inputs."""
    pytest.importorskip("onnxruntime")
    from conftest import check_onnx_point_runner, with_bn_statistics

    from lima_zoo.export.card import render_card

    torch.manual_seed(0)
    enc = with_bn_statistics(LiMAEncoder(SMALL))
    pile = small_street_points[:1, :4] + np.random.default_rng(0).uniform(0, 0.05, (60, 4)).astype(np.float32)
    check_onnx_point_runner(
        enc, tmp_path, [np.concatenate([small_street_points[:3000, :4], pile]), small_street_points[3000:, :4]]
    )
    assert "runtime.point_voxel_inputs" in render_card(
        tmp_path, "lima-zoo/vit-b-spvcnn", "vit-b-spvcnn"
    )  # from config.json


def test_onnx_inputs_refuse_a_voxel_beyond_the_widest_sum():
    """More points in one voxel than the graph's widest cell bucket: a clear error, not a wrong sum."""
    pytest.importorskip("onnx")
    from lima_zoo.runtime import cells
    from lima_zoo.runtime.point_voxel_inputs import CELL_WIDTHS, point_voxel_inputs

    pile = torch.full((CELL_WIDTHS[-1] + 1, 4), 1.0)
    with pytest.raises(
        ValueError, match=f"a voxel holds {CELL_WIDTHS[-1] + 1} points; the ONNX graph sums at most {CELL_WIDTHS[-1]}"
    ):
        point_voxel_inputs(cells.voxelize([pile.numpy()], SMALL.preprocess, keep_points=True))


def test_converted_spvnas_checkpoint_reports_the_classifier(tmp_path):
    """A bare SPVNAS segmentation state dict: 2-D 1x1 kernels, a classifier; converted with --head none."""
    torch.manual_seed(0)
    src = LiMAEncoder(EncoderConfig(backbone="spvcnn18", head_dim=0)).eval()
    state = {
        k: (v[0] if k.endswith(".kernel") and v.shape[0] == 1 else v) for k, v in src.backbone.state_dict().items()
    }
    state |= {"classifier.0.weight": torch.zeros(19, 96), "classifier.0.bias": torch.zeros(19)}
    torch.save(state, tmp_path / "spvcnn.pt")
    enc, report = convert_checkpoint(tmp_path / "spvcnn.pt", head="none")
    assert enc.config.backbone == "spvcnn18" and report.unmapped == ["classifier.0.bias", "classifier.0.weight"]
    pts = np.random.default_rng(0).uniform(-20, 20, (2000, 4)).astype(np.float32)
    np.testing.assert_array_equal(enc.embed(pts), src.embed(pts))

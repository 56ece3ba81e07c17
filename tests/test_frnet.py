"""FRNet: the range projection against a direct numpy projection, then the network as an encoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import check_gradients_reach_every_parameter, check_point_output_encoder

from lima_zoo import LiMAEncoder
from lima_zoo.config import KITTI_RANGE_IMAGE, EncoderConfig, PreprocessConfig, RangeImageConfig, config_from_dict
from lima_zoo.range_view import range_pixels, range_project

SMALL = EncoderConfig(backbone="frnet18", width=0.25, head_dim=16)


def _numpy_pixel(x: float, y: float, z: float, h: int, w: int, up_deg: float, down_deg: float) -> tuple[int, int]:
    """One point, straight from the definition: column from the azimuth, row from the inclination, clamped."""
    r = math.sqrt(x * x + y * y + z * z)
    yaw = -math.atan2(y, x)
    pitch = math.asin(z / r) if r > 0 else 0.0
    up, down = math.radians(up_deg), math.radians(down_deg)
    col = math.floor(0.5 * (yaw / math.pi + 1.0) * w)
    row = math.floor((1.0 - (pitch - down) / (up - down)) * h)
    return min(max(row, 0), h - 1), min(max(col, 0), w - 1)


@pytest.mark.parametrize("image", [RangeImageConfig(), KITTI_RANGE_IMAGE, RangeImageConfig(16, 64, 15.0, -15.0)])
def test_range_pixels_match_a_direct_numpy_projection(image):
    rng = np.random.default_rng(0)
    rng_dirs = rng.normal(size=(3000, 3)) * [20, 20, 4]
    edges = np.array(
        [[10, 0, 0], [-10, 1e-9, 0], [-10, -1e-9, 0], [0, 5, 0], [0, -5, 0], [1, 0, 50], [1, 0, -50], [0, 0, 0]]
    )
    xyz = np.concatenate([rng_dirs, edges])
    rows, cols = range_pixels(torch.from_numpy(xyz).float(), image)
    want = np.array(
        [
            _numpy_pixel(*map(float, p), image.height, image.width, image.fov_up, image.fov_down)
            for p in xyz.astype(np.float32)
        ]
    )
    np.testing.assert_array_equal(np.stack([rows.numpy(), cols.numpy()], 1), want)
    # ahead: the middle column; behind (left / right of the seam): the first / last;
    # left a quarter, right three quarters
    assert want[-8:-3, 1].tolist() == [image.width // 2, 0, image.width - 1, image.width // 4, 3 * image.width // 4]
    horizon = math.floor(image.fov_up / (image.fov_up - image.fov_down) * image.height)
    assert want[-8:-3, 0].tolist() == [horizon] * 5
    assert want[-3][0] == 0 and want[-2][0] == image.height - 1  # above / below the field of view: the edge rows


def test_range_image_origin_is_the_sensor_position_in_the_points_frame():
    """Vehicle-frame points (Waymo's) seen from the LiDAR at ``origin``: the pixels of the points
    moved into the sensor frame, against the numpy projection too."""
    xyz = np.random.default_rng(2).normal(size=(500, 3)) * [20, 20, 3]
    origin = (1.43, 0.0, 2.18)
    image = RangeImageConfig(64, 512, 2.4, -17.6, origin=origin)
    rows, cols = range_pixels(torch.from_numpy(xyz), image)
    local = xyz - np.array(origin)
    want = np.array([_numpy_pixel(*p, 64, 512, 2.4, -17.6) for p in local])
    np.testing.assert_array_equal(np.stack([rows.numpy(), cols.numpy()], 1), want)
    same = range_pixels(torch.from_numpy(local), RangeImageConfig(64, 512, 2.4, -17.6))
    assert torch.equal(rows, same[0]) and torch.equal(cols, same[1])
    with pytest.raises(ValueError, match="origin must be three numbers"):
        RangeImageConfig(origin=(1.0, 2.0))


def test_range_project_groups_points_by_pixel_in_order():
    rng = np.random.default_rng(1)
    scans = [torch.from_numpy(rng.normal(size=(n, 4)) * [15, 15, 2, 50]).float() for n in (900, 600)]
    pre = PreprocessConfig(range_image=RangeImageConfig(16, 64))
    vox = range_project(scans, pre)
    keys = vox.coords[:, 0].long() * 16 * 64 + vox.coords[:, 1].long() * 64 + vox.coords[:, 2].long()
    assert bool((keys[1:] > keys[:-1]).all()) and bool((vox.coords[:, 3] == 0).all())  # sorted, unique pixels
    assert vox.grid is None and torch.equal(vox.point_feats, torch.cat(scans))
    for b, scan in enumerate(scans):
        rows, cols = range_pixels(scan[:, :3], pre.range_image)
        start = 0 if b == 0 else 900
        at = vox.coords[vox.inverse[start : start + len(scan)]].long()
        assert bool((at[:, 0] == b).all()) and torch.equal(at[:, 1], rows) and torch.equal(at[:, 2], cols)
    first = torch.full((len(vox.coords),), 10**9).scatter_reduce(0, vox.inverse, torch.arange(1500), "amin")
    assert torch.equal(vox.feats, vox.point_feats[first])  # each pixel's feature: its first point's columns


def test_config_records_the_range_image_and_refuses_it_for_voxel_backbones(tmp_path):
    assert SMALL.preprocess.range_image == RangeImageConfig(32, 480, 10.0, -30.0)  # nuScenes' by default, written out
    folder = LiMAEncoder(SMALL).save_pretrained(tmp_path / "fr")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["preprocess"]["range_image"] == {
        "height": 32,
        "width": 480,
        "fov_up": 10.0,
        "fov_down": -30.0,
        "origin": [0.0, 0.0, 0.0],
    }
    with pytest.raises(ValueError, match="range_image is for range-view backbones .*a minkunet34 reads voxels"):
        EncoderConfig(preprocess=PreprocessConfig(range_image=KITTI_RANGE_IMAGE))
    with pytest.raises(
        ValueError, match=r"config.preprocess.range_image: height must be a positive multiple of 8, got 30"
    ):
        config_from_dict(EncoderConfig, {"backbone": "frnet18", "preprocess": {"range_image": {"height": 30}}})
    with pytest.raises(ValueError, match="fov_down < fov_up"):
        RangeImageConfig(fov_up=-30.0, fov_down=10.0)


def test_frnet_encoder_one_row_per_point_in_order_deterministic_and_strict(tmp_path, small_street_points):
    torch.manual_seed(0)
    enc = LiMAEncoder(SMALL).eval()
    pts = small_street_points[:4000, :4]
    pixel = range_project([torch.from_numpy(pts)], SMALL.preprocess).inverse.numpy()
    feats = check_point_output_encoder(enc, pts, pixel, tmp_path / "fr", "backbone.head.mlps.3.0.weight")
    assert feats.shape == (4000, 24)


def test_a_kitti_range_image_changes_the_projection_not_the_weights(small_street_points):
    """The image size is preprocessing: the same weights run on a 64 x 512 KITTI image (config.json says which)."""
    torch.manual_seed(0)
    nus = LiMAEncoder(SMALL).eval()
    kitti = LiMAEncoder(
        EncoderConfig(
            backbone="frnet18", width=0.25, head_dim=16, preprocess=PreprocessConfig(range_image=KITTI_RANGE_IMAGE)
        )
    ).eval()
    kitti.load_state_dict(nus.state_dict())
    pts = small_street_points[:3000, :4]
    a, b = nus.embed(pts), kitti.embed(pts)
    assert a.shape == b.shape and not np.allclose(a, b)
    with pytest.raises(ValueError, match="pixels outside this FRNet's 32 x 480 range image"):
        nus.backbone.point_features(range_project([torch.from_numpy(pts)], kitti.config.preprocess))


def test_frnet_gradients_reach_every_parameter(small_street_points):
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(LiMAEncoder(SMALL), small_street_points)


def test_frnet_names_and_sizes():
    """FRNet's layout at full width (frnet34: (3, 4, 6, 3) basic blocks of 128 channels), names written out by hand."""
    state = LiMAEncoder(EncoderConfig(backbone="frnet34")).backbone.state_dict()
    expected = {
        "frustum_encoder.pre_norm.weight": (8,),
        "frustum_encoder.ffe_layers.0.0.weight": (96, 8),
        "frustum_encoder.ffe_layers.3.weight": (256, 256),
        "frustum_encoder.compression_layers.0.weight": (16, 256),
        "stem.0.weight": (64, 16, 3, 3),
        "stem.6.weight": (128, 128, 3, 3),
        "point_stem.0.weight": (128, 384),
        "fusion_stem.0.weight": (128, 256, 3, 3),
        "layer1.2.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (128, 128, 1, 1),
        "layer3.5.bn2.running_var": (128,),
        "layer4.2.conv1.weight": (128, 128, 3, 3),
        "point_fusion_layers.3.0.weight": (128, 256),
        "attention_layers.0.3.weight": (128, 128, 3, 3),
        "fuse_layer1.0.weight": (256, 640, 3, 3),
        "point_fuse_layer2.0.weight": (128, 256),
        "head.mlps.1.0.weight": (256, 128),
        "head.mlps.3.0.weight": (96, 128),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "layer1.0.downsample.0.weight" not in state and "layer4.3.conv1.weight" not in state


def test_onnx_export_of_frnet_matches_pytorch_scan_by_scan(tmp_path, small_street_points):
    """The traced range-view graph (one scan per run) against the PyTorch encoder: a batch of two
    scans, both feature spaces, non-trivial BN statistics; and the runner refuses a voxel graph."""
    pytest.importorskip("onnxruntime")
    from conftest import check_onnx_point_runner, with_bn_statistics

    torch.manual_seed(0)
    enc = with_bn_statistics(LiMAEncoder(SMALL))
    check_onnx_point_runner(enc, tmp_path, [small_street_points[:3000, :4], small_street_points[3000:, :4]])

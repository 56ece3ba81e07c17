"""The torch-free runtime builds the very inputs the PyTorch engine builds: cells (voxels, range
pixels), kernel maps of every level, SPVCNN's point look-ups, on real-size scans, batched and alone,
and a one-point scan; an empty scan is refused alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lima_zoo.config import EncoderConfig, PreprocessConfig, RangeImageConfig
from lima_zoo.range_view import range_project as torch_range_project
from lima_zoo.runtime import cells as np_cells
from lima_zoo.runtime.kernel_maps import KEY_MARGIN, Keys, unet_maps
from lima_zoo.runtime.point_voxel_inputs import corner_rows as np_corner_rows
from lima_zoo.runtime.point_voxel_inputs import voxel_rows as np_voxel_rows
from lima_zoo.sparse import SparseTensor
from lima_zoo.sparse.points import PointFeatures, corner_rows, voxel_rows
from lima_zoo.synth.scan import street_scan
from lima_zoo.voxelize import voxelize as torch_voxelize

CONFIGS = {
    "cylindrical": PreprocessConfig(),
    "cartesian": PreprocessConfig(voxel_type="cartesian", voxel_size=(0.1, 0.1, 0.1)),
}


@pytest.fixture(scope="module")
def scans() -> dict[str, list[np.ndarray]]:
    big = street_scan(seed=0, beams=128)[:, :4]  # ~136k points, a real 128-beam scan's size
    small = street_scan(seed=1)[:, :4]
    return {"128-beam": [big], "batch": [small, big[:40_000]], "one point": [small[:1]]}


def _same(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), what


@pytest.mark.parametrize("voxel", list(CONFIGS))
@pytest.mark.parametrize("case", ["128-beam", "batch", "one point"])
def test_voxels_and_every_level_map_equal_the_engines(scans, voxel, case):
    cfg = CONFIGS[voxel]
    pts = scans[case]
    ref = torch_voxelize([torch.from_numpy(p) for p in pts], cfg, keep_points=True)
    got = np_cells.voxelize(pts, cfg, keep_points=True)
    for name in ("coords", "feats", "inverse", "point_feats", "grid"):
        _same(getattr(got, name), getattr(ref, name).numpy(), f"{case} {voxel}: {name}")
    assert np_cells.count_voxels(pts, cfg, chunk=5000) == len(ref.coords)
    cache = SparseTensor(ref.feats, ref.coords).cache
    engine = cache.build_unet_maps(5)
    maps, levels = unet_maps(got.coords, 5)
    for level, ((subm, down), (s_ref, d_ref)) in enumerate(zip(maps, engine)):
        where = f"{case} {voxel} level {level}"
        _same(subm.in_idx, s_ref.in_idx.numpy(), f"{where} subm in")
        _same(subm.out_idx, s_ref.out_idx.numpy(), f"{where} subm out")
        assert subm.bounds == s_ref.bounds and subm.n_out == s_ref.n_out, where
        _same(levels[level], cache.level_coords(2**level).numpy(), f"{where} coordinates")
        if down is not None:
            _same(down.in_idx, d_ref.in_idx.numpy(), f"{where} down in")
            _same(down.out_idx, d_ref.out_idx.numpy(), f"{where} down out")
            assert down.bounds == d_ref.bounds and down.n_out == d_ref.n_out, where


@pytest.mark.parametrize("case", ["128-beam", "batch", "one point"])
def test_point_voxel_lookups_equal_the_engines(scans, case):
    cfg = CONFIGS["cylindrical"]
    pts = scans[case]
    ref = torch_voxelize([torch.from_numpy(p) for p in pts], cfg, keep_points=True)
    got = np_cells.voxelize(pts, cfg, keep_points=True)
    base = SparseTensor(ref.feats, ref.coords)
    base.cache.build_unet_maps(5)
    _, levels = unet_maps(got.coords, 5)
    points = PointFeatures(ref.point_feats, ref.grid)
    for level in (0, 2, 4):
        at = SparseTensor.derived(torch.empty(len(base.cache.coords[2**level]), 0), base, stride=2**level)
        keys = Keys(levels[level], margin=KEY_MARGIN)
        _same(np_voxel_rows(got.grid, keys, 2**level), voxel_rows(points, at).numpy(), f"{case} rows {level}")
        rows, weights = np_corner_rows(got.grid, keys, 2**level)
        ref_rows, ref_weights = corner_rows(points, at)
        _same(rows, ref_rows.numpy(), f"{case} corners {level}")
        np.testing.assert_allclose(weights, ref_weights.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "image", [RangeImageConfig(), RangeImageConfig(height=64, width=512, fov_up=3.0, fov_down=-25.0)]
)
@pytest.mark.parametrize("case", ["128-beam", "batch", "one point"])
def test_range_pixels_equal_the_engines(scans, image, case):
    cfg = EncoderConfig(backbone="frnet18", preprocess=PreprocessConfig(range_image=image)).preprocess
    pts = scans[case]
    ref = torch_range_project([torch.from_numpy(p) for p in pts], cfg)
    got = np_cells.range_project(pts, cfg)
    for name in ("coords", "feats", "inverse", "point_feats"):
        _same(getattr(got, name), getattr(ref, name).numpy(), f"{case}: {name}")


def test_an_empty_or_bad_scan_is_refused_by_both_runtimes(tmp_path):
    pytest.importorskip("onnxruntime")
    from lima_zoo import LiMAEncoder
    from lima_zoo.export import export_onnx
    from lima_zoo.runtime import OnnxEncoder

    torch.manual_seed(0)
    enc = LiMAEncoder(EncoderConfig(backbone="minkunet14", width=0.25, head_dim=8)).eval()
    runner = OnnxEncoder(export_onnx(enc, tmp_path), enc.config)
    bad = np.zeros((4, 4), np.float32)
    bad[1, 2] = np.nan
    for points in (np.zeros((0, 4), np.float32), bad, np.zeros(5, np.float32)):
        with pytest.raises(ValueError) as a:
            enc.embed(points)
        with pytest.raises(ValueError) as b:
            runner.embed(points)
        assert str(a.value) == str(b.value)

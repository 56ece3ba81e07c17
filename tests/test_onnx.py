"""ONNX export: graph properties, parity with PyTorch on a nuScenes-size scan, the onnxruntime runner."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import with_bn_statistics  # noqa: E402

from lima_zoo import LiMAEncoder  # noqa: E402
from lima_zoo.config import EncoderConfig, PreprocessConfig  # noqa: E402
from lima_zoo.export import build_onnx_model, export_onnx  # noqa: E402
from lima_zoo.runtime import OnnxEncoder  # noqa: E402
from lima_zoo.runtime.voxel_inputs import graph_inputs  # noqa: E402
from lima_zoo.synth.scan import street_scan  # noqa: E402


@pytest.fixture(scope="module")
def minkunet34_export(tmp_path_factory):
    torch.manual_seed(0)
    enc = with_bn_statistics(LiMAEncoder())  # MinkUNet-34, cylindrical nuScenes voxels
    out = tmp_path_factory.mktemp("onnx34")
    enc.save_pretrained(out)
    export_onnx(enc, out)
    return enc, out


def test_graph_is_opset17_plus_dynamic_and_has_no_scatter(minkunet34_export):
    import onnx

    _, out = minkunet34_export
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    feats = model.graph.input[0]
    assert feats.name == "feats" and feats.type.tensor_type.shape.dim[0].dim_param  # dynamic N
    ops = {n.op_type for n in model.graph.node}
    # sums are Gather + ReduceSum: no scatter, so no duplicate-index races and no full-tensor copies
    assert not any(op.startswith("Scatter") for op in ops), ops
    assert {"Gather", "MatMul", "ReduceSum", "Concat"} <= ops


def test_parity_on_a_nuscenes_size_scan_in_both_feature_spaces(minkunet34_export):
    enc, out = minkunet34_export
    runner = OnnxEncoder.from_pretrained(out)
    assert isinstance(runner, OnnxEncoder)
    scan = street_scan(seed=3)[:, :4]  # ~34k points -> ~19k cylindrical voxels, like a nuScenes sweep
    assert len(scan) > 30000
    for space in ("backbone", "teacher"):
        a, b = enc.embed(scan, space=space), runner.embed(scan, space=space)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4, space
    # a batch of two scans (different sizes) through the same graph: dynamic N at every level
    other = street_scan(seed=4)[:20000, :4]
    for a, b in zip(enc.embed([scan, other]), runner.embed([scan, other])):
        assert np.abs(a - b).max() <= 1e-4
    # a single point: one voxel per level, no pair anywhere (every sum reads only the zero row)
    point = np.array([[4.0, 1.0, -0.5, 0.3]], np.float32)
    assert np.abs(enc.embed(point) - runner.embed(point)).max() <= 1e-4


def test_onnx_runtime_is_deterministic_across_thread_counts(minkunet34_export):
    enc, out = minkunet34_export
    scan = street_scan(seed=5)[:15000, :4]
    vox = enc.backbone_input([scan])
    feeds = graph_inputs(vox.feats, vox.coords)
    one = OnnxEncoder(out / "model.onnx", enc.config, threads=1).run(feeds)
    two = OnnxEncoder(out / "model.onnx", enc.config, threads=2).run(feeds)
    assert np.abs(one - two).max() <= 1e-5


def test_small_depth_exports_and_verification_failure_leaves_nothing(tmp_path):
    torch.manual_seed(1)
    cfg = EncoderConfig(
        backbone="minkunet14",
        head_dim=8,
        preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.4, 0.4, 0.4)),
    )
    enc = with_bn_statistics(LiMAEncoder(cfg), seed=1)
    path = export_onnx(enc, tmp_path / "ok")
    assert path.name == "model.onnx" and OnnxEncoder(path, cfg).embed(street_scan(seed=0)[:, :4]).shape[1] == 96
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_onnx(enc, tmp_path / "bad", tolerance=-1.0)  # no tolerance can be met
    assert list((tmp_path / "bad").iterdir()) == []  # no model.onnx, no temp file


def test_unsupported_backbone_is_refused():
    enc = LiMAEncoder(EncoderConfig(backbone="minkunet14", head_dim=8))
    enc.backbone.conv0[0].conv.dilation = 2
    with pytest.raises(ValueError, match="3x3x3 submanifold"):
        build_onnx_model(enc)


def test_runner_errors_name_the_file(tmp_path):
    enc = LiMAEncoder(EncoderConfig(backbone="minkunet14", head_dim=8))
    enc.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.onnx.*--format onnx"):
        OnnxEncoder.from_pretrained(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.onnx: onnxruntime cannot load"):
        OnnxEncoder.from_pretrained(tmp_path)
    # a loadable ONNX model that is not our graph (e.g. an export from an older layout)
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("feats", "features")]
    graph = helper.make_graph([helper.make_node("Identity", ["feats"], ["features"])], "other", io[:1], io[1:])
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8),
        str(tmp_path / "model.onnx"),
    )
    with pytest.raises(ValueError, match="model.onnx: its inputs .* re-export it with `lima-zoo export`"):
        OnnxEncoder.from_pretrained(tmp_path)


def test_cli_export_onnx_and_embed_with_onnx_runtime(tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    torch.manual_seed(2)
    cfg = EncoderConfig(
        backbone="minkunet14",
        head_dim=8,
        preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.4, 0.4, 0.4)),
    )
    src = with_bn_statistics(LiMAEncoder(cfg), seed=2).save_pretrained(tmp_path / "src")
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(src), "--out", str(tmp_path / "model"), "--format", "safetensors,onnx"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.onnx", "model.safetensors"]
    res = runner.invoke(main, ["export", str(src), "--out", str(tmp_path / "x"), "--format", "onnx,tflite"])
    assert res.exit_code != 0 and "tflite" in res.output
    scan = tmp_path / "scan.bin"
    street_scan(seed=6)[:, :4].astype(np.float32).tofile(scan)
    for runtime in ("torch", "onnx"):
        res = runner.invoke(
            main,
            [
                "embed",
                str(scan),
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(tmp_path / runtime),
                "--runtime",
                runtime,
            ],
        )
        assert res.exit_code == 0, res.output
    a, b = np.load(tmp_path / "torch" / "scan.npy"), np.load(tmp_path / "onnx" / "scan.npy")
    # this untrained net's features reach ~40, so compare relative to their scale
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_cli_export_onnx_without_its_packages_says_how_to_install_once(tmp_path, monkeypatch, missing):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    src = LiMAEncoder(EncoderConfig(backbone="minkunet14", head_dim=8)).save_pretrained(tmp_path / "src")
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "out"), "--format", "onnx"])
    assert res.exit_code != 0 and res.output.count("pip install 'lima-zoo[onnx]'") == 1, res.output
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_sum_tables_pick_every_pair_once_and_pad_with_the_zero_row():
    from lima_zoo.runtime.voxel_inputs import sum_tables

    out_idx = np.array([2, 0, 2, 2, 3, 0])  # row 0: 2 pairs, row 1: none, row 2: 3, row 3: 1
    tables, order = sum_tables(out_idx, 4, widths=(1, 2, 4))
    assert order.tolist() == [1, 3, 0, 2]  # ascending bucket width, stable within a bucket
    assert tables[1].tolist() == [[6], [4]]  # row 1 reads only the zero row (index P = 6)
    assert tables[2].tolist() == [[1, 5]]
    assert tables[4].tolist() == [[0, 2, 3, 6]]
    # summing products through the tables == a scatter-add, in bucket row order
    products = np.random.default_rng(0).standard_normal((6, 3))
    padded = np.concatenate([products, np.zeros((1, 3))])
    sums = np.concatenate([padded[t].sum(axis=1) for t in tables.values()])
    expected = np.zeros((4, 3))
    np.add.at(expected, out_idx, products)
    np.testing.assert_allclose(sums, expected[order])
    with pytest.raises(ValueError, match="widest sum bucket is 2"):
        sum_tables(out_idx, 4, widths=(1, 2))

"""Segmentation models end to end: eval leaves RUN/model, predict writes the datasets' own label
files (read back by their conventions and by nuscenes-devkit), the ONNX export carries the head and
agrees with PyTorch label for label, and viz --labels draws the classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import HUB_COMMIT, fill_hub_cache, with_bn_statistics

from lima_zoo.cli import main
from lima_zoo.config import EncoderConfig, PreprocessConfig
from lima_zoo.io import load_points
from lima_zoo.labels import (
    KITTI_EVAL_CLASSES,
    NUSCENES_EVAL_CLASSES,
    NUSCENES_LUT,
    Vocabulary,
    kitti_learning_map,
    vocabulary_for,
)

pytest.importorskip("timm")


def _tiny_encoder(folder: Path, backbone: str = "minkunet14", **kw) -> Path:
    from lima_zoo import LiMAEncoder

    torch.manual_seed(0)
    pre = PreprocessConfig(voxel_type="cartesian", voxel_size=(0.5, 0.5, 0.5))
    return LiMAEncoder(EncoderConfig(backbone=backbone, head_dim=8, preprocess=pre, **kw)).save_pretrained(folder)


def _cli(*args: str):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def _linear_probe(data: Path, out: Path, tmp: Path) -> Path:
    res = _cli("eval", "--protocol", "linear", "-m", _tiny_encoder(tmp / "enc"), "--data", data, "-o", out,
               "--set", "max_steps=6", "--set", "augment=false")  # fmt: skip
    assert res.exit_code == 0, res.output
    return out / "model"


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    from lima_zoo.synth import generate

    root = tmp_path_factory.mktemp("kitti")
    data = generate(root / "world", "semantickitti", scenes=4, frames=2, seed=31, image_scale=0.1, workers=2)
    return data, _linear_probe(data, root / "lp", root)


@pytest.fixture(scope="module")
def nuscenes(tmp_path_factory):
    from lima_zoo.synth import generate

    root = tmp_path_factory.mktemp("nus")
    data = generate(root / "world", "nuscenes", scenes=4, frames=2, seed=32, image_scale=0.1, workers=2)
    return data, _linear_probe(data, root / "lp", root)


def test_eval_writes_a_model_folder_with_vocabulary_and_model_index(kitti):
    _, model = kitti
    assert {p.name for p in model.iterdir()} == {
        "config.json",
        "model.safetensors",
        "head.json",
        "head.safetensors",
        "README.md",
    }
    head = json.loads((model / "head.json").read_text())
    assert head["label_format"] == "semantickitti" and head["eval_ids"] == list(range(1, 20))
    assert head["raw_ids"][:3] == [0, 10, 11] and head["protocol"] == "linear"
    metrics = json.loads((model.parent / "metrics.json").read_text())
    card = (model / "README.md").read_text()
    assert "model-index:" in card and f"value: {round(100 * metrics['miou'], 2)}" in card
    assert "| car | 1 | 10 |" in card and "LiMASegmenter.from_pretrained" in card


def test_semantickitti_predict_writes_label_files_read_back_by_the_dataset_convention(kitti, tmp_path):
    from lima_zoo import LiMASegmenter

    data, model = kitti
    val = json.loads((data / "lima_splits.json").read_text())["val"][0]
    bad = tmp_path / "in" / "sequences" / val / "velodyne"
    bad.mkdir(parents=True)
    scans = sorted((data / "sequences" / val / "velodyne").glob("*.bin"))
    for s in scans:
        (bad / s.name).write_bytes(s.read_bytes())
    (bad / "999999.bin").write_bytes(b"\0" * 10)  # truncated: reported, the rest written
    res = _cli("predict", tmp_path / "in", "-m", model, "-o", tmp_path / "out", "--format", "semantickitti",
               "--with-probs")  # fmt: skip
    assert res.exit_code == 1 and "999999.bin" in res.output and f"labelled {len(scans)} scan(s)" in res.output
    seg = LiMASegmenter.from_pretrained(model)
    for s in scans:
        label = np.fromfile(tmp_path / "out" / "sequences" / val / "predictions" / f"{s.stem}.label", dtype=np.uint32)
        cloud = load_points(s)
        assert len(label) == len(cloud.points) and (label >> 16).max() == 0  # instance bits 0
        expected = seg.predict(cloud.points, intensity_range=cloud.source_intensity_range())
        # the dataset's own learning map takes the raw ids back to the classes predicted
        np.testing.assert_array_equal(kitti_learning_map(label & 0xFFFF), expected + 1)
        probs = np.load(tmp_path / "out" / "probs" / "sequences" / val / "predictions" / f"{s.stem}.npy")
        assert probs.dtype == np.float16 and probs.shape == (len(label), len(KITTI_EVAL_CLASSES))
        np.testing.assert_array_equal(
            probs.astype(np.float32).argmax(1)[probs.max(1) > 0.6], expected[probs.max(1) > 0.6]
        )
    again = _cli("predict", tmp_path / "in" / "sequences" / val / "velodyne" / "000000.bin", "-m", model, "-o",
                 tmp_path / "out2", "--format", "semantickitti", "--skip-existing")  # fmt: skip
    assert again.exit_code == 0 and (tmp_path / "out2" / "000000.label").is_file()
    again = _cli("predict", tmp_path / "in" / "sequences" / val / "velodyne" / "000000.bin", "-m", model, "-o",
                 tmp_path / "out2", "--format", "semantickitti", "--skip-existing")  # fmt: skip
    assert "skipped 1 existing" in again.output


def test_onnx_predict_equals_torch_label_for_label_on_real_size_scans(kitti, tmp_path):
    from lima_zoo.synth.scan import street_scan

    _, model = kitti
    res = _cli("export", model, "-o", tmp_path / "onnx", "--format", "onnx")
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "onnx").iterdir()} == {"config.json", "head.json", "model.onnx", "README.md"}
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in range(3):  # ~120k points each: SemanticKITTI's size
        street_scan(seed=seed, azimuth_steps=3900)[:, :4].astype(np.float32).tofile(scans / f"{seed:06d}.bin")
    assert len(np.fromfile(scans / "000000.bin", dtype=np.float32)) // 4 > 100_000
    for runtime, folder in (("torch", model), ("onnx", tmp_path / "onnx")):
        res = _cli("predict", scans, "-m", folder, "--runtime", runtime, "-o", tmp_path / runtime, "--format",
                   "semantickitti")  # fmt: skip
        assert res.exit_code == 0, res.output
    for seed in range(3):
        a = np.fromfile(tmp_path / "torch" / f"{seed:06d}.label", dtype=np.uint32)
        b = np.fromfile(tmp_path / "onnx" / f"{seed:06d}.label", dtype=np.uint32)
        assert len(a) > 100_000 and (a == b).all()


def test_nuscenes_predict_opens_in_the_devkit_and_its_evaluator_reproduces_the_miou(nuscenes, tmp_path, monkeypatch):
    nus = pytest.importorskip("nuscenes")
    import nuscenes.eval.lidarseg.utils as devkit_utils
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission
    from nuscenes.utils.data_classes import LidarSegPointCloud

    data, model = nuscenes
    lidar = data / "samples" / "LIDAR_TOP"
    for ids, out in (("raw", tmp_path / "raw"), ("eval", tmp_path / "eval")):
        res = _cli("predict", lidar, "-m", model, "-o", out, "--format", "nuscenes", "--ids", ids, "--data", data)
        assert res.exit_code == 0, res.output
        assert json.loads((out / "val" / "submission.json").read_text())["meta"]["use_lidar"] is True
    nusc = nus.NuScenes("v1.0-trainval", str(data), verbose=False)
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc = LidarSegPointCloud(
            str(data / sd["filename"]), str(tmp_path / "raw/lidarseg/val" / f"{sd['token']}_lidarseg.bin")
        )
        evaluated = np.fromfile(tmp_path / "eval/lidarseg/val" / f"{sd['token']}_lidarseg.bin", dtype=np.uint8)
        assert len(pc.labels) == pc.points.shape[0] and (NUSCENES_LUT[pc.labels] == evaluated).all()
    # the devkit's own checks and evaluator, with its split table pointed at the synthetic scenes
    splits = json.loads((data / "lima_splits.json").read_text())
    monkeypatch.setattr(devkit_utils, "create_splits_scenes", lambda verbose=False: splits)
    validate_submission(nusc, str(tmp_path / "eval"), "val", verbose=False)
    devkit = LidarSegEval(nusc, str(tmp_path / "eval"), "val", verbose=False).evaluate()
    scored = _cli("eval", "--protocol", "none", "-m", model, "--data", data, "-o", tmp_path / "scored")
    report = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    trained = json.loads((model.parent / "metrics.json").read_text())
    assert scored.exit_code == 0 and "inside the cameras" in scored.output, scored.output
    assert report["miou"] == pytest.approx(trained["miou"], abs=1e-6) == pytest.approx(devkit["miou"], abs=1e-6)
    assert 0 <= report["miou_inside"] <= 1 and 0 <= report["miou_outside"] <= 1


def test_parquet_and_npy_predictions(kitti, tmp_path):
    import pyarrow.dataset as pads

    from lima_zoo import load_segmenter

    data, model = kitti
    scans = data / "sequences" / "00" / "velodyne"
    res = _cli("predict", scans, "-m", model, "-o", tmp_path / "pq", "--format", "parquet", "--with-probs")
    assert res.exit_code == 0, res.output
    table = pads.dataset(tmp_path / "pq").to_table()
    assert table.column_names == ["scan", "point", "label", "prob"]
    res = _cli("predict", scans, "-m", model, "-o", tmp_path / "npy")
    assert res.exit_code == 0, res.output
    seg = load_segmenter(model)
    first = sorted(scans.glob("*.bin"))[0]
    ids = np.load(tmp_path / "npy" / f"{first.stem}.npy")
    cloud = load_points(first)
    np.testing.assert_array_equal(ids, seg.predict(cloud.points, intensity_range=cloud.source_intensity_range()))
    rows = table.filter(pads.field("scan") == first.name).to_pydict()
    np.testing.assert_array_equal(np.asarray(rows["label"])[np.argsort(rows["point"])], ids)


@pytest.mark.parametrize("backbone,kw", [("spvcnn18", {"width": 0.25}), ("frnet18", {"width": 0.25})])
@pytest.mark.parametrize("head_output", ["logits", "ids"])
def test_segmentation_onnx_export_on_point_backbones(backbone, kw, head_output, tmp_path, small_street_points):
    from lima_zoo import LiMAEncoder, LiMASegmenter, load_segmenter
    from lima_zoo.export import export_folder

    torch.manual_seed(1)
    cfg = EncoderConfig(backbone=backbone, head_dim=8, **kw)
    if backbone.startswith("spvcnn"):
        cfg = EncoderConfig(backbone=backbone, head_dim=8, preprocess=PreprocessConfig(voxel_type="cartesian",
                            voxel_size=(0.4, 0.4, 0.4)), **kw)  # fmt: skip
    seg = LiMASegmenter(with_bn_statistics(LiMAEncoder(cfg)), vocabulary_for("nuscenes", NUSCENES_EVAL_CLASSES))
    with_bn_statistics(seg)
    seg.save_pretrained(tmp_path / "seg")
    written = export_folder(tmp_path / "seg", tmp_path / "out", ["onnx"], head_output=head_output)
    assert "model.onnx" in written and "head.json" in written
    runner = load_segmenter(tmp_path / "out", runtime="onnx")
    torch_pred, onnx_pred = seg.predict(small_street_points), runner.predict(small_street_points)
    assert onnx_pred.shape == (len(small_street_points),) and (torch_pred == onnx_pred).mean() > 0.999
    features = runner.embed(small_street_points)  # the graph still embeds
    np.testing.assert_allclose(features, seg.embed(small_street_points), atol=1e-4)
    if head_output == "ids":
        with pytest.raises(ValueError, match="class ids only"):
            runner.predict_proba(small_street_points)
        from lima_zoo.pipeline import PredictOptions, run_predict

        with pytest.raises(ValueError, match="no probabilities"):
            run_predict([], runner, tmp_path / "p", PredictOptions(with_probs=True))
    else:
        np.testing.assert_allclose(
            runner.predict_proba(small_street_points), seg.predict_proba(small_street_points), atol=1e-4
        )


def test_viz_labels_draws_png_and_ply(kitti, tmp_path):
    data, model = kitti
    scan = sorted((data / "sequences" / "00" / "velodyne").glob("*.bin"))[0]
    res = _cli("viz", scan, "-m", model, "--labels", "-o", tmp_path / "labels.png")
    assert res.exit_code == 0 and "predicted classes" in res.output, res.output
    assert (tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"
    res = _cli("viz", scan, "-m", model, "--labels", "-o", tmp_path / "labels.ply")
    assert res.exit_code == 0, res.output
    head = (tmp_path / "labels.ply").read_bytes()[:2000].split(b"end_header")[0].decode()
    assert "property int label" in head and "0=car" in head
    res = _cli("viz", scan, "-m", model, "--labels", "--mode", "pca", "-o", tmp_path / "x.png")
    assert res.exit_code != 0 and "--labels" in res.output


def test_vocabulary_and_options_refuse_what_cannot_be_written(tmp_path):
    from lima_zoo.labels import read_head_json
    from lima_zoo.pipeline import PredictOptions

    kitti = vocabulary_for("semantickitti", KITTI_EVAL_CLASSES)
    np.testing.assert_array_equal(kitti.ids(np.array([0, 8, -1]), "raw"), [10, 40, 0])
    np.testing.assert_array_equal(kitti.ids(np.array([0, 8, -1]), "eval"), [1, 9, 0])
    custom = vocabulary_for("folder", ("a", "b"))
    assert custom.raw_ids is None
    with pytest.raises(ValueError, match="no dataset with raw ids"):
        custom.ids(np.array([0]), "raw")
    with pytest.raises(ValueError, match="raw_ids"):
        Vocabulary(("a", "b"), "x", (0, 1))
    with pytest.raises(ValueError, match="not indices"):
        PredictOptions(fmt="semantickitti", ids="index")
    with pytest.raises(ValueError, match="split"):
        PredictOptions(fmt="nuscenes", split="../x")
    with pytest.raises(ValueError, match="batch_size"):
        PredictOptions(batch_size=0)
    (tmp_path / "head.json").write_text('{"class_names": ["a"], "eval_ids": [2]}')
    with pytest.raises(ValueError, match="head.json"):
        read_head_json(tmp_path / "head.json")


def test_registered_segmentation_names_say_they_are_not_published(monkeypatch, tmp_path):
    from lima_zoo import list_models, load_segmenter
    from lima_zoo.hub import OfflineError

    names = list_models("segmentation")
    assert "vit-b-minkunet34-nuscenes-lp" in names and "vit-s-frnet-semantickitti-ft" in names
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="no weights have been published"):
        load_segmenter("vit-b-minkunet34-nuscenes-lp", cache_dir=str(tmp_path))


def test_segmenters_load_from_a_prefilled_hub_cache_by_repo_and_registered_name(kitti, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from lima_zoo import LiMASegmenter, load_segmenter
    from lima_zoo.registry import MODELS

    _, model = kitti
    assert _cli("export", model, "-o", tmp_path / "onnx", "--format", "onnx").exit_code == 0
    cache = tmp_path / "cache"
    torch_files = ("config.json", "model.safetensors", "head.json", "head.safetensors")
    fill_hub_cache(cache, "someorg/seg", model, torch_files)
    fill_hub_cache(cache, MODELS["vit-s-minkunet34-semantickitti-lp"].hub_repo, model, torch_files)
    fill_hub_cache(cache, "someorg/seg-onnx", tmp_path / "onnx", ("config.json", "model.onnx", "head.json"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    scan = load_points(sorted((kitti[0] / "sequences" / "00" / "velodyne").glob("*.bin"))[0]).points
    want = LiMASegmenter.from_pretrained(model).predict(scan)
    for source, runtime in (
        ("someorg/seg", "torch"),
        (f"someorg/seg@{HUB_COMMIT}", "torch"),
        ("vit-s-minkunet34-semantickitti-lp", "torch"),
        ("someorg/seg-onnx", "onnx"),
    ):
        seg = load_segmenter(source, runtime=runtime, cache_dir=str(cache))
        assert seg.class_names == KITTI_EVAL_CLASSES and (seg.predict(scan) == want).mean() > 0.999, source
    with pytest.raises(FileNotFoundError, match="missing model.safetensors, head.safetensors"):
        load_segmenter(tmp_path / "onnx", runtime="torch")  # an ONNX-only folder has no torch weights

"""mIoU by hand, Lovasz-softmax, and the linear-probe / fine-tune pipeline end to end (tiny)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lima_zoo.training.lovasz import lovasz_softmax
from lima_zoo.training.metrics import ConfusionMatrix


def test_miou_against_a_hand_computed_example():
    cm = ConfusionMatrix(("a", "b", "c", "d"))
    target = torch.tensor([1, 1, 1, 2, 2, 0, 0, 3])
    pred = torch.tensor([1, 1, 2, 2, 1, 3, 4, 3])
    cm.update(pred, target)
    # class a: TP 2, FP 1 (a b predicted a), FN 1 -> 2/4; b: TP 1, FP 1, FN 1 -> 1/3; c: TP 1 -> 1/1
    # (the two ignored points predicted c and d do not count); d: absent everywhere -> no IoU.
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [0.5, 1 / 3, 1.0])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((0.5 + 1 / 3 + 1.0) / 3)
    assert "d     -" in cm.table().replace("  ", " ") or "   -  " in cm.table()
    cm.update(torch.tensor([4]), torch.tensor([1]))  # a predicted class that is absent from labels still counts
    assert cm.iou()[3] == 0.0
    with pytest.raises(ValueError, match="ids must be in 1..4"):
        cm.update(torch.tensor([0]), torch.tensor([1]))


def test_lovasz_softmax_is_zero_for_perfect_and_positive_otherwise():
    target = torch.tensor([0, 1, 2, 1, -100])
    perfect = torch.nn.functional.one_hot(target.clamp_min(0), 3).float()
    assert float(lovasz_softmax(perfect, target)) == 0.0
    probs = torch.full((5, 3), 1 / 3, requires_grad=True)
    loss = lovasz_softmax(probs, target)
    loss.backward()
    assert 0 < float(loss) <= 1 and probs.grad[4].abs().sum() == 0  # ignored row gets no gradient
    # one class and every point a member: 1 - IoU grows by 1/n per wrong point, so the loss is the mean error
    p = torch.tensor([[0.2, 0.8], [0.4, 0.6]])
    assert float(lovasz_softmax(p, torch.tensor([1, 1]))) == pytest.approx(0.3)


@pytest.fixture(scope="module")
def labelled_world(tmp_path_factory):
    from lima_zoo.synth import generate

    return generate(
        tmp_path_factory.mktemp("labelled"), "nuscenes", scenes=4, frames=2, seed=21, image_scale=0.1, workers=2
    )


def _tiny_encoder(tmp_path):
    from lima_zoo import LiMAEncoder
    from lima_zoo.config import EncoderConfig, PreprocessConfig

    torch.manual_seed(0)
    enc = LiMAEncoder(
        EncoderConfig(
            backbone="minkunet14",
            head_dim=8,
            preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.5, 0.5, 0.5)),
        )
    )
    return enc.save_pretrained(tmp_path / "enc")


def test_linear_probe_and_finetune_end_to_end(labelled_world, tmp_path):
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.downstream import run_downstream

    enc = _tiny_encoder(tmp_path)
    probe = run_downstream(
        DownstreamConfig(protocol="linear", augment=False, max_steps=6, lr=0.01, camera_split=True),
        str(enc),
        labelled_world,
        tmp_path / "lp",
    )
    assert 0 <= probe["miou"] <= 1 and probe["val_frames"] == 2
    assert (
        0 <= probe["miou_inside"] <= 1 and 0 <= probe["miou_outside"] <= 1
    )  # points inside / outside the current cameras
    saved = json.loads((tmp_path / "lp" / "metrics.json").read_text())
    assert saved["miou"] == probe["miou"] and len(saved["per_class_iou"]) == 16
    assert (tmp_path / "lp" / "iou.png").exists() and (tmp_path / "lp" / "loss.png").exists()
    # The backbone of a probe does not change: not its weights, not its BatchNorm statistics.
    from lima_zoo import LiMAEncoder

    before = LiMAEncoder.from_pretrained(enc).state_dict()
    state = torch.load(tmp_path / "lp" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(state[f"encoder.{k}"], v) for k, v in before.items())

    cfg = DownstreamConfig(protocol="finetune", percent=50, max_steps=4, checkpoint_every=2, batch=1)
    full = run_downstream(cfg, str(enc), labelled_world, tmp_path / "ft")
    losses = [json.loads(r)["loss"] for r in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]

    def interrupt(rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_downstream(cfg, str(enc), labelled_world, tmp_path / "ft2", on_step=interrupt)
    resumed = run_downstream(cfg, str(enc), labelled_world, tmp_path / "ft2", resume=True)
    again = [json.loads(r)["loss"] for r in (tmp_path / "ft2" / "log.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(again, losses, rtol=1e-6)
    assert resumed["miou"] == pytest.approx(full["miou"])


def test_random_backbone_is_seeded():
    from lima_zoo.loading import load_encoder
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.downstream import backbone_source

    cfg = DownstreamConfig(random_backbone="minkunet14", seed=3)
    a = load_encoder(backbone_source("random", cfg), device=torch.device("cpu"), seed=cfg.seed).state_dict()
    b = load_encoder(backbone_source("random", cfg), device=torch.device("cpu"), seed=cfg.seed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_cli_rejects_unknown_setting(labelled_world, tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    res = CliRunner().invoke(
        main,
        ["eval", "--model", "random", "--data", str(labelled_world), "--out", str(tmp_path / "x"), "--set", "epoch=3"],
    )
    assert res.exit_code != 0 and "unknown keys ['epoch']" in res.output and "'epochs'" in res.output


def test_camera_split_partitions_the_validation_points(labelled_world, tmp_path):
    from lima_zoo import LiMAEncoder
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.downstream import Segmenter, evaluate, in_cameras

    val = open_dataset(labelled_world, "val", labels=True)
    model = Segmenter(LiMAEncoder.from_pretrained(_tiny_encoder(tmp_path)), len(val.class_names), True, 0.02)
    cms = evaluate(model, val, camera_split=("CAM_FRONT",))
    assert torch.equal(cms["inside"].matrix + cms["outside"].matrix, cms["all"].matrix)
    frame = val.frame(0, 0)
    front, every = in_cameras(frame, ("CAM_FRONT",)), in_cameras(frame)
    assert 0 < int(front.sum()) < int(every.sum()) < len(frame.points) and bool(
        (every | ~front).all()
    )  # front within all cameras


@pytest.mark.parametrize("backbone", ["spvcnn18", "frnet18"])
def test_point_output_probe_and_finetune_steps(backbone, labelled_world, tmp_path):
    """The downstream loop is backbone-agnostic: SPVCNN's and FRNet's per-point rows go straight to the head."""
    from lima_zoo import LiMAEncoder
    from lima_zoo.config import EncoderConfig, PreprocessConfig
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.downstream import run_downstream

    torch.manual_seed(0)
    cfg = EncoderConfig(
        backbone=backbone,
        width=0.25,
        head_dim=8,
        preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.5, 0.5, 0.5)),
    )
    enc = LiMAEncoder(cfg).save_pretrained(tmp_path / backbone)
    for protocol in ("linear", "finetune"):
        # batch 1: the evaluation walks the 2 validation frames in two batches
        cfg = DownstreamConfig(protocol=protocol, augment=protocol == "finetune", max_steps=3, lr=0.01, batch=1)
        report = run_downstream(cfg, str(enc), labelled_world, tmp_path / protocol)
        assert 0 <= report["miou"] <= 1 and report["val_frames"] == 2


def test_eval_leaves_a_segmentation_model_that_reproduces_its_miou(labelled_world, tmp_path):
    """RUN/model loads strictly as a LiMASegmenter whose predictions score the mIoU the run printed."""
    from lima_zoo.segmenter import LiMASegmenter
    from lima_zoo.training.config import DownstreamConfig
    from lima_zoo.training.datasets import open_dataset
    from lima_zoo.training.downstream import run_downstream
    from lima_zoo.training.metrics import ConfusionMatrix

    enc = _tiny_encoder(tmp_path)
    report = run_downstream(
        DownstreamConfig(protocol="linear", augment=False, max_steps=6, lr=0.01),
        str(enc),
        labelled_world,
        tmp_path / "lp",
    )
    seg = LiMASegmenter.from_pretrained(tmp_path / "lp" / "model")
    val = open_dataset(labelled_world, "val", labels=True)
    assert seg.class_names == val.class_names and seg.info["miou"] == pytest.approx(report["miou"])
    cm = ConfusionMatrix(val.class_names)
    for s, k in val.index():
        frame = val.frame(s, k)
        pred = seg.predict(frame.points, intensity_range=val.intensity_scale)
        probs = seg.predict_proba(frame.points, intensity_range=val.intensity_scale)
        assert pred.shape == (len(frame.points),) and np.allclose(probs.sum(1), 1, atol=1e-5)
        cm.update(torch.from_numpy(pred + 1), torch.from_numpy(frame.labels))
    assert cm.miou() == pytest.approx(report["miou"], abs=1e-6)
    from click.testing import CliRunner

    from lima_zoo.cli import main

    res = CliRunner().invoke(
        main,
        [
            "eval",
            "--protocol",
            "none",
            "-m",
            str(tmp_path / "lp" / "model"),
            "--data",
            str(labelled_world),
            "-o",
            str(tmp_path / "scored"),
        ],
    )
    scored = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert res.exit_code == 0 and scored["miou"] == pytest.approx(report["miou"], abs=1e-6), res.output
    head = tmp_path / "lp" / "model" / "head.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(head))
    state.pop("classifier.bias")
    save_file(state, str(head))
    with pytest.raises(ValueError, match="classifier.bias"):
        LiMASegmenter.from_pretrained(tmp_path / "lp" / "model")

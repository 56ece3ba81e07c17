"""Model cards (parsed with huggingface_hub's ModelCard) and `lima-zoo push` (dry run, one commit,
offline errors, the token never printed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard

from lima_zoo import LiMAEncoder
from lima_zoo.cli import main
from lima_zoo.config import EncoderConfig
from lima_zoo.export.card import CARDS_DIR, render_card
from lima_zoo.export.push import plan_upload, push
from lima_zoo.hub import OfflineError

TOKEN = "hf_secretTOKENdoNotPrint0123456789"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    LiMAEncoder(EncoderConfig(backbone="minkunet14", head_dim=16, teacher="synthetic")).save_pretrained(out)
    (out / "linear.json").write_text(
        json.dumps({"miou": 0.4678, "protocol": "linear", "percent": 100.0, "dataset": "nuscenes", "split": "val"})
    )
    (out / "ft1.json").write_text(
        json.dumps({"miou": 0.4254, "protocol": "finetune", "percent": 1.0, "dataset": "nuscenes", "split": "val"})
    )
    return out


@pytest.mark.parametrize("data", sorted(p.stem for p in CARDS_DIR.glob("*.yaml")))
def test_every_card_parses_with_the_required_metadata(model_dir, data):
    card = ModelCard(
        render_card(model_dir, "lima-zoo/test-model", data, [model_dir / "linear.json", model_dir / "ft1.json"])
    )
    meta = card.data.to_dict()
    expected = {"synthetic-tiny": "apache-2.0", "custom": "other"}.get(data, "cc-by-nc-sa-4.0")  # nuScenes-trained
    assert meta["library_name"] == "lima-zoo" and meta["license"] == expected
    assert meta["pipeline_tag"] == "feature-extraction"
    assert {"lidar", "point-cloud", "feature-extraction", "self-supervised"} <= set(meta["tags"])
    if data.startswith("vit-"):
        assert meta["datasets"] == ["nuscenes"]
    # model-index values are the evaluation JSONs' numbers, nothing else
    values = {m["name"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert values == {"mIoU (linear probe)": 46.78, "mIoU (fine-tune, 1% labels)": 42.54}
    text = card.text
    for section in (
        "## Usage",
        "## Preprocessing contract",
        "## Evaluation",
        "## Limitations",
        "## Citation",
        "trained on",
    ):
        assert section in text, section
    assert "| 46.78 |" in text and "2507.05260" in text
    assert "cylindrical, voxel size 0.1 x 1 x 0.1" in text  # from config.json, not from the card data


def test_frnet_card_states_its_range_image(tmp_path):
    """The preprocessing contract of a range-view encoder is its range image (from config.json), not voxels."""
    LiMAEncoder(EncoderConfig(backbone="frnet18", width=0.25, head_dim=16)).save_pretrained(tmp_path)
    text = ModelCard(render_card(tmp_path, "lima-zoo/vit-b-frnet", "vit-b-frnet")).text
    assert "| range image | 32 x 480 pixels, 10 to -30 degrees inclination;" in text and "voxel size" not in text
    assert "Backbone: frnet18 (range-view FRNet, " in text and "FRNet-34" in text


def test_card_without_evaluations_says_so_and_has_no_model_index(model_dir):
    card = ModelCard(render_card(model_dir, "me/tiny"))
    assert "model-index" not in card.data.to_dict() and "Not evaluated yet" in card.text
    with pytest.raises(ValueError, match="not a lima-zoo evaluation JSON"):
        render_card(model_dir, "me/tiny", evals=[model_dir / "config.json"])
    with pytest.raises(ValueError, match="card data 'nope'"):
        render_card(model_dir, "me/tiny", "nope")


def test_usage_snippet_runs(model_dir, tmp_path):
    """The card's Python snippet, run as written against a pre-filled Hub cache, offline."""
    from conftest import fill_hub_cache

    snippet = re.search(r"```python\n(.*?)```", render_card(model_dir, "me/tiny-encoder"), re.S).group(1)
    cache = tmp_path / "cache"
    fill_hub_cache(cache, "me/tiny-encoder", model_dir)
    scan = np.zeros((3000, 5), np.float32)
    scan[:, :4] = np.random.default_rng(0).uniform([-20, -20, -2, 0], [20, 20, 2, 255], (3000, 4))
    scan.tofile(tmp_path / "scan.pcd.bin")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    code = snippet + "\nassert features.shape == (3000, 96), features.shape\nprint('ok')\n"
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_dry_run_lists_exactly_what_would_be_uploaded(model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    res = CliRunner().invoke(
        main, ["push", str(model_dir), "--repo-id", "me/tiny", "--dry-run", "--eval", str(model_dir / "linear.json")]
    )
    assert res.exit_code == 0, res.output
    listed = re.findall(r"^  (\S+)\s+[\d,]+ bytes", res.output, re.M)
    assert listed == ["config.json", "model.safetensors", "README.md"]
    assert "library_name: lima-zoo" in res.output and TOKEN not in res.output


class _RecordingApi:
    calls: list = []

    def __init__(self, token=None):
        assert token == TOKEN
        type(self).calls.append(("init",))

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        type(self).calls.append(("create_repo", repo_id, private, exist_ok))

    def create_branch(self, repo_id, branch, exist_ok=False):
        type(self).calls.append(("create_branch", repo_id, branch))

    def create_commit(self, repo_id, operations, commit_message, revision=None):
        type(self).calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations), revision))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"

        return Info()


def test_push_is_one_commit_with_all_files(model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    from lima_zoo.export import export_onnx

    folder = LiMAEncoder.from_pretrained(model_dir).save_pretrained(tmp_path / "with_onnx")
    export_onnx(LiMAEncoder.from_pretrained(folder), folder)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    monkeypatch.setattr("lima_zoo.export.push.hub_reachable", lambda: True)
    _RecordingApi.calls = []
    url = push(plan_upload(folder, "me/tiny"), private=True, revision="v1")
    assert url.endswith("/commit/abc")
    assert _RecordingApi.calls == [
        ("init",),
        ("create_repo", "me/tiny", True, True),
        ("create_branch", "me/tiny", "v1"),
        ("create_commit", "me/tiny", ["README.md", "config.json", "model.onnx", "model.safetensors"], "v1"),
    ]


def test_push_offline_fails_fast_and_never_prints_the_token(model_dir, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    res = CliRunner().invoke(main, ["push", str(model_dir), "--repo-id", "me/tiny"])
    assert res.exit_code != 0 and "HF_HUB_OFFLINE" in res.output and "nothing was uploaded" in res.output
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    res = CliRunner().invoke(main, ["push", str(model_dir), "--repo-id", "me/tiny"])
    assert res.exit_code != 0 and "unreachable" in res.output
    assert time.perf_counter() - start < 20
    assert TOKEN not in res.output
    with pytest.raises(OfflineError):
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
        push(plan_upload(model_dir, "me/tiny"))


def test_push_refuses_bad_input(model_dir, tmp_path):
    with pytest.raises(ValueError, match="expected 'org/name'"):
        plan_upload(model_dir, "not a repo")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        plan_upload(broken, "me/x")

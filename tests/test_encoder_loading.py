"""LiMAEncoder: save / load by folder and from a pre-filled Hub cache, offline errors, strictness,
config checks, batched embed."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from conftest import HUB_COMMIT, fill_hub_cache

from lima_zoo import LiMAEncoder, create_encoder, list_models
from lima_zoo.config import EncoderConfig, PreprocessConfig
from lima_zoo.hub import OfflineError

TINY = EncoderConfig(backbone="minkunet14", head_dim=32, preprocess=PreprocessConfig())
COMMIT = HUB_COMMIT


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    enc = LiMAEncoder(TINY).eval()
    return enc, enc.save_pretrained(tmp_path_factory.mktemp("model"))


def test_save_and_load_by_directory(saved, small_street_points):
    enc, folder = saved
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    loaded = LiMAEncoder.from_pretrained(folder)
    assert loaded.config == enc.config and not loaded.training
    np.testing.assert_array_equal(loaded.embed(small_street_points), enc.embed(small_street_points))


def test_load_from_prefilled_cache_offline(saved, tmp_path, small_street_points, monkeypatch):
    import huggingface_hub.constants as hc

    enc, folder = saved
    fill_hub_cache(tmp_path, "someorg/tiny-encoder", folder)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    for spec in ("someorg/tiny-encoder", f"someorg/tiny-encoder@{COMMIT}"):
        loaded = LiMAEncoder.from_pretrained(spec, cache_dir=str(tmp_path))
        np.testing.assert_array_equal(loaded.embed(small_street_points[:3000]), enc.embed(small_street_points[:3000]))


def test_registered_model_offline_error_is_fast_and_helpful(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        LiMAEncoder.from_pretrained("vit-b-minkunet34", cache_dir=str(tmp_path))
    # Not a speed test: it guards against huggingface_hub's ~20 s of DNS retries (a hang to a user).
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert (
        "lima-zoo/vit-b-minkunet34" in msg
        and str(tmp_path) in msg
        and "save_pretrained" in msg
        and "lima-zoo train" in msg
    )


def test_unreachable_hub_fails_within_seconds(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable endpoint is detected before huggingface_hub retries."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="unreachable"):
        LiMAEncoder.from_pretrained("someorg/absent", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5


def test_local_files_only(tmp_path):
    with pytest.raises(OfflineError, match="local_files_only"):
        LiMAEncoder.from_pretrained("vit-s-minkunet34", cache_dir=str(tmp_path), local_files_only=True)


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'vit-b-minkunet34'"):
        LiMAEncoder.from_pretrained("vit-b-minkunet43")


def test_strict_load_lists_every_problem(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    state = load_file(os.path.join(folder, "model.safetensors"))
    del state["backbone.conv0.0.conv.kernel"]
    state["backbone.extra.weight"] = torch.zeros(2)
    state["head.proj.weight"] = torch.zeros(5, 96)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError) as err:
        LiMAEncoder.from_pretrained(bad)
    msg = str(err.value)
    assert "missing (1): backbone.conv0.0.conv.kernel" in msg
    assert "unexpected (1): backbone.extra.weight" in msg
    assert "head.proj.weight: file (5, 96) vs model (32, 96)" in msg


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c.update(colour="red"), r"unknown keys \['colour'\]"),
        (lambda c: c.update(format_version=99), "newer than this lima-zoo supports"),
        (lambda c: c["preprocess"].update(voxel_type="spherical"), "voxel_type"),
        (lambda c: c.update(head_dim="big"), "expected int"),
        (
            lambda c: c["preprocess"].update(intensity_scale="255"),
            r"config.json.preprocess.intensity_scale: expected a number, got '255'",
        ),
        (lambda c: c.update(bn_momentum="0.05"), r"config.json.bn_momentum: expected a number"),
        (lambda c: c.update(format_version=[1]), r"config.json.format_version: expected int, got \[1\]"),
        (lambda c: c.update(format_version="one"), r"config.json.format_version: expected int, got 'one'"),
        (lambda c: c.update(in_channels=True), r"config.json.in_channels: expected int, got True"),
        (lambda c: c["preprocess"].update(voxel_size=[0.1, 1.0]), r"voxel_size: expected a list of 3 values"),
        (lambda c: c["preprocess"].update(voxel_size=[0.1, "1", 0.1]), r"voxel_size\[1\]: expected a number"),
        (lambda c: c["preprocess"].update(use_dim=5), r"config.json.preprocess: use_dim must be 3"),
        (lambda c: c.update(width=0.5), r"config.json: a minkunet14 of width 0.5 outputs 48 channels; out_dim=96"),
        (lambda c: c.update(width="half"), r"config.json.width: expected a number"),
    ],
)
def test_config_checks(saved, tmp_path, edit, message):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=message):
        LiMAEncoder.from_pretrained(bad)


def test_unreadable_config_and_weights_name_the_file(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / "config.json").write_bytes(b"\xff\xfe{not utf-8")
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"m/config.json: unreadable config"):
        LiMAEncoder.from_pretrained(bad)
    (bad / "config.json").write_text((folder / "config.json").read_text())
    for content in ((folder / "model.safetensors").read_bytes()[:1000], b"PK\x03\x04 a zip, not safetensors"):
        (bad / "model.safetensors").write_bytes(content)
        with pytest.raises(ValueError, match=r"m/model.safetensors: not a readable safetensors file"):
            LiMAEncoder.from_pretrained(bad)


def test_half_width_round_trip(tmp_path, small_street_points):
    torch.manual_seed(0)
    enc = LiMAEncoder(EncoderConfig(backbone="minkunet14", width=0.5, head_dim=32)).eval()
    again = LiMAEncoder.from_pretrained(enc.save_pretrained(tmp_path / "half"))
    assert again.config.width == 0.5 and again.config.out_dim == 48
    np.testing.assert_array_equal(again.embed(small_street_points), enc.embed(small_street_points))


def test_missing_files_in_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        LiMAEncoder.from_pretrained(tmp_path)


def test_embed_batch_matches_single_scans(saved, small_street_points):
    enc, _ = saved
    a, b = small_street_points, small_street_points[::3] + np.float32(0.05)
    batch = enc.embed([a, b])
    np.testing.assert_allclose(batch[0], enc.embed(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch[1], enc.embed(b), rtol=1e-5, atol=1e-5)
    feats, coords, vfeats = enc.embed([a, b], return_voxels=True)
    assert coords.shape[1] == 4 and set(np.unique(coords[:, 0])) == {0, 1} and vfeats.shape == (len(coords), 96)


def test_embed_torch_input_stays_on_device(saved, small_street_points):
    enc, _ = saved
    out = enc.embed(torch.from_numpy(small_street_points))
    assert isinstance(out, torch.Tensor) and out.device == enc.device and out.dtype == torch.float32


def test_intensity_rescaled_to_model_convention(saved):
    enc, _ = saved
    pts = np.array([[1.0, 2.0, 3.0, 0.5]], np.float32)
    assert enc.prepare(pts, intensity_range=1.0)[0, 3].item() == pytest.approx(127.5)
    assert enc.prepare(pts, intensity_range=255.0)[0, 3].item() == pytest.approx(0.5)


def test_large_scan_embeds(saved):
    """A 300k-point scan (several nuScenes sweeps' worth) runs through in one call."""
    from lima_zoo.synth.scan import street_scan

    enc, _ = saved
    big = np.concatenate([street_scan(seed=s, azimuth_steps=2700) for s in range(4)])
    assert len(big) > 300_000
    feats = enc.embed(big)
    assert feats.shape == (len(big), 96) and np.isfinite(feats).all()


@pytest.mark.parametrize("name", list_models("features"))
def test_registered_configs_build(name):
    with torch.device("meta"):
        enc = create_encoder(name)
    assert enc.config.head_dim in (384, 768, 1024) and enc.head.proj.out_features == enc.config.head_dim


@pytest.fixture
def fresh_hub_session():
    """huggingface_hub caches one HTTP client; proxy variables are read when it is made."""
    import huggingface_hub

    reset = getattr(huggingface_hub, "close_session", None) or huggingface_hub.utils.reset_sessions
    reset()
    yield
    reset()


def test_reachability_goes_through_the_proxy(monkeypatch, fresh_hub_session):
    """Behind an HTTP(S) proxy the endpoint's host may not even resolve: the probe must ask the proxy,
    as huggingface_hub's downloads do, not open a raw TCP connection to the endpoint."""
    import http.server
    import threading

    import huggingface_hub.constants as hc

    from lima_zoo.hub import hub_reachable

    seen = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # a forward proxy gets the absolute URL
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(hc, "ENDPOINT", "http://hub.invalid")  # .invalid never resolves
        for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        for var in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(var, f"http://127.0.0.1:{server.server_port}")
        assert hub_reachable(timeout=5) and seen and "hub.invalid" in seen[0]
    finally:
        server.shutdown()


def test_force_download_skips_the_cache(saved, tmp_path, monkeypatch):
    """A cached branch revision is refreshable: force_download goes to the network (here: offline, so it says so)."""
    import huggingface_hub.constants as hc

    _, folder = saved
    fill_hub_cache(tmp_path, "someorg/tiny-encoder", folder)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    LiMAEncoder.from_pretrained("someorg/tiny-encoder", cache_dir=str(tmp_path))  # the cache answers
    with pytest.raises(OfflineError, match="fresh download was asked for"):
        LiMAEncoder.from_pretrained("someorg/tiny-encoder", cache_dir=str(tmp_path), force_download=True)


def test_a_batch_too_big_for_free_memory_is_refused_before_the_forward(saved, small_street_points, monkeypatch):
    import lima_zoo.features as features_module
    from lima_zoo.features import ensure_fits

    ensure_fits(1000, torch.device("cpu"), free=10**9)  # 3.4 MB of 1 GB: fine
    with pytest.raises(
        ValueError, match=r"5,000,000 points -> 1,600,000 voxels would need ~5.1 GiB on cpu, but only 4.0 GiB is free"
    ):
        ensure_fits(1_600_000, torch.device("cpu"), 5_000_000, free=4 * 2**30)
    enc, _ = saved
    monkeypatch.setattr(features_module, "available_memory", lambda device: 2**20)  # 1 MiB free
    with pytest.raises(ValueError, match="crop the map into tiles"):
        enc.embed(small_street_points)
    assert enc.embed(small_street_points[:100], check_memory=False).shape == (100, 96)

"""Converting torchsparse-lineage (SuperFlow-style) checkpoints: key mapping, report, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lima_zoo import LiMAEncoder
from lima_zoo.config import EncoderConfig
from lima_zoo.export.convert import convert_checkpoint
from lima_zoo.synth.scan import street_scan
from lima_zoo.weights import read_state_dict


def _superflow_style_checkpoint(path, depth="minkunet14", head=True, wrap=True):
    """What an mmengine SuperFlow run saves: backbone_3d.* with torchsparse's 2-D 1x1 kernels,
    head_3d.conv_seg (96 -> 64), the image branch, and meta/optimizer around the state dict."""
    torch.manual_seed(0)
    src = LiMAEncoder(EncoderConfig(backbone=depth, head_dim=64)).eval()
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {}
    for k, v in src.backbone.state_dict().items():
        state[f"backbone_3d.{k}"] = v[0] if k.endswith(".kernel") and v.shape[0] == 1 else v  # 1x1x1: (C_in, C_out)
    if head:
        state["head_3d.conv_seg.weight"] = src.head.proj.weight.detach().clone()
        state["head_3d.conv_seg.bias"] = src.head.proj.bias.detach().clone()
    state["backbone_2d.encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    state["head_2d.conv.weight"] = torch.zeros(2, 2)
    obj = (
        {"meta": {"epoch": 100, "seed": 0}, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
        if wrap
        else state
    )
    torch.save(obj, path)
    return src


@pytest.mark.parametrize("depth", ["minkunet14", "minkunet34", "spvcnn18", "spvcnn34"])
def test_superflow_checkpoint_converts_to_identical_features(tmp_path, depth):
    src = _superflow_style_checkpoint(tmp_path / "epoch_100.pth", depth=depth)
    enc, report = convert_checkpoint(tmp_path / "epoch_100.pth")
    assert report.backbone_prefix == "backbone_3d." and report.head_prefix == "head_3d.conv_seg."
    assert report.unmapped == ["backbone_2d.encoder.blocks.0.attn.qkv.weight", "head_2d.conv.weight"]
    assert "left out (2 keys" in report.summary()
    assert enc.config.backbone == depth and enc.config.head_dim == 64
    scan = street_scan(seed=2)[:8000, :4]
    for space in ("backbone", "teacher"):
        np.testing.assert_array_equal(enc.embed(scan, space=space), src.embed(scan, space=space))


def test_missing_head_is_an_error_unless_asked_for(tmp_path):
    _superflow_style_checkpoint(tmp_path / "seg.pth", head=False, wrap=False)
    with pytest.raises(ValueError, match="no distillation/projection head"):
        convert_checkpoint(tmp_path / "seg.pth")
    enc, report = convert_checkpoint(tmp_path / "seg.pth", head="none")
    assert enc.config.head_dim == 0 and "teacher-space features are unavailable" in report.summary()
    with pytest.raises(ValueError, match="no distillation head"):
        enc.embed(street_scan(seed=0)[:2000, :4], space="teacher")
    out = enc.save_pretrained(tmp_path / "backbone_only")  # round-trips strictly
    assert LiMAEncoder.from_pretrained(out).config.head_dim == 0


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_incomplete_or_foreign_checkpoints_are_refused_clearly(tmp_path):
    state = {
        f"backbone_3d.{k}": v
        for k, v in LiMAEncoder(EncoderConfig(backbone="minkunet14", head_dim=8)).backbone.state_dict().items()
    }
    state.pop("backbone_3d.block3.0.conv2.kernel")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="no complete MinkUNet or SPVCNN backbone"):
        convert_checkpoint(tmp_path / "partial.pth")

    import argparse

    # a pickled Python object (as mmengine stores its config): weights_only refuses it, and so do we
    torch.save({"state_dict": state, "cfg": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"pickled.pth: .*\(argparse.Namespace\).*never unpickles"):
        read_state_dict(tmp_path / "pickled.pth")
    # a malicious pickle (a callable in __reduce__): refused with the same message, never executed
    torch.save({"state_dict": state, "x": _Exploit(tmp_path / "pwned")}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth: .*\((posix|nt)\.system\).*never unpickles"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    # not a pickle at all, or a truncated one: unreadable, not "holds pickled objects"
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "pickled.pth").read_bytes()[:100])
    for name in ("junk.pth", "cut.pth"):
        with pytest.raises(ValueError, match=f"{name}: not a readable PyTorch checkpoint") as err:
            read_state_dict(tmp_path / name)
        assert "unpickles" not in str(err.value) and len(str(err.value)) < 400
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_cli_convert(tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    _superflow_style_checkpoint(tmp_path / "ckpt.pth")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "enc")])
    assert res.exit_code == 0, res.output
    assert "left out (2 keys" in res.output and "head_dim 64" in res.output
    assert LiMAEncoder.from_pretrained(tmp_path / "enc").config.head_dim == 64
    res = CliRunner().invoke(
        main, ["convert", str(tmp_path / "ckpt.pth"), "--out", str(tmp_path / "x"), "--head", "head_2d."]
    )
    assert res.exit_code != 0 and "no Linear(96 -> D) head at 'head_2d.'" in res.output

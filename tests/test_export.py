"""Export to safetensors from a training checkpoint or a folder, verified by a strict reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lima_zoo import LiMAEncoder
from lima_zoo.config import EncoderConfig, PreprocessConfig
from lima_zoo.export import export_safetensors
from lima_zoo.loading import load_encoder as load_encoder_source
from lima_zoo.synth.scan import street_scan


def _tiny() -> LiMAEncoder:
    torch.manual_seed(0)
    return LiMAEncoder(
        EncoderConfig(
            backbone="minkunet14",
            head_dim=8,
            preprocess=PreprocessConfig(voxel_type="cartesian", voxel_size=(0.4, 0.4, 0.4)),
        )
    )


def test_export_from_training_checkpoint_reproduces_features(tmp_path):
    enc = _tiny()
    ckpt = tmp_path / "last.pt"
    torch.save(
        {"encoder": enc.state_dict(), "optimizer": {}, "step": 3, "config": {"encoder": enc.config.to_dict()}}, ckpt
    )
    out = export_safetensors(load_encoder_source(ckpt), tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    scan = street_scan(seed=1)[:, :4]
    np.testing.assert_array_equal(LiMAEncoder.from_pretrained(out).embed(scan), enc.eval().embed(scan))
    again = export_safetensors(load_encoder_source(out), tmp_path / "again")  # a folder exports too
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_rejects_foreign_files(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="not a lima-zoo training checkpoint"):
        load_encoder_source(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_encoder_source(junk)
    enc = _tiny()
    state = enc.state_dict()
    state.pop("head.proj.bias")
    torch.save({"encoder": state, "config": {"encoder": enc.config.to_dict()}}, tmp_path / "partial.pt")
    with pytest.raises(Exception, match="head.proj.bias"):
        load_encoder_source(tmp_path / "partial.pt")


def test_cli_export(tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    src = _tiny().save_pretrained(tmp_path / "src")
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and "verified" in res.output, res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path / "src" / "config.json"), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "not a readable PyTorch checkpoint" in res.output


def test_cli_export_replaces_the_folder_whole_and_refuses_foreign_ones(tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    enc_dir = _tiny().save_pretrained(tmp_path / "enc")
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"another model's graph")  # an earlier export of something else
    res = CliRunner().invoke(main, ["export", str(enc_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no stale model.onnx
    (out / "notes.txt").write_text("mine")
    res = CliRunner().invoke(main, ["export", str(enc_dir), "--out", str(out)])
    assert res.exit_code == 1 and "holds files this export would not replace (notes.txt)" in res.output
    assert (out / "notes.txt").read_text() == "mine" and "Traceback" not in res.output


def test_killed_writes_leave_old_state_and_their_temporaries_are_cleaned(tmp_path):
    """SIGKILL inside an atomic write (file or folder): the target keeps its old content; the next
    write into that folder removes the dead process's temporaries, never a live process's."""
    import os
    import subprocess
    import sys

    from lima_zoo.atomic import TMP_MARK, atomic_path

    (tmp_path / "f.bin").write_bytes(b"old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("old")
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from lima_zoo.atomic import atomic_path, atomic_dir\n"
        "root = Path(sys.argv[1])\n"
        "with atomic_dir(root / 'd', ['config.json']) as stage:\n"
        "    (stage / 'config.json').write_text('half')\n"
        "    with atomic_path(root / 'f.bin') as tmp:\n"
        "        tmp.write_bytes(b'half')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=300)
    assert res.returncode == -9
    assert (tmp_path / "f.bin").read_bytes() == b"old" and (tmp_path / "d" / "config.json").read_text() == "old"
    left = sorted(p.name for p in tmp_path.iterdir() if TMP_MARK in p.name)
    assert len(left) == 2  # the killed process's temporary file and staging folder
    live = tmp_path / f".x{TMP_MARK}{__import__('socket').gethostname()}@{os.getpid()}@abc"
    live.write_bytes(b"")  # this (live) process's: kept
    with atomic_path(tmp_path / "g.bin") as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir() if TMP_MARK in p.name) == [live.name]

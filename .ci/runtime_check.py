"""The torch-free runtime, proven end to end (run by .ci/runtime-only).

    python .ci/runtime_check.py prepare DIR   # torch environment: exports and reference features
    python .ci/runtime_check.py check DIR     # runtime-only environment: embeds and compares

``prepare`` exports a MinkUNet-34, an SPVCNN-18 and an FRNet-18 folder with ``lima-zoo export
--format onnx`` (seeded random weights), writes a held-out nuScenes-format scan (a synthetic
32-beam street no test uses) and the PyTorch features of it, through the CLI and through
``LiMAEncoder.embed``. ``check`` asserts that torch cannot be imported, then embeds the scan with
``lima-zoo embed --runtime onnx`` and with ``OnnxEncoder.from_pretrained(DIR).embed`` and compares
both with the references (max abs difference <= 1e-4). A segmentation folder (MinkUNet-34 with a
seeded head) goes the same way through ``lima-zoo predict --format nuscenes``: the onnxruntime
label files must equal PyTorch's label for label.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

BACKBONES = ("minkunet34", "spvcnn18", "frnet18")
TOLERANCE = 1e-4


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lima_zoo.cli", *args], check=True, stdout=subprocess.DEVNULL)


def prepare(root: Path) -> None:
    import torch

    from lima_zoo import LiMAEncoder, load_points
    from lima_zoo.config import EncoderConfig
    from lima_zoo.synth.scan import street_scan

    scan = root / "n015-held-out__LIDAR_TOP__1.pcd.bin"
    scan.write_bytes(street_scan(seed=321).astype(np.float32).tobytes())  # x, y, z, intensity 0-255, ring
    cloud = load_points(scan)
    for backbone in BACKBONES:
        torch.manual_seed(0)
        LiMAEncoder(EncoderConfig(backbone=backbone)).save_pretrained(root / f"src-{backbone}")
        cli("export", str(root / f"src-{backbone}"), "--out", str(root / backbone), "--format", "onnx")
        encoder = LiMAEncoder.from_pretrained(root / f"src-{backbone}")
        np.save(root / f"api-{backbone}.npy", encoder.embed(cloud.points, intensity_range=cloud.intensity_range))
        cli("embed", str(scan), "--model", str(root / f"src-{backbone}"), "--out", str(root / f"torch-{backbone}"))
    from lima_zoo import LiMASegmenter
    from lima_zoo.labels import NUSCENES_EVAL_CLASSES, vocabulary_for

    torch.manual_seed(1)
    seg = LiMASegmenter(LiMAEncoder(EncoderConfig()), vocabulary_for("nuscenes", NUSCENES_EVAL_CLASSES))
    seg.eval().save_pretrained(root / "src-seg")
    cli("export", str(root / "src-seg"), "--out", str(root / "seg"), "--format", "onnx")
    cli("predict", str(scan), "-m", str(root / "src-seg"), "--format", "nuscenes", "--out", str(root / "torch-seg"))
    print(f"prepared {', '.join(BACKBONES)} and a segmentation model in {root}")


def check(root: Path) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the runtime environment can import torch: it is not torch-free")
    from lima_zoo import load_points
    from lima_zoo.runtime import OnnxEncoder

    scan = next(root.glob("*.pcd.bin"))
    cloud = load_points(scan)
    name = scan.name[: -len(".pcd.bin")] + ".npy"
    for backbone in BACKBONES:
        cli(
            "embed",
            str(scan),
            "--model",
            str(root / backbone),
            "--runtime",
            "onnx",
            "--out",
            str(root / f"onnx-{backbone}"),
        )
        got_cli = np.load(root / f"onnx-{backbone}" / name)
        want_cli = np.load(root / f"torch-{backbone}" / name)
        runner = OnnxEncoder.from_pretrained(root / backbone)
        got_api = runner.embed(cloud.points, intensity_range=cloud.intensity_range)
        want_api = np.load(root / f"api-{backbone}.npy")
        for what, got, want in (("cli", got_cli, want_cli), ("api", got_api, want_api)):
            diff = float(np.abs(got - want).max())
            print(f"{backbone} {what}: {len(got):,} points, max |onnx - torch| {diff:.2e}")
            if got.shape != want.shape or not diff <= TOLERANCE:
                raise SystemExit(f"{backbone} ({what}): the runtime differs from PyTorch by {diff:.3g} > {TOLERANCE}")
    from lima_zoo.runtime import OnnxSegmenter

    cli("predict", str(scan), "-m", str(root / "seg"), "--runtime", "onnx", "--format", "nuscenes", "--out",
        str(root / "onnx-seg"))  # fmt: skip
    label = scan.name[: -len(".pcd.bin")] + "_lidarseg.bin"
    got = np.fromfile(root / "onnx-seg" / "lidarseg" / "val" / label, dtype=np.uint8)
    want = np.fromfile(root / "torch-seg" / "lidarseg" / "val" / label, dtype=np.uint8)
    api = OnnxSegmenter.from_pretrained(root / "seg").predict(cloud.points, intensity_range=cloud.intensity_range)
    print(f"segmentation: {len(got):,} labels, {int((got != want).sum())} differ from PyTorch")
    if got.shape != want.shape or (got != want).any() or len(api) != len(want):
        raise SystemExit("segmentation: the runtime's labels differ from PyTorch's")
    print("torch-free runtime: every backbone and the segmentation head match PyTorch")


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    prepare(folder) if mode == "prepare" else check(folder)

"""Reader fuzzing: valid files of every format, mutated (truncated, bytes flipped, header edited), are
either read to a well-formed cloud or refused with a PointCloudError naming the file; nothing else
ever escapes a reader. Fixed seed, bounded count: a few seconds."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from test_io import write_pcd, write_ply

from lima_zoo.io import PointCloud, PointCloudError, load_points

MUTANTS_PER_FILE = 40


def _valid_files(tmp_path) -> list:
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 10, (60, 5)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 255, 60)
    files = []
    (tmp_path / "kitti.bin").write_bytes(pts[:, :4].tobytes())
    (tmp_path / "nusc.pcd.bin").write_bytes(pts.tobytes())
    np.save(tmp_path / "cloud.npy", pts[:, :4])
    np.savez(tmp_path / "cloud.npz", points=pts[:, :4])
    write_pcd(tmp_path / "ascii.pcd", pts, binary=False)
    write_pcd(tmp_path / "binary.pcd", pts, binary=True)
    write_ply(tmp_path / "ascii.ply", pts, binary=False)
    write_ply(tmp_path / "binary.ply", pts, binary=True)
    files += [
        "kitti.bin",
        "nusc.pcd.bin",
        "cloud.npy",
        "cloud.npz",
        "ascii.pcd",
        "binary.pcd",
        "ascii.ply",
        "binary.ply",
    ]
    try:
        import pypcd4

        pc = pypcd4.PointCloud.from_points(pts[:, :4], ("x", "y", "z", "intensity"), (np.float32,) * 4)
        pc.save(tmp_path / "compressed.pcd", encoding=pypcd4.Encoding.BINARY_COMPRESSED)
        files.append("compressed.pcd")
    except ImportError:
        pass
    try:
        import laspy

        las = laspy.LasData(laspy.LasHeader(point_format=1, version="1.2"))
        las.x, las.y, las.z = pts[:, 0], pts[:, 1], pts[:, 2]
        las.intensity = pts[:, 3].astype(np.uint16)
        las.write(str(tmp_path / "cloud.las"))
        files.append("cloud.las")
        try:
            las.write(str(tmp_path / "cloud.laz"))  # needs lazrs (the [las] extra)
            files.append("cloud.laz")
        except Exception:  # noqa: BLE001 - no LAZ backend installed: .laz is not fuzzed here
            pass
    except ImportError:
        pass
    return [tmp_path / f for f in files]


def _mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One of: truncate, flip bytes, or edit a header token (a number or a keyword)."""
    kind = rng.integers(3)
    if kind == 0 or len(raw) < 2:
        return raw[: int(rng.integers(0, max(1, len(raw))))]
    if kind == 1:
        out = bytearray(raw)
        for at in rng.integers(0, len(raw), int(rng.integers(1, 9))):
            out[at] ^= int(rng.integers(1, 256))
        return bytes(out)
    head = raw[:512]
    tokens = [m for m in re.finditer(rb"[A-Za-z_]+|-?\d+", head)]
    if not tokens:
        return raw[::-1]
    tok = tokens[int(rng.integers(len(tokens)))]
    new = [b"", b"-7", b"0", b"99999999999", b"garbage", b"DATA", b"1e9", b"ascii"][int(rng.integers(8))]
    return raw[: tok.start()] + new + raw[tok.end() :]


def test_mutated_files_are_read_well_formed_or_reported_per_file(tmp_path):
    rng = np.random.default_rng(1234)
    files = _valid_files(tmp_path)
    assert len(files) >= 8
    outcomes = {"read": 0, "refused": 0}
    for src in files:
        raw = src.read_bytes()
        for i in range(MUTANTS_PER_FILE):
            bad = src.with_name(f"m{i}_{src.name}")
            bad.write_bytes(_mutate(raw, rng))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a PLY with more vertices than it declares says so
                    got = load_points(bad)
            except PointCloudError as exc:
                assert str(bad) in str(exc), exc
                outcomes["refused"] += 1
            else:
                assert isinstance(got, PointCloud)
                assert got.points.dtype == np.float32 and got.points.ndim == 2 and got.points.shape[1] >= 3
                assert len(got.points) > 0 and np.isfinite(got.points[:, :3]).all()
                outcomes["read"] += 1
            bad.unlink()
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bare.pcd", b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS 1\nDATA\n", "DATA line"),
        ("neg.pcd", b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nPOINTS -3\nDATA binary\n", "malformed PCD header"),
        ("neg.ply", b"ply\nformat ascii 1.0\nelement vertex -2\nproperty float x\nend_header\n", "declares -2"),
        ("trunc.laz", b"LASF" + bytes(300), "cloud.laz|trunc.laz"),
    ],
)
def test_known_malformed_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PointCloudError, match=message):
        load_points(tmp_path / name)


def test_a_fifo_is_not_a_missing_file(tmp_path):
    import os

    fifo = tmp_path / "scan.bin"
    os.mkfifo(fifo)
    with pytest.raises(PointCloudError, match="not a regular file"):
        load_points(fifo)

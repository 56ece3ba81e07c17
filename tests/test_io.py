"""Point-cloud readers and feature writers: round trips and every bad-input case."""

from __future__ import annotations

import numpy as np
import pytest

from lima_zoo.io import PointCloudError, load_points, pca_colors, save_features


@pytest.fixture
def cloud() -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 10, (500, 5)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 255, 500)
    return pts


def write_pcd(path, pts, binary: bool):
    header = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA "
        f"{'binary' if binary else 'ascii'}\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode())
        if binary:
            f.write(pts[:, :4].astype("<f4").tobytes())
        else:
            f.write("\n".join(" ".join(f"{v:.9g}" for v in row) for row in pts[:, :4]).encode())


def write_ply(path, pts, binary: bool):
    header = f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\nelement vertex {len(pts)}\n"
    header += "property float x\nproperty float y\nproperty float z\nproperty float intensity\nend_header\n"
    with open(path, "wb") as f:
        f.write(header.encode())
        if binary:
            f.write(pts[:, :4].astype("<f4").tobytes())
        else:
            f.write("\n".join(" ".join(f"{v:.9g}" for v in row) for row in pts[:, :4]).encode() + b"\n")


def test_kitti_bin(tmp_path, cloud):
    (tmp_path / "000001.bin").write_bytes(cloud[:, :4].tobytes())
    got = load_points(tmp_path / "000001.bin")
    np.testing.assert_array_equal(got.points, cloud[:, :4])
    assert got.intensity_range == 1.0  # KITTI remission convention


def test_nuscenes_pcd_bin(tmp_path, cloud):
    (tmp_path / "n008__LIDAR_TOP__1.pcd.bin").write_bytes(cloud.tobytes())
    got = load_points(tmp_path / "n008__LIDAR_TOP__1.pcd.bin")
    np.testing.assert_array_equal(got.points, cloud[:, :4])  # ring dropped by default
    assert got.intensity_range == 255.0
    assert load_points(tmp_path / "n008__LIDAR_TOP__1.pcd.bin", use_dim=5).points.shape == (500, 5)
    assert load_points(tmp_path / "n008__LIDAR_TOP__1.pcd.bin", use_dim=[0, 1, 2]).points.shape == (500, 3)


def test_bin_with_load_dim(tmp_path, cloud):
    (tmp_path / "scan.bin").write_bytes(cloud.tobytes())
    np.testing.assert_array_equal(load_points(tmp_path / "scan.bin", load_dim=5).points, cloud[:, :4])


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_numpy(tmp_path, cloud, suffix):
    path = tmp_path / f"scan{suffix}"
    if suffix == ".npy":
        np.save(path, cloud)
    else:
        np.savez(path, points=cloud, other=np.zeros(3))
    np.testing.assert_array_equal(load_points(path).points, cloud[:, :4])


@pytest.mark.parametrize("binary", [False, True])
def test_pcd(tmp_path, cloud, binary):
    write_pcd(tmp_path / "scan.pcd", cloud, binary)
    np.testing.assert_allclose(load_points(tmp_path / "scan.pcd").points, cloud[:, :4], rtol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_ply(tmp_path, cloud, binary):
    write_ply(tmp_path / "scan.ply", cloud, binary)
    np.testing.assert_allclose(load_points(tmp_path / "scan.ply").points, cloud[:, :4], rtol=1e-6)


def test_npy_writer(tmp_path):
    feats = np.random.default_rng(1).normal(size=(50, 96)).astype(np.float32)
    save_features(tmp_path / "out.npy", feats)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), feats)


def test_safetensors_writer(tmp_path, cloud):
    from safetensors import safe_open

    feats = np.random.default_rng(1).normal(size=(500, 96)).astype(np.float32)
    save_features(tmp_path / "out.safetensors", feats, cloud[:, :3], {"model": "vit-b-minkunet34"})
    with safe_open(tmp_path / "out.safetensors", "np") as f:
        np.testing.assert_array_equal(f.get_tensor("features"), feats)
        np.testing.assert_array_equal(f.get_tensor("xyz"), cloud[:, :3])
        assert f.metadata()["model"] == "vit-b-minkunet34"


def test_parquet_writer(tmp_path, cloud):
    pq = pytest.importorskip("pyarrow.parquet")
    feats = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    save_features(tmp_path / "out.parquet", feats, cloud[:, :3])
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["x", "y", "z"] + [f"f{i}" for i in range(8)]
    np.testing.assert_array_equal(table.column("f7").to_numpy(), feats[:, 7])


def test_ply_writer_pca_colours_and_features(tmp_path, cloud):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(500, 16)).astype(np.float32)
    feats[:, 0] += np.linspace(-20, 20, 500)  # dominant direction -> first PCA axis -> red
    save_features(tmp_path / "out.ply", feats, cloud[:, :3], ply_features=True)
    raw = (tmp_path / "out.ply").read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n") :]
    rec = np.frombuffer(
        body,
        dtype=np.dtype(
            [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")]
            + [(f"f{i}", "<f4") for i in range(16)]
        ),
    )
    np.testing.assert_array_equal(rec["x"], cloud[:, 0])
    np.testing.assert_array_equal(rec["f3"], feats[:, 3])
    assert np.corrcoef(rec["r"].astype(float), feats[:, 0])[0, 1] > 0.9
    assert (load_points(tmp_path / "out.ply").points[:, :3] == cloud[:, :3]).all()
    np.testing.assert_array_equal(pca_colors(feats), pca_colors(feats.copy()))  # deterministic


def test_writes_are_atomic(tmp_path, monkeypatch):
    """A failing writer leaves neither a partial target nor a temporary file behind."""
    import lima_zoo.io.writers as writers

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers, "write_ply", boom)
    with pytest.raises(KeyboardInterrupt):
        save_features(tmp_path / "out.ply", np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask):
    """Not mkstemp's owner-only 0600: a feature file or export must be as readable as any file
    the user writes (and no more)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        save_features(tmp_path / "f.npy", np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32))
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "f.npy").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.bin", b"\x00" * 10, "not a multiple of 4 float32"),
        ("empty.bin", b"", "empty"),
        ("scan.xyz", b"1 2 3", "unknown point-cloud extension"),
        ("bad.pcd", b"garbage without header", "no DATA line"),
        ("bad.ply", b"not a ply", "not a PLY"),
        ("bad.npy", b"nonsense", "unreadable"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PointCloudError, match=message) as err:
        load_points(tmp_path / name)
    assert name in str(err.value)


def test_nan_rows_are_dropped_and_missing_files_refused(tmp_path, cloud):
    """Organised clouds (ROS / Ouster / Velodyne drivers) mark no-return pixels with NaN: those rows
    are dropped and ``kept`` says which rows remain; a cloud with no finite point is refused."""
    cloud[7, 1] = np.nan
    cloud[9, 0] = np.inf
    (tmp_path / "nan.bin").write_bytes(cloud[:, :4].tobytes())
    pc = load_points(tmp_path / "nan.bin")
    assert len(pc.points) == 498 and pc.kept is not None and np.flatnonzero(~pc.kept).tolist() == [7, 9]
    np.testing.assert_array_equal(pc.points, np.delete(cloud[:, :4], [7, 9], axis=0))
    assert load_points(tmp_path / "nan.bin", use_dim=3).kept is not None
    (tmp_path / "allnan.bin").write_bytes(np.full((4, 4), np.nan, np.float32).tobytes())
    with pytest.raises(PointCloudError, match="every one of its 4 points has NaN"):
        load_points(tmp_path / "allnan.bin")
    with pytest.raises(PointCloudError, match="no such file"):
        load_points(tmp_path / "absent.bin")
    np.save(tmp_path / "flat.npy", np.zeros((5, 2), np.float32))
    with pytest.raises(PointCloudError, match=r"\(N, >=3\)"):
        load_points(tmp_path / "flat.npy")


def test_independent_writers_binary_compressed_pcd_big_endian_ply_and_las(tmp_path, cloud):
    """Files written by other libraries (pypcd4, plyfile, laspy) read back to the same points."""
    pypcd4 = pytest.importorskip("pypcd4")
    plyfile = pytest.importorskip("plyfile")
    laspy = pytest.importorskip("laspy")
    pts = cloud[:, :4].copy()
    pts[:50] = pts[0]  # repeated rows: LZF back-references that overlap what they copy
    pc = pypcd4.PointCloud.from_points(pts, ("x", "y", "z", "intensity"), (np.float32,) * 4)
    pc.save(tmp_path / "map.pcd", encoding=pypcd4.Encoding.BINARY_COMPRESSED)
    assert b"DATA binary_compressed" in (tmp_path / "map.pcd").read_bytes()[:400]
    np.testing.assert_array_equal(load_points(tmp_path / "map.pcd").points, pts)

    vertex = np.array([tuple(r) for r in pts], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "f4")])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], byte_order=">").write(str(tmp_path / "big.ply"))
    assert b"binary_big_endian" in (tmp_path / "big.ply").read_bytes()[:200]
    np.testing.assert_array_equal(load_points(tmp_path / "big.ply").points, pts)

    # A georeferenced scan at UTM northings: float32 before re-centring would round to 0.5 m steps.
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.offsets, header.scales = np.array([500_000.0, 5_400_000.0, 0.0]), np.array([0.001, 0.001, 0.001])
    las = laspy.LasData(header)
    xyz = np.array([500_123.456, 5_400_321.987, 12.345]) + np.arange(6)[:, None] * np.array([0.013, 0.021, 0.007])
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.intensity = np.array([0, 10, 50, 100, 200, 255], np.uint16)  # 8-bit values, stored unscaled
    las.write(str(tmp_path / "geo.las"))
    got = load_points(tmp_path / "geo.las")
    np.testing.assert_allclose(got.points[:, :3] + got.origin, xyz, atol=2e-3)  # mm, not 0.5 m
    np.testing.assert_array_equal(got.points[:, 3], [0, 10, 50, 100, 200, 255])


def test_lzf_corrupt_and_ply_undercount(tmp_path, cloud):
    from lima_zoo.io.readers import lzf_decompress

    # a literal "abc", then a copy of 7 + 5 + 2 = 14 bytes from 3 back, overlapping what it writes
    assert lzf_decompress(bytes([2]) + b"abc" + bytes([0b111 << 5, 5, 2]), 17) == (b"abc" * 6)[:17]
    lzf = pytest.importorskip("lzf")  # liblzf itself, as an oracle
    data = np.random.default_rng(1).integers(0, 4, 5000).astype(np.uint8).tobytes() + bytes(3000)
    assert lzf_decompress(lzf.compress(data), len(data)) == data
    with pytest.raises(PointCloudError, match="corrupt LZF"):
        lzf_decompress(bytes([0b001 << 5, 40]), 3)  # a back-reference before the start
    write_ply(tmp_path / "under.ply", cloud, binary=True)
    raw = (tmp_path / "under.ply").read_bytes().replace(b"element vertex 500", b"element vertex 400")
    (tmp_path / "under.ply").write_bytes(raw)
    with pytest.warns(UserWarning, match="declares 400 vertices but the file holds 500"):
        assert len(load_points(tmp_path / "under.ply").points) == 400

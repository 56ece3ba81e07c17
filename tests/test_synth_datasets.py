"""The synthetic world, its dataset writers and our readers, checked against nuscenes-devkit and round trips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lima_zoo.labels import NUSCENES_LUT, kitti_learning_map
from lima_zoo.synth import generate
from lima_zoo.synth.materials import label_tables
from lima_zoo.synth.nuscenes_format import matrix_to_quaternion
from lima_zoo.synth.world import make_world, scene_seed
from lima_zoo.training.datasets import detect_format, open_dataset
from lima_zoo.training.datasets.pairing import project_points, quaternion_to_matrix

TINY = dict(scenes=4, frames=3, seed=7, workers=2)


@pytest.fixture(scope="session")
def nus_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("nus"), "nuscenes", image_scale=0.15, sweeps=2, **TINY)


@pytest.fixture(scope="session")
def kitti_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("kitti"), "semantickitti", image_scale=0.3, **TINY)


@pytest.fixture(scope="session")
def waymo_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("waymo"), "waymo", image_scale=0.1, **TINY)


def test_road_coordinates_round_trip():
    world = make_world(3, 10.0)
    s = np.linspace(world.road.s_start + 1, world.road.s_start + world.road.length - 1, 200)
    d = np.random.default_rng(0).uniform(-8, 8, 200)
    x, y, _ = world.road.pose(s, d)
    s2, d2 = world.road.locate(np.stack([x, y], 1))
    np.testing.assert_allclose(s2, s, atol=1e-6)
    np.testing.assert_allclose(d2, d, atol=1e-6)


def test_matrix_to_quaternion_inverts_quaternion_to_matrix():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        m = quaternion_to_matrix(q).numpy()
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(m)).numpy(), m, atol=1e-12)


def test_nuscenes_opens_in_devkit_and_projection_matches(nus_root, monkeypatch):
    nuscenes = pytest.importorskip("nuscenes")
    from nuscenes.utils.data_classes import LidarPointCloud

    # The devkit transforms float32 points; at map coordinates of a few hundred metres its own rounding
    # reaches ~1e-3 px. Run its exact code path in float64 so the comparison measures our geometry.
    original = LidarPointCloud.from_file.__func__

    def from_file_f64(cls, file_name):
        pc = original(cls, file_name)
        pc.points = pc.points.astype(np.float64)
        return pc

    monkeypatch.setattr(LidarPointCloud, "from_file", classmethod(from_file_f64))
    nusc = nuscenes.NuScenes("v1.0-trainval", str(nus_root), verbose=False)
    assert len(nusc.scene) == 4 and len(nusc.sample) == 12 and len(nusc.lidarseg) == 12
    ds = open_dataset(nus_root, split="all")
    checked = 0
    for s, (_, tokens) in enumerate(ds.sequences):
        for k in range(len(tokens)):
            frame = ds.frame(s, k)
            pairs = project_points(frame.points[:, :3], frame.camera_views())
            sample = nusc.get("sample", tokens[k])
            for ci, cam in enumerate(frame.cameras):
                ref, _, _ = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"][cam.name])
                sel = (pairs.camera == ci).numpy()
                ours = pairs.uv[sel].numpy()
                assert len(ours) == ref.shape[1], cam.name
                # Both keep points in their original order, so rows correspond one to one.
                np.testing.assert_allclose(ours, ref[:2].T, atol=1e-3)  # ours are float32 pixel coordinates
                checked += len(ours)
    assert checked > 10_000


def test_point_labels_match_rendered_pixels(nus_root):
    ds = open_dataset(nus_root, split="all")
    seen = agree = 0
    unseen_by_any_camera = []
    for s in range(len(ds.sequences)):
        frame = ds.frame(s, 1)
        keys = ds.keyframes[ds.sequences[s][1][1]]
        pairs = project_points(frame.points[:, :3], frame.camera_views())
        unseen_by_any_camera.append(1 - len(np.unique(pairs.point.numpy())) / len(frame.points))
        for ci, cam in enumerate(frame.cameras):
            truth = np.load(nus_root / "synth_truth" / f"{keys[cam.name]['token']}.npz")
            sel = (pairs.camera == ci).numpy()
            uv = np.rint(pairs.uv[sel].numpy()).astype(int)
            depth = pairs.depth[sel].numpy()
            pix_depth = truth["depth"][uv[:, 1], uv[:, 0]].astype(np.float32)
            visible = np.abs(pix_depth - depth) < 0.03 * depth + 0.1  # unoccluded: the pixel shows this surface
            pix_label = NUSCENES_LUT[truth["label"][uv[:, 1], uv[:, 0]]]
            point_label = frame.labels[pairs.point[sel].numpy()]
            seen += visible.sum()
            agree += (pix_label[visible] == point_label[visible]).sum()
    assert seen > 5000
    assert agree / seen >= 0.95
    # Blind wedges between cameras: some points in every frame are in no image.
    assert min(unseen_by_any_camera) > 0.02


def test_nuscenes_reader_splits_percent_sweeps(nus_root):
    train = open_dataset(nus_root, split="train")
    val = open_dataset(nus_root, split="val")
    assert [n for n, _ in train.sequences] == [f"scene-synth-0007-000{i}" for i in range(3)]
    assert [n for n, _ in val.sequences] == ["scene-synth-0007-0003"]
    half = open_dataset(nus_root, split="train", percent=50)
    assert [n for n, _ in half.sequences] == ["scene-synth-0007-0000", "scene-synth-0007-0002"]
    frame = open_dataset(nus_root, split="train", sweeps=2).frame(0, 2)
    assert len(frame.sweeps) == 2 and frame.sweeps[0][0].shape[1] == 4
    first = open_dataset(nus_root, split="train", sweeps=2).frame(0, 0)
    assert first.sweeps == []  # nothing precedes the first keyframe
    stamps = [open_dataset(nus_root).frame(0, k).timestamp for k in range(3)]
    assert stamps == sorted(stamps) and stamps[1] - stamps[0] == 500_000
    assert frame.labels.max() <= 16 and frame.points[:, 3].max() <= 255
    with pytest.raises(ValueError, match="percent"):
        open_dataset(nus_root, split="train", percent=3)


def test_nuscenes_reader_errors_name_the_file(nus_root, tmp_path):
    broken = tmp_path / "nus"
    shutil.copytree(nus_root, broken, ignore=shutil.ignore_patterns("samples", "sweeps", "synth_truth", "maps"))
    (broken / "v1.0-trainval" / "ego_pose.json").unlink()
    with pytest.raises(FileNotFoundError, match="ego_pose.json"):
        open_dataset(broken)
    shutil.copy(nus_root / "v1.0-trainval" / "ego_pose.json", broken / "v1.0-trainval")
    ds = open_dataset(broken)
    with pytest.raises(FileNotFoundError, match=r"LIDAR_TOP.*\.pcd\.bin: missing"):
        ds.frame(0, 0)
    ds = open_dataset(nus_root)
    label_file = nus_root / ds.lidarseg[ds.keyframes[ds.sequences[0][1][0]]["LIDAR_TOP"]["token"]]
    bad = tmp_path / "short.bin"
    bad.write_bytes(label_file.read_bytes()[:-3])
    ds.lidarseg[ds.keyframes[ds.sequences[0][1][0]]["LIDAR_TOP"]["token"]] = str(bad)
    with pytest.raises(ValueError, match="labels for"):
        ds.frame(0, 0)


def _world_scan(seed: int, scene: int, rng_offset: int, spec, period: float, k: int, azimuths=None):
    """Re-run the writer's scan k of a scene (same world, same noise stream) without touching disk."""
    from lima_zoo.synth.sensors import scan_lidar

    world = make_world(scene_seed(seed, scene), TINY["frames"] * period + 1.0)
    rng = np.random.default_rng(scene_seed(seed, scene) + rng_offset)
    for j in range(k + 1):
        scan = scan_lidar(world, 0.5 + j * period, spec, rng, azimuths=azimuths)
    return scan.points()


def test_semantickitti_round_trip(kitti_root):
    from lima_zoo.synth.sensors import KITTI_LIDAR

    ds = open_dataset(kitti_root, split="train")
    assert detect_format(kitti_root) == "semantickitti"
    assert [n for n, _ in ds.sequences] == ["00", "01", "02"]
    assert [n for n, _ in open_dataset(kitti_root, split="val").sequences] == ["03"]
    frame = ds.frame(1, 2)
    xyz, intensity, _, mat, _ = _world_scan(7, 1, 2, KITTI_LIDAR, 0.1, 2)
    np.testing.assert_allclose(frame.points[:, :3], xyz, atol=1e-5)
    np.testing.assert_allclose(frame.points[:, 3], intensity, atol=1e-3)
    np.testing.assert_array_equal(frame.labels, kitti_learning_map(label_tables()["kitti"][mat]))
    # Pairing through our pose chain reproduces KITTI's own uv = P2 . Tr . p.
    calib = ds._calib["01"]
    hom = np.c_[frame.points[:, :3], np.ones(len(frame.points))]
    pairs = project_points(frame.points[:, :3], frame.camera_views())
    uvw = (calib["P2"] @ calib["Tr"] @ hom[pairs.point.numpy()].T).T
    np.testing.assert_allclose(pairs.uv.numpy(), uvw[:, :2] / uvw[:, 2:], atol=1e-3)
    assert len(pairs.point) > 1000
    assert len(open_dataset(kitti_root, split="train", percent=50)) == 5  # every 2nd of 9 scans


def test_waymo_round_trip(waymo_root):
    from lima_zoo.synth.sensors import WAYMO_LIDAR
    from lima_zoo.synth.waymo_format import _lidar_extrinsic, waymo_azimuths

    ds = open_dataset(waymo_root, split="train")
    assert len(ds.sequences) == 3 and len(open_dataset(waymo_root, split="val").sequences) == 1
    frame = ds.frame(2, 1)
    ext = _lidar_extrinsic()
    xyz, intensity, _, mat, _ = _world_scan(
        7, 2, 3, WAYMO_LIDAR, 0.1, 1, azimuths=waymo_azimuths(WAYMO_LIDAR.azimuth_steps, ext)
    )
    np.testing.assert_allclose(frame.points[:, :3], xyz @ ext[:3, :3].T + ext[:3, 3], atol=1e-4)
    np.testing.assert_allclose(frame.points[:, 3], intensity, atol=0.3)
    np.testing.assert_array_equal(frame.labels, label_tables()["waymo"][mat])
    assert len(frame.cameras) == 5 and frame.cameras[0].image().shape == (128, 192, 3)
    pairs = project_points(frame.points[:, :3], frame.camera_views())
    assert set(pairs.camera.tolist()) == {0, 1, 2, 3, 4}


def test_sequence_folder_reader_and_validation(tmp_path):
    root = generate(tmp_path / "fleet", "folder", scenes=2, frames=2, seed=3, image_scale=0.1, workers=1)
    ds = open_dataset(root, labels=True)
    assert detect_format(root) == "folder" and len(ds) == 4
    frame = ds.frame(1, 1)
    assert len(frame.cameras) == 6 and frame.labels.shape == (len(frame.points),)
    pairs = project_points(frame.points[:, :3], frame.camera_views())
    assert len(pairs.point) > 1000
    poses = root / "drive_0000" / "poses.txt"
    lines = poses.read_text().splitlines()
    poses.write_text("\n".join(lines[1:]) + "\n")  # drop the first scan's pose
    with pytest.raises(ValueError, match=r"poses.txt: timestamp \d+ lies outside"):
        open_dataset(root)
    poses.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="poses.txt: expected 8 numbers"):
        open_dataset(root)
    cal = json.loads((root / "calibration.json").read_text())
    del cal["lidar"]
    (root / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ValueError, match=r"calibration.json: invalid calibration \(KeyError: 'lidar'\)"):
        open_dataset(root)


def test_generation_is_deterministic_whatever_the_worker_count(tmp_path):
    a = generate(tmp_path / "a", "nuscenes", scenes=2, frames=1, seed=5, image_scale=0.1, workers=1)
    b = generate(tmp_path / "b", "nuscenes", scenes=2, frames=1, seed=5, image_scale=0.1, workers=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_detect_format_and_generate_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not a dataset lima-zoo recognises"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="unknown synthetic format"):
        generate(tmp_path / "x", "kitti360")
    with pytest.raises(ValueError, match="scenes and frames"):
        generate(tmp_path / "x", "nuscenes", scenes=0)


def test_cli_synth_with_preview(tmp_path):
    from click.testing import CliRunner

    from lima_zoo.cli import main

    out = tmp_path / "world"
    res = CliRunner().invoke(
        main,
        [
            "synth",
            str(out),
            "--format",
            "semantickitti",
            "--scenes",
            "1",
            "--frames",
            "2",
            "--image-scale",
            "0.2",
            "--workers",
            "1",
            "--preview",
        ],
    )
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out / "preview.png") as im:
        assert im.width >= 500 and im.height > 500
    assert "wrote 1 x 2 semantickitti frames" in res.output


def test_cli_synth_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from lima_zoo.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL" else real(name, *a))
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "w"), "--scenes", "1", "--frames", "1"])
    assert (
        res.exit_code == 1
        and "needs Pillow: pip install 'lima-zoo[synth]'" in res.output
        and not (tmp_path / "w").exists()
    )

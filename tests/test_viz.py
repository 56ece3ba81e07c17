"""lima-zoo viz: PCA and similarity figures, 3-D outputs, and the bad inputs a user gives it."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli import model_dir  # noqa: F401  (the tiny random encoder folder the embed tests use)

from lima_zoo.cli import main
from lima_zoo.viz import render
from lima_zoo.viz.views import bev_view, cosine_similarity, nearest_point, range_view

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (pillow comes with matplotlib)


@pytest.fixture
def scan(tmp_path, small_street_points):
    path = tmp_path / "000001.bin"
    path.write_bytes(np.ascontiguousarray(small_street_points[:, :4]).tobytes())
    return path


def smooth_features(xyz: np.ndarray) -> np.ndarray:
    """Features that change smoothly with position: near points are similar, far ones are not."""
    freqs = np.array([[0.15, 0.0, 0.0], [0.0, 0.15, 0.0], [0.1, 0.1, 0.0], [0.0, 0.0, 0.6]])
    phase = xyz[:, :3] @ freqs.T
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)


def brightness(img: np.ndarray, view, row: int) -> float:
    r, c = view.pixel[row]
    return float(img[r, c, :3].astype(np.float64).sum())


def test_similarity_figure_lights_up_the_query_neighbourhood(tmp_path, small_street_points):
    xyz = small_street_points[:, :3]
    feats = smooth_features(xyz)
    q = nearest_point(xyz, (8.0, 3.0, -1.8))
    out = render(tmp_path / "sim.png", xyz, feats, mode="similarity", query=q)
    sim = out["similarity"]
    near = np.flatnonzero(np.linalg.norm(xyz - xyz[q], axis=1) < 0.5)
    bev = out["bev"]
    drawn = np.unique(bev.winner[bev.winner >= 0])  # points visible in the bird's-eye view
    far = int(drawn[np.argmax(np.linalg.norm(xyz[drawn] - xyz[q], axis=1))])
    assert sim[q] == pytest.approx(1.0) and sim[near].mean() > 0.95 > sim[far]
    # The painted raster: the query's pixel is brighter (inferno: bright = similar) than the far point's.
    img = bev.paint(out["colours"])
    assert brightness(img, bev, q) > brightness(img, bev, far) + 0.5
    png = np.asarray(Image.open(out["path"]))
    assert png.shape[0] > 800 and png.shape[1] > 600 and png.shape[2] in (3, 4)


def test_pca_figure_and_views(tmp_path, small_street_points):
    xyz = small_street_points[:, :3]
    out = render(tmp_path / "pca.png", xyz, smooth_features(xyz), mode="pca")
    assert out["similarity"] is None and out["colours"].shape == (len(xyz), 3)
    assert 0.0 <= out["colours"].min() and out["colours"].max() <= 1.0
    bev, rng = bev_view(xyz), range_view(xyz)
    assert (bev.pixel >= 0).all(axis=1).mean() > 0.95  # the 98th-percentile extent keeps nearly all
    assert (rng.pixel >= 0).all()
    # The highest point of a BEV pixel wins; the nearest one wins in the range view.
    r, c = bev.pixel[0]
    same = np.flatnonzero((bev.pixel == [r, c]).all(axis=1))
    assert bev.winner[r, c] == same[np.argmax(xyz[same, 2])]


def test_cosine_similarity_and_nan_rows():
    f = np.array([[1, 0], [0, 1], [1, 1], [np.nan, np.nan]], dtype=np.float32)
    s = cosine_similarity(f, 0)
    np.testing.assert_allclose(s[:3], [1, 0, np.sqrt(0.5)], atol=1e-6)
    assert np.isnan(s[3])
    with pytest.raises(ValueError, match="no features"):
        cosine_similarity(f, 3)


def test_cli_viz_png_ply_rrd(tmp_path, model_dir, scan):
    runner = CliRunner()
    res = runner.invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    assert "pca of" in res.output and Image.open(tmp_path / "f.png").size[0] > 600
    res = runner.invoke(
        main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "s.png"), "--query-index", "10"]
    )
    assert res.exit_code == 0 and "similarity" in res.output and "query point 10" in res.output, res.output
    res = runner.invoke(
        main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "s.ply"), "--query", "5,0,-1.5"]
    )
    assert res.exit_code == 0, res.output
    from lima_zoo.io import load_points

    assert len(load_points(tmp_path / "s.ply").points) == len(np.fromfile(scan, np.float32)) // 4
    if importlib.util.find_spec("rerun") is not None:  # an optional extra: its test runs where it is installed
        res = runner.invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "p.rrd")])
        assert res.exit_code == 0 and (tmp_path / "p.rrd").stat().st_size > 1000, res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--query", "1,2"], "three numbers"),
        (["--query", "a,b,c"], "three numbers"),
        (["--query-index", "99999999"], "points (0.."),
        (["--query", "1,2,3", "--query-index", "3"], "not both"),
        (["--mode", "pca", "--query-index", "3"], "PCA mode has no query"),
        (["--mode", "similarity"], "needs a query point"),
        (["-o", "OUT/f.jpg"], "name a .png, .ply or .rrd"),
        (["-o", "OUT/f.png", "--format", "ply"], "does not end in .ply"),
    ],
)
def test_cli_viz_bad_inputs_are_one_line_errors(tmp_path, model_dir, scan, args, message):
    out = ["-o", str(tmp_path / "f.png")] if "-o" not in args else []
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    res = CliRunner().invoke(main, ["viz", str(scan), "-m", str(model_dir), *out, *args])
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output


def test_cli_viz_bad_scan_and_missing_extras(tmp_path, model_dir, scan, monkeypatch):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"\x00" * 7)
    res = CliRunner().invoke(main, ["viz", str(bad), "-m", str(model_dir), "-o", str(tmp_path / "f.png")])
    assert res.exit_code != 0 and "broken.bin" in res.output and "Traceback" not in res.output, res.output
    monkeypatch.setitem(sys.modules, "rerun", None)  # import rerun -> ImportError
    res = CliRunner().invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "p.rrd")])
    assert res.exit_code != 0 and "pip install 'lima-zoo[rerun]'" in res.output, res.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = CliRunner().invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "f.png")])
    assert (
        res.exit_code != 0 and "pip install 'lima-zoo[viz]'" in res.output and len(res.output.strip().splitlines()) <= 3
    ), res.output
    assert not (tmp_path / "f.png").exists()


# --- the paper's figure on a dataset frame's cameras (--data) --------------------------------------

from test_pretrain import tiny_teacher, tiny_world  # noqa: E402,F401  (session fixtures: a 3-scene nuScenes world, a tiny teacher)


def test_teacher_similarity_samples_the_query_like_the_distillation_targets():
    import torch

    from lima_zoo.training.datasets.pairing import PixelPairs
    from lima_zoo.training.lima.cross_view import sample_pixel_features
    from lima_zoo.viz.cameras import teacher_similarity

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 8, 4, 6)).astype(np.float32)
    for uv in ((37.3, 11.8), (0.2, 0.4), (59.6, 39.5)):  # inside, and within half a patch of two corners
        q, sim = teacher_similarity(tokens, 1, uv, (60, 40))
        pairs = PixelPairs(
            torch.tensor([0]), torch.tensor([1]), torch.tensor([uv], dtype=torch.float32), torch.tensor([5.0])
        )
        ref = sample_pixel_features(torch.from_numpy(tokens), pairs, [(60, 40), (60, 40)])[0].double().numpy()
        np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-6)
        assert sim.shape == (2, 4, 6) and np.all(sim <= 1.0 + 1e-9)
    # A query at a patch centre has that patch's feature: similarity 1 there.
    _, sim = teacher_similarity(tokens, 0, (24.5, 14.5), (60, 40))  # the centre of patch (row 1, col 2)
    assert sim[0, 1, 2] == pytest.approx(1.0)


def test_viz_data_draws_teacher_beside_student_for_every_camera(tmp_path, tiny_world, tiny_teacher, model_dir):
    out = tmp_path / "cams.png"
    res = CliRunner().invoke(
        main,
        [
            "viz",
            "--data",
            str(tiny_world),
            "--split",
            "train",
            "--sample",
            "1",
            "-m",
            str(model_dir),
            "--teacher",
            str(tiny_teacher),
            "--query-class",
            "car",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "6 camera panel(s)" in res.output and "teacher synthetic" in res.output
    png = np.asarray(Image.open(out))
    assert png.shape[0] > 6 * 150 and png.shape[1] > 600  # six rows of two images


def test_viz_data_query_grid_one_row_per_class(tmp_path, tiny_world, tiny_teacher, model_dir):
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        main,
        [
            "viz",
            "--data",
            str(tiny_world),
            "--split",
            "train",
            "-m",
            str(model_dir),
            "--teacher",
            str(tiny_teacher),
            "--queries",
            "car,driveable_surface,manmade",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "3 camera panel(s)" in res.output and out.is_file()
    # Without a teacher the student column is still drawn.
    res = CliRunner().invoke(
        main,
        [
            "viz",
            "--data",
            str(tiny_world),
            "--split",
            "train",
            "-m",
            str(model_dir),
            "--teacher",
            "none",
            "--query-index",
            "0",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "teacher none" in res.output


def test_class_query_picks_the_biggest_view_of_the_class():
    from lima_zoo.training.query_figure import absent_class as _absent
    from lima_zoo.training.query_figure import class_id, class_query

    # Class 1: a lone point near the image centre and a tight cluster of 5 near a corner.
    uv = np.array([[50.0, 50.0], [10, 10], [11, 10], [10, 11], [12, 12], [11, 11], [80, 80]])
    labels = np.array([1, 1, 1, 1, 1, 1, 2])
    pairs = {"point": np.arange(7), "camera": np.zeros(7, dtype=np.int64), "uv": uv, "range": np.arange(7, dtype=float)}
    q = class_query(labels, class_id(("car", "road"), "CAR"), pairs, np.array([[100.0, 100.0]]))
    assert q in (1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="classes: car, road"):
        class_id(("car", "road"), "bus")
    no_road = np.array([1, 1, 1, 1, 1, 1, 0])
    assert class_query(no_road, 2, pairs, np.array([[100.0, 100.0]])) is None
    assert "no road point; it has car" in _absent(no_road, ("car", "road"), 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--query-class", "unicorn"], "not a class of this dataset"),
        (["--query-class", "car", "--sample", "999"], "has 12 frames (0..11)"),
        (["--query-class", "car", "--sample", "nope"], "no such frame"),
        ([], "give exactly one of"),
        (["--query-class", "car", "--teacher", "synthetic"], "synthetic teacher"),
        (["--query-class", "car", "--mode", "pca"], "no --mode pca"),
    ],
)
def test_viz_data_bad_inputs_are_one_line_errors(tmp_path, tiny_world, model_dir, args, message):
    res = CliRunner().invoke(
        main,
        [
            "viz",
            "--data",
            str(tiny_world),
            "--split",
            "train",
            "-m",
            str(model_dir),
            "-o",
            str(tmp_path / "x.png"),
            *args,
        ],
    )
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.png").exists()


def test_viz_dataset_options_need_data(tmp_path, scan, model_dir):
    for extra in (["--query-class", "car"], ["--queries", "car"], ["--teacher", "none"]):
        res = CliRunner().invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "x.png"), *extra])
        assert res.exit_code != 0 and "needs --data" in res.output, res.output
    res = CliRunner().invoke(main, ["viz", "-m", str(model_dir), "-o", str(tmp_path / "x.png")])
    assert res.exit_code != 0 and "give a SCAN file or --data" in res.output

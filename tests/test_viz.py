"""lima-zoo viz: PCA and similarity figures, 3-D outputs, and the bad inputs a user gives it."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from lima_zoo.cli import main
from lima_zoo.viz import render
from lima_zoo.viz.views import bev_view, cosine_similarity, nearest_point, range_view

from test_cli import model_dir  # noqa: F401  (the tiny random encoder folder the embed tests use)

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
    res = runner.invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "s.png"), "--query-index", "10"])
    assert res.exit_code == 0 and "similarity" in res.output and "query point 10" in res.output, res.output
    res = runner.invoke(main, ["viz", str(scan), "-m", str(model_dir), "-o", str(tmp_path / "s.ply"), "--query", "5,0,-1.5"])
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
    assert res.exit_code != 0 and "pip install 'lima-zoo[viz]'" in res.output and len(res.output.strip().splitlines()) <= 3, res.output
    assert not (tmp_path / "f.png").exists()

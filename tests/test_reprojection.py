"""The re-projection memory on hand-made geometry: pose chain, bilinear reads, occlusion, moving objects."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lima_zoo.training.config import LimaConfig
from lima_zoo.training.datasets.frame import CameraFrame, Frame
from lima_zoo.training.datasets.pairing import project_points
from lima_zoo.training.lima.long_horizon import CURRENT, MEMORY_ONLY, NO_TARGET, recall, remember
from lima_zoo.training.lima.reprojection import reproject, view_entry, zbuffer
from lima_zoo.training.lima.targets import FrameTargets, global_xyz, sample_cameras, select_cameras

W, H, TOKENS_W, TOKENS_H = 64, 32, 8, 4
K = np.array([[32.0, 0, 32.0], [0, 32.0, 16.0], [0, 0, 1]])  # 90 deg horizontal field of view
CAM_TO_EGO = np.eye(4)
CAM_TO_EGO[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # OpenCV camera looking along ego +x


def _pose(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = (x, y, 0.0)
    return m


def _frame(points_global: np.ndarray, ego: np.ndarray, cameras: int = 1) -> Frame:
    """A frame at ego pose ``ego`` whose LiDAR (at the ego origin) returned ``points_global``."""
    local = (points_global - ego[:3, 3]) @ ego[:3, :3]
    pts = np.column_stack([local, np.zeros(len(local))]).astype(np.float32)
    cams = [
        CameraFrame(f"CAM{i}", K, CAM_TO_EGO, ego, W, H, lambda: np.zeros((H, W, 3), np.uint8)) for i in range(cameras)
    ]
    return Frame(pts, None, np.eye(4), ego, cams, "s", 0, 0)


def _grid(x: float, ys: tuple[float, float], zs: tuple[float, float], step: float = 0.1) -> np.ndarray:
    y, z = np.meshgrid(np.arange(ys[0], ys[1] + 1e-9, step), np.arange(zs[0], zs[1] + 1e-9, step))
    return np.column_stack([np.full(y.size, x), y.ravel(), z.ravel()])


def _token_map() -> torch.Tensor:
    """(1, 4, h, w): a feature linear in the token position, [1, column, row, 0], so bilinear reads are exact."""
    col, row = torch.meshgrid(
        torch.arange(TOKENS_W, dtype=torch.float32), torch.arange(TOKENS_H, dtype=torch.float32), indexing="xy"
    )
    return torch.stack([torch.ones_like(col), col, row, torch.zeros_like(col)])[None]


def _expected(point: np.ndarray, ego: np.ndarray) -> torch.Tensor:
    """The past map's feature at the pixel the global ``point`` lands in, by direct projection."""
    cam = np.linalg.inv(ego @ CAM_TO_EGO) @ np.append(point, 1.0)
    u, v = (K @ cam[:3])[:2] / cam[2]
    col, row = (u + 0.5) / W * TOKENS_W - 0.5, (v + 0.5) / H * TOKENS_H - 0.5
    return F.normalize(torch.tensor([1.0, col, row, 0.0], dtype=torch.float32), dim=0)


WALL = _grid(20.0, (-8, 8), (-2, 2))  # a facade 20 m ahead of the past pose
OCCLUDER = _grid(10.0, (2.0, 3.0), (-0.5, 0.5))  # a post in front of part of it
PAST_EGO = _pose(0.0, 0.0, 0.0)


def _past_entry(cells: int = 16):
    past = _frame(np.vstack([WALL, OCCLUDER]), PAST_EGO)
    pairs = project_points(torch.from_numpy(past.points[:, :3]), past.camera_views())
    return view_entry(past, _token_map(), pairs, cells, (0, 0))


def test_zbuffer_holds_the_nearest_return_per_cell():
    entry = _past_entry()
    assert entry.depth.shape == (1, 8, 16) and entry.cell_px == [4.0]
    # The image centre sees the wall (20 m), the post's cells (u ~ 22-26 px) see the post (10 m).
    assert abs(float(entry.depth[0, 4, 8]) - 20.0) < 1e-3
    assert abs(float(entry.depth[0, 4, 6]) - 10.0) < 1e-3
    assert entry.maps.dtype == torch.float16 and entry.nbytes > 0
    empty, _ = zbuffer(project_points(torch.zeros(0, 3), []), [(W, H)], 16)
    assert torch.isinf(empty).all()


def test_static_point_reads_the_past_map_after_the_ego_moved_and_turned():
    entry = _past_entry()
    wall_point = np.array([20.0, -1.0, 0.3])
    # The ego drove 6 m and turned; the point is in no current camera (say), but the past one saw it.
    now = _frame(wall_point[None], _pose(6.0, 1.5, 0.7))
    xyz = global_xyz(now)
    np.testing.assert_allclose(xyz.numpy()[0], wall_point, atol=1e-4)
    pooled, has, frames = reproject(xyz, [entry], check="agreement")
    assert has.tolist() == [True] and frames.tolist() == [1]
    torch.testing.assert_close(pooled[0], _expected(wall_point, PAST_EGO), atol=2e-3, rtol=0)  # fp16 map


def test_occluded_point_is_rejected():
    entry = _past_entry()
    hidden = np.array([20.0, 5.0, 0.0])  # on the wall, but behind the post as seen from the past pose
    for check, seen in (("none", True), ("occlusion", False), ("agreement", False)):
        _, has, _ = reproject(torch.from_numpy(hidden[None]).float(), [entry], check=check)
        assert has.tolist() == [seen], check


def test_point_where_the_past_saw_free_space_is_rejected_by_the_agreement_check():
    """A car that drove into view: now there is a point 15 m ahead where the past ray saw the wall
    at 20 m. Its past pixel shows the wall, a stale target; the agreement check rejects it."""
    entry = _past_entry()
    arrived = torch.tensor([[15.0, -2.0, 0.0]])
    _, has_occ, _ = reproject(arrived, [entry], check="occlusion")
    _, has_agr, _ = reproject(arrived, [entry], check="agreement")
    assert has_occ.tolist() == [True] and has_agr.tolist() == [False]


def test_points_no_past_camera_saw_get_nothing_and_frames_pool():
    entries = [_past_entry(), _past_entry()]
    pts = torch.tensor([[-5.0, 0.0, 0.0], [20.0, 0.5, 0.0]])  # behind the past camera; on the wall
    pooled, has, frames = reproject(pts, entries, check="agreement")
    assert has.tolist() == [False, True] and frames.tolist() == [0, 2]
    assert torch.all(pooled[0] == 0)
    # Recency weighting changes nothing when both frames agree; pooling stays a unit vector.
    p2, _, _ = reproject(pts, entries, check="agreement", recency=0.5)
    torch.testing.assert_close(p2[1], pooled[1])
    assert abs(float(pooled[1].norm()) - 1) < 1e-5
    assert reproject(pts, [], check="agreement")[0] is None


def test_recall_kinds_and_fusion_with_reprojected_memory():
    lima = LimaConfig(align="reproject", alpha=0.5)
    past = _frame(np.vstack([WALL, OCCLUDER]), PAST_EGO)
    pairs = project_points(torch.from_numpy(past.points[:, :3]), past.camera_views())
    entry = remember(
        past,
        FrameTargets(
            torch.zeros(len(past.points), 4),
            torch.zeros(len(past.points), dtype=torch.bool),
            global_xyz(past),
            _token_map(),
            pairs,
        ),
        (0, 0),
        lima,
    )
    xyz = torch.tensor([[20.0, 0.0, 0.0], [20.0, 1.0, 0.0], [-5.0, 0.0, 0.0]])
    unified = F.normalize(torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]), dim=1)
    cur = FrameTargets(unified, torch.tensor([True, False, False]), xyz)
    out = recall(cur, [entry], lima)
    assert out.kind.tolist() == [CURRENT, MEMORY_ONLY, NO_TARGET] and out.frames.tolist() == [1, 1, 0]
    past_feat = _expected(np.array([20.0, 0.0, 0.0]), PAST_EGO)
    torch.testing.assert_close(out.target[0], F.normalize(0.5 * unified[0] + 0.5 * past_feat, dim=0), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.target[1], _expected(np.array([20.0, 1.0, 0.0]), PAST_EGO), atol=2e-3, rtol=0)


def test_camera_selection_and_per_scan_draw():
    frame = _frame(WALL, PAST_EGO, cameras=6)
    assert [c.name for c in select_cameras(frame, ("CAM2",)).cameras] == ["CAM2"]
    try:
        select_cameras(frame, ("CAM_FRONT",))
        raise AssertionError("an unknown camera must be refused")
    except ValueError as e:
        assert "CAM_FRONT" in str(e) and "CAM0" in str(e)
    draws = {tuple(c.name for c in sample_cameras(frame, 1, seed).cameras) for seed in range(40)}
    assert all(len(d) == 1 for d in draws) and len(draws) == 6  # one camera, every camera drawn sometime
    assert sample_cameras(frame, 1, 7).cameras[0].name == sample_cameras(frame, 1, 7).cameras[0].name
    assert len(sample_cameras(frame, 0, 3).cameras) == 6

"""Point -> pixel pairing on hand-made geometry."""

from __future__ import annotations

import math

import torch

from lima_zoo.training.datasets.pairing import CameraView, chain, pose_matrix, project_points, quaternion_to_matrix

K = torch.tensor([[100.0, 0, 160], [0, 100.0, 120], [0, 0, 1]], dtype=torch.float64)
# Camera looking along the LiDAR's +x: camera z = lidar x, camera x = -lidar y, camera y = -lidar z.
LOOK_X = torch.tensor([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=torch.float64)


def camera(name: str, yaw_deg: float = 0.0, ego_shift: float = 0.0) -> CameraView:
    """A camera at the LiDAR origin yawed by ``yaw_deg``; the ego moved ``ego_shift`` m forward
    (+x) between the LiDAR and the camera timestamps."""
    yaw = math.radians(yaw_deg)
    cs_cam = pose_matrix([math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)], [0, 0, 0]) @ pose_matrix(LOOK_X.T, [0, 0, 0])
    ego_cam = pose_matrix([1, 0, 0, 0], [ego_shift, 0, 0])
    eye = torch.eye(4, dtype=torch.float64)
    return CameraView(name, K, chain(eye, eye, ego_cam, cs_cam), 320, 240)


def test_quaternion_yaw():
    r = quaternion_to_matrix([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])  # +90 deg about z
    torch.testing.assert_close(
        r @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64)
    )


def test_projection_filters_and_principal_point():
    pts = torch.tensor([[10.0, 0, 0], [-10, 0, 0], [0.5, 0, 0], [10, 50, 0], [10, 1, -1]])
    pairs = project_points(pts, [camera("front")])
    assert pairs.point.tolist() == [0, 4]  # behind, too close and outside the image are dropped
    torch.testing.assert_close(pairs.uv[0], torch.tensor([160.0, 120.0]))
    torch.testing.assert_close(pairs.uv[1], torch.tensor([150.0, 130.0]))  # left and down of centre
    assert pairs.depth[0].item() == 10.0


def test_overlap_keeps_both_cameras_and_gap_keeps_none():
    cams = [camera("front"), camera("front_left", yaw_deg=60)]  # 116 deg HFOV each: they overlap
    pts = torch.tensor([[10.0, 3.0, 0], [-10.0, -0.5, 0]])  # 17 deg left; straight behind
    pairs = project_points(pts, cams)
    assert pairs.point.tolist() == [0, 0] and pairs.camera.tolist() == [0, 1]


def test_ego_motion_between_lidar_and_camera_time():
    """The ego drove 1 m forward before the camera fired: a point 10 m ahead is 9 m from it."""
    pairs = project_points(torch.tensor([[10.0, 1.0, 0]]), [camera("front", ego_shift=1.0)])
    assert abs(pairs.depth[0].item() - 9.0) < 1e-5
    assert abs(pairs.uv[0, 0].item() - (160 - 100 * 1 / 9)) < 1e-3

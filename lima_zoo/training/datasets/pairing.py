"""LiDAR point -> camera pixel pairing with the full pose chain (vectorised, no loop over points).

nuScenes gives every sample_data row its own ego pose, so a point is carried
lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera -> pixels:

    p_cam = T(cs_cam)^-1 . T(ego@t_cam)^-1 . T(ego@t_lidar) . T(cs_lidar) . p
    u, v  = (K p_cam)[:2] / p_cam.z

kept where depth > ``min_depth`` and the pixel lies ``margin`` pixels inside the image (nuscenes-devkit's
``map_pointcloud_to_image`` uses 1 m and 1 px). A point in an overlap zone keeps every camera it
lands in: pairs are (point, camera, u, v) rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["quaternion_to_matrix", "pose_matrix", "chain", "CameraView", "PixelPairs", "project_points"]


def quaternion_to_matrix(q: Sequence[float]) -> torch.Tensor:
    """[w, x, y, z] (nuScenes order) -> (3, 3) float64 rotation; the quaternion is normalised."""
    w, x, y, z = (
        torch.as_tensor(q, dtype=torch.float64) / torch.linalg.norm(torch.as_tensor(q, dtype=torch.float64))
    ).tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


def pose_matrix(rotation: Sequence[float] | torch.Tensor, translation: Sequence[float]) -> torch.Tensor:
    """Child -> parent (4, 4) float64 from a [w, x, y, z] quaternion or a (3, 3) matrix + translation."""
    rot = torch.as_tensor(rotation, dtype=torch.float64)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = quaternion_to_matrix(rot) if rot.shape == (4,) else rot
    m[:3, 3] = torch.as_tensor(translation, dtype=torch.float64)
    return m


def chain(cs_lidar: torch.Tensor, ego_lidar: torch.Tensor, ego_cam: torch.Tensor, cs_cam: torch.Tensor) -> torch.Tensor:
    """LiDAR -> camera (4, 4) through the global frame, from four child -> parent poses."""
    return torch.linalg.inv(cs_cam) @ torch.linalg.inv(ego_cam) @ ego_lidar @ cs_lidar


@dataclass(frozen=True)
class CameraView:
    """One camera of one frame: intrinsics K (3, 3), lidar -> camera (4, 4), image size."""

    name: str
    intrinsic: torch.Tensor
    lidar_to_camera: torch.Tensor
    width: int
    height: int


@dataclass
class PixelPairs:
    """point (P,) int64 row of the point; camera (P,) int64 index into the camera list;
    uv (P, 2) float32 pixel coordinates (x right, y down); depth (P,) float32 metres."""

    point: torch.Tensor
    camera: torch.Tensor
    uv: torch.Tensor
    depth: torch.Tensor


def project_points(
    xyz: torch.Tensor, cameras: Sequence[CameraView], min_depth: float = 1.0, margin: float = 1.0
) -> PixelPairs:
    """Every (point, camera) pair where the LiDAR point (N, 3) lands inside that camera's image."""
    if not cameras:
        empty = torch.empty(0, dtype=torch.int64)
        return PixelPairs(empty, empty, torch.empty(0, 2), torch.empty(0))
    pts = torch.as_tensor(xyz, dtype=torch.float64)[:, :3]
    transforms = torch.stack([c.lidar_to_camera.to(torch.float64) for c in cameras])  # (C, 4, 4)
    intrinsics = torch.stack([c.intrinsic.to(torch.float64) for c in cameras])  # (C, 3, 3)
    cam = pts @ transforms[:, :3, :3].transpose(1, 2) + transforms[:, None, :3, 3]  # (C, N, 3)
    depth = cam[..., 2]
    pix = cam @ intrinsics.transpose(1, 2)
    uv = pix[..., :2] / depth.clamp(min=1e-9)[..., None]
    size = torch.tensor([[c.width, c.height] for c in cameras], dtype=torch.float64)[:, None, :]
    keep = (depth > min_depth) & (uv > margin).all(dim=-1) & (uv < size - margin).all(dim=-1)
    cam_idx, point_idx = keep.nonzero(as_tuple=True)
    order = torch.argsort(point_idx * len(cameras) + cam_idx)  # point-major: a point's views adjacent
    cam_idx, point_idx = cam_idx[order], point_idx[order]
    return PixelPairs(point_idx, cam_idx, uv[cam_idx, point_idx].float(), depth[cam_idx, point_idx].float())

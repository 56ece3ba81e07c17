"""Dataset readers (nuScenes, SemanticKITTI, Waymo) and point-to-pixel pairing."""

from .pairing import CameraView, PixelPairs, chain, pose_matrix, project_points, quaternion_to_matrix

__all__ = ["CameraView", "PixelPairs", "chain", "pose_matrix", "project_points", "quaternion_to_matrix"]

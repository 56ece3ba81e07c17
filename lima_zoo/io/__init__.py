"""Point-cloud input and feature output."""

from .readers import POINT_SUFFIXES, PointCloud, PointCloudError, load_points, point_suffix
from .writers import FEATURE_FORMATS, pca_colors, save_features

__all__ = [
    "PointCloud",
    "PointCloudError",
    "load_points",
    "point_suffix",
    "POINT_SUFFIXES",
    "FEATURE_FORMATS",
    "save_features",
    "pca_colors",
]

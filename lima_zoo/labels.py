"""Class vocabularies of nuScenes-lidarseg, SemanticKITTI and Waymo Open, and the maps between them.

Raw ids are what the datasets store on disk; evaluation ids are what mIoU is computed over (0 is
the ignore label everywhere here). The synthetic world labels every surface with a nuScenes raw
category and derives the SemanticKITTI and Waymo ids from the same table, so the three formats it
writes agree point by point.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NUSCENES_CATEGORIES",
    "NUSCENES_EVAL_CLASSES",
    "NUSCENES_LUT",
    "KITTI_EVAL_CLASSES",
    "kitti_learning_map",
    "WAYMO_CLASSES",
    "map_labels",
]

# nuScenes-lidarseg raw categories; the position is the "index" field of category.json.
NUSCENES_CATEGORIES = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)

# 16 evaluation classes, ids 1..16 (0 = ignore), and the raw -> evaluation table.
NUSCENES_EVAL_CLASSES = (
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)
NUSCENES_LUT = np.array(
    [0, 0, 7, 7, 7, 0, 7, 0, 0, 1, 0, 0, 8, 0, 2, 3, 3, 4, 5, 0, 0, 6, 9, 10, 11, 12, 13, 14, 15, 0, 16, 0],
    dtype=np.int64,
)

# SemanticKITTI: 19 evaluation classes, ids 1..19 (0 = ignore); raw ids from semantic-kitti.yaml.
KITTI_EVAL_CLASSES = (
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)
_KITTI_RAW_TO_EVAL = {
    10: 1,
    252: 1,
    11: 2,
    15: 3,
    18: 4,
    258: 4,
    13: 5,
    16: 5,
    20: 5,
    256: 5,
    257: 5,
    259: 5,
    30: 6,
    254: 6,
    31: 7,
    253: 7,
    32: 8,
    255: 8,
    40: 9,
    60: 9,
    44: 10,
    48: 11,
    49: 12,
    50: 13,
    51: 14,
    70: 15,
    71: 16,
    72: 17,
    80: 18,
    81: 19,
}


_KITTI_LUT = np.zeros(max(_KITTI_RAW_TO_EVAL) + 1, dtype=np.int64)
_KITTI_LUT[list(_KITTI_RAW_TO_EVAL)] = list(_KITTI_RAW_TO_EVAL.values())


def kitti_learning_map(raw: np.ndarray) -> np.ndarray:
    """SemanticKITTI raw semantic ids (any int array) -> evaluation ids 0..19; unknown ids -> 0."""
    lut = _KITTI_LUT
    raw = np.asarray(raw, dtype=np.int64)
    inside = (raw >= 0) & (raw < len(lut))
    return np.where(inside, lut[np.clip(raw, 0, len(lut) - 1)], 0)


# Waymo Open v2 segmentation: 23 ids, 0 = undefined (ignored); mIoU over 1..22.
WAYMO_CLASSES = (
    "undefined",
    "car",
    "truck",
    "bus",
    "other_vehicle",
    "motorcyclist",
    "bicyclist",
    "pedestrian",
    "sign",
    "traffic_light",
    "pole",
    "construction_cone",
    "bicycle",
    "motorcycle",
    "building",
    "vegetation",
    "tree_trunk",
    "curb",
    "road",
    "lane_marker",
    "other_ground",
    "walkable",
    "sidewalk",
)


def map_labels(labels: np.ndarray, lut: np.ndarray, name: str) -> np.ndarray:
    """Apply a lookup table to raw labels, refusing ids outside it (a sign of a wrong label file)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(lut)):
        raise ValueError(f"{name}: label ids must be in 0..{len(lut) - 1}, found {labels.min()}..{labels.max()}")
    return lut[labels]

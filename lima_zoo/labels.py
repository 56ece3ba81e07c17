"""Class vocabularies of nuScenes-lidarseg, SemanticKITTI and Waymo Open, and the maps between them.

A segmentation model carries a :class:`Vocabulary`: its class names (head output c is evaluation id
c + 1) and, for a dataset format, the raw id each evaluation id is written back as (the inverse
learning map), so predictions can be saved in the dataset's own label files.

Raw ids are what the datasets store on disk; evaluation ids are what mIoU is computed over (0 is
the ignore label everywhere here). The synthetic world labels every surface with a nuScenes raw
category and derives the SemanticKITTI and Waymo ids from the same table, so the three formats it
writes agree point by point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NUSCENES_CATEGORIES",
    "NUSCENES_EVAL_CLASSES",
    "NUSCENES_LUT",
    "KITTI_EVAL_CLASSES",
    "kitti_learning_map",
    "WAYMO_CLASSES",
    "map_labels",
    "Vocabulary",
    "vocabulary_for",
    "LABEL_FORMATS",
    "read_head_json",
    "class_palette",
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


# evaluation id -> the raw id predictions are written as (SemanticKITTI's learning_map_inv; for
# nuScenes the most common raw category of each class, e.g. pedestrian -> human.pedestrian.adult)
_KITTI_EVAL_TO_RAW = (0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81)
_NUSCENES_EVAL_TO_RAW = (0, 9, 14, 16, 17, 18, 21, 2, 12, 22, 23, 24, 25, 26, 27, 28, 30)
LABEL_FORMATS = {  # dataset format -> (its evaluation classes, raw id per evaluation id 0..C)
    "nuscenes": (NUSCENES_EVAL_CLASSES, _NUSCENES_EVAL_TO_RAW),
    "semantickitti": (KITTI_EVAL_CLASSES, _KITTI_EVAL_TO_RAW),
    "waymo": (WAYMO_CLASSES[1:], tuple(range(len(WAYMO_CLASSES)))),
}


@dataclass(frozen=True)
class Vocabulary:
    """What a segmentation model's outputs mean.

    names: class c (head output c, evaluation id c + 1; 0 is the ignore / unlabelled id).
    dataset: the label format the classes come from ("nuscenes", "semantickitti", "waymo"), or ""
        for a custom one (no raw ids: predictions are written as evaluation ids or class indices).
    raw_ids: the raw id of evaluation ids 0..C (index 0: what a point without a prediction gets).
    """

    names: tuple[str, ...]
    dataset: str = ""
    raw_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.names or not all(isinstance(n, str) and n for n in self.names):
            raise ValueError("a vocabulary needs one non-empty name per class")
        if self.raw_ids is not None and (
            len(self.raw_ids) != len(self.names) + 1 or any(not isinstance(r, int) or r < 0 for r in self.raw_ids)
        ):
            raise ValueError(f"raw_ids: {len(self.names) + 1} non-negative ints expected (ids 0..{len(self.names)})")

    @property
    def eval_ids(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.names) + 1))

    def ids(self, index: np.ndarray, kind: str) -> np.ndarray:
        """(N,) class indices (-1: no prediction) -> int64 ids of ``kind``: "index" (as given),
        "eval" (index + 1, 0 for none) or "raw" (the dataset's raw ids, unlabelled for none)."""
        index = np.asarray(index, dtype=np.int64)
        if kind == "index":
            return index
        if kind == "eval":
            return index + 1
        if kind == "raw":
            if self.raw_ids is None:
                raise ValueError(
                    "this model's classes come from no dataset with raw ids (a custom dataset): write evaluation "
                    "ids or class indices instead"
                )
            return np.asarray(self.raw_ids, dtype=np.int64)[index + 1]
        raise ValueError(f"id kind {kind!r}: choose from index, eval, raw")

    def to_json(self) -> dict:
        return {
            "class_names": list(self.names),
            "eval_ids": list(self.eval_ids),
            "label_format": self.dataset,
            "raw_ids": None if self.raw_ids is None else list(self.raw_ids),
        }

    @classmethod
    def from_json(cls, meta: dict) -> "Vocabulary":
        """The vocabulary of a head.json (its ``class_names``, ``label_format`` and ``raw_ids``)."""
        names = tuple(meta["class_names"])
        eval_ids = meta.get("eval_ids", list(range(1, len(names) + 1)))
        if list(eval_ids) != list(range(1, len(names) + 1)):
            raise ValueError(f"eval_ids must be 1..{len(names)}, one per class name")
        raw = meta.get("raw_ids")
        return cls(names, str(meta.get("label_format", "")), None if raw is None else tuple(raw))


def vocabulary_for(dataset: str, class_names: tuple[str, ...]) -> Vocabulary:
    """The vocabulary of a model trained on a ``dataset``-format dataset with ``class_names``: with
    the raw-id map where the format has one and the classes are its own, else names only."""
    known = LABEL_FORMATS.get(dataset)
    if known is not None and tuple(class_names) == tuple(known[0]):
        return Vocabulary(tuple(class_names), dataset, tuple(known[1]))
    return Vocabulary(tuple(class_names), dataset if known is None else "")


def read_head_json(path) -> tuple[Vocabulary, dict]:
    """A segmentation folder's head.json -> (its vocabulary, the rest: protocol, dataset, scores);
    ValueError naming the file."""
    import json
    from pathlib import Path

    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
        vocabulary = Vocabulary.from_json(meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable segmentation head description ({exc})") from None
    info = {k: v for k, v in meta.items() if k not in vocabulary.to_json()}
    return vocabulary, info


# 24 colours far apart to the eye (after Glasbey et al.'s maximally distinct palettes), in order
_DISTINCT = (
    "e6194b 3cb44b ffe119 4363d8 f58231 911eb4 46f0f0 f032e6 bcf60c fabebe 008080 e6beff "
    "9a6324 fffac8 800000 aaffc3 808000 ffd8b1 000075 6b8e23 ff6f61 2f4f4f 7fffd4 c71585"
).split()


def class_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours for ids 0..num_classes-1: id 0 (ignore / no prediction) is
    grey, the others distinct colours (repeating after 24)."""
    table = np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in _DISTINCT], dtype=np.uint8)
    out = np.empty((num_classes, 3), dtype=np.uint8)
    out[0] = (128, 128, 128)
    if num_classes > 1:
        out[1:] = table[np.arange(num_classes - 1) % len(table)]
    return out

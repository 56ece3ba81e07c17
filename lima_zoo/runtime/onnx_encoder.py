"""Run an exported model.onnx with onnxruntime: ``OnnxEncoder.embed`` == ``LiMAEncoder.embed``.

The graph's inputs are built before each run by this package's input builders: FRNet's range
feeds (``range_inputs.py``), SPVCNN's point-voxel look-ups (``point_voxel_inputs.py``) or the voxel
graph's kernel maps (``voxel_inputs.py``). Everything after that — every convolution, the skip
connections and the head — runs inside onnxruntime.

Providers: CUDA when onnxruntime-gpu is installed and ``device`` asks for cuda, else CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..config import POINT_VOXEL_BACKBONES, read_config
from ..cpu import usable_cpus
from ..features import FeatureExtractor, model_columns
from .cells import Cells, count_voxels, range_project, voxelize
from .point_voxel_inputs import POINT_VOXEL_INPUT_NAMES, point_voxel_inputs
from .range_inputs import RANGE_INPUT_NAMES, range_feeds
from .voxel_inputs import graph_inputs, input_names

__all__ = ["OnnxEncoder"]


class OnnxEncoder(FeatureExtractor):
    """A model.onnx + its config.json, run with onnxruntime; ``embed`` as in LiMAEncoder."""

    def __init__(self, onnx_path: str | os.PathLike, config, device: str | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnx runtime needs onnxruntime: pip install 'lima-zoo[onnx]'") from None
        self.config = config
        self.path = Path(onnx_path)
        want_cuda = str(device) == "auto" or str(device).startswith("cuda")
        available = ort.get_available_providers()
        if str(device).startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device {device!r} requested but onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
            )
        self.providers = (["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else []) + [
            "CPUExecutionProvider"
        ]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT warns about unused initializers etc. at level 2
        # Worker threads keep onnxruntime's default spinning between its ~5k small ops (turning it
        # off made a nuScenes-size forward ~30% slower) but stop when a run ends: a spinning thread
        # otherwise takes a core from the next scan's voxelization and map building (~2x slower).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load this model ({type(e).__name__}: {e})") from None
        # the graph layout and its pre-processing step: FRNet's range view (one scan per run), SPVCNN's
        # point-voxel graph or the voxel graph (a whole batch per run)
        if config.preprocess.range_image is not None:
            expected, self._feeds = RANGE_INPUT_NAMES, range_feeds
        elif config.backbone in POINT_VOXEL_BACKBONES:
            expected, self._feeds = POINT_VOXEL_INPUT_NAMES, lambda cells: [point_voxel_inputs(cells)]
        else:
            expected, self._feeds = input_names(), lambda cells: [graph_inputs(cells.feats, cells.coords)]
        self.point_output = expected != input_names()  # only the voxel graph's rows are voxels
        got = [i.name for i in self.session.get_inputs()]
        if got != expected:
            raise ValueError(
                f"{self.path}: its inputs {got[:4]}... are not this lima-zoo's {config.backbone} graph layout "
                f"({expected[:4]}...); re-export it with `lima-zoo export`"
            )

    extra_files: tuple[str, ...] = ()  # what from_pretrained fetches beside config.json and model.onnx

    @classmethod
    def from_files(cls, files: dict[str, Path], device: str | None = None) -> "OnnxEncoder":
        return cls(files["model.onnx"], read_config(files["config.json"]), device=device)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        device: str | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
    ) -> "OnnxEncoder":
        """The sources of :meth:`LiMAEncoder.from_pretrained` (registered name, org/repo[@rev], folder),
        with the folder's (or repo's) model.onnx instead of its safetensors weights.

        Args:
            name_or_path: the folder, ``org/repo[@revision]`` or a registered name.
            revision: the Hub revision.
            cache_dir: the Hugging Face cache to use.
            local_files_only: never touch the network.
            token: a Hub token for private repos.
            force_download: fetch again even when cached.
            device: "cuda[:N]" runs on onnxruntime's CUDA provider (onnxruntime-gpu), "auto" uses
                it when installed; anything else the CPU.
        """
        from ..hub import model_files

        files, revision = model_files(
            name_or_path,
            revision,
            cache_dir,
            local_files_only,
            onnx=True,
            token=token,
            force_download=force_download,
            extra=cls.extra_files,
        )
        runner = cls.from_files(files, device=device)
        runner.name_or_path, runner.revision = str(name_or_path), revision
        return runner

    @property
    def device(self) -> str:
        return "cpu"  # pre-processing runs on the CPU; onnxruntime moves data itself

    def run(self, feeds: dict[str, np.ndarray], space: str = "backbone") -> np.ndarray:
        """One session run: graph inputs -> (M, D) features of ``space`` (or, in a segmentation
        graph, "logits" (M, C) / "labels" (M,), the outputs of the same name)."""
        output = "features" if space in ("backbone", "teacher") else space
        return self.session.run([output], {**feeds, "teacher_space": np.array(space == "teacher")})[0]

    # ----------------------------------------------------------- FeatureExtractor's hooks (numpy)

    def prepare(self, points, intensity_range: float | None = None) -> np.ndarray:
        """(N, >=3) points -> float32 numpy with the columns the model reads, checked, intensity
        rescaled from ``intensity_range`` to the model's."""
        pts = np.asarray(points.numpy() if hasattr(points, "numpy") else points, dtype=np.float32)
        return model_columns(pts, self.config, intensity_range, np)

    def voxelize(self, scans) -> Cells:
        if self.config.preprocess.range_image is not None:
            return range_project(list(scans), self.config.preprocess)
        return voxelize(list(scans), self.config.preprocess, keep_points=self.point_output)

    def count_voxels(self, scans, limit: int | None = None) -> int:
        return count_voxels(list(scans), self.config.preprocess, limit=limit)

    def feature_rows(self, cells: Cells, space: str) -> np.ndarray:
        rows = [self.run(feeds, space) for feeds in self._feeds(cells)]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def split(self, rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
        dtype = rows.dtype if np.issubdtype(rows.dtype, np.integer) else np.float32  # labels stay ints
        return [a.astype(dtype, copy=False) for a in np.split(rows, np.cumsum(sizes)[:-1])]

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder({self.path}, providers={self.providers}, config={json.dumps(self.config.to_dict())[:80]}...)"
        )


def _default_threads() -> int:
    """onnxruntime's intra-op threads: OMP_NUM_THREADS when set (as torch reads it), else the CPUs
    this process may use (its affinity mask, capped by a cgroup quota)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return usable_cpus()

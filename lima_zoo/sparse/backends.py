"""Which library executes a sparse convolution: our engine, spconv, spconv-triton or torchsparse.

"torch" (default, CPU and CUDA) uses ``kmap.py`` + ``functional.py``. "spconv" runs the same
kernels through spconv 2.x, "spconv-triton" through its Triton reimplementation (the same API,
GPUs only: NVIDIA and AMD), "torchsparse" through torchsparse 2.1 (GPU builds; it is not on PyPI
and was not available to test here). "auto" is resolved per process by :func:`auto_backend`: the
torch engine on a CPU (its fused kernel is the fastest there, measured by bench_sparse.py), and on
a GPU the fastest installed library, timed on the first batch by ``LiMAEncoder``. A foreign
library is imported only when its backend is first used, never by ``import lima_zoo``. Whatever
order a foreign library gives downsampled voxels, rows are mapped back to ours, so backends can be
switched per layer and compared row by row.

spconv adapter facts (checked by tests against the torch backend and dense conv3d):
* indices are passed as ``[b, z, y, x]`` in level units, so spconv's row-major kernel index equals
  our odd-kernel order (x fastest); for kernel 2 (z fastest in our order) a permutation is applied.
* spconv weights are (C_out, k, k, k, C_in); ``kernel[perm].permute(2, 0, 1)`` gives them.
* spconv orders downsampled voxels its own way; rows are mapped to our coordinate order once per
  level (cached), so every layer sees the same rows whichever backend ran before it.
* spconv drops voxels at the edge of a ``spatial_shape`` that is not divisible by 2 at every level;
  the shape is rounded up to a multiple of 64.
* spconv 2.3.8's CPU compute gives wrong, run-to-run varying results with more than one torch
  thread (traveller59/spconv#679, checked: 0.22 max error at 2 threads): its CPU forward runs on one
  thread here, and a CPU conv that autograd would differentiate with more is refused.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import torch

from .functional import epilogue, sparse_conv
from .kmap import CoordinateKeys, KernelMap, kernel_offsets
from .tensor import SparseTensor

__all__ = [
    "available_backends",
    "check_backend",
    "check_trainable",
    "spconv_cpu_unguarded",
    "conv3d",
    "kernel_map",
    "auto_backend",
    "gpu_candidates",
    "BACKENDS",
]

BACKENDS = ("torch", "spconv", "spconv-triton", "torchsparse")
MODULES = {"spconv": "spconv", "spconv-triton": "spconv_triton", "torchsparse": "torchsparse"}
GPU_ONLY = ("spconv-triton", "torchsparse")
INSTALL_HINTS = {
    "spconv": "pip install spconv (CPU); on a GPU the wheel of your CUDA, e.g. pip install spconv-cu120",
    "spconv-triton": "pip install spconv-triton (GPUs only; Triton comes with your CUDA or ROCm torch)",
    "torchsparse": (
        "it is not on PyPI: build it from source, github.com/mit-han-lab/torchsparse, for your torch and CUDA"
    ),
}


def available_backends() -> list[str]:
    """Backends whose library is importable here (probed without importing it)."""
    return ["torch"] + [b for b in BACKENDS[1:] if importlib.util.find_spec(MODULES[b]) is not None]


def check_backend(name: str) -> None:
    if name == "auto":
        return
    if name not in BACKENDS:
        raise ValueError(f"unknown sparse backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    if name != "torch" and importlib.util.find_spec(MODULES[name]) is None:
        raise ValueError(
            f"sparse backend {name!r} is not installed ({INSTALL_HINTS[name]}); available: {available_backends()}"
        )


def gpu_candidates() -> list[str]:
    """The installed backends ``auto`` times on a GPU (the torch engine always among them)."""
    return available_backends()


def auto_backend(device: torch.device | str) -> tuple[str | None, str]:
    """(backend, why) of ``auto`` on ``device``: the torch engine on a CPU; on a GPU None, meaning
    "time the installed candidates on the first batch" (``LiMAEncoder`` does)."""
    if torch.device(device).type != "cuda":
        return "torch", (
            "not a GPU: the torch engine's fused CPU kernel is the fastest installed CPU engine "
            "(benchmarks/bench_sparse.py: 0.68-0.73x spconv's MinkUNet-34 forward time)"
        )
    return None, f"a GPU: the fastest of {', '.join(gpu_candidates())}, timed on the first batch"


def check_trainable(name: str, device: torch.device) -> None:
    """Raise ValueError where ``name`` cannot compute gradients correctly on ``device`` now: spconv's
    CPU backward races with more than one torch thread (traveller59/spconv#679)."""
    check_backend(name)
    if name == "spconv":
        _refuse_racy_backward(device)
    if name in GPU_ONLY and torch.device(device).type != "cuda":
        raise ValueError(f"the {name} backend runs on GPUs only; on {device} use the torch backend (or auto)")


def conv3d(
    x: SparseTensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: int,
    stride: int,
    dilation: int,
    transposed: bool,
    backend: str = "torch",
    *,
    residual: SparseTensor | None = None,
    relu: bool = False,
    scale: torch.Tensor | None = None,
) -> SparseTensor:
    """Sparse conv of ``x`` with ``kernel`` (K, C_in, C_out) (times ``scale`` (C_out,) per output
    channel, e.g. a folded eval-mode BatchNorm's); see ``nn.Conv3d`` for the kinds. Then
    ``+ residual`` (a tensor on the output's coordinates) and ReLU if asked: on the fused CPU kernel
    under inference the scale, bias, residual and ReLU run inside the conv's own pass, elsewhere
    the kernel is scaled first and the rest runs right after the conv."""
    if backend == "torch" and kernel_size != 1:
        return _torch_conv(x, kernel, bias, kernel_size, stride, dilation, transposed, residual, relu, scale)
    if scale is not None:
        kernel = kernel * scale
    if kernel_size == 1:  # 1x1x1: a plain linear map, any backend
        feats = x.feats @ kernel[0] if bias is None else torch.addmm(bias, x.feats, kernel[0])
        return x.replace_feats(epilogue(feats, _feats(residual), relu))
    if backend in ("spconv", "spconv-triton", "torchsparse"):
        if backend in GPU_ONLY and not x.feats.is_cuda:
            raise ValueError(f"the {backend} backend runs on GPUs only; these features are on {x.feats.device}")
        if backend == "torchsparse":
            out = _torchsparse_conv(x, kernel, kernel_size, stride, dilation, transposed)
        else:
            out = _spconv_conv(x, kernel, kernel_size, stride, dilation, transposed, backend)
        feats = out.feats if bias is None else out.feats + bias
        return out.replace_feats(epilogue(feats, _feats(residual), relu))
    check_backend(backend)
    raise AssertionError("unreachable")


def kernel_map(x: SparseTensor, kernel_size: int, stride: int, dilation: int, transposed: bool) -> KernelMap:
    """The torch engine's map for a conv of this kind on ``x`` (built once, cached on its coords)."""
    if stride == 1:
        return x.cache.submanifold_map(x.stride, kernel_size, dilation)
    if transposed:
        return x.cache.downsample_map(_fine_stride(x)).transposed()
    return x.cache.downsample_map(x.stride)


def _out_stride(x: SparseTensor, stride: int, transposed: bool) -> int:
    if stride == 1:
        return x.stride
    return _fine_stride(x) if transposed else 2 * x.stride


def _torch_conv(
    x, kernel, bias, kernel_size, stride, dilation, transposed, residual=None, relu=False, scale=None
) -> SparseTensor:
    kmap = kernel_map(x, kernel_size, stride, dilation, transposed)
    feats = sparse_conv(x.feats, kernel, kmap, bias, _feats(residual), relu, scale)
    return SparseTensor.derived(feats, x, stride=_out_stride(x, stride, transposed))


def _feats(t: SparseTensor | None) -> torch.Tensor | None:
    return None if t is None else t.feats


def _fine_stride(x: SparseTensor) -> int:
    fine = x.stride // 2
    if x.stride % 2 or ("down", fine) not in x.cache.kmaps:
        raise ValueError(f"transposed conv at stride {x.stride}: no stride-{fine} level was downsampled on this input")
    return fine


# ---------------------------------------------------------------------------------------- spconv

_SPCONV_TEMPLATES: dict[tuple, Any] = {}


def _even_kernel_perm() -> torch.Tensor:
    """perm[k_spconv] = k_ours for kernel 2 with spconv indices in (z, y, x) order."""
    off = kernel_offsets(2)  # ours, z fastest
    k_sp = off[:, 2] * 4 + off[:, 1] * 2 + off[:, 0]
    return torch.argsort(k_sp)


def _spconv_state(x: SparseTensor, library: str) -> dict:
    state = x.cache.backend_state.get(library)
    if state is None:
        base = min(x.cache.coords)
        c = x.cache.coords[base]
        maxes = (c[:, 1:].max(dim=0).values // base + 1).tolist() if len(c) else [1, 1, 1]
        shape = [((m + 63) // 64) * 64 for m in maxes[::-1]]  # z, y, x
        state = {
            "base": base,
            "shape": shape,
            "batch_size": int(c[:, 0].max()) + 1 if len(c) else 1,
            "indice_dict": {},
            "sp_indices": {},  # stride -> spconv's own (M, 4) indices of a level it downsampled to
            "ours_row": {},  # stride -> (M,) our row of each spconv row at that level
        }
        x.cache.backend_state[library] = state
    return state


def _swap_xz(c: torch.Tensor) -> torch.Tensor:
    """[b, x, y, z] <-> [b, z, y, x] (spconv's axis order here; the swap is its own inverse)."""
    return torch.stack([c[:, 0], c[:, 3], c[:, 2], c[:, 1]], dim=1)


def _spconv_indices(x: SparseTensor, stride: int) -> torch.Tensor:
    return _swap_xz(x.cache.level_coords(stride)).to(torch.int32)


def _import_spconv(library: str = "spconv"):
    """spconv.pytorch (or spconv-triton's drop-in of it), the former usable for training on a
    machine without a CUDA driver: spconv 2.3's CPU backward asks torch for the current CUDA stream
    before it branches to its CPU code (which never uses it), and that call fails without a driver.
    There it gets a null stream instead."""
    if library == "spconv-triton":
        import spconv_triton.pytorch as spconv_triton

        return spconv_triton
    import spconv.pytorch as spconv
    from spconv.pytorch import ops

    if not torch.cuda.is_available() and not getattr(ops, "_lima_cpu_stream", False):
        ops.get_current_stream, ops._lima_cpu_stream = (lambda: 0), True
    return spconv


_SPCONV_CPU_GUARD = [True]  # False only inside spconv_cpu_unguarded()


@contextlib.contextmanager
def spconv_cpu_unguarded():
    """Let spconv's CPU kernels run on every torch thread, wrong sums included: for benchmarks that
    time spconv as its users run it (bench_sparse.py); never for features anyone keeps."""
    _SPCONV_CPU_GUARD[0] = False
    try:
        yield
    finally:
        _SPCONV_CPU_GUARD[0] = True


def _spconv_races(device: torch.device) -> bool:
    """Whether spconv would run its CPU kernels on more than one thread here: wrong, run-to-run
    varying sums (traveller59/spconv#679), unless inside spconv_cpu_unguarded()."""
    return torch.device(device).type == "cpu" and torch.get_num_threads() > 1 and _SPCONV_CPU_GUARD[0]


def _refuse_racy_backward(device: torch.device) -> None:
    if _spconv_races(device):
        raise ValueError(
            f"the spconv backend's CPU backward is wrong with more than one thread (traveller59/spconv#679), "
            f"and torch has {torch.get_num_threads()}: train with torch.set_num_threads(1) (run.threads=1), or the "
            "torch backend"
        )


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """spconv's CPU forward on one thread where it would race (torch's count is restored after)."""
    if not _spconv_races(device):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spconv_module(kind: str, c_in: int, c_out: int, kernel_size: int, dilation: int, key: str, library: str):
    spconv = _import_spconv(library)

    tkey = (library, kind, c_in, c_out, kernel_size, dilation, key)
    mod = _SPCONV_TEMPLATES.get(tkey)
    if mod is None:
        if kind == "subm":
            mod = spconv.SubMConv3d(c_in, c_out, kernel_size, dilation=dilation, bias=False, indice_key=key)
        elif kind == "down":
            mod = spconv.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key)
        else:
            mod = spconv.SparseInverseConv3d(c_in, c_out, 2, bias=False, indice_key=key)
        _SPCONV_TEMPLATES[tkey] = mod
    return mod


def _spconv_conv(x, kernel, kernel_size, stride, dilation, transposed, library: str = "spconv") -> SparseTensor:
    spconv = _import_spconv(library)
    from torch.func import functional_call

    state = _spconv_state(x, library)
    c_in, c_out = kernel.shape[1], kernel.shape[2]
    if kernel_size == 2:
        kernel = kernel[_even_kernel_perm().to(kernel.device)]
    k = kernel_size
    # spconv's backward asserts contiguous filters; a permuted view is not.
    weight = kernel.permute(2, 0, 1).reshape(c_out, k, k, k, c_in).contiguous()
    scale = x.stride // state["base"]
    shape = [s // scale for s in state["shape"]]

    def run(kind, key, feats, indices):
        mod = _spconv_module(kind, c_in, c_out, k, dilation, key, library)
        inp = spconv.SparseConvTensor(feats, indices, shape, state["batch_size"], indice_dict=state["indice_dict"])
        if torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad):
            _refuse_racy_backward(feats.device)  # its backward runs later, outside any thread guard
        with _one_thread_on_cpu(feats.device):
            out = functional_call(mod, {"weight": weight}, (inp,))
        state["indice_dict"] = out.indice_dict
        return out

    if stride == 1:
        out = run("subm", f"subm{x.stride}_{k}_{dilation}", x.feats, _spconv_indices(x, x.stride))
        return SparseTensor.derived(out.features, x)
    if not transposed:
        out = run("down", f"down{x.stride}", x.feats, _spconv_indices(x, x.stride))
        state["sp_indices"].setdefault(2 * x.stride, out.indices)
        rows = _downsampled_rows(x, state, lambda: _swap_xz(out.indices))
        return SparseTensor.derived(_to_our_order(out.features, rows), x, stride=2 * x.stride)
    fine = _fine_stride(x)
    feats = x.feats.index_select(0, state["ours_row"][x.stride])  # back into spconv's row order
    out = run("inverse", f"down{fine}", feats, state["sp_indices"][x.stride])
    return SparseTensor.derived(out.features, x, stride=fine)


def _downsampled_rows(x: SparseTensor, state: dict, foreign_bxyz) -> torch.Tensor:
    """Our row of each row of the level a foreign library just downsampled ``x`` to, computed once
    per level. foreign_bxyz: () -> that library's (M, 4) [b, x, y, z] level-unit coordinates."""
    coarse = 2 * x.stride
    if coarse not in state["ours_row"]:
        x.cache.downsample_map(x.stride)  # our coordinates of the coarse level
        state["ours_row"][coarse] = _our_rows(x, coarse, foreign_bxyz())
    return state["ours_row"][coarse]


def _to_our_order(feats: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Foreign-ordered rows -> our order (rows[i] = our row of foreign row i); None: same order."""
    return feats if rows is None else torch.empty_like(feats).index_copy_(0, rows, feats)


def _our_rows(x: SparseTensor, stride: int, level_bxyz: torch.Tensor) -> torch.Tensor:
    """Our row index (at ``stride``) of every row of a foreign library's (M, 4) [b, x, y, z]
    level-unit coordinates; a different voxel set is an error, not a silent mismatch."""
    ours = CoordinateKeys(x.cache.level_coords(stride), margin=0)
    rows = ours.lookup(ours.pack(level_bxyz.to(torch.int64)))
    if len(rows) != ours.keys.numel() or bool((rows < 0).any()):
        raise RuntimeError(
            f"the foreign backend produced a different set of stride-{stride} voxels than the torch engine"
        )
    return rows


# ----------------------------------------------------------------------------------- torchsparse


def _torchsparse_conv(x, kernel, kernel_size, stride, dilation, transposed) -> SparseTensor:
    """torchsparse 2.1: coords [b, x, y, z] in level units, kernels (K, C_in, C_out) in our order."""
    import torchsparse
    from torchsparse.nn import functional as tsf

    state = x.cache.backend_state.setdefault("torchsparse", {"caches": None, "ours_row": {}})
    out_stride = _out_stride(x, stride, transposed)
    level = x.cache.level_coords(x.stride).to(torch.int32)
    ours_row = state["ours_row"].get(x.stride)
    if ours_row is not None:  # a level torchsparse produced: give it its own row order back
        feats, level = x.feats.index_select(0, ours_row), level.index_select(0, ours_row)
    else:
        feats = x.feats
    inp = torchsparse.SparseTensor(feats=feats, coords=level, stride=x.stride)
    if state["caches"] is not None:
        inp._caches = state["caches"]
    out = tsf.conv3d(
        inp, kernel, kernel_size, None, stride, 0, dilation, None, transposed, False, torch.is_grad_enabled()
    )
    state["caches"] = out._caches
    if out_stride > x.stride:
        _downsampled_rows(x, state, lambda: out.coords)
    return SparseTensor.derived(_to_our_order(out.feats, state["ours_row"].get(out_stride)), x, stride=out_stride)

"""The fused CPU kernel (``csrc/fused_conv.cpp``): gather, GEMM and scatter per cache-sized tile.

Built with ``torch.utils.cpp_extension`` the first time a CPU convolution runs (needs a C++
compiler and ``ninja``; the build is cached by torch, so it happens once), then used for every CPU conv of
the "torch" backend in forward and backward. ``LIMA_ZOO_KERNEL`` chooses:

* unset or ``auto``: the fused kernel where it builds, else the pure-PyTorch path (one message why);
* ``fused``: the fused kernel, and an error if it cannot be built;
* ``torch``: the pure-PyTorch path (``functional.py``), e.g. to compare.

Both paths compute the same sums; the fused one in a different (but fixed) order, so they agree to
float rounding and each is bit-identical run to run and at any thread count. CUDA tensors always
take the pure-PyTorch path.

Why tiles (measured, docs/performance.md): the pure-PyTorch path writes every gathered row and
every product to memory and reads it back (index_select, mm, index_add_); here a tile of pairs is
gathered into a thread-local buffer that stays in cache, multiplied, and added into its output rows
at once. Output rows are cut into blocks owned by one task each, so no atomics are needed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

from .kmap import KernelMap

log = logging.getLogger(__name__)

__all__ = ["kernel_choice", "fused_module", "uses_fused", "apply_map", "weight_grad", "KERNEL_ENV"]

KERNEL_ENV = "LIMA_ZOO_KERNEL"
_CHOICES = ("auto", "fused", "torch")
_SOURCE = Path(__file__).parent / "csrc" / "fused_conv.cpp"
# Rows of a tile x channels ~ 32k floats (128 KB): the gathered rows and their products stay in L2.
TILE_FLOATS = 32768

_lock = threading.Lock()
_state: dict = {}  # "module": the loaded extension, or "error": why it is not available


def kernel_choice() -> str:
    """The value of LIMA_ZOO_KERNEL (auto when unset); a clear error for anything else."""
    value = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{KERNEL_ENV}={os.environ[KERNEL_ENV]!r}: choose one of {', '.join(_CHOICES)}")
    return value


def _build() -> ModuleType:
    # Importing cpp_extension on a CUDA build without a GPU logs "No CUDA runtime is found"; this
    # kernel is CPU-only, so that warning would only confuse.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)

    name = "lima_zoo_fused_conv"
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not any(build_dir.glob(f"{name}*.so")):
        log.warning("lima-zoo: compiling the fused sparse-conv kernel once (~1 min; cached in %s) ...", build_dir)
    return cpp_extension.load(
        name=name,
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def fused_module() -> ModuleType | None:
    """The compiled extension, building it on first use; None (after one message) if it cannot be
    built and LIMA_ZOO_KERNEL is auto. ValueError if LIMA_ZOO_KERNEL=fused and it cannot be built."""
    choice = kernel_choice()
    if choice == "torch":
        return None
    with _lock:
        if "module" not in _state and "error" not in _state:
            try:
                _state["module"] = _build()
            except Exception as exc:  # no compiler, no ninja, a BLAS without sgemm_: fall back
                first = str(exc).strip().splitlines()
                _state["error"] = f"{type(exc).__name__}: {first[-1] if first else exc}"
                if choice == "auto":
                    log.warning(
                        "lima-zoo: the fused sparse-conv kernel is not available (%s); using the pure-PyTorch path "
                        "(set %s=torch to skip this check)",
                        _state["error"],
                        KERNEL_ENV,
                    )
    if "error" in _state and choice == "fused":
        # A ValueError like every other bad setting, so the command line reports it without a traceback.
        raise ValueError(f"{KERNEL_ENV}=fused, but the fused kernel cannot be built here: {_state['error']}")
    return _state.get("module")


def uses_fused(x: torch.Tensor) -> bool:
    """Whether a conv on these features runs the fused kernel (CPU float32/float64, not traced)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.jit.is_tracing():
        return False
    return fused_module() is not None


def _tile_rows(c_in: int, c_out: int) -> int:
    return max(64, min(4096, TILE_FLOATS // max(c_in, c_out, 1)))


def _plan(kmap: KernelMap, block_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(in_idx, out_idx, starts) with the pairs of every offset sorted by output row, and
    starts (K, n_blocks + 1): offset k's pairs into output block b are [starts[k, b], starts[k, b+1])."""
    key = ("fused_plan", block_rows)
    plan = kmap.cache.get(key)
    if plan is None:
        in_idx, out_idx = _sorted_by_output(kmap)
        n_blocks = -(-kmap.n_out // block_rows)
        edges = torch.arange(n_blocks + 1, dtype=torch.int64) * block_rows
        b = kmap.bounds
        starts = torch.stack([b[k] + torch.searchsorted(out_idx[b[k] : b[k + 1]], edges) for k in range(kmap.volume)])
        plan = kmap.cache[key] = (in_idx, out_idx, starts.contiguous())
    return plan


def _sorted_by_output(kmap: KernelMap) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs with each offset's pairs in ascending output row (our builders already give that
    for key-sorted voxels; otherwise one sort, kept with the map)."""
    in_idx, out_idx = kmap.in_idx.cpu().contiguous(), kmap.out_idx.cpu().contiguous()
    if out_idx.numel() < 2:
        return in_idx, out_idx
    drops = out_idx[1:] < out_idx[:-1]
    boundaries = torch.tensor([k - 1 for k in kmap.bounds[1:-1] if 0 < k < len(out_idx)], dtype=torch.int64)
    drops[boundaries] = False  # a drop where one offset's pairs end and the next begin is fine
    if not bool(drops.any()):
        return in_idx, out_idx
    group = torch.repeat_interleave(
        torch.arange(kmap.volume), torch.tensor([kmap.bounds[k + 1] - kmap.bounds[k] for k in range(kmap.volume)])
    )
    order = torch.argsort(group * max(kmap.n_out, 1) + out_idx)
    return in_idx[order].contiguous(), out_idx[order].contiguous()


def apply_map(
    x: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    transpose_weight: bool,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """out (n_out, C_out) = bias + sum over pairs of x[i] @ W[k] (or W[k].T) (with ``scale`` (C_out,):
    scale * sum + bias), then (+ residual (n_out, C_out)) and ReLU if asked: an inference epilogue,
    applied while each block is in cache (no autograd through it).  x: (n_in, C_in)."""
    c_in, c_out = (weight.shape[2], weight.shape[1]) if transpose_weight else (weight.shape[1], weight.shape[2])
    rows = _tile_rows(c_in, c_out)
    in_idx, out_idx, starts = _plan(kmap, rows)
    identity = -1 if kmap.identity is None else kmap.identity
    return fused_module().apply_map(
        x, weight, in_idx, out_idx, starts, identity, scale, bias, residual, relu, transpose_weight, kmap.n_out, rows
    )


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """dL/dW (K, C_in, C_out): dW[k] = x[in_k].T @ grad_out[out_k]."""
    identity = -1 if kmap.identity is None else kmap.identity
    tile = _tile_rows(x.shape[1], grad_out.shape[1])
    return fused_module().weight_grad(x, grad_out, kmap.in_idx, kmap.out_idx, list(kmap.bounds), identity, tile)

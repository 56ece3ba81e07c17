"""Sparse convolution compute: gather -> GEMM per offset -> one index_add.

On CPU the fused kernel (``fused.py``) does the same sums tile by tile; this file is the
pure-PyTorch path (CUDA, and CPU with LIMA_ZOO_KERNEL=torch or without a compiler).

``out[o] = sum_k sum_{(i, o) in map_k} in[i] @ W[k]``, with ``W`` of shape (K, C_in, C_out).

Why this shape (measured, see docs/performance.md): one concatenated gather for all offsets, one
``mm`` per offset into a pair buffer, then a single ``index_add_``; the centre offset of a
submanifold conv is a plain ``mm`` with no gather. Gather and pair buffers come from a per-thread
workspace that is reused across layers: fresh buffers above glibc's mmap threshold (32 MB) page-fault
on every layer and cost more than the arithmetic. The backward pass recomputes the gathers instead
of saving them, so the workspace can be reused while training too.

Every step is a fixed-order sum, so results do not depend on the number of threads.
"""

from __future__ import annotations

import threading

import torch

from . import fused
from .kmap import KernelMap

__all__ = ["sparse_conv", "epilogue", "clear_workspace"]

_local = threading.local()

# Pairs per gather-GEMM-scatter chunk: ~32k rows kept the 96-128 channel layers of MinkUNet-34
# 10-15% faster than one gather over all offsets (benchmarks/bench_sparse.py), while wide, short
# deep layers still run as one chunk.
CHUNK_ROWS = 32768


def _workspace(slot: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) scratch view reused across calls on this thread (contents undefined)."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    key = (slot, like.device, like.dtype)
    need = rows * cols
    buf = pool.get(key)
    if buf is None or buf.numel() < need:
        # Grow by 25% so slowly increasing sizes do not reallocate on every scan.
        # A normal (not inference-mode) tensor, so it is writable inside and outside inference_mode.
        with torch.inference_mode(False):
            buf = torch.empty(int(need * 1.25) + 1024, dtype=like.dtype, device=like.device)
        pool[key] = buf
    return buf[:need].view(rows, cols)


def clear_workspace() -> None:
    """Free this thread's scratch buffers (they are kept to avoid re-faulting pages per layer)."""
    _local.pool = {}


def _apply_map(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, transpose_weight: bool, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """out (n_out, C_out) = bias + sum over pairs of x[i] @ W[k] (or W[k].T).  x: (n_in, C_in)."""
    if fused.uses_fused(x):
        return fused.apply_map(x, weight, kmap, transpose_weight, bias)
    w = weight.transpose(1, 2) if transpose_weight else weight
    c_out = w.shape[2]
    if kmap.identity is not None:
        # Centre offset: every row to itself, no gather; the bias rides along in the same pass.
        centre = w[kmap.identity]
        out = torch.mm(x, centre) if bias is None else torch.addmm(bias, x, centre)
    elif bias is None:
        out = x.new_zeros(kmap.n_out, c_out)
    else:
        out = bias.expand(kmap.n_out, c_out).clone()
    for start, stop in _chunks(kmap.bounds):
        # Gather, multiply and scatter a few offsets at a time so the buffers stay in cache.
        idx = slice(kmap.bounds[start], kmap.bounds[stop])
        rows = idx.stop - idx.start
        gathered = torch.index_select(x, 0, kmap.in_idx[idx], out=_workspace("gather", rows, x.shape[1], x))
        products = _workspace("products", rows, c_out, x)
        for k in range(start, stop):
            a, b = kmap.bounds[k] - idx.start, kmap.bounds[k + 1] - idx.start
            if b > a:
                torch.mm(gathered[a:b], w[k], out=products[a:b])
        out.index_add_(0, kmap.out_idx[idx], products)
    return out


def _chunks(bounds: tuple[int, ...], rows: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """Split offsets [0, K) into consecutive runs of about ``rows`` pairs (at least one offset)."""
    runs, start = [], 0
    for k in range(len(bounds) - 1):
        if bounds[k + 1] - bounds[start] > rows and k > start:
            runs.append((start, k))
            start = k
    if bounds[-1] > bounds[start]:
        runs.append((start, len(bounds) - 1))
    return runs


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap, weight: torch.Tensor) -> torch.Tensor:
    """dL/dW[k] = x[in_k].T @ grad_out[out_k]  -> (K, C_in, C_out)."""
    if fused.uses_fused(x):
        return fused.weight_grad(x, grad_out, kmap)
    grad_w = torch.zeros_like(weight)
    if kmap.identity is not None:
        grad_w[kmap.identity] = x.t() @ grad_out
    pairs = kmap.in_idx.numel()
    if pairs == 0:
        return grad_w
    gx = torch.index_select(x, 0, kmap.in_idx, out=_workspace("gather", pairs, x.shape[1], x))
    gg = torch.index_select(grad_out, 0, kmap.out_idx, out=_workspace("products", pairs, grad_out.shape[1], x))
    b = kmap.bounds
    for k in range(kmap.volume):
        if b[k + 1] > b[k]:
            torch.mm(gx[b[k] : b[k + 1]].t(), gg[b[k] : b[k + 1]], out=grad_w[k])
    return grad_w


class _SparseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap) -> torch.Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(x, weight)
        return _apply_map(x, weight, kmap, transpose_weight=False, bias=bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # Transposed map + transposed kernels: the adjoint of the forward sum.
            grad_x = _apply_map(grad_out, weight, kmap.transposed(), transpose_weight=True)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, kmap, weight)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=0)
        return grad_x, grad_w, grad_b, None


def sparse_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a kernel map.  x: (n_in, C_in) float; weight: (K, C_in, C_out), times ``scale`` (C_out,)
    per output channel if given; bias: (C_out,) or None -> (n_out, C_out), then ``+ residual``
    (n_out, C_out) and ReLU if asked: on the fused CPU kernel under inference inside the conv's own
    pass, elsewhere right after it (the kernel scaled first)."""
    if weight.dim() != 3 or weight.shape[0] != kmap.volume or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not fit a {kmap.volume}-offset map on {x.shape[1]} channels"
        )
    if x.shape[0] != kmap.n_in:
        raise ValueError(f"features have {x.shape[0]} rows, kernel map expects {kmap.n_in}")
    if (residual is not None or relu or scale is not None) and not torch.is_grad_enabled() and fused.uses_fused(x):
        # One pass per block: pairs, scale, bias, residual and ReLU while the block's rows are in cache.
        res = None if residual is None else residual.contiguous()
        return fused.apply_map(x.contiguous(), weight.contiguous(), kmap, False, bias, res, relu, scale)
    if scale is not None:
        weight = weight * scale
    return epilogue(_SparseConvFunction.apply(x.contiguous(), weight.contiguous(), bias, kmap), residual, relu)


def epilogue(feats: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """feats (+ residual) (then ReLU); in place under inference, where ``feats`` is a fresh conv
    output nothing else holds."""
    if torch.is_grad_enabled():
        out = feats if residual is None else feats + residual
        return torch.relu(out) if relu else out
    if residual is not None:
        feats.add_(residual)
    return feats.relu_() if relu else feats

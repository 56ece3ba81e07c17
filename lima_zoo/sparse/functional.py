"""Sparse convolution compute: gather -> GEMM per offset -> one index_add.

``out[o] = sum_k sum_{(i, o) in map_k} in[i] @ W[k]``, with ``W`` of shape (K, C_in, C_out).

Why this shape (measured, see docs/sparse-engine.md): one concatenated gather for all offsets, one
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

from .kmap import KernelMap

__all__ = ["sparse_conv", "clear_workspace"]

_local = threading.local()


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
        buf = torch.empty(int(need * 1.25) + 1024, dtype=like.dtype, device=like.device)
        pool[key] = buf
    return buf[:need].view(rows, cols)


def clear_workspace() -> None:
    """Free this thread's scratch buffers (they are kept to avoid re-faulting pages per layer)."""
    _local.pool = {}


def _apply_map(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, transpose_weight: bool) -> torch.Tensor:
    """out (n_out, C_out) = sum over pairs of x[i] @ W[k] (or W[k].T).  x: (n_in, C_in)."""
    w = weight.transpose(1, 2) if transpose_weight else weight
    c_out = w.shape[2]
    if kmap.identity is not None:
        out = torch.mm(x, w[kmap.identity])  # centre offset: every row to itself, no gather
    else:
        out = x.new_zeros(kmap.n_out, c_out)
    pairs = kmap.in_idx.numel()
    if pairs == 0:
        return out
    gathered = torch.index_select(x, 0, kmap.in_idx, out=_workspace("gather", pairs, x.shape[1], x))
    products = _workspace("products", pairs, c_out, x)
    b = kmap.bounds
    for k in range(kmap.volume):
        if b[k + 1] > b[k]:
            torch.mm(gathered[b[k] : b[k + 1]], w[k], out=products[b[k] : b[k + 1]])
    out.index_add_(0, kmap.out_idx, products)
    return out


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kmap: KernelMap, weight: torch.Tensor) -> torch.Tensor:
    """dL/dW[k] = x[in_k].T @ grad_out[out_k]  -> (K, C_in, C_out)."""
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
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(x, weight)
        return _apply_map(x, weight, kmap, transpose_weight=False)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # Transposed map + transposed kernels: the adjoint of the forward sum.
            grad_x = _apply_map(grad_out, weight, kmap.transposed(), transpose_weight=True)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, kmap, weight)
        return grad_x, grad_w, None


def sparse_conv(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Apply a kernel map.  x: (n_in, C_in) float; weight: (K, C_in, C_out) -> (n_out, C_out)."""
    if weight.dim() != 3 or weight.shape[0] != kmap.volume or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not fit a {kmap.volume}-offset map on {x.shape[1]} channels"
        )
    if x.shape[0] != kmap.n_in:
        raise ValueError(f"features have {x.shape[0]} rows, kernel map expects {kmap.n_in}")
    return _SparseConvFunction.apply(x.contiguous(), weight.contiguous(), kmap)

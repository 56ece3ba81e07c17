"""Keep freed CPU memory for reuse instead of handing it back to the kernel (glibc only).

glibc serves every allocation above 32 MB (its largest mmap threshold) with a fresh ``mmap`` and
returns it with ``munmap`` on free, so each new tensor of that size page-faults all of its pages
again. A training step makes dozens of them: per-point features and their gradients at ~60k points
x 128 channels are 32.5 MB each. Keeping the freed memory changes no number (allocation does not
touch the arithmetic) and speeds a training step up (docs/performance.md). The price is that the
process keeps its peak heap until it exits.

``LIMA_ZOO_MALLOC=system`` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_done = False


def reuse_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it (once per process). Returns whether
    the setting is in effect: False off glibc, or with LIMA_ZOO_MALLOC=system."""
    global _done
    if _done:
        return True
    if (
        os.environ.get("LIMA_ZOO_MALLOC", "").lower() == "system"
        or platform.system() != "Linux"
        or platform.libc_ver()[0] != "glibc"
    ):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # Threads' arenas still fall back to mmap for a request larger than their heap, so nothing fails.
    _done = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done

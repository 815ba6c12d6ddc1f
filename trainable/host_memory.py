"""Keep freed host memory in the process, so CPU training steps stop faulting in fresh pages.

glibc gives large freed blocks back to the kernel (mmap above a threshold,
trimming the heap top), so a training step can allocate its activations in
pages the kernel must fault in and zero again. glibc raises both thresholds
as it frees large blocks, so whether steps keep faulting depends on the
trial's allocation history (`benchmarks/host_memory.py` measures it; the
figures are in BENCHMARKS.md). Raising both thresholds once per process makes every trial reuse its freed
blocks from the first step; the cost is that the process keeps its peak heap,
which the next step or trial reuses anyway.
"""
from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit: blocks above it are still mapped
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds once; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version  # musl has no gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

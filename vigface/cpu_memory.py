"""Keep freed memory in the process on CPU hosts with glibc.

glibc's malloc serves blocks above its mmap threshold (128 KiB at first) with fresh mappings and
hands freed memory above its trim threshold back to the kernel, so every batch of a latent
model's decoder (activations of 112 x 112 x 32 per face) faults its buffers back in, zeroed: a
quarter of a CPU draw went to page faults. Raising both thresholds keeps the freed memory for
the next batch (``python bench/sampler.py --model latent112 --malloc-modes`` measures both in
one run). Process-wide and idempotent; a no-op where the C library has no ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
GLIBC_DEFAULT = 128 * 1024
KEPT_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: blocks below it come from the heap
KEPT_TRIM_THRESHOLD = 1024**3  # the heap gives memory back only above 1 GiB free


def _mallopt():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return None


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's two thresholds; False where they cannot be set."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return (
        mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
        and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    )


def keep_freed_memory() -> bool:
    """Freed blocks stay in the process (see the module docstring)."""
    return set_malloc_thresholds(KEPT_MMAP_THRESHOLD, KEPT_TRIM_THRESHOLD)

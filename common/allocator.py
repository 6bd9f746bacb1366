"""Keep freed image buffers in the process for the per-image steps (``data``, ``stream``).

glibc serves every allocation above its mmap threshold with fresh pages from the kernel and returns them
when freed (the threshold starts at 128 KiB; glibc raises it as buffers are freed, but not far enough,
not in every thread's arena, and it trims freed memory back to the kernel). So each decoded image, PIL
copy, resized image and canvas pays one page fault per 4 KiB touched, every image: measured here, a PIL
resize of a freshly decoded 640x480 image took 6-7.5 ms against 3.4 ms when its buffers were reused, and
the FCOS float data step ran 1.6x faster (bench/bench_uint8.py). The price is freed memory kept for reuse:
at most ``TRIM_THRESHOLD`` of it per arena, on top of what the step holds anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: allocations up to this size come from the heap, where freed blocks are reused (glibc's maximum on
#: 64-bit systems; a Mask R-CNN float32 canvas is 21.7 MB)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: freed memory at the top of a heap is returned to the kernel only beyond this much
TRIM_THRESHOLD = 256 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3

_applied = False


def reuse_freed_buffers() -> bool:
    """Set glibc's mmap and trim thresholds once per process (idempotent); False where the C library is
    not glibc (musl, macOS) and nothing was changed."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied

"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

A run allocates and frees the same large activation buffers thousands of times (an
evaluation batch of 500 images through the ViT needs tens of MiB per layer). glibc serves
every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and gives
it back with ``munmap`` on free, so the kernel zeroes those pages again on the next
allocation, which shows as system time. ``perf/run_time.py`` measures a whole run's
wall, user and system seconds with these settings and without them; the accuracy
matrices are the same bit for bit either way (allocation does not change arithmetic).

:func:`keep_freed_memory` sets, through ``mallopt``: ``M_MMAP_MAX = 0`` (large blocks come
from the heap), ``M_TRIM_THRESHOLD = 1 GiB`` (freed memory stays in the heap) and
``M_TOP_PAD = 256 MiB`` (the heap grows in large steps). A process then keeps its peak
memory until it exits, a little more than with the system's allocator. Set
``CLMERGE_SYSTEM_MALLOC=1`` to leave the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))
OFF = "CLMERGE_SYSTEM_MALLOC"   # set (to anything non-empty): leave the allocator alone

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` once per process; True where they are in effect (Linux with
    glibc and ``CLMERGE_SYSTEM_MALLOC`` unset), False elsewhere. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get(OFF):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(option, value) == 1 for option, value in SETTINGS)
    return _applied


def child_environment(system_malloc: bool) -> dict[str, str]:
    """This process's environment for a child ``clmerge`` process, with the settings on
    (``system_malloc=False``) or off."""
    env = {k: v for k, v in os.environ.items() if k != OFF}
    if system_malloc:
        env[OFF] = "1"
    return env

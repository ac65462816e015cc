"""Give freed large buffers back to the system, so a burst of big frames leaves no RSS behind.

glibc serves allocations above its mmap threshold with mmap and unmaps them when freed, but it
raises that threshold each time such a buffer is freed: after a few 1 MiB frames, later ones
come from the heap, and a heap fragmented by many unfinished frames keeps its peak size for
good (measured by ``agentd bench abuse``: 130 MB of RSS growth for 200 trickled frames, 41 MB
with the threshold fixed). Fixing the threshold with ``mallopt`` turns that adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("agentd.runtime.memory")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# Above every buffer of ordinary traffic (a chit batch, a receipt page), below a big frame:
# at 256 KiB each chit batch's buffers were mapped and unmapped, and `bench chits` lost a
# quarter of its rate (0.68x -> 0.51x the crypto bound); at 512 KiB it keeps 0.72x while a
# 1 MiB frame still leaves the heap (`bench abuse`: RSS growth 67.5 MB).
MMAP_THRESHOLD = 512 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) on another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; large buffers may stay in the heap")
        return False
    return True


__all__ = ["return_large_buffers"]

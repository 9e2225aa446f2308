"""glibc's allocator told to keep the KV cache's freed buffers instead of handing them back to the kernel.

A decode batch's keys and values are copied whole whenever its rows change (a newcomer joins, a request
leaves or is preempted: runner.Rows). Each copy is a few megabytes of fresh numpy arrays, which glibc
serves by `mmap` and returns by `munmap` on free, so every copy pays a page fault per 4 KiB it writes:
joining a 400-token row to three others took 22-27 ms here, against 5 ms with the memory kept (the same
copy, no faults). The heap then stays at its peak, which the KV budget bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("switchyard.decode")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_FROM = 512 << 20  # only allocations over this get their own mapping
TRIM_FROM = 1 << 30  # free memory at the top of the heap goes back only past this
_done = False


def keep_freed_memory() -> bool:
    """Once per process, on glibc (a no-op elsewhere: musl, macOS): True when the allocator took the settings."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_FROM)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_FROM))
    if not _done:
        log.info("mallopt refused the KV buffers' settings: KV copies pay page faults")
    return _done

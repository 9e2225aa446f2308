"""glibc's allocator told to keep the KV cache's freed buffers instead of handing them back to the kernel.

A decode batch's keys and values are copied whole whenever its rows change (a newcomer joins, a request
leaves or is preempted: runner.Rows). Each copy is a few megabytes of fresh numpy arrays, which glibc
serves by `mmap` and returns by `munmap` on free, so every copy pays a page fault per 4 KiB it writes:
joining a 400-token row to three others took 22-27 ms here, against 5 ms with the memory kept (the same
copy, no faults). The decode runs on the version's own thread, whose allocations glibc serves from a
per-thread arena that it unmaps when emptied whatever the thresholds say, so there is one arena for the
process: in the decode loop under the fair-shares benchmark's flood, joins went from 20 ms (p50) with the
thresholds alone to 5 ms with them and one arena. The heap then stays at its peak, which the KV budget
bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("switchyard.decode")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt's parameters (malloc.h)
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
    _done = all(mallopt(param, value) for param, value in ((M_MMAP_THRESHOLD, MMAP_FROM),
                                                           (M_TRIM_THRESHOLD, TRIM_FROM), (M_ARENA_MAX, 1)))
    if not _done:
        log.info("mallopt refused the KV buffers' settings: KV copies pay page faults")
    return _done

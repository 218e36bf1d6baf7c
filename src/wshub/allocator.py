"""glibc's malloc settings for the ``wshub serve`` process (never set by the library).

With its defaults glibc hands memory at the top of its heap back to the kernel
as soon as more than about twice the largest message seen lies free there
(``M_TRIM_THRESHOLD`` follows ``M_MMAP_THRESHOLD``, which rises with each large
block freed).  A server echoing 256 KiB messages over 50 connections frees and
takes back more than that all the time: glibc gave the pages back after nearly
every message (one ``brk`` each) and the next message faulted them in again,
about 78 page faults per 256 KiB message.

:func:`keep_freed_memory` starts the process where glibc's own adjustment
ends (blocks up to 32 MiB from the heap, trimmed once 64 MiB lie free at its
top), so that freed message buffers are reused instead of given back.  The
command owns its process and calls it; a library must not change the allocator
of the application that imports it.  An application embedding wshub can ask
for the same with the environment variables of :data:`ENVIRONMENT`.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["ENVIRONMENT", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: Blocks of at least this size are mmap()ed: glibc's ceiling for its dynamic
#: threshold (4 Mi x sizeof(long): 32 MiB on 64-bit systems).
MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
#: Free memory at the heap's top beyond this is given back: glibc's own
#: "twice the mmap threshold".
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

#: The same settings for any glibc process, set in its environment.
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}

# mallopt() parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


#: the glibc settings that decide what is given back (``GLIBC_TUNABLES`` names)
_TUNABLES = ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")


def _settings_from_environment() -> bool:
    """Whether the process was started with thresholds of its own."""
    if any(f"MALLOC_{name.upper()}_" in os.environ for name in _TUNABLES):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(f"glibc.malloc.{name}=" in tunables for name in _TUNABLES)


def keep_freed_memory() -> str:
    """Set glibc's thresholds to :data:`MMAP_THRESHOLD`/:data:`TRIM_THRESHOLD`.

    Returns what was done, for a log line: nothing on another C library or
    when the environment already sets malloc parameters (they are the
    operator's to choose).
    """
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    if not libc.startswith("glibc"):
        return "not glibc: malloc left as it is"
    if _settings_from_environment():
        return "malloc settings from the environment kept"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "mallopt not found: malloc left as it is"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt() returns 1 on success; the mmap threshold first, since setting
    # either one stops glibc from adjusting both.
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or not mallopt(
        _M_TRIM_THRESHOLD, TRIM_THRESHOLD
    ):
        return "mallopt refused: malloc left as it is"
    return f"malloc keeps freed memory up to {TRIM_THRESHOLD >> 20} MiB"

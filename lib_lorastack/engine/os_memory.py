"""Handing freed CPU memory back to the system.

Backups and patched copies are many blocks of a few MiB. After the first such block is freed, glibc serves blocks of
that size from its heap, and a freed heap block stays in the process (resident) until ``malloc_trim`` returns it:
a restore that frees a gigabyte would otherwise leave the process as large as before, and the concatenated factors
freed after each CPU apply (``programs.py``) would stay resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

RETURN_AFTER_BYTES = 64 << 20  # freeing less than this is not worth a walk of the heap (~20 ms for a model's)

_trim = None


def return_freed_memory(freed_bytes: int) -> bool:
    """After ``freed_bytes`` of CPU tensors were freed: give the free heap back to the system (glibc only; a
    no-op elsewhere). True when it ran."""
    if freed_bytes < RETURN_AFTER_BYTES:
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _malloc_trim():
    global _trim
    if _trim is None:
        _trim = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _trim = libc.malloc_trim
                _trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):  # musl and others have no malloc_trim
                _trim = False
    return _trim or None

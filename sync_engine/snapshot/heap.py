"""Freed heap memory is kept, not given back, while a whole-table snapshot is read.

A whole-table snapshot allocates a few buffers per chunk and frees them once the chunk is
written: COPY lines of a few hundred kB, their expanded form, the 10 MiB chunk joined from
them. They come from the malloc heap (below the 16 MB mmap threshold `log.files` fixes), and
with glibc's default trim threshold (128 kB) the heap's top is given back to the kernel
each time they are freed, then faulted in again, zeroed, for the next chunk: ~300,000 page
faults per 10M-row snapshot (1.2 GB of anonymous memory for 1.6 GB of chunks; 62,000 at 1M
rows), 1.0-1.4 s of the engine's kernel CPU (12-05, `cold_probe`, load 6-7: 5.99 / 5.55 s
against 4.68 / 4.54 s with the heap kept; faults 11,600). On this VM a page given back may
also be reported free to the host (virtio-balloon free page reporting), whose next first
touch costs several times a plain fault.

So while at least one whole-table snapshot is read the trim threshold is raised to
`KEPT_BYTES` (the heap keeps up to that much free memory at its top for the next chunk),
and put back to glibc's default when the last one ends, then `malloc_trim` gives the kept
memory back at once: an idle engine holds no more than before. Only the size of what is
kept changes; no allocation does. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Free heap memory kept during whole-table snapshots: a chunk's buffers (lines, their
#: expanded form, the chunk) and the previous chunk waiting for its write, ~40 MiB at the
#: default 10 MiB chunks.
KEPT_BYTES = 64 << 20
#: glibc's default trim threshold (`M_TRIM_THRESHOLD`), what `log.files` leaves in place.
DEFAULT_TRIM = 128 << 10

_M_TRIM_THRESHOLD = -1
_lock = threading.Lock()
_readers = 0


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


_LIBC = _libc()


def trim_threshold_now() -> int | None:
    """The threshold this module last set (None off glibc): for tests."""
    if _LIBC is None:
        return None
    return KEPT_BYTES if _readers else DEFAULT_TRIM


@contextmanager
def heap_kept() -> Iterator[None]:
    """Keep freed heap memory while the body (a whole-table snapshot's reading) runs."""
    global _readers
    if _LIBC is None:
        yield
        return
    libc = _LIBC
    with _lock:
        _readers += 1
        if _readers == 1:
            libc.mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES)
    try:
        yield
    finally:
        with _lock:
            _readers -= 1
            if _readers == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, DEFAULT_TRIM)
                libc.malloc_trim(0)

"""Open chunk files for appending, kept open across appends (bounded).

Reopening a chunk file for every transaction cost about 10 µs of the ~22 µs a matching
change takes; the append path keeps the newest chunk of recently written shapes open
instead. Only the event loop thread uses these descriptors (fsync opens the file itself,
in a worker thread), so closing one on eviction cannot race a use.
"""

from __future__ import annotations

import errno
import os
import resource
from collections import OrderedDict

#: A quarter of the process's file limit (sockets need the rest), between 64 and 4,096.
MAX_OPEN = max(64, min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))

_open: OrderedDict[str, int] = OrderedDict()


#: New files (snapshot chunks, packs) are written at most this many bytes per `write`.
#:
#: The kernel sizes a new file's page-cache folios by the write (ext4 large folios, Linux
#: 6.x): one 10 MB write gets 2 MiB folios, taken from the page allocator's biggest free
#: blocks. On a VM whose balloon reports free memory to the host (Firecracker, free page
#: reporting of blocks of 2 MiB and up) those are the blocks the host took back, so copying
#: into them faults every 4 KiB page in the host. Measured on the Intel Xeon VM
#: (2026-12-04): 11.5 µs per page written in 10 MiB writes, 2-6 µs in 4-64 KiB writes
#: while the guest has recently used memory free; a cold initial sync of 1M rows took
#: 0.67-0.75 s of engine CPU, 0.33-0.36 s with 64-256 KiB writes. When no recently used
#: memory is left (10M rows: 1.6 GB of new files) every size costs about the same, and
#: 64 KiB cost more than 256 KiB (smaller folios: more work per byte writing and sending
#: them), hence 256 KiB: 40 system calls per 10 MB chunk (docs/benchmarks.md, "Bar 5 on
#: the Intel Xeon VM").
WRITE_PIECE = 256 << 10


def write_new_file(fd: int, data: bytes) -> None:
    """Write all of `data` to the new file `fd` from its position, `WRITE_PIECE` bytes per
    `write`; continues short writes, raises OSError when the kernel refuses."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:WRITE_PIECE])
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def write_fd(path: str, data: bytes | memoryview, position: int) -> None:
    """Write all of `data` at `position` of `path` (created if missing); continues short
    writes, raises OSError when the kernel refuses (the caller cuts back)."""
    fd = _fd(path)
    written = os.pwrite(fd, data, position)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(view):
        n = os.pwrite(fd, view[written:], position + written)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        written += n


def write_pieces(path: str, pieces: list[bytes], position: int) -> None:
    """`write_fd` of the pieces one after the other, in one system call (`pwritev`), so
    that a big piece is written where it lies rather than copied into one buffer first."""
    fd = _fd(path)
    written = os.pwritev(fd, pieces, position)
    for piece in pieces:  # (short writes: the rest piece by piece)
        if written >= len(piece):
            written -= len(piece)
            position += len(piece)
            continue
        write_fd(path, memoryview(piece)[written:], position + written)
        position += len(piece)
        written = 0


def _fd(path: str) -> int:
    """The cached descriptor of `path`, opened (and cached) if need be."""
    fd = _open.get(path)
    if fd is None:
        fd = _open_for_append(path)
        _open[path] = fd
        if len(_open) > MAX_OPEN:
            _, old = _open.popitem(last=False)
            os.close(old)
    else:
        _open.move_to_end(path)
    return fd


def _open_for_append(path: str) -> int:
    """`path` opened for writing; with no descriptor left (client connections took them:
    the connection cap counts this cache as it is, not as big as it may grow), the oldest
    half of the cache is closed first and the open tried again."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE) or not _open:
            raise
    for _ in range((len(_open) + 1) // 2):
        _, old = _open.popitem(last=False)
        os.close(old)
    return os.open(path, flags, 0o600)


def open_count() -> int:
    """Descriptors this cache holds now."""
    return len(_open)


def close_fd(path: str) -> None:
    fd = _open.pop(path, None)
    if fd is not None:
        os.close(fd)

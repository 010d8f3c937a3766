"""Checking a snapshot's next chunk file while this one is sent.

Every send of a big snapshot chunk is checked first (`ShapeLog.check_snapshot_file`: the
file's size and crc32 against what was written; a bad disk changes bytes, not file times),
unless a passed check still stands (`log/verdicts.py`: the file and its disk unchanged).
That check (~1 ms per cached 10 MiB chunk, its read the largest part, plus a worker-thread
hop) ran before each answer started, in series with the sends: ~15% of a warm sync. A client
paging a snapshot asks for chunk i + 1 right after chunk i, so while chunk i is sent (by the
kernel, `http/sendfile.py`) the file of chunk i + 1 is checked in a worker thread, and the
request for it uses that outcome instead of checking again.

What keeps this as safe as a check made when the request came:
- only a check this module started is kept, and only when it passed: a damaged file fails
  it (its shape is retired, `on_damage`) and the request for it checks again, so answers 409;
- the outcome is tied to the file as `fstat` saw it before the check started (device,
  inode, size, modification and change times): a file written or replaced through the
  filesystem since, even with its modification time put back (the change time cannot be),
  is checked again;
- it is used once (a herd's other requests check as before, sharing one check), and only
  within `KEEP_FOR` seconds of the check's end.

What stays open is what was open before, for longer: damage below the filesystem (a bad disk,
the times unchanged) between the check and the send reaches a client only if the kernel also
dropped the pages the check just read (the send reads the cached pages, which are the bytes
checked) and read them again from the disk, all within that window: up to `KEEP_FOR`
(0.2 s) after the check ends, where before it was the thread hop and the send itself
(a few ms, during which the pages could be dropped and read again as well).
`tests/faults/test_silent_corruption.py` damages a chunk the engine checked earlier and
still gets its 409.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from ..single_flight import single_flight
from .parser_refusals import room_for_send
from .sendfile import Ident, close_chunk, ident, open_chunk

if TYPE_CHECKING:
    from ..log.files import ShapeLog

#: Seconds a passed check of the next chunk stays usable after it ended. A client paging a
#: snapshot asks for the next chunk as soon as it has read this one (~10 ms for 10 MiB here);
#: a slower client's next request finds it expired and checks as before.
KEEP_FOR = 0.2
#: Chunk files smaller than this are checked when asked for (their check costs about what a
#: worker-thread hop does).
MIN_BYTES = 1 << 20
#: Check-aheads running at once (process-wide): a herd of clients at different chunks of big
#: snapshots must not fill the worker threads with checks nobody may ask for.
MAX_RUNNING = 2
#: Passed checks kept at most (old ones are dropped first; each expires after `KEEP_FOR`).
MAX_KEPT = 256

# Passed check-aheads by (device, inode): the file's `Ident` before the check, and when it
# ended (monotonic). Plain values, no futures: usable from any event loop.
_kept: dict[tuple[int, int], tuple[Ident, float]] = {}
_running: set[asyncio.Task[None]] = set()


def take(st: os.stat_result) -> bool:
    """Whether a check-ahead of the file `st` describes passed within `KEEP_FOR` seconds
    and the file is as it was then; consumes it (one use)."""
    kept = _kept.pop((st.st_dev, st.st_ino), None)
    if kept is None:
        return False
    was, ended = kept
    return was == ident(st) and time.monotonic() - ended <= KEEP_FOR


def start(
    pending: dict[tuple[int, ...], asyncio.Future[None]], shape_log: ShapeLog, index: int
) -> None:
    """Start checking chunk `index` of `shape_log` (the one after the chunk being sent) in a
    worker thread, unless it is not a big written chunk file or enough check-aheads run.
    Returns at once. `pending` are the shared single-flight checks (`ShapeView`): a request
    for the chunk meanwhile shares this check rather than starting its own."""
    for task in [t for t in _running if t.get_loop().is_closed()]:
        _running.discard(task)  # (a loop closed with it pending: its callback never ran)
    if len(_running) >= MAX_RUNNING or index >= shape_log.snapshot_chunks:
        return
    file = shape_log.snapshot_chunk_file(index)
    if file is None or file[1] or file[2] < MIN_BYTES:
        return  # (a last chunk in a pack (offset > 0): checked when asked, `_kept` is by file)
    task = asyncio.get_running_loop().create_task(_run(pending, file[0], shape_log, index))
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _run(
    pending: dict[tuple[int, ...], asyncio.Future[None]],
    path: str,
    shape_log: ShapeLog,
    index: int,
) -> None:
    fd = open_chunk(path, 1) if room_for_send(1) else None  # (optional: not at the limit)
    if fd is None:
        return
    try:
        st = os.fstat(fd)
        before = ident(st)
        key = (st.st_dev, st.st_ino)
        shared = (*before, 0)  # (the key `ShapeView._check_file` shares checks of it by)
        # A check in flight may have read the file before this fstat: not ours to keep.
        if shared in pending or key in _kept:
            return
        if not shape_log.snapshot_check_kept(index, st):  # (else no thread hop: it stands)
            await single_flight(
                pending,
                shared,
                lambda: asyncio.to_thread(shape_log.check_snapshot_file, index, fd),
            )
    except Exception:  # (damaged, unreadable: the request for it checks again and says so)
        return
    finally:
        close_chunk(fd, 1)
    now = time.monotonic()
    if len(_kept) >= MAX_KEPT:
        old = [k for k, (_, ended) in _kept.items() if now - ended > KEEP_FOR]
        for k in old or [next(iter(_kept))]:
            del _kept[k]
    _kept[key] = (before, now)

"""A shape's log on disk: snapshot chunks, then transaction chunks, append-only, self-checking.

Every shape's files lie in one flat directory, named after its handle (creating files is
what a storm of new shapes pays for, so a shape has no directory of its own):

    <handle>.snapshot.00000.json  snapshot chunks but the last: JSON items joined by commas,
                                  no brackets, so a response body is `[` + chunk + `]`
    pack.<time>-<n>.pack          the last snapshot chunk and the completion marker (each
                                  chunk's size and crc32, the shape's handle, definition,
                                  table description, and the xmin/xmax/xip of its snapshot)
                                  of the shapes whose snapshot finished together (`packs.py`)
    <handle>.log.00000000.log     transaction chunks: framed records (`framing.py`), each one
                                  transaction's entries for this shape (or the part of it
                                  that fits in the chunk), with a length and a crc32

This module owns every write to these files. Its promises:

* **All or nothing.** An append stages its records: they are written (at a known position,
  short writes continued) but invisible — not in the index readers use, not in
  `latest_offset` — until `publish`, which the replicator calls once they are fsynced. A
  failed write (ENOSPC, EIO, short write) is cut back at once; `rollback` cuts back every
  staged record (an fsync that failed), and the slot, never confirmed past what was
  published, replays them.
* **Nothing damaged is served.** `load` checks every record's checksums and cuts the log
  back to the last whole transaction before the first torn or damaged one (a crash leaves
  a torn tail; a bad disk may damage anything). That is a repair when the slot sends the
  cut transactions again, which the replicator checks (`repaired_from`) before it
  streams: if the slot was confirmed past them the shape is retired (clients get 409 and
  refetch). A file cut short between two records has only intact ones: the next chunk's
  first record says how long the one before it is (`framing.chunk_flags`), and the last
  one's size when last made durable is noted on it (`DURABLE_SIZE`). A chunk file deleted
  outright leaves a gap in the numbering, or, the last one, a finished chunk noted as
  having a next one (`NEXT_CHUNK`). Snapshot chunks
  cannot be replayed: a size that differs from the marker's raises `LogDamaged` on load
  (the shape is discarded). Reads check records again, and
  snapshot chunks against the marker's crc32 (a chunk file's passed check stands while
  neither the file nor its disk can have changed its bytes: `verdicts.py`); a mismatch
  retires the shape (`on_damage`) and the request gets a 409, never a broken body.
* **Chunks end by size, also inside a transaction** (as Electric's log does): a response
  is about one chunk however large the transaction. An offset `<lsn>_<op>` in the middle
  of a transaction names the entries up to `op`; `<lsn>_0` always names the end of
  transaction `<lsn>` (the SSE client resumes from it), so a chunk is never cut right
  after an op-0 entry that does not end its transaction.

Finished chunks never change, which is what makes `(handle, offset)` responses immutable
and cacheable. A snapshot without its marker in a pack is discarded on load (`store.py`), so
its chunks need no atomic rename. Every file created costs an inode allocation, which is
what a storm of new shapes waits on: a small new shape creates no file of its own, only its
share of its batch's pack.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import orjson

from ..errors import ServiceUnavailable, ShapeGone
from . import verdicts
from .checksum import crc32
from .fds import close_fd, write_fd, write_new_file, write_pieces
from .framing import (
    BIG_ENTRY,
    FLAG_TX_END,
    HEADER_SIZE,
    KEY_TX_END,
    FramingError,
    chunk_flags,
    iter_entries,
    key_of,
    read_lone_entry,
    record_body,
    record_header,
    scan,
    seed_of,
    split_records,
)
from .offsets import SNAPSHOT_END, LogOffset
from .packs import PackedChunk, append_record, encode_log_begun

#: Bytes a paced append (`ShapeLog.append_transaction_paced`) writes and checksums between
#: two pauses: a ms or so of the event loop.
PACE_BYTES = 1 << 20

#: Snapshot chunks up to this size are kept in memory once written (see `_fresh`).
FRESH_CHUNK_MAX = 1 << 20


class _RecentChunks:
    """Chunks by path, at most `max_bytes` of them, the least recently used dropped first.

    An OrderedDict: cachetools' LRUCache did the same in Python at ~3 µs a lookup and more
    an insert (which in a storm also drops one), twice per new shape.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, path: str) -> bytes | None:
        data = self._chunks.get(path)
        if data is not None:
            self._chunks.move_to_end(path)
        return data

    def put(self, path: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._chunks.pop(path, None)
        if old is not None:
            self._bytes -= len(old)
        self._chunks[path] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, dropped = self._chunks.popitem(last=False)
            self._bytes -= len(dropped)


# Small snapshot chunks just written, by path: a new shape's first reader (usually waiting
# for it) is answered without reading the file back, from a thread, on a cold page. Only
# touched from the event loop; bounded in bytes.
_fresh = _RecentChunks(16 << 20)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

#: Errors opening or reading a log file that say nothing of its bytes (the process is out of
#: descriptors or memory, say under a flood of connections): a 503 to retry, not damage.
#: Counted as damage they retired every shape read meanwhile, and each of its clients then
#: refetched a snapshot, adding to the load that caused them.
_TRANSIENT = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR))


def transient_read_error(exc: OSError) -> bool:
    """Whether a failed read of a shape log's file is transient (`_TRANSIENT`: retry), not
    damage."""
    return exc.errno in _TRANSIENT


def _read_failed(path: str, exc: OSError) -> ServiceUnavailable | None:
    """The 503 for a transient failure reading `path` (`_TRANSIENT`), else None (damage)."""
    if exc.errno not in _TRANSIENT:
        return None
    return ServiceUnavailable(f"could not read a shape log now ({exc.strerror}): please retry", 2)


#: Extended attribute of a transaction chunk file: its size (decimal) when it was last made
#: durable. A file found shorter on load lost records that were durable (the slot may be
#: past them), which its own records cannot tell when the cut fell between two of them: the
#: log is cut there as damaged. Best effort: not kept where the filesystem has no user
#: attributes (or a copy dropped them), and then not checked.
DURABLE_SIZE = "user.shapegate.durable"


#: Extended attribute of a finished transaction chunk file: a next chunk was begun after it
#: (made durable with the next chunk's first records). A last chunk found with it lost its
#: next one (deleted outright): the log is cut there as damaged. Best effort, as above.
NEXT_CHUNK = "user.shapegate.next"


#: What a checked snapshot chunk file was: (device, inode, size, mtime ns, ctime ns).
_Identity: TypeAlias = tuple[int, int, int, int, int]


def _identity(fd: int) -> _Identity:
    return _identity_of(os.fstat(fd))


def _identity_of(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: Snapshot chunk files of at least this many bytes are checked by their sends once they
#: passed a check (`ShapeLog.send_check`, `http/sendfile.py`): each send reads them, checks
#: and writes those same bytes, and is cut before its end if they do not match; smaller ones
#: (and the last chunk kept in a pack) are checked before each send, where a thread hop for
#: the check costs about what the check does.
SEND_CHECKED_BYTES = 1 << 20

#: Bytes `_file_crc` reads at a time, into one buffer per thread, reused: 1 MiB pieces, each
#: a new bytes object above glibc's mmap threshold (fresh pages faulted in per piece), made
#: the check twice as costly (perf: 2.19 -> 1.01 ms per 10 MiB chunk, ~30% of a warm sync's
#: CPU); a new buffer per check was fresh pages too, each check.
CRC_PIECE = 256 << 10

_pieces = threading.local()


def _file_crc(fd: int, size: int, start: int = 0) -> int | None:
    """crc32 of the `size` bytes of the file `fd` from `start`, read a piece at a time (no
    copy of a whole chunk in memory; not a mapping, whose pages past a concurrent truncation
    would kill the process with SIGBUS); None when the file is shorter. (A buffer per
    thread: the checks run in worker threads.)"""
    crc = 0
    done = 0
    if (piece := getattr(_pieces, "view", None)) is None:
        piece = _pieces.view = memoryview(bytearray(CRC_PIECE))
    view: memoryview = piece
    while done < size:
        n = os.preadv(fd, [view[: min(CRC_PIECE, size - done)]], start + done)
        if not n:
            return None
        crc = crc32(view[:n], crc)
        done += n
    return crc


def is_log_chunk(path: str) -> bool:
    return path.endswith(".log") and ".log." in path


def note_durable_size(target: int | str, size: int) -> None:
    """Record that `target` (a chunk file's descriptor or path) was durable at `size` bytes
    (after an fsync, or cut back to that size)."""
    try:
        os.setxattr(target, DURABLE_SIZE, b"%d" % size)
    except OSError:
        pass


def _note_next_chunk(path: str, begun: bool) -> None:
    try:
        if begun:
            os.setxattr(path, NEXT_CHUNK, b"1")
        else:
            os.removexattr(path, NEXT_CHUNK)
    except OSError:
        pass


def _has_next_chunk(path: str) -> bool:
    try:
        os.getxattr(path, NEXT_CHUNK)
    except OSError:
        return False
    return True


def _durable_size(path: str) -> int | None:
    try:
        return int(os.getxattr(path, DURABLE_SIZE))
    except (OSError, ValueError):
        return None


class LogDamaged(ShapeGone):
    """A shape log holds bytes that fail their check: the shape cannot be served.

    A `ShapeGone` (409 must-refetch): by the time a reader sees it, `on_damage` has
    retired the shape, so the client's refetch makes a new one.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(None)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class LogWriteError(OSError):
    """Writing or syncing a shape log failed; nothing of the failed write is visible."""

    @property
    def disk_full(self) -> bool:
        return self.errno in _DISK_FULL


class LogCutBack(LogWriteError):
    """A paced append found its log cut back while it paused (a failed write or a lost
    stream elsewhere cut back everything staged): nothing of it counts; written again
    once the slot sends it again. Not a failed write of its own."""


@dataclass(slots=True, eq=False)
class _Chunk:
    path: str
    index: int
    starts: list[int] = field(default_factory=list)  # published records' positions
    lasts: list[int] = field(default_factory=list)  # key of each record's last entry
    size: int = 0  # published bytes
    end: int = 0  # bytes written: staged records lie in [size, end)

    @property
    def last_offset(self) -> LogOffset:
        return _offset(self.lasts[-1])


#: A record written but not yet published: (its chunk, start, end, key of its last entry,
#: commit LSN). A plain tuple: one is made for every append.
_Staged: TypeAlias = tuple[_Chunk, int, int, int, int]


def _offset(key: int) -> LogOffset:
    return LogOffset(key >> 32, key & 0xFFFFFFFF)


def _after_key(offset: LogOffset) -> int:
    """The key entries must exceed to come after `offset` (see the module docstring)."""
    if offset.tx <= 0:
        return -1
    if offset.op == 0 or offset.op >= KEY_TX_END:
        return key_of(offset.tx, KEY_TX_END)
    return key_of(offset.tx, offset.op)


class ShapeLog:
    """Append and read one shape's entries. All methods are synchronous file I/O.

    `path` is the directory and the handle: the shape's files are `<path>.*` (see the
    module docstring). Appends and reads of the transaction log happen on the event loop
    thread (they are small); snapshot chunks are written by the snapshot batch, which only
    ever creates new files, so the two never touch the same file.
    """

    def __init__(self, path: Path, chunk_bytes: int, fsync: bool = True) -> None:
        self._setup(path.parent, str(path.parent), path.name, chunk_bytes, fsync)

    @classmethod
    def in_directory(
        cls, directory: Path, directory_text: str, handle: str, chunk_bytes: int, fsync: bool
    ) -> ShapeLog:
        """The log `handle` in `directory` (whose `str` is `directory_text`), made without
        path arithmetic: pathlib's `/`, `parent` and `name` were ~15 µs of each new shape."""
        log = cls.__new__(cls)
        log._setup(directory, directory_text, handle, chunk_bytes, fsync)
        return log

    def _setup(
        self, directory: Path, directory_text: str, handle: str, chunk_bytes: int, fsync: bool
    ) -> None:
        self.directory = directory
        self.handle = handle
        self._dir = directory_text  # paths by string (pathlib is slower)
        self._prefix = f"{directory_text}/{handle}"
        self._seed = seed_of(handle)  # (of its records' header checksums)
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self._chunks: list[_Chunk] = []  # chunks with published records
        self._chunk_lasts: list[int] = []  # each chunk's last published key
        self._tail: _Chunk | None = None  # the chunk appends go to (maybe not yet published)
        self._staged: list[_Staged] = []
        self._dirty: set[str] = set()
        self._generation = 0  # bumped by rollback: older publish tokens are void
        self._needs_cut: dict[str, int] = {}  # files a failed rollback could not cut back
        self._published_lsn = 0
        #: Bytes of published transaction records (what `--max-log-bytes` bounds).
        self.log_bytes = 0
        self.snapshot_chunks = 0
        self.snapshot_complete = False
        # The LSN of the first transaction ever written to the log, and whether that is
        # recorded where a lost first chunk file is found (its marker, or an `L` record
        # in its pack): with no chunk file left, the log would look merely empty.
        self._first_lsn: int | None = None
        self._begun_recorded = False
        #: Highest transaction LSN written (published or staged): replays up to it are skipped.
        self.last_lsn = 0
        # What the marker recorded besides the count.
        self.marker: dict[str, Any] | None = None
        #: Where the last snapshot chunk lies, once the snapshot is packed (`packs.py`).
        self.packed: PackedChunk | None = None
        #: Set when the shape is retired (`store.ShapeStore.retire`): its files go.
        self.retired = False
        # Each snapshot chunk's (size, crc32): from the writes, or the marker once loaded.
        self._snapshot_sums: dict[int, tuple[int, int]] = {}
        self._snapshot_total = 0  # (the sum of their sizes: `snapshot_bytes`)
        # Snapshot chunks whose file this process wrote or read and checked since loading
        # (with what the file was then, `_identity`): sent as their file from then on,
        # checked again at each send (`check_snapshot_file`).
        self._checked: dict[int, _Identity | None] = {}
        # Chunk regions that passed a check, by (device, inode, start): (index, what the file
        # was then). Never evicted (one entry per region: a verdict cache's eviction must not
        # leave a send unchecked whose check before the send was skipped) and kept after a
        # failed send (a send in flight for that region still checks its bytes): `send_check`.
        self._send_checks: dict[tuple[int, int, int], tuple[int, _Identity]] = {}
        #: Set by `load` when it cut the log back (a torn tail, damage): the lowest LSN it
        #: may have cut. The cut is only a repair if the slot sends that transaction again;
        #: cleared by `repair_checked` once the replicator has asked the slot.
        self.repaired_from: int | None = None
        self.damage: str | None = None  # what `load` found wrong, if anything
        #: Called (with the reason) when a read finds damage; the registry retires the shape.
        self.on_damage: Callable[[str], None] | None = None
        # Reads in worker threads, by plan: readers of the same range share one read.
        self._reading: dict[LogRead, asyncio.Future[list[bytes] | str]] = {}

    # -- creation and loading -------------------------------------------------------------

    def create(self) -> None:
        """Make sure the directory exists (for a log made outside a `store.ShapeStore`,
        which creates the directory once for all its shapes)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def restore_snapshot(self, marker: dict[str, Any], packed: PackedChunk) -> None:
        """Take a finished snapshot back from its marker (found in a pack by `store.py`),
        checking that every chunk is there with the size the marker says.

        Raises `LogDamaged` when the snapshot cannot be used.
        """
        try:
            sums = [(int(size), int(crc)) for size, crc in marker["sums"]]
            count = int(marker["chunks"])
        except (KeyError, TypeError, ValueError):
            raise LogDamaged(f"{self._prefix}: unreadable snapshot marker") from None
        if len(sums) != count or count < 1:
            raise LogDamaged(f"{self._prefix}: {count} chunks but {len(sums)} checksums")
        in_files = sums if packed.size == 0 else sums[:-1]  # a big last chunk: a file too
        for i, (size, _) in enumerate(in_files):
            path = self._snapshot_name(i)
            try:
                actual = os.stat(path).st_size
            except FileNotFoundError:
                raise LogDamaged(f"{path}: missing") from None
            if actual != size:
                raise LogDamaged(f"{path}: {actual} bytes, the marker says {size}")
        if packed.size not in (0, sums[-1][0]):
            raise LogDamaged(f"{packed.pack.path}: {self.handle}'s chunk size differs")
        self._snapshot_sums = dict(enumerate(sums))
        self._snapshot_total = sum(size for size, _ in sums)
        self.marker = marker
        self.packed = packed
        self.snapshot_chunks = count
        self.snapshot_complete = True

    def load_transactions(self, paths: list[str] | None = None, begun: int | None = None) -> None:
        """Index the transaction chunks `paths` (all of the shape's, found by the caller; by
        listing the directory when None), checking them (see `_load_transactions`).
        `begun`: the LSN the log began at, as its pack says (None: it never began, or an
        older engine wrote it)."""
        if paths is None:
            paths = [str(p) for p in self.directory.glob(f"{self.handle}.log.*.log")]
        if begun is not None:
            self._first_lsn, self._begun_recorded = begun, True
        self._load_transactions(self._without_unwritten_tail(sorted(paths)))

    def _without_unwritten_tail(self, paths: list[str]) -> list[str]:
        """`paths` less a last chunk file that was made and never written: a crash between
        its creation and its first record's write (it is made for a transaction that
        starts a chunk) leaves it empty. Nothing was in it, so nothing is cut: it was a
        cut of unknown LSNs, "after the last whole transaction", which the slot was
        usually confirmed past, and retired the shape (test_kill_big_transactions' 409).
        Written to once, it would say so: its own durable size, the chunk before it noted
        as having a next one, or (chunk 0) the log noted as begun in the pack; an empty
        file that says any of these lost records, and stays a cut."""
        if not paths:
            return paths
        last = paths[-1]
        if os.path.getsize(last) or _durable_size(last):
            return paths
        if len(paths) == 1:
            if last != self._log_name(0) or self._begun_recorded:
                return paths
        elif last != self._log_name(len(paths) - 1) or _has_next_chunk(paths[-2]):
            return paths
        os.unlink(last)
        return paths[:-1]

    def own_files(self) -> list[str]:
        """The files only this shape uses (not its pack): what retiring it deletes."""
        inline = self._inline_index()
        names = [self._snapshot_name(i) for i in self._snapshot_sums if i != inline]
        last = self._tail.index if self._tail is not None else -1
        for chunk in self._chunks:
            last = max(last, chunk.index)
        names += [self._log_name(i) for i in range(last + 1)]
        return names

    def repair_checked(self) -> None:
        """The replicator compared `repaired_from` with the slot (the cut transactions are
        replayed, or the shape was retired): nothing is left to check."""
        self.repaired_from = None

    def _load_transactions(self, paths: list[str]) -> None:
        """Index the transaction chunks; cut back to the last whole transaction before the
        first record that is torn or damaged (or a transaction that never ended).

        Whether the cut is a repair depends on the slot: `repaired_from` is a lower bound
        of the LSNs cut, and the replicator retires the shape if the slot will not send
        them again (it was confirmed past them: the damage hit durable data).
        """
        chunks: list[_Chunk] = []
        tx_end: tuple[int, int, int] | None = None  # (chunk, records, end) of the last whole tx
        last_good_lsn = 0
        head = 0  # LSN of a transaction's first record not yet followed by its end
        cut_from = 0  # lowest LSN cut, when known
        prev_size = 0
        durables: list[int | None] = []  # each chunk's size when it was last made durable
        sizes: list[int] = []  # each chunk's size as read here
        lost_tail = False  # the last chunk read lost durable records at its end
        first_lsn = 0  # LSN of chunk 0's first record
        for n, path in enumerate(paths):
            if path != self._log_name(n):
                # a gap in the numbering (a chunk deleted): what follows is cut
                self.damage = f"{self._log_name(n)}: missing"
                cut_from = head
                break
            with open(path, "rb") as f:
                data = f.read()
            result = scan(data, self._seed)
            if n and result.prev_size is not None and result.prev_size != prev_size:
                # The chunk before lost records at its end (or gained some): intact records
                # only, cut at a boundary, which its own scan cannot tell. Cut from there.
                self.damage = (
                    f"{paths[n - 1]}: {prev_size} bytes, the next chunk says {result.prev_size}"
                )
                cut_from = head
                break
            prev_size = len(data)
            durable = _durable_size(path)
            durables.append(durable)
            sizes.append(len(data))
            chunk = _Chunk(path, n)
            chunks.append(chunk)
            for start, end, last_key, lsn, ends_tx in result.records:
                if not n and not first_lsn:
                    first_lsn = lsn
                chunk.starts.append(start)
                chunk.lasts.append(last_key)
                chunk.size = chunk.end = end
                if ends_tx:
                    tx_end = (n, len(chunk.starts), end)
                    last_good_lsn, head = lsn, 0
                elif not head:
                    head = lsn
            if result.error is not None:
                self.damage = f"{path}: {result.error} at byte {result.error_at}"
                cut_from = head or result.error_lsn
                break
            if durable is not None and len(data) < durable:
                # Intact records, but fewer than were durable: some were lost at its end.
                self.damage = f"{path}: {len(data)} bytes, {durable} were made durable"
                lost_tail = True
                cut_from = head
                break
        else:
            cut_from = head
            if not paths and self._begun_recorded:
                # It began, and no chunk file is left: all of it was deleted.
                self.damage = f"{self._log_name(0)}: missing"
                lost_tail = True
                cut_from = self._first_lsn or 0
            elif paths and _has_next_chunk(paths[-1]):
                # The last chunk had a next one, deleted: the log is cut from its end.
                self.damage = f"{self._log_name(len(paths))}: missing"
                lost_tail = True
        if tx_end is None:
            keep_chunks, keep_records, keep_end = 0, 0, 0
        else:
            keep_chunks, keep_records, keep_end = tx_end[0] + 1, tx_end[1], tx_end[2]
        cut = lost_tail
        for n, path in enumerate(paths):
            if n >= keep_chunks:
                os.unlink(path)
                cut = True
            elif n == keep_chunks - 1 and (
                lost_tail or len(paths) > keep_chunks or sizes[n] != keep_end
            ):
                with open(path, "r+b") as f:
                    f.truncate(keep_end)
                    os.fsync(f.fileno())
                    note_durable_size(f.fileno(), keep_end)
                sizes[n] = durables[n] = keep_end  # (durable at its size now)
                _note_next_chunk(path, False)  # the last chunk now: appends go on in it
                chunk = chunks[n]
                del chunk.starts[keep_records:], chunk.lasts[keep_records:]
                chunk.size = chunk.end = keep_end
                cut = True
        if cut:
            self.repaired_from = cut_from or last_good_lsn + 1
        self._make_kept_durable(paths[: min(keep_chunks, len(durables))], durables, sizes)
        if first_lsn and keep_chunks and not self._begun_recorded:
            # It began, and its pack does not say so (the note failed on a full disk and
            # the process ended before it was written): noted on the next append or
            # `settle` (`begin_unnoted`), else a loss of its chunk files would go unseen.
            self._first_lsn = first_lsn
        self._chunks = [c for c in chunks[:keep_chunks] if c.starts]
        self.log_bytes = sum(c.size for c in self._chunks)
        self._chunk_lasts = [c.lasts[-1] for c in self._chunks]
        self._tail = self._chunks[-1] if self._chunks else None
        self.last_lsn = self._published_lsn = last_good_lsn

    def _make_kept_durable(
        self, paths: list[str], durables: list[int | None], sizes: list[int]
    ) -> None:
        """fsync each kept chunk holding more than it was last made durable at (or never
        noted), and the directory, before anything of it is served. `durables` and `sizes`:
        each chunk's noted durable size and its size as the load read it (the file is not
        opened again for those durable at that size: the usual case, one open, fstat and
        close per chunk of every shape at each start otherwise).

        Why: a process killed between writing a transaction to its shapes' chunks and the
        one fsync after them (`Replicator._deliver_big` writes every shape's parts first)
        leaves those bytes in the page cache, whole, and this load reads them back as a
        whole transaction: the shape then skips the slot's replay of it and the slot is
        confirmed past bytes nobody fsynced, lost for good by a power cut in the next ~30 s
        (engine probe, 2026-12-07). Chunks noted durable at their size cost nothing here."""
        if not self.fsync:
            return  # (`--no-fsync`: nothing is made durable on purpose)
        synced = False
        for path, durable, read in zip(paths, durables, sizes, strict=False):
            if durable is not None and durable >= read:
                continue
            try:
                with open(path, "r+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    if durable is not None and durable >= size:
                        continue
                    os.fsync(f.fileno())
                    note_durable_size(f.fileno(), size)
                    synced = True
            except FileNotFoundError:
                continue  # (cut above)
        if synced:
            fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- snapshot -------------------------------------------------------------------------

    def _snapshot_name(self, index: int) -> str:
        return f"{self._prefix}.snapshot.{index:05d}.json"

    def _log_name(self, index: int) -> str:
        return f"{self._prefix}.log.{index:08d}.log"

    @property
    def snapshot_bytes(self) -> int:
        """Bytes of the snapshot chunks written (as written; no `stat`): read by /metrics,
        for every shape at each scrape (a sum over the chunks took 1 µs a shape)."""
        return self._snapshot_total

    def _count_snapshot_chunk(self, index: int, size: int) -> None:
        known = self._snapshot_sums.get(index)
        self._snapshot_total += size - (known[0] if known is not None else 0)

    def snapshot_bytes_on_disk(self) -> int:
        """What the snapshot's chunk files written so far take on the disk now (0 once
        they are deleted): the space a failed snapshot gives back by itself."""
        taken = 0
        for index in list(self._snapshot_sums):
            try:
                st = os.stat(self._snapshot_name(index))
            except OSError:
                continue
            taken += st.st_blocks * 512
        return taken

    def write_snapshot_chunk(self, index: int, data: bytes) -> None:
        """A snapshot chunk but the last (see `finish_snapshot`), in a file of its own.

        Only creates a new file; the chunk is read only once it is announced. A failed
        write removes the file (the snapshot fails; its shape is discarded)."""
        written = self._write_file(self._snapshot_name(index), data)
        self._count_snapshot_chunk(index, len(data))
        self._snapshot_sums[index] = (len(data), crc32(data))
        self._checked[index] = written

    def finish_snapshot(self, count: int, last: bytes, record: dict[str, object]) -> bytes:
        """The completion marker of a snapshot of `count` chunks whose last one is `last`:
        what goes into the pack beside it (`store.PackBuilder`).

        `record` (handle, definition, table, snapshot) is what loading the shape needs.
        """
        self._count_snapshot_chunk(count - 1, len(last))
        self._snapshot_sums[count - 1] = (len(last), crc32(last))
        sums = [self._snapshot_sums[i] for i in range(count)]
        if self._first_lsn is not None:  # (its log began while the snapshot was written)
            self._begun_recorded = True
            return orjson.dumps(
                {"chunks": count, "sums": sums, "log_from": self._first_lsn, **record}
            )
        return orjson.dumps({"chunks": count, "sums": sums, **record})

    def _inline_index(self) -> int:
        """The index of the chunk kept in the pack (-1: none; a big last chunk is a file)."""
        if self.packed is None or self.packed.size == 0:
            return -1
        return self.snapshot_chunks - 1

    def packed_snapshot(self, count: int, packed: PackedChunk) -> None:
        """The pack holding the last chunk is durable: the snapshot can be read whole."""
        self.packed = packed
        self.chunks_readable(count, complete=True)
        if self._first_lsn is not None and not self._begun_recorded:
            # It began after the marker was made. On a full disk the next append tries
            # again (`_begin_noted`), and so does the store's `settle` (`begin_unnoted`),
            # for a log with no more appends.
            with contextlib.suppress(OSError):
                self._record_log_begun(self._first_lsn)

    @property
    def begin_unnoted(self) -> bool:
        """Whether the log began and its pack does not say so yet (the note failed on a
        full disk; or the log was loaded from a pack without it): `note_begun` writes it."""
        return self._first_lsn is not None and not self._begun_recorded and not self.retired

    def note_begun(self) -> None:
        """Write the note `begin_unnoted` says is missing (see `_begin_noted`); raises
        `LogWriteError` while the pack cannot be appended to."""
        self._begin_noted()

    def _record_log_begun(self, lsn: int) -> None:
        """Note in the shape's pack that its log began at `lsn` (durable with the log's
        next fsync): a log whose chunk files are all lost is then found (`load`), not
        taken for one that never began (its shape served without its changes). Raises
        OSError when the pack cannot be appended to (a full disk)."""
        assert self.packed is not None
        path = self.packed.pack.path
        append_record(path, encode_log_begun(self.handle, lsn))
        self._begun_recorded = True
        self._dirty.add(path)

    def _begin_noted(self) -> None:
        """Note the log's beginning in the pack if it began and the note failed (a full
        disk when it began or when the snapshot was packed): before anything more is
        appended. Raises `LogWriteError` while it still fails (the append fails whole, and
        the replicator pauses and tries again once there is room). It was tried again
        only when chunk 0 was made again: a log that went on growing never had it."""
        if self._first_lsn is None or self._begun_recorded or self.packed is None:
            return
        if self.retired:  # (its pack says so, or will: nothing to note)
            return
        try:
            self._record_log_begun(self._first_lsn)
        except OSError as exc:
            raise LogWriteError(
                exc.errno, f"noting the log's beginning in {self.packed.pack.path}: {exc.strerror}"
            ) from exc

    def chunks_readable(self, count: int, complete: bool) -> None:
        """`count` snapshot chunks are written (all of them when `complete`): readers may
        read them."""
        self.snapshot_chunks = max(self.snapshot_chunks, count)
        self.snapshot_complete = self.snapshot_complete or complete

    def _write_file(self, path: str, data: bytes) -> _Identity:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_new_file(fd, data)
            if self.fsync:
                os.fsync(fd)
            written = _identity(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        os.close(fd)
        return written

    def read_snapshot_chunk(self, index: int) -> bytes:
        """The chunk's bytes, checked against the size and crc32 they were written with."""
        packed = self.packed
        if packed is not None and index == self._inline_index():
            path = packed.pack.path
            try:
                with open(path, "rb") as f:
                    f.seek(packed.offset)
                    data = f.read(packed.size)
            except OSError as exc:
                if (busy := _read_failed(path, exc)) is not None:
                    raise busy from None
                self._damaged(f"{path}: {exc.strerror}")
            read = None
        else:
            path = self._snapshot_name(index)
            try:
                with open(path, "rb") as f:
                    read = _identity(f.fileno())  # (before the read: a change after it
                    data = f.read()  # changes what it says, and the file is read again)
            except OSError as exc:
                if (busy := _read_failed(path, exc)) is not None:
                    raise busy from None
                self._damaged(f"{path}: {exc.strerror}")
        expected = self._snapshot_sums.get(index)
        if expected is None:
            self._damaged(f"{path}: no checksum recorded for chunk {index} of {self.handle}")
        elif len(data) != expected[0] or crc32(data) != expected[1]:
            self._damaged(f"{path}: chunk {index} of {self.handle} does not match its checksum")
        self._checked[index] = read
        return data

    def snapshot_chunk_file(self, index: int) -> tuple[str, int, int] | None:
        """Where chunk `index` lies, `(path, offset, size)`, if this process wrote or read
        and checked it, for sending it as it is (`http/sendfile.py`, after
        `check_snapshot_file`): its own file (offset 0), or the region of its pack for a last
        chunk kept there. Else None: read it with `read_snapshot_chunk`, which checks it
        (then this gives its place)."""
        if index not in self._checked:
            return None
        packed = self.packed
        if packed is not None and index == self._inline_index():
            return packed.pack.path, packed.offset, packed.size
        return self._snapshot_name(index), 0, self._snapshot_sums[index][0]

    def _snapshot_region(self, index: int) -> tuple[str, int]:
        """(path, start) of the file region holding chunk `index`: its own file from 0, or
        its pack from the chunk's offset for a last chunk kept there."""
        packed = self.packed
        if packed is not None and index == self._inline_index():
            return packed.pack.path, packed.offset  # (a pack grows: R, L records)
        return self._snapshot_name(index), 0

    def snapshot_check_kept(self, index: int, st: os.stat_result) -> bool:
        """Whether a passed check of chunk `index` stands for the file `st` describes (an
        `fstat` of the descriptor about to send it): `verdicts.holds`, what
        `check_snapshot_file` asks first, so that a send needing no check is not handed to
        a worker thread and back for it. Cheap enough for the event loop: a dict look-up,
        and when a check was kept, two reads of the block device's counters in sysfs
        (kernel memory: no disk read). A big chunk file (`SEND_CHECKED_BYTES`) that passed
        a check as it is now needs none: its send checks the bytes it sends (`send_check`)."""
        expected = self._snapshot_sums.get(index)
        if expected is None:
            return False
        identity, start = _identity_of(st), self._snapshot_region(index)[1]
        if self._armed(identity, start, index) is None:
            return False  # (its send would not check its bytes: a check before it, always)
        if not start and expected[0] >= SEND_CHECKED_BYTES:
            return True  # (its send checks the bytes it sends: `send_check`)
        return verdicts.holds(identity, start, *expected)

    def _armed(self, identity: _Identity, start: int, index: int) -> tuple[int, int] | None:
        """(index, crc32) the send of chunk `index`'s region from `start` of the file
        `identity` describes checks its bytes against: when that region passed a check with
        the file as it is now (`_send_checks`, never evicted). `snapshot_check_kept` skips
        the check before the send only then, and `send_check` arms the one during it for
        every region with an entry there, whatever the file is now: a send that skipped the
        first always gets the second (review 11:35: two caches that evicted differently let
        a hot region skip both; review 11:52: a pack grown between the two looks did)."""
        got = self._send_checks.get((identity[0], identity[1], start))
        if got is None or got[0] != index or got[1] != identity:
            return None
        expected = self._snapshot_sums.get(index)
        return None if expected is None else (index, expected[1])

    def send_check(self, st: os.stat_result, offset: int, size: int) -> tuple[int, int] | None:
        """(chunk index, crc32) that a send of `size` bytes from `offset` of the file `st`
        describes checks the bytes it sends against (`http/sendfile.py`), when that region is
        a chunk of this log that passed a check (in this file); else None (the
        send of a region this process has no passed check of: checked before it, as ever).
        Every such send checks its bytes, whatever it was checked before: a kept verdict
        (`verdicts.holds`) vouches for cached pages, and a page dropped after the check is
        read again from the disk by the send itself (chaos 10:57: damage below the
        filesystem went out once, whole, before the next check found it). Big chunk files
        skip the check before the send altogether (`snapshot_check_kept`).

        The region's size and crc32 are all a send needs to check its bytes, so it is armed
        whatever `fstat` says of the file now: a pack grown since its region's check (another
        shape's record appended between the check before the send, or its skipping, and this
        look) was sent by `sendfile` with neither check (review 11:52), and a file written
        to since is found by the bytes it sends (a mismatch: the body cut, the shape
        retired)."""
        got = self._send_checks.get((st.st_dev, st.st_ino, offset))
        if got is None:
            return None
        expected = self._snapshot_sums.get(got[0])
        if expected is None or expected[0] != size:
            return None
        return got[0], expected[1]

    def send_check_failed(self, index: int, st: os.stat_result, offset: int, reason: str) -> None:
        """A send that checked the bytes it sent (`send_check`, from `offset` of the file `st`
        describes) found them other than what was written: the chunk is damaged. Its shape
        is retired (`on_damage`: the next request gets a 409) and its passed check is
        forgotten."""
        self._checked.pop(index, None)  # (its region stays armed: `_send_checks`)
        verdicts.forget_all()  # (its region's kept verdict too: a check before any send)
        if self.on_damage is not None:
            self.on_damage(f"{self._snapshot_name(index)}: {reason}")

    def check_snapshot_file(self, index: int, fd: int, fresh: bool = False) -> None:
        """Check `fd`, opened to send chunk `index` as it is (its file, or its pack for a last
        chunk kept there: the chunk's region of it), against the size and crc32 it was
        written with; raises `LogDamaged` (the shape is retired: a 409) when it does not
        match. In a worker thread.

        Every send, not once per process: damage that keeps the file's times (a bad disk or
        controller, a write below the filesystem) was sent to every client after the first
        check. The file is read in pieces (which leaves its pages cached for the send): ~1 ms
        for a cached 10 MiB chunk (ISA-L's crc32 and the reads). A check that passed stands
        for the sends after it while neither the file (one `fstat`) nor its disk (nothing
        read from it since) can have changed the bytes: see `verdicts`. `fresh`: check it
        even so (a send about to go out by `sendfile` where it would have checked its bytes:
        a kept verdict vouches for cached pages only)."""
        expected = self._snapshot_sums.get(index)
        path, start = self._snapshot_region(index)
        if expected is None:
            self._damaged(f"{path}: no checksum recorded for chunk {index} of {self.handle}")
        try:
            identity = _identity(fd)
            if not fresh and verdicts.holds(identity, start, *expected):
                self._send_checks[(identity[0], identity[1], start)] = (index, identity)
                return
            before = verdicts.stamp(identity[0])  # (before the read: one after it is seen)
            size = identity[2]
            if start:
                crc = _file_crc(fd, expected[0], start) if size >= start + expected[0] else None
            else:
                crc = _file_crc(fd, size) if size == expected[0] else None
        except OSError as exc:
            if (busy := _read_failed(path, exc)) is not None:
                raise busy from None
            self._damaged(f"{path}: {exc.strerror}")
        if crc != expected[1]:
            self._checked.pop(index, None)
            self._damaged(f"{path}: chunk {index} of {self.handle} does not match its checksum")
        self._send_checks[(identity[0], identity[1], start)] = (index, identity)
        verdicts.remember(identity, start, expected[0], expected[1], before)

    def remember_snapshot_chunk(self, index: int, data: bytes) -> None:
        """Keep a small chunk just written for `fresh_snapshot_chunk` (event loop only)."""
        if len(data) <= FRESH_CHUNK_MAX:
            _fresh.put(self._snapshot_name(index), data)

    def fresh_snapshot_chunk(self, index: int) -> bytes | None:
        """The chunk if it was written recently and is small, else None (read the file)."""
        return _fresh.get(self._snapshot_name(index))

    # -- transactions: writing ------------------------------------------------------------

    @property
    def latest_offset(self) -> LogOffset:
        """The last published entry's offset (`0_inf` before any)."""
        if self._chunks:
            return self._chunks[-1].last_offset
        return SNAPSHOT_END

    def append_transaction(
        self, lsn: int, entries: list[tuple[int, bytes]], ends: bool = True
    ) -> None:
        """Write one transaction's entries `(op, json)` for this shape, staged.

        `ends` False: a part of the transaction's entries (a big one is written a part at
        a time, so that neither it nor its encoding is held whole); more parts follow, the
        last with `ends`. The parts are records that do not end it: `load` cuts them off
        if the last never comes (a crash). Invisible to readers until `publish`, which the
        replicator calls only once the whole transaction is written and durable. Raises
        `LogWriteError` after cutting the file back when the write fails.
        """
        for _ in self._append(lsn, entries, ends, paced=False):
            pass

    async def append_transaction_paced(
        self,
        lsn: int,
        entries: list[tuple[int, bytes]],
        ends: bool,
        pause: Callable[[], Awaitable[None]],
    ) -> bool:
        """`append_transaction`, awaiting `pause()` (which lets the event loop run) after
        every `PACE_BYTES` written and every record: a 200 MB value was checksummed and
        written in one go, holding every other request (and source) for seconds.

        Returns False, having written nothing that counts, if the log was retired
        meanwhile (its files are being deleted). Raises `LogWriteError` if it was cut back
        meanwhile (a failed write elsewhere: what was staged is written again later).
        """
        written = True
        steps = self._append(lsn, entries, ends, paced=True)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                written = bool(stop.value)
                break
            await pause()
        return written

    def _append(
        self, lsn: int, entries: list[tuple[int, bytes]], ends: bool, paced: bool
    ) -> Generator[None, None, bool]:
        """`append_transaction`'s steps: yields where a paced append pauses (never unless
        `paced`); returns whether it was written (False: retired meanwhile)."""
        if not entries:
            return True
        self._begin_noted()
        tail = self._tail
        if tail is None:
            tail = self._tail = _Chunk(self._log_name(0), 0)
        generation = self._generation
        body = record_body(entries)
        size = HEADER_SIZE + sum(map(len, body))
        if tail.end + size <= self.chunk_bytes:  # the usual case: it fits
            flags = FLAG_TX_END if ends else 0
            key = key_of(lsn, entries[-1][0])
            if not (yield from self._write(tail, body, size, flags, key, lsn, paced)):
                return False
        else:
            for new_chunk, first, end in split_records(entries, self.chunk_bytes, tail.end):
                part = entries[first:end]
                flags = FLAG_TX_END if ends and end == len(entries) else 0
                body = record_body(part)
                size = HEADER_SIZE + sum(map(len, body))
                finished = None
                if new_chunk:
                    finished = tail
                    close_fd(finished.path)  # never written again
                    index = finished.index + 1
                    flags |= chunk_flags(finished.end)  # (how long the finished one is)
                    tail = self._tail = _Chunk(self._log_name(index), index)
                key = key_of(lsn, part[-1][0])
                if not (yield from self._write(tail, body, size, flags, key, lsn, paced)):
                    return False
                if finished is not None:
                    # The next chunk exists now: noted on the finished one (never the other
                    # way round, which a crash between the two would leave as a deleted
                    # chunk), made durable with the next chunk's first records.
                    _note_next_chunk(finished.path, True)
                    self._dirty.add(finished.path)
                if paced:
                    yield
                    if self.retired:
                        return False
                    self._check_generation(tail, generation)
        self.last_lsn = lsn
        return True

    def _write(
        self,
        tail: _Chunk,
        body: list[bytes],
        size: int,
        flags: int,
        last_key: int,
        lsn: int,
        paced: bool,
    ) -> Generator[None, None, bool]:
        """Write one record (its header, then `body`'s pieces) at the end of `tail` and
        stage it. Paced and big: the header, then the body `PACE_BYTES` at a time (a
        yield after each). A record cut short by a crash runs past the end of its file
        or fails its body check (`load` cuts it off), and its intact header names the
        transaction cut (`repaired_from`). The header was written last: a crash in the
        middle left a hole where it goes, no LSN, and the load could only say the cut
        began after the last whole transaction, which the slot was usually confirmed
        past: a torn tail the slot sends again retired the shape (clients refetched).
        Returns False if the log was retired meanwhile."""
        start = tail.end
        try:
            if self._needs_cut:
                self._cut_again()
            if not paced or size < PACE_BYTES:
                crc = 0
                for piece in body:
                    crc = crc32(piece, crc)
                head = record_header(size - HEADER_SIZE, crc, lsn, flags, self._seed)
                if len(body) == 1:
                    write_fd(tail.path, head + body[0], start)
                else:
                    write_pieces(tail.path, [head, *body], start)
            else:
                generation = self._generation
                crc = 0
                for piece in body:  # (checksummed first, a step at a time too)
                    view = memoryview(piece)
                    for i in range(0, len(view), PACE_BYTES):
                        crc = crc32(view[i : i + PACE_BYTES], crc)
                        yield
                        if self.retired:
                            return False
                        self._check_generation(tail, generation)
                head = record_header(size - HEADER_SIZE, crc, lsn, flags, self._seed)
                write_fd(tail.path, head, start)
                at = start + HEADER_SIZE
                for piece in body:
                    view = memoryview(piece)
                    for i in range(0, len(view), PACE_BYTES):
                        step = view[i : i + PACE_BYTES]
                        write_fd(tail.path, step, at)
                        at += len(step)
                        yield
                        if self.retired:
                            return False
                        self._check_generation(tail, generation)
        except OSError as exc:
            if isinstance(exc, LogWriteError):
                raise
            self.rollback()
            raise LogWriteError(exc.errno, f"writing {tail.path}: {exc.strerror}") from exc
        tail.end = end = start + size
        self._staged.append((tail, start, end, last_key, lsn))
        self._dirty.add(tail.path)
        if not start:  # a new file: its directory entry must be durable too
            self._dirty.add(self._dir)
            if not tail.index and not self._begun_recorded:  # the log begins
                if self._first_lsn is None:
                    self._first_lsn = lsn
                if self.packed is not None:
                    try:  # (all or nothing: not published without its note)
                        self._record_log_begun(self._first_lsn)
                    except OSError as exc:
                        self.rollback()
                        raise LogWriteError(
                            exc.errno,
                            f"noting the log's beginning in {self.packed.pack.path}:"
                            f" {exc.strerror}",
                        ) from exc
        return True

    def _check_generation(self, tail: _Chunk, generation: int) -> None:
        """After a pause of a paced append: raise if the log was cut back meanwhile (a
        failed write or fsync elsewhere); what this append wrote after the cut, if
        anything of it is left past the published end, is cut again by the next write."""
        if self._generation != generation:
            published = {c.path for c in self._chunks}
            self._needs_cut[tail.path] = tail.size if tail.path in published else 0
            tail.end = tail.size
            raise LogCutBack(errno.ECANCELED, "the log was cut back while being written")

    def _last_published(self) -> _Chunk | None:
        return self._chunks[-1] if self._chunks else None

    def _cut_again(self) -> None:
        for path, size in list(self._needs_cut.items()):
            if size:
                os.truncate(path, size)
                note_durable_size(path, size)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            del self._needs_cut[path]

    def durable_end(self) -> tuple[int, int, int] | None:
        """What the next flush makes durable, for `ends.LogEnds`: (the LSN published so
        far, the first and the last LSN staged); None with nothing staged."""
        if not self._staged:
            return None
        return self._published_lsn, self._staged[0][4], self._staged[-1][4]

    def check_end(self, end: tuple[int, int, int]) -> bool:
        """After `load_transactions`: compare the log with where it ended when last made
        durable as noted apart from its files (`ends.LogEnds`). A log that ends before it
        lost durable records its files cannot tell of: an older copy of a chunk file, its
        xattrs with it, put in place of the newer one. It is cut there like any damage
        (`repaired_from`: kept only if the slot sends the lost transactions again).

        The lowest LSN that may be lost: the first the last flush wrote, if the log holds
        everything before that flush (a crash during it: those records were never
        published, so the slot replays them); else anything after the log's end."""
        before, first, last = end
        loaded = self._published_lsn
        if last <= loaded:
            return False
        cut_from = first if loaded >= before else loaded + 1
        if self.damage is None:
            self.damage = (
                f"{self._prefix}: its log ends at LSN {loaded:X}, it was made durable up to"
                f" {last:X} (an older copy of a chunk file?)"
            )
        if self.repaired_from is None or cut_from < self.repaired_from:
            self.repaired_from = cut_from
        return True

    def unverified(self, reason: str) -> bool:
        """After `load_transactions`: where the log ended cannot be checked (`reason`: the
        note of it is missing or damaged, `ends.py`). A log with published records is cut
        as if it lost what followed its end (`repaired_from`: kept only if the slot sends
        that again); one with none has nothing to lose. Returns whether it was cut."""
        loaded = self._published_lsn
        if not loaded:
            return False
        if self.damage is None:
            self.damage = f"{self._prefix}: its log's end cannot be checked ({reason})"
        if self.repaired_from is None or loaded + 1 < self.repaired_from:
            self.repaired_from = loaded + 1
        return True

    def cut_end(self) -> tuple[int, int, int] | None:
        """While the slot has not been asked about this load's cut (`repaired_from`): an end
        for `ends.LogEnds` that makes the next load cut the log from the same LSN
        (`check_end`: the log ends at `_published_lsn` < the last LSN, which it holds
        everything before, so the cut is from the first); None with no cut pending.

        The load rewrites the file at once, with a line only for shapes it has one of: a
        shape found unverified (the file missing or zeroed) had none, and a start ended
        between the load and the slot check (killed, OOM, a restart loop) left the next one
        a readable file that vouched for the cut log as whole: served up-to-date without the
        lost changes, for good (chaos 19:37, HIGH)."""
        cut = self.repaired_from
        if cut is None:
            return None
        loaded = self._published_lsn
        return loaded, cut, max(cut, loaded + 1)

    @property
    def has_unpublished(self) -> bool:
        """Whether appends are staged but not yet readable (waiting for their fsync)."""
        return bool(self._staged)

    def take_dirty(self) -> tuple[set[str], tuple[int, int]]:
        """The files to fsync before `publish(token)` makes what is staged now visible."""
        dirty, self._dirty = self._dirty, set()
        return dirty, (self._generation, len(self._staged))

    def publish(self, token: tuple[int, int]) -> bool:
        """Make the records staged when `take_dirty` gave `token` visible (they are
        durable now). Returns whether anything became visible."""
        generation, count = token
        if count <= 0 or generation != self._generation:
            return False
        staged, self._staged = self._staged[:count], self._staged[count:]
        chunks = self._chunks
        for chunk, start, end, last_key, lsn in staged:
            if not chunks or chunks[-1] is not chunk:
                chunks.append(chunk)
                self._chunk_lasts.append(last_key)
            chunk.starts.append(start)
            chunk.lasts.append(last_key)
            chunk.size = end
            self.log_bytes += end - start
            self._chunk_lasts[-1] = last_key
            self._published_lsn = lsn
        return True

    def rollback(self) -> None:
        """Cut every staged record back off the files: they are not (known to be) durable.

        The replicator then replays them from the slot. Cutting back frees what they
        took, so it works on a full disk; should it fail, the next write cuts again (it
        writes at the published end, never after the garbage).
        """
        staged, self._staged = self._staged, []
        self._dirty = set()
        self._generation += 1
        self.last_lsn = self._published_lsn
        touched: dict[str, _Chunk] = {}
        for chunk, *_ in staged:
            touched[chunk.path] = chunk
        if self._tail is not None:
            touched[self._tail.path] = self._tail
        published = {c.path for c in self._chunks}
        for path, chunk in touched.items():
            chunk.end = chunk.size
            try:
                if path in published:
                    os.truncate(path, chunk.size)
                    note_durable_size(path, chunk.size)
                else:
                    close_fd(path)
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                self._needs_cut[path] = chunk.size if path in published else 0
        old_tail, tail = self._tail, self._last_published()
        self._tail = tail
        if tail is not None and tail is not old_tail:
            _note_next_chunk(tail.path, False)  # its next chunk was cut: the last again

    def close(self) -> None:
        """Release the open chunk file (a retired shape's files are being deleted)."""
        if self._tail is not None:
            close_fd(self._tail.path)

    # -- transactions: reading ------------------------------------------------------------

    @property
    def first_published_lsn(self) -> int | None:
        """The commit LSN of the first published transaction (None before any): from the
        index, no read (`Shape.issued` read and split the whole first chunk, up to 10 MB on
        the event loop, for its first entry's `lsn` header)."""
        return self._chunks[0].lasts[0] >> 32 if self._chunks else None

    def has_after(self, offset: LogOffset) -> bool:
        """Whether published entries come after `offset` (what a waiting live request
        asks on every wake-up; exact where `latest_offset > offset` is not: `<lsn>_0` names
        the end of transaction `<lsn>`, which `<lsn>_5` is not past)."""
        lasts = self._chunk_lasts
        return bool(lasts) and lasts[-1] > _after_key(offset)

    def read_after(
        self, offset: LogOffset, *, whole_transactions: bool = False, max_bytes: int = 0
    ) -> tuple[list[bytes], LogOffset]:
        """Published entries after `offset`, up to the end of its chunk.

        Returns the entries and the offset the response ends at, which may be inside a
        transaction (a big one spans chunks) unless `whole_transactions` (SSE, whose
        client resumes from `<lsn>_0`) asks to read on to the transaction's end.
        `max_bytes` (0: no bound) stops the read after the record that takes it past that
        many bytes of the file (one record at least), and the offset is that record's last
        entry's: a reader that cannot keep up (an SSE stream) holds that much of the log,
        not the rest of a chunk. Raises `LogDamaged` (a 409) if the bytes fail their check.

        Reads on the calling thread: a 10 MB record is 15-25 ms of it (cached, quiet), 0.3-0.6 s
        seen under load. On the event loop,
        use `read_after_async`, which reads a big range in a worker thread.
        """
        plan = self.plan_read(offset, whole_transactions=whole_transactions, max_bytes=max_bytes)
        return self._finish_read(_run_read(plan)), plan.end

    async def read_after_async(
        self,
        offset: LogOffset,
        *,
        whole_transactions: bool = False,
        max_bytes: int = 0,
        joined: bool = False,
    ) -> tuple[list[bytes], LogOffset]:
        """`read_after` for the event loop: the read is planned at the call, on the loop
        (which published records, where they lie, the offset it ends at), and the bytes of
        a plan of `THREAD_READ_BYTES` or more are read, checked and split in a worker
        thread, so that a big transaction does not stall every other client.

        Exact whatever is published meanwhile: the answer is what was published at the
        call (published bytes never change: rollback only cuts staged ones, and appends go
        after them), and its end offset says so. A shape retired meanwhile (its files
        deleted) raises `LogDamaged` too (a 409: the client refetches) without retiring
        anything; damaged bytes retire the shape, as `read_after`'s. Readers of the same
        range at the same time share one read (the entries, not the list, are shared).

        `joined`: the entries come as one item, joined with commas (in the worker thread,
        shared by readers of the same range): copying a 10 MB body on the loop costs
        10-90 ms on a VM whose fresh pages fault in the host, once per response.
        """
        plan = self.plan_read(
            offset, whole_transactions=whole_transactions, max_bytes=max_bytes, joined=joined
        )
        if not plan.ranges:  # (nothing published after `offset`: a live request's usual read)
            return [], plan.end
        if plan.size < THREAD_READ_BYTES:
            return self._finish_read(_run_read(plan)), plan.end
        reading = self._reading.get(plan)
        if reading is None:
            # (a herd of live clients woken by the same transaction reads it once)
            loop = asyncio.get_running_loop()
            reading = loop.run_in_executor(_read_threads(), _run_read, plan)
            self._reading[plan] = reading
            reading.add_done_callback(lambda _: self._reading.pop(plan, None))
        done = await asyncio.shield(reading)
        return list(self._finish_read(done)), plan.end

    def plan_read(
        self,
        offset: LogOffset,
        *,
        whole_transactions: bool = False,
        max_bytes: int = 0,
        joined: bool = False,
    ) -> LogRead:
        """What `read_after` with these arguments reads, taken from the index on the thread
        that publishes (the event loop), so that the bytes may be read in any thread
        (`_run_read`). Nothing of the index is read later: `publish` appends a record's
        position before it sets its chunk's size, so a reader thread using the index could
        pair a new record with the old size, read nothing of it and still skip it."""
        after = _after_key(offset)
        lasts = self._chunk_lasts
        ci = bisect.bisect_right(lasts, after) if after >= 0 else 0
        if ci >= len(lasts):
            return LogRead((), after, self.latest_offset, 0, self._seed, joined)
        chunks = self._chunks
        ranges: list[tuple[str, int, int]] = []
        size = 0
        while True:
            chunk = chunks[ci]
            ri = bisect.bisect_right(chunk.lasts, after)
            starts = chunk.starts
            if max_bytes:
                rj = max(ri + 1, bisect.bisect_left(starts, starts[ri] + max_bytes, ri))
                # (never right after an op-0 entry: `<lsn>_0` names its transaction's end)
                while rj < len(starts) and not chunk.lasts[rj - 1] & 0xFFFFFFFF:
                    rj += 1
                if rj < len(starts):  # (else the rest of the chunk is within the bound)
                    ranges.append((chunk.path, starts[ri], starts[rj]))
                    size += starts[rj] - starts[ri]
                    end = _offset(chunk.lasts[rj - 1])
                    return LogRead(tuple(ranges), after, end, size, self._seed, joined)
            ranges.append((chunk.path, starts[ri], chunk.size))
            size += chunk.size - starts[ri]
            ci += 1
            # Published transactions are whole, and a transaction's records share its
            # commit LSN: the chunk's last one goes on in the next chunk if that one
            # begins with the same LSN.
            if (
                not whole_transactions
                or ci >= len(chunks)
                or chunks[ci].lasts[0] >> 32 != chunk.lasts[-1] >> 32
            ):
                return LogRead(tuple(ranges), after, chunk.last_offset, size, self._seed, joined)

    def _finish_read(self, done: list[bytes] | str) -> list[bytes]:
        """The entries `_run_read` gave, or what it found wrong raised: damage retires the
        shape (`_damaged`); a shape retired meanwhile (its files deleted) only gets its
        409."""
        if not isinstance(done, str):
            return done
        if self.retired:
            raise LogDamaged(done)
        self._damaged(done)

    def _damaged(self, reason: str) -> NoReturn:
        if self.on_damage is not None:
            self.on_damage(reason)
        raise LogDamaged(reason)


#: Plans of at least this many bytes are read in a worker thread (`read_after_async`):
#: below it the hop to a thread and back costs about what the read does.
THREAD_READ_BYTES = 1 << 20

#: Threads reading big ranges (`read_after_async`). Two: splitting a record's entries is
#: Python, holding the GIL, so each more thread is one more the event loop waits behind to
#: take it back (measured: 8 reads of a 10 MB record in 8 threads stalled the loop ~50 ms);
#: and not the default executor, whose fsyncs publishing waits for.
READ_THREADS = 2

_executor: ThreadPoolExecutor | None = None

#: Buffers of at least this many bytes (a huge value's entry, read or encoded) get pages of
#: their own from the system, given back when freed (`_give_back_huge_buffers`).
MMAP_THRESHOLD = 16 << 20


def _give_back_huge_buffers() -> None:
    """Fix glibc's mmap threshold, so that the memory of a huge value is given back once
    it is sent.

    glibc raises the threshold to the size of the biggest mapped buffer freed (up to 32
    MB), and its trim threshold to twice that: after one 24 MB value, every later buffer of
    that size came from a malloc heap, and a heap kept up to 64 MB free for reuse. A read
    in a log-read thread allocates from that thread's own heap (an arena per thread), so
    after a 24 MB value was written and read the engine kept 48-72 MB it no longer used
    (old: 0-24, the read on the event loop reusing the main heap), per read thread.
    Fixed, buffers under 16 MB (a 10 MB transaction's read, the usual parts) still reuse
    heap memory; bigger ones are mapped and unmapped, and the trim threshold stays
    glibc's default (128 kB: set to 32 MB, a run kept 24 MB). No-op off glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (no longer raised, nor the trim one)


_give_back_huge_buffers()


def _read_threads() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="log-read")
    return _executor


@dataclass(frozen=True, slots=True)
class LogRead:
    """A read of published records, planned on the event loop (`ShapeLog.plan_read`).

    `ranges`: `(path, start, stop)` byte ranges of whole published records, in log order
    (they never change: appends go after them, rollback cuts only staged records);
    `after`: the key entries must exceed; `end`: the offset the read ends at; `size`: the
    bytes it reads; `seed`: of the records' header checksums. Holds nothing of the log's
    index, so it can be read in any thread.
    """

    ranges: tuple[tuple[str, int, int], ...]
    after: int
    end: LogOffset
    size: int
    seed: int
    joined: bool = False  # (the entries as one item, joined with commas)


def _run_read(plan: LogRead) -> list[bytes] | str:
    """The entries `plan` names, each record checked; or why they cannot be served (a
    missing or short file, a record failing its check) for the caller to raise on the
    event loop (`ShapeLog._finish_read`); raises `ServiceUnavailable` for a transient
    failure (`_TRANSIENT`). Any thread."""
    out: list[bytes] = []
    for path, start, stop in plan.ranges:
        size = stop - start
        try:
            with open(path, "rb") as f:
                lone = None
                if size >= BIG_ENTRY:  # (a huge value: without a copy, if it is one)
                    lone = read_lone_entry(f, start, size, plan.after, plan.seed)
                if lone is None:
                    f.seek(start)
                    data = f.read(size)
        except OSError as exc:
            if (busy := _read_failed(path, exc)) is not None:
                raise busy from None
            return f"{path}: {exc.strerror}"
        if lone is not None:
            out += lone
            continue
        if len(data) != size:
            return f"{path}: {len(data)} bytes at {start}, expected {size}"
        try:
            iter_entries(data, plan.after, out, plan.seed)
        except FramingError as exc:
            return f"{path}: {exc} (record at {start})"
    if plan.joined and len(out) > 1:
        return [b",".join(out)]
    return out

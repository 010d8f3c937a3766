"""A source's shape logs on disk: new logs, finished snapshots packed, loading, retiring.

All of a source's shapes share one flat directory (`files.py` lists the names). This module
owns the files no single shape owns, the packs (`packs.py`): a batch of snapshots ends with
one `PackBuilder` write, loading reads the packs to find every shape whose snapshot finished,
and retiring a shape deletes its own files and marks it retired in its pack.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..replication.position import FILE_NAME as POSITION_FILE
from ..replication.position import read_mark
from .ends import KEPT as ENDS_KEPT
from .ends import NAME as ENDS_NAME
from .ends import LogEnds
from .files import LogDamaged, LogWriteError, ShapeLog
from .packs import (
    MAGIC,
    SUFFIX,
    Pack,
    PackContents,
    PackedChunk,
    append_retired,
    encode_shape,
    new_pack_path,
    noted_end,
    scan_pack,
    sync_directory,
    write_new,
)

logger = logging.getLogger(__name__)

#: A last chunk bigger than this is a file of its own, like the others (sent with sendfile,
#: see `ShapeLog.snapshot_chunk_file`); the pack then holds only the marker.
PACK_INLINE_MAX = 1 << 20

#: A shape found in a pack: the pack, its marker, where its last chunk lies (offset, size),
#: the LSN its log began at if the pack says.
_Found = tuple[Pack, dict[str, Any], int, int, int | None]


class ShapeStore:
    """The directory of one source's shape logs."""

    def __init__(self, directory: Path, chunk_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self._directory_text = str(directory)
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        #: Where each shape's log ended when last made durable (`ends.py`), in the source's
        #: directory; and whether the file should be there (this engine ran here).
        self.ends = LogEnds(str(directory.parent), fsync)
        self._ends_expected = (directory.parent / ENDS_KEPT).exists()
        #: Retired shapes whose noted ends go once their retirement is on disk (`retire`).
        self._forget: set[str] = set()

    def new_log(self, handle: str) -> ShapeLog:
        """An empty log for a new shape (it creates no file until it writes)."""
        return ShapeLog.in_directory(
            self.directory, self._directory_text, handle, self.chunk_bytes, self.fsync
        )

    def load(self) -> list[ShapeLog]:
        """Every shape whose snapshot finished, checked (`ShapeLog.restore_snapshot`,
        `load_transactions`); the files of every other shape are deleted."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        names = sorted(os.listdir(self.directory))
        files: dict[str, list[str]] = {}
        found: dict[str, _Found] = {}
        base = str(self.directory)
        _unnoted.pop(base, None)  # (logs of an earlier load: replaced by these)
        ends = self.ends.read()
        unverified = self.ends.damaged
        if unverified is None and not self.ends.found and self._ends_expected:
            unverified = f"{self.ends.path}: missing"
        # Older than the replication position saved after it (restored with older chunks,
        # or deleted with log-ends-kept): no line of it vouches for a log (chaos 19:48).
        mark = read_mark(self.directory.parent / POSITION_FILE)
        older = unverified is None and mark is not None and self.ends.high < mark
        if older:
            unverified = (
                f"{self.ends.path}: older than the saved replication position"
                f" (notes up to {self.ends.high:X}, the position's mark {mark:X})"
            )
        for name in names:
            path = f"{base}/{name}"
            if name.startswith(ENDS_NAME):  # (where an engine before kept it)
                _unlink(path)
                continue
            if name.endswith(SUFFIX):
                self._read_pack(path, found)
            elif os.path.isdir(path):  # a layout older than packs: not loaded
                logger.warning("deleting %s: shape directory of an older layout", path)
                shutil.rmtree(path, ignore_errors=True)
            else:
                files.setdefault(name.split(".", 1)[0], []).append(path)
        logs: list[ShapeLog] = []
        for handle, (pack, marker, offset, size, begun) in found.items():
            log = self.new_log(handle)
            own = files.pop(handle, [])
            try:
                log.restore_snapshot(marker, PackedChunk(pack, offset, size))
                log.load_transactions([p for p in own if ".log." in p], begun)
                end = None if older else ends.get(handle)
                if end is not None and log.check_end(end):
                    logger.warning("shape %s: %s", handle, log.damage)
                elif end is None and unverified is not None and log.unverified(unverified):
                    logger.warning("shape %s: %s", handle, log.damage)
            except (LogDamaged, OSError) as exc:
                logger.warning("discarding shape %s: %s", handle, exc)
                log.close()
                pack.live.discard(handle)
                _delete(own, pack.path, handle, not pack.live)
                continue
            if log.begin_unnoted:
                _unnoted.setdefault(base, set()).add(log)
            logs.append(log)
        for paths in files.values():  # snapshots that never finished, retired shapes
            for path in paths:
                _unlink(path)
        # One line per loaded shape (a lost end stays noted until its log is past it again),
        # and one for each cut whose fate the slot decides later (`ShapeLog.cut_end`): the
        # next load must find it cut again if this start ends before the slot is asked.
        kept: dict[str, tuple[int, int, int]] = {}
        for log in logs:
            end = log.cut_end() or ends.get(log.handle)
            if end is not None:
                kept[log.handle] = end
        self.ends.ends = kept
        try:
            self.ends.rewrite()
            self.ends.note_kept()
        except OSError as exc:  # (a full disk: rewritten at a later flush)
            logger.warning("%s: %s", self.ends.path, exc.strerror)
        return logs

    def _read_pack(self, path: str, found: dict[str, _Found]) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            # Unreadable (permissions, an I/O error): its shapes are discarded (their own
            # files with the other unfinished ones), not every shape of the source held
            # up. The file is left as it is.
            logger.warning("%s: %s; the shapes in it are discarded", path, exc.strerror)
            return
        contents, lost = _judge(path, data)
        if lost is not None:
            # It cannot say which of its shapes were retired (their `R` records may be what
            # was lost): none is loaded, their clients get 409 and refetch. Nothing is cut
            # first: the pack goes as a whole, then their own files with the unfinished
            # ones (a crash between leaves only files no pack names).
            handles = sorted({e.handle for e in contents.entries} - contents.retired)
            logger.warning(
                "%s: %s; every shape in it is discarded (%d readable: %s)",
                path,
                lost,
                len(handles),
                ", ".join(handles[:5]) + (", ..." if len(handles) > 5 else ""),
            )
            _unlink(path)
            if self.fsync:
                sync_directory(self._directory_text)
            return
        if contents.error is not None:
            # A torn tail past the last record written whole: an append a crash cut short,
            # whose record nothing was settled on. Cut it off: a shape retired later
            # appends its record at the end, where a scan stopped by the garbage would
            # never see it (the shape would come back on the next load).
            logger.warning("%s: %s, past its last whole record; cut there", path, contents.error)
            with open(path, "r+b") as f:
                f.truncate(contents.end)
                if self.fsync:
                    os.fsync(f.fileno())
        pack = Pack(path)
        for entry in contents.entries:
            if entry.handle not in contents.retired:
                pack.live.add(entry.handle)
                begun = entry.marker.get("log_from")
                if not isinstance(begun, int):
                    begun = (contents.begun or {}).get(entry.handle)
                found[entry.handle] = (pack, entry.marker, entry.offset, entry.size, begun)
        if not pack.live:
            _unlink(path)

    def cuts_replayed(self, handles: list[str]) -> None:
        """The slot sends again what these shapes' logs lost at load: the ends noted for
        their cuts (`ShapeLog.cut_end`) go, or a later start would cut them again, and
        retire them once the slot is past, though nothing of theirs was lost (a log the
        replay does not touch never grows past its noted end)."""
        for handle in handles:
            self.ends.forget(handle)
        try:
            self.ends.rewrite()
        except OSError as exc:  # (a full disk: at worst such a shape is retired later)
            logger.warning("%s: %s", self.ends.path, exc.strerror)

    def retire(self, log: ShapeLog) -> None:
        # Its noted end goes once the retirement is on disk (`settle`): a rewrite of the
        # file before that (the slot check's, a compaction) would drop a line that is the
        # only evidence of its cut, and a crash then loaded it again, unchecked (chaos
        # 19:48: killed right after the slot check's first retirement).
        self._forget.add(log.handle)
        retire(log)

    async def settle(self) -> None:
        """Wait until every retirement asked for so far is on disk (files deleted, packs
        marked), synced when `fsync`: before the engine does something that makes the
        retired shapes wrong to load again (a new replication slot, confirming the slot
        past what retired them). Also notes in its pack that a log began where the note
        failed (a full disk) and no append since wrote it (`_unnoted`). Raises
        `LogWriteError` while a pack cannot be marked (a full disk): the caller pauses as
        for any failed write, and tries again. The retired shapes' noted ends go after
        (`retire`)."""
        forget = set(self._forget)
        while _pending:
            await asyncio.gather(*list(_pending), return_exceptions=True)
        if _failed:
            await asyncio.to_thread(_retry_failed)
        unnoted = _unnoted.get(self._directory_text)
        while unnoted:
            log = next(iter(unnoted))
            if log.begin_unnoted:
                log.note_begun()  # (raises LogWriteError while the disk is full)
                if self.fsync and log.packed is not None:
                    _touched.add(log.packed.pack.path)
            unnoted.discard(log)
        if self.fsync and _touched:
            packs = list(_touched)
            _touched.clear()
            await asyncio.to_thread(_sync_packs, str(self.directory), packs)
        for handle in forget:
            self.ends.forget(handle)
        self._forget -= forget

    @property
    def unsettled(self) -> bool:
        """Whether a retirement, or a log's beginning, may not be on disk yet (see
        `settle`)."""
        return (
            bool(_pending)
            or bool(_failed)
            or bool(_unnoted.get(self._directory_text))
            or (self.fsync and bool(_touched))
            or bool(self._forget)
        )


def _judge(path: str, data: bytes) -> tuple[PackContents, str | None]:
    """The pack's contents, and what it lost if it cannot say which of its shapes were
    retired (None: every record it had is there, but maybe a torn tail past them).

    A pack damaged anywhere before where its last whole record ended (`noted_end`), or
    found shorter than that, may have lost the `R` records of shapes it holds before the
    damage: a scan only sees the records before it. A pack that does not note its end
    (an older engine, a filesystem without user attributes) with any bad record is taken
    as damaged too; one with none cannot be found cut short."""
    contents = scan_pack(data)
    noted = noted_end(path)
    if contents.error is not None:
        if noted is None or contents.end < noted:
            return contents, contents.error + (
                "" if noted is None else f", before its last record written whole ({noted})"
            )
    elif noted is not None and len(data) < noted:
        return contents, f"{len(data)} bytes, its records written whole ended at {noted}"
    return contents, None


def retire(log: ShapeLog) -> None:
    """Delete a retired shape's files and mark it retired in its pack (on the event loop;
    the file work runs in the default executor when a loop is running).

    Called again once the shape's pack is written (it was retired while its snapshot was
    being packed), it only marks it retired in the pack.
    """
    paths: list[str] = []
    if not log.retired:
        log.retired = True
        log.close()
        paths = log.own_files()
    pack_path, last = _leave_pack(log)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _delete(paths, pack_path, log.handle, last)
        return
    done = loop.run_in_executor(None, _delete, paths, pack_path, log.handle, last)
    _pending.add(done)
    done.add_done_callback(_pending.discard)


#: Retirements whose files are being deleted in the executor (`ShapeStore.settle`).
_pending: set[asyncio.Future[None]] = set()
#: Packs a retirement changed (deleted, or a record appended) and not synced since.
_touched: set[str] = set()
#: Logs that began and whose pack does not say so yet (`ShapeLog.begin_unnoted`: the note
#: failed on a full disk, with no append since to try it again; or found so on load), by
#: directory: noted by `ShapeStore.settle`, before the slot is confirmed further.
_unnoted: dict[str, set[ShapeLog]] = {}
#: Retirement records that could not be appended (a full disk), by pack: (handle, the
#: shape's own files, kept until the record is there), tried again by `ShapeStore.settle`.
_failed: dict[str, list[tuple[str, list[str]]]] = {}


def _retry_failed() -> None:
    for path, waiting in list(_failed.items()):
        while waiting:
            handle, paths = waiting[0]
            try:
                append_retired(path, handle)
            except OSError as exc:
                raise LogWriteError(exc.errno, f"marking a shape retired in {path}: {exc}") from exc
            waiting.pop(0)
            for own in paths:
                _unlink(own)
        del _failed[path]


def _sync_packs(directory: str, packs: list[str]) -> None:
    """fsync the packs (their retirement records) and the directory (its deletions)."""
    for path in packs:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        sync_directory(directory)
    except FileNotFoundError:
        pass


def _leave_pack(log: ShapeLog) -> tuple[str | None, bool]:
    """Take `log` out of its pack's live set: (the pack's path, whether it was the last)."""
    if log.packed is None:
        return None, False
    pack = log.packed.pack
    pack.live.discard(log.handle)
    return pack.path, not pack.live


def _delete(paths: list[str], pack_path: str | None, handle: str, last: bool) -> None:
    """Retire `handle` in its pack, then delete its own files: in that order, so that a
    crash between leaves a retired shape's files (deleted on load), never a shape its pack
    says is live whose log files are gone (it would load looking as if its log had not
    begun, and follow the stream without the changes it had). A record that cannot be
    appended keeps the files until `_retry_failed` appends it."""
    if pack_path is not None:
        _touched.add(pack_path)
        if last:
            _unlink(pack_path)
            for _, waiting in _failed.pop(pack_path, ()):
                paths = paths + waiting
        else:
            try:
                append_retired(pack_path, handle)
            except OSError:
                _failed.setdefault(pack_path, []).append((handle, paths))
                return
    for path in paths:
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(eq=False, slots=True)
class _Entry:
    log: ShapeLog
    count: int
    chunk: bytes
    offset: int = 0


class PackBuilder:
    """The snapshots of a batch that finished since the last pack, written as one pack.

    `add` on the event loop, `write` in a worker thread (one file, one fsync), then
    `publish` on the event loop makes the snapshots readable; nothing is visible before.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._path: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, log: ShapeLog, count: int, last: bytes, record: dict[str, object]) -> None:
        """`log`'s snapshot of `count` chunks, all but `last` already written."""
        if self._path is None:
            self._path = new_pack_path(str(log.directory))
            self._parts.append(MAGIC)
            self._size = len(MAGIC)
        inline = last if len(last) <= PACK_INLINE_MAX else b""
        rec, chunk_at = encode_shape(log.finish_snapshot(count, last, record), inline)
        self._entries.append(_Entry(log, count, last, self._size + chunk_at))
        self._parts.append(rec)
        self._size += len(rec)

    def write(self, fsync: bool) -> None:
        """Create the pack file (in a worker thread); raises OSError, leaving no file."""
        if self._path is None:
            return
        for e in self._entries:
            if len(e.chunk) > PACK_INLINE_MAX:
                e.log.write_snapshot_chunk(e.count - 1, e.chunk)
        write_new(self._path, b"".join(self._parts), fsync)

    def publish(self) -> list[ShapeLog]:
        """The pack is durable: its snapshots become readable. Returns the logs published
        (a shape retired meanwhile is marked retired in the pack instead)."""
        if self._path is None:
            return []
        pack = Pack(self._path, {e.log.handle for e in self._entries})
        published: list[ShapeLog] = []
        for e in self._entries:
            inline = len(e.chunk) if len(e.chunk) <= PACK_INLINE_MAX else 0
            e.log.packed_snapshot(e.count, PackedChunk(pack, e.offset, inline))
            if e.log.begin_unnoted:  # (its note failed: a full disk)
                _unnoted.setdefault(str(e.log.directory), set()).add(e.log)
            if e.log.retired:  # retired while the pack was written: leave it again
                retire(e.log)
                continue
            e.log.remember_snapshot_chunk(e.count - 1, e.chunk)
            published.append(e.log)
        self._parts = []
        return published


def count_on_disk(directory: Path) -> int:
    """How many shapes' snapshots finished in `directory` (read from its packs, for reports
    about a source that may not be running)."""
    count = 0
    for path in directory.glob(f"*{SUFFIX}"):
        with open(path, "rb") as f:
            contents, lost = _judge(str(path), f.read())
        if lost is None:
            count += len({e.handle for e in contents.entries} - contents.retired)
    return count

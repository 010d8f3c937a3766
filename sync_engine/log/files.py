"""A shape's log on disk: snapshot chunks, then transaction chunks, append-only.

One flat directory per shape (directory operations are what a storm of new shapes pays
for, so there are no subdirectories):

    snapshot.00000.json       snapshot chunks: JSON items joined by commas, no brackets, so a
                              response body is `[` + file + `]`
    snapshot.complete         written last: the number of snapshot chunks, the shape's
                              handle, definition and table description, and the xmin/xmax/
                              xip of its snapshot (one JSON object)
    log.00000000.log          transaction chunks: one line per entry, `<tx> <op> <last> <json>`

Finished chunks never change, which is what makes `(handle, offset)` responses immutable
and cacheable. A transaction's lines for one shape are written with a single `write()`, and
the `<last>` flag marks its final line, so a torn tail left by SIGKILL is cut back to the last
whole transaction on load; replication then replays it from the slot. A snapshot without its
`snapshot.complete` marker is discarded on load, so its chunks need no atomic rename.

Every file created costs an inode allocation, which is what a storm of new shapes waits on
(ext4 scans past recently deleted inodes): a new shape creates its directory, one chunk and
the marker. Directories written before the marker held the description (`meta.json`,
`snapshot.json`, a bare count in `snapshot.complete`) still load.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cachetools import LRUCache

from .offsets import SNAPSHOT_END, LogOffset

SNAPSHOT_COMPLETE = "snapshot.complete"

#: Snapshot chunks up to this size are kept in memory once written (see `_fresh`).
FRESH_CHUNK_MAX = 1 << 20

# Small snapshot chunks just written, by path: a new shape's first reader (usually waiting
# for it) is answered without reading the file back, from a thread, on a cold page. Only
# touched from the event loop; bounded in bytes.
_fresh: LRUCache[str, bytes] = LRUCache(maxsize=16 << 20, getsizeof=len)


@dataclass(slots=True)
class _Chunk:
    path: Path
    txs: list[int] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    size: int = 0

    @property
    def last_offset(self) -> LogOffset:
        return LogOffset(self.txs[-1], self.ops[-1])


class ShapeLog:
    """Append and read one shape's entries. All methods are synchronous file I/O.

    Appends and reads of the transaction log happen on the event loop thread (they are
    small); snapshot chunks are written by the snapshot thread, which only ever creates new
    files, so the two never touch the same file.
    """

    def __init__(self, directory: Path, chunk_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self._dir = str(directory)  # paths of snapshot files by string (pathlib is slower)
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self._chunks: list[_Chunk] = []
        self._dirty: set[Path] = set()
        self.snapshot_chunks = 0
        self.snapshot_complete = False
        self.last_lsn = 0
        # What the marker recorded besides the count (None for the older, count-only marker).
        self.marker: dict[str, Any] | None = None

    # -- creation and loading -------------------------------------------------------------

    def create(self) -> None:
        self.directory.mkdir(exist_ok=True)

    def load(self) -> None:
        """Rebuild the in-memory index from the files, cutting a torn tail."""
        done = self.directory / SNAPSHOT_COMPLETE
        text = done.read_bytes().strip() if done.exists() else b""
        if text.startswith(b"{"):
            self.marker = orjson.loads(text)
            self.snapshot_chunks = int(self.marker["chunks"])
            self.snapshot_complete = True
        elif text.isdigit():
            self.snapshot_chunks = int(text)
            self.snapshot_complete = True
        for path in sorted(self.directory.glob("log.*.log")):
            chunk = _Chunk(path)
            data = path.read_bytes()
            pos = 0
            good_end = 0
            good_count = 0
            while True:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break
                head = data[pos : pos + 64].split(b" ", 3)
                try:
                    tx, op, last = int(head[0]), int(head[1]), head[2] == b"1"
                except (ValueError, IndexError):
                    break
                chunk.txs.append(tx)
                chunk.ops.append(op)
                chunk.positions.append(pos)
                pos = nl + 1
                if last:
                    good_end = pos
                    good_count = len(chunk.txs)
            if good_end != len(data):
                with open(path, "r+b") as f:
                    f.truncate(good_end)
            del chunk.txs[good_count:], chunk.ops[good_count:], chunk.positions[good_count:]
            chunk.size = good_end
            if chunk.txs:
                self._chunks.append(chunk)
                self.last_lsn = chunk.txs[-1]
            else:
                path.unlink()

    # -- snapshot -------------------------------------------------------------------------

    def snapshot_chunk_path(self, index: int) -> Path:
        return self.directory / f"snapshot.{index:05d}.json"

    def _chunk_name(self, index: int) -> str:
        return f"{self._dir}/snapshot.{index:05d}.json"

    def write_snapshot_chunk(self, index: int, data: bytes) -> None:
        """Only creates a new file; the chunk is read only once it is announced."""
        self._write_file(self._chunk_name(index), data)

    def mark_snapshot_complete(self, count: int, record: dict[str, object]) -> None:
        """Durable marker only: the loop learns of completion through `on_chunk`.

        `record` (handle, definition, table, snapshot) is what loading the shape needs.
        """
        data = orjson.dumps({"chunks": count, **record})
        self._write_file(f"{self._dir}/{SNAPSHOT_COMPLETE}", data)

    def _write_file(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def read_snapshot_chunk(self, index: int) -> bytes:
        return self.snapshot_chunk_path(index).read_bytes()

    def remember_snapshot_chunk(self, index: int, data: bytes) -> None:
        """Keep a small chunk just written for `fresh_snapshot_chunk` (event loop only)."""
        if len(data) <= FRESH_CHUNK_MAX:
            _fresh[self._chunk_name(index)] = data

    def fresh_snapshot_chunk(self, index: int) -> bytes | None:
        """The chunk if it was written recently and is small, else None (read the file)."""
        return _fresh.get(self._chunk_name(index))

    # -- transactions ---------------------------------------------------------------------

    @property
    def latest_offset(self) -> LogOffset:
        if self._chunks:
            return self._chunks[-1].last_offset
        return SNAPSHOT_END

    def append_transaction(self, lsn: int, entries: list[tuple[int, bytes]]) -> None:
        """Append one transaction's entries `(op, json)` for this shape, in one write."""
        if not entries:
            return
        if not self._chunks or self._chunks[-1].size >= self.chunk_bytes:
            index = len(self._chunks)
            self._chunks.append(_Chunk(self.directory / f"log.{index:08d}.log"))
        chunk = self._chunks[-1]
        parts: list[bytes] = []
        pos = chunk.size
        last_i = len(entries) - 1
        prefix = str(lsn).encode()
        for i, (op, data) in enumerate(entries):
            line = b"%s %d %d %s\n" % (prefix, op, i == last_i, data)
            chunk.txs.append(lsn)
            chunk.ops.append(op)
            chunk.positions.append(pos)
            pos += len(line)
            parts.append(line)
        fd = os.open(chunk.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"".join(parts))
        finally:
            os.close(fd)
        chunk.size = pos
        self.last_lsn = lsn
        self._dirty.add(chunk.path)

    def take_dirty(self) -> set[Path]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def read_after(self, offset: LogOffset) -> tuple[list[bytes], LogOffset]:
        """Entries of the transactions after `offset`, up to the end of its chunk.

        Responses always end on a transaction boundary, so a real offset `<lsn>_<op>` that a
        client sends back always names the end of transaction `<lsn>`; reading is therefore
        by transaction (`tx > offset.tx`), which also makes the SSE resume offset
        `<lsn>_0` correct. Returns the entries and the offset the response ends at.
        """
        after_tx = 0 if offset.tx <= 0 else offset.tx
        chunks = self._chunks
        ci = 0
        if after_tx:
            lasts = [c.txs[-1] for c in chunks]
            ci = bisect.bisect_right(lasts, after_tx)
        if ci >= len(chunks):
            return [], self.latest_offset
        chunk = chunks[ci]
        i = bisect.bisect_right(chunk.txs, after_tx)
        if i >= len(chunk.txs):
            return [], self.latest_offset
        start = chunk.positions[i]
        with open(chunk.path, "rb") as f:
            f.seek(start)
            data = f.read(chunk.size - start)
        lines = data.split(b"\n")
        lines.pop()
        return [line.split(b" ", 3)[3] for line in lines], chunk.last_offset

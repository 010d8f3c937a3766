"""Whole-table snapshots: the table's blocks of pages as COPY lines, read by one backend or two.

A whole-table snapshot of a wide table is limited by Postgres's one backend rendering the
rows (jsonb rendered, then escaped again as a JSON string), while the engine needs a
fraction of that. So a big table is split between two backends that read under the same
snapshot:

- the batch's own backend reads the first `Split.head_pages` pages (`head`): a small table
  ends there, and the first chunk is served as before, whatever the table's size;
- meanwhile a second connection (`_Helper`) imports the batch's exported snapshot
  (`pg_export_snapshot()` / `SET TRANSACTION SNAPSHOT`: the same xmin, xmax and running
  xids, so the same rows, and the same snapshot the replication stream is stitched to) and
  reads the odd blocks past the head, while the batch's backend reads the even ones;
- lines are blocks (`BulkRows`, a block without rows is a NULL line), so taking one line
  from each in turn gives the blocks in the table's order: the chunks are byte for byte
  those of one backend reading the whole table. Reading in turn also bounds memory: a
  backend that runs ahead waits on its full socket.

The batch's transaction, which holds the exported snapshot, stays open until both are done
(its COMMIT is sent after the tail, `batch.batch_pieces`). When the second connection
cannot be had in time (`HELPER_WAIT`), the batch's backend reads the whole tail itself;
when it fails mid-way, the job fails (a transient error) rather than serve a partial table.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql
from psycopg.rows import TupleRow

from ..pg.waiter import SocketWaiter
from .heap import heap_kept
from .query import BULK_PAGES, ROW_SEP, BulkRows, RowQuery, json_from_raw

logger = logging.getLogger(__name__)

#: Pages read by the batch's backend alone before the table is split (8 MiB of heap).
SPLIT_PAGES = 1024
#: Seconds the tail waits for the second backend to have imported the snapshot.
HELPER_WAIT = 1.0
#: The tail's rows come full (Postgres writes the constant parts between them) when the
#: head's rows average this many times the constant parts: receiving them costs the engine
#: about 1.5x what putting them in costs (measured: 55-byte rows +35% engine CPU full,
#: 1,800-byte rows -40%).
FULL_ROWS = 2


@dataclass(frozen=True, slots=True)
class Split:
    """Where the second backend of a big whole-table snapshot connects, and after how many
    pages (a multiple of `BULK_PAGES`) the table is shared between the two backends."""

    dsn: str
    head_pages: int = SPLIT_PAGES

    def __post_init__(self) -> None:
        if self.head_pages <= 0 or self.head_pages % BULK_PAGES:
            raise ValueError(f"head_pages must be a positive multiple of {BULK_PAGES}")

    @property
    def head_blocks(self) -> int:
        return self.head_pages // BULK_PAGES


@dataclass(frozen=True, slots=True)
class Exported:
    """The batch's snapshot: as `pg_current_snapshot()` reads it, and its exported id."""

    current: str
    snapshot_id: str


def copy_sql(query: sql.Composable) -> sql.Composed:
    """`COPY` in the binary format: its one text field comes as it is, where the text format
    doubles every backslash (a wide row's JSON is full of them, `\\"` in each jsonb)."""
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)


def head_sql(bulk: BulkRows, split: Split | None) -> sql.Composed:
    """The first COPY of a whole-table snapshot, sent in the batch's query string."""
    if split is None:
        return copy_sql(bulk.lines_sql())
    return copy_sql(bulk.lines_sql(below=split.head_pages))


#: COPY's binary format: the signature, flags and header extension length (all zero),
#: at the start of the first line; each line then holds a field count and a length.
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_FIELD = struct.Struct(">hi")


class CopyLines:
    """The lines of one binary COPY of `BulkRows` lines, as they arrive.

    `next` gives a block's rows as `(line, start)` (`line[start:]` are the rows, compact
    or full), None for a block without rows, and None with `ended` set at the end.
    """

    def __init__(self, c: SocketWaiter) -> None:
        self.c = c
        self.ended = False
        self.count = 0  # lines so far, empty blocks included

    async def next(self) -> tuple[bytes, int] | None:
        get_copy_data = self.c.pgconn.get_copy_data
        while True:
            nbytes, data = get_copy_data(1)
            if nbytes > 0:
                break
            if nbytes < 0:
                self.ended = True
                return None
            await self.c.readable()
        line = data if isinstance(data, bytes) else bytes(data)  # bytes from the C binding
        at = len(_BINARY_HEADER) if line.startswith(_BINARY_HEADER) else 0
        fields, length = _FIELD.unpack_from(line, at) if nbytes >= at + 6 else (-1, -1)
        if fields == -1:  # the trailer (after the header, when there was no line)
            return await self.next()
        self.count += 1
        if fields != 1 or length < 0:  # a block without rows (NULL)
            return None
        return line, at + 6


class _Chunks:
    """Block lines into chunks cut by size, as one row per line would cut them.

    Whole lines go into the chunk while they fit; the line that crosses the chunk's size
    is split into its rows (C-level). The first chunk is cut at `first` bytes.
    """

    def __init__(
        self,
        query: RowQuery,
        raw: bool,
        put: Callable[[bytes], Awaitable[None]],
        size: int,
        first: int,
    ) -> None:
        self.query = query
        self.raw = raw  # lines are pre-images (`BulkRows.raw`)
        self.put = put
        self.chunk_bytes = size
        # Bytes an entry adds to its row in the line: its constant end and start, a comma.
        self.sep = query.row_sep
        self.per_row = len(self.sep)
        self.compact_rows = self.compact_bytes = 0  # compact lines so far (their rows' size)
        self.units: list[bytes | memoryview] = []
        self.size = 0
        self.limit = min(size, first)

    async def add(self, line: bytes, at: int, full: bool) -> None:
        if self.raw:
            line, at = json_from_raw(line[at:]), 0
        if full:
            seps = line.count(self.sep, at)
        else:
            seps = line.count(ROW_SEP, at)
            self.compact_rows += seps + 1
            self.compact_bytes += len(line) - at
            line, at = self.query.expand(line, at), 0
        # The entries' bytes and a comma each, as a row-by-row cut counts them, plus one per
        # separator: chunks are cut where they were cut when rows were one per line.
        grow = len(line) - at + self.per_row + seps
        if self.size + grow < self.limit:
            self.units.append(memoryview(line)[at:])
            self.size += grow
            return
        for row in line[at:].split(self.sep):
            self.units.append(row)
            self.size += len(row) + self.per_row
            if self.size >= self.limit:
                await self.put(self.query.finish_units(self.units))
                self.size, self.limit = 0, self.chunk_bytes

    def rest(self) -> bytes:
        """The last chunk's entries (joined by commas)."""
        return self.query.finish_units(self.units)


async def read_bulk(
    c: SocketWaiter,
    query: RowQuery,
    put: Callable[[bytes], Awaitable[None]],
    chunk_bytes: int,
    first_chunk: int,
    split: Split | None,
    exported: Exported | None,
) -> tuple[bytes, pq.abc.PGresult | None, BaseException | None]:
    """Read a whole-table snapshot whose head COPY (`head_sql`) is running on `c`.

    Full chunks go to `put`; returns the last chunk's entries, the final result of the
    last COPY on `c` (COMMAND_OK, or its error) and the second backend's error, if it
    failed mid-way (the rows are then incomplete: the job must fail).
    """
    with ExitStack() as kept:

        async def put_keeping(data: bytes) -> None:
            if not kept_heap:  # a table of more than one chunk: keep the heap (`heap.py`)
                kept.enter_context(heap_kept())
                kept_heap.append(True)
            await put(data)

        kept_heap: list[bool] = []
        return await _read_bulk(c, query, put_keeping, chunk_bytes, first_chunk, split, exported)


async def _read_bulk(
    c: SocketWaiter,
    query: RowQuery,
    put: Callable[[bytes], Awaitable[None]],
    chunk_bytes: int,
    first_chunk: int,
    split: Split | None,
    exported: Exported | None,
) -> tuple[bytes, pq.abc.PGresult | None, BaseException | None]:
    assert query.bulk is not None
    bulk = query.bulk.for_connection(c.pgconn)  # as `batch.batch_pieces` chose for the head
    chunks = _Chunks(query, bulk.raw, put, chunk_bytes, first_chunk)
    head = CopyLines(c)
    helper: _Helper | None = None
    try:
        start_at = max(1, split.head_blocks // 2) if split is not None else 0
        while (line := await head.next()) is not None or not head.ended:
            if line is not None:
                await chunks.add(*line, full=False)
            if split is not None and exported is not None and head.count == start_at:
                helper = _Helper(split, exported, bulk)  # connects while the head is read
        res = await c.result()
        if split is None or res is None or res.status != pq.ExecStatus.COMMAND_OK:
            return chunks.rest(), res, None
        await _end_of_string(c)  # the head ends its query string (`batch.batch_pieces`)
        if head.count < split.head_blocks:  # the table ends within the head
            return chunks.rest(), res, None
        rows = chunks.compact_rows
        full = rows > 0 and chunks.compact_bytes >= FULL_ROWS * chunks.per_row * rows
        theirs = await helper.lines(HELPER_WAIT, full) if helper is not None else None
        every = 1 if theirs is None else 2
        tail = bulk.lines_sql(split.head_blocks, every, children=False, full=full)
        c.pgconn.send_query(copy_sql(tail).as_bytes(None))
        await c.flush()
        res = await c.result()
        if res is None or res.status != pq.ExecStatus.COPY_OUT:
            return chunks.rest(), res, None
        if theirs is not None:
            logger.debug("the tail of %s read by two backends (full: %s)", bulk.relation, full)
        ours = CopyLines(c)
        sources = [ours] if theirs is None else [ours, theirs]
        turn = 0
        failed: BaseException | None = None
        while sources:
            src = sources[turn]
            if src is ours:
                line = await src.next()
            else:
                assert helper is not None
                try:
                    line = await src.next()
                    if src.ended:
                        await helper.finish()  # raises when its COPY failed: lines missing
                except (psycopg.Error, OSError) as exc:
                    failed = exc
                    break
            if src.ended:
                sources.pop(turn)
                turn = 0
                continue
            if line is not None:
                await chunks.add(*line, full=full)
            turn = (turn + 1) % len(sources)
        if failed is not None:
            logger.warning("the second backend of a whole-table snapshot failed: %s", failed)
            while not ours.ended:  # bring `c` to the end of its COPY
                await ours.next()
            return b"", await _tail_result(c), failed
        return chunks.rest(), await _tail_result(c), None
    finally:
        if helper is not None:
            await helper.close()


class _Helper:
    """The second backend: imports the batch's snapshot and reads the tail's odd blocks."""

    def __init__(self, split: Split, exported: Exported, bulk: BulkRows) -> None:
        self.split = split
        self.exported = exported
        self.bulk = bulk
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._c: SocketWaiter | None = None
        self._start = asyncio.ensure_future(self._begin())

    async def _begin(self) -> SocketWaiter:
        """Connect and import the snapshot."""
        conn = await psycopg.AsyncConnection.connect(
            self.split.dsn, autocommit=True, connect_timeout=10
        )
        self._conn = conn
        c = self._c = SocketWaiter(conn.pgconn)
        query = sql.SQL(";\n").join(
            [
                sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
                sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    sql.Literal(self.exported.snapshot_id)
                ),
                sql.SQL("SELECT pg_current_snapshot()::text, set_config('jit', 'off', true)"),
            ]
        )
        conn.pgconn.send_query(query.as_bytes(conn))
        await c.flush()
        for status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.COMMAND_OK):
            _expect(await c.result(), status)
        res = await c.result()
        _expect(res, pq.ExecStatus.TUPLES_OK)
        assert res is not None
        current = (res.get_value(0, 0) or b"").decode()
        if current != self.exported.current:  # never: the import is exact
            raise RuntimeError(f"imported snapshot {current} is not {self.exported.current}")
        await _end_of_string(c)
        return c

    async def lines(self, timeout: float, full: bool) -> CopyLines | None:
        """Start its COPY; its lines, or None when it is not running within `timeout`
        seconds (the batch's backend then reads the whole tail)."""
        try:
            async with asyncio.timeout(timeout):
                c = await asyncio.shield(self._start)
                tail = self.bulk.lines_sql(self.split.head_blocks + 1, 2, children=False, full=full)
                c.pgconn.send_query(
                    sql.SQL(";\n").join([copy_sql(tail), sql.SQL("COMMIT")]).as_bytes(None)
                )
                await c.flush()
                _expect(await c.result(), pq.ExecStatus.COPY_OUT)
                return CopyLines(c)
        except (TimeoutError, psycopg.Error, OSError, RuntimeError) as exc:
            logger.info("whole-table snapshot read by one backend: %s", exc or "timeout")
            return None

    async def finish(self) -> None:
        """After its last line: its COPY and transaction must have ended well."""
        c = self._c
        assert c is not None
        for status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.COMMAND_OK):  # COPY, COMMIT
            _expect(await c.result(), status)

    async def close(self) -> None:
        if not self._start.done():
            self._start.cancel()
        await asyncio.wait([self._start])
        if not self._start.cancelled():
            self._start.exception()  # retrieved: `lines` reported it, or it is not wanted
        if self._c is not None:
            self._c.unwatch()
        if self._conn is not None:
            await self._conn.close()


async def _end_of_string(c: SocketWaiter) -> None:
    """Read the end of a query string (libpq takes the next one only after it)."""
    if await c.result() is not None:
        raise psycopg.ProgrammingError("a result after the last statement of a string")


async def _tail_result(c: SocketWaiter) -> pq.abc.PGresult | None:
    """The tail COPY's final result, and the end of its string when it ended well."""
    res = await c.result()
    if res is not None and res.status == pq.ExecStatus.COMMAND_OK:
        await _end_of_string(c)
    return res


def _expect(res: pq.abc.PGresult | None, status: pq.ExecStatus) -> None:
    if res is None:
        raise psycopg.OperationalError("the second snapshot backend returned no result")
    if res.status != status:
        raise psycopg.errors.error_from_result(res, encoding="utf-8")

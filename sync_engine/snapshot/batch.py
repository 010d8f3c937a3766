"""Initial snapshots of several new shapes in one transaction, driven on the event loop.

A storm of new shapes is what this is for: per shape, the old way (a worker thread, a pooled
connection, `BEGIN`, `pg_current_snapshot()`, `COPY`, `COMMIT`) cost five round trips, two
thread hops and, worse, a GIL hand-over after every libpq wait and file write: the thread
waited up to a switch interval (5 ms) each time the event loop was busy, so snapshots
crawled exactly when many were wanted. Here one simple-protocol query carries a whole batch:

    BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT pg_current_snapshot()::text;
    COPY (<shape 1>) TO STDOUT; ...; COPY (<shape n>) TO STDOUT; COMMIT

and its results are read on the event loop from a non-blocking libpq connection (waits are
`add_reader` futures, rows are drained without awaiting per row). A whole-table shape ends
the string after its first pages (`bulk.py`: the rest of a big table is read by this backend
and a second one that imports the exported snapshot); what follows it, and the COMMIT, go
in the next string (`batch_pieces`). Every shape of a batch
shares the transaction's snapshot, which is correct: each was registered with the router
before the batch started, so its stream parks until that snapshot's xid horizon is known.

Long snapshots return to the loop at every socket read, and big chunk files (or any file
when fsync is on) are written in the default executor, so the loop keeps serving.

The files are the log's (`log/`): a snapshot's chunks but the last are files of their own,
and the last chunks with the completion markers of the shapes that finished together go
into one pack (`log/packs.py`), written in a worker thread: a storm's small shapes cost one
file per batch, not three each. A pack is written when the batch ends, when a big snapshot
fills a chunk, or once its first shape has waited `PACK_WAIT` (for Postgres's next rows, or
for the engine to read the rest of the batch).

When one shape's query fails (e.g. an error at run time in its where clause), Postgres skips
the rest of the string: the shapes before it are done, that one fails, the ones after it are
returned to be run again in a later batch.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import pq, sql
from psycopg.rows import TupleRow

from ..log.entries import snapshot_end_message
from ..log.store import PackBuilder
from ..pg.waiter import SocketWaiter
from ..pg.xid_snapshot import XidSnapshot
from .bulk import Exported, Split, head_sql, read_bulk

if TYPE_CHECKING:
    from ..log.files import ShapeLog
    from .query import RowQuery

#: A snapshot connection: autocommit, idle between batches (`scheduler.py` keeps them).
Connection = psycopg.AsyncConnection[TupleRow]

#: Chunk files at least this big are written in the executor, not on the loop.
BIG_WRITE = 1 << 20
#: Seconds a finished snapshot waits for more to share its pack while Postgres is busy.
PACK_WAIT = 0.02
#: Bytes of snapshot chunks being written (chunk files: `_write`) or taken into packs and
#: not yet written (`_Packer`), over every batch of the process: the reserve check of a
#: chunk counts them, as the disk's free space does not yet.
_UNWRITTEN = [0]


class SnapshotBehind(Exception):
    """The batch's snapshot misses a transaction the replication stream already delivered.

    Postgres sends a commit to the stream once its WAL record is written, a moment before
    the committing backend leaves the proc array; a snapshot taken in that moment does not
    see the transaction. Its changes went by before the new shape was registered, so they
    would be in neither the snapshot nor the shape's log (and after a TRUNCATE, which is not
    MVCC-safe, such a snapshot reads the new, empty table). The batch is abandoned before any
    row is kept and run again (`snapshots.SnapshotScheduler`).
    """


@dataclass(eq=False, slots=True)
class SnapshotJob:
    """One shape's part of a batch: where its chunks go and whom to tell."""

    log: ShapeLog
    query: RowQuery | None  # None for `log=changes_only`: only the snapshot-end
    on_snapshot: Callable[[XidSnapshot], None]  # the batch's snapshot, before any row
    on_chunk: Callable[[int, bool], None]  # chunks written so far, complete
    cancelled: Callable[[], bool]  # the shape was rotated: stop writing its files
    record: dict[str, object]  # written in the completion marker, with the snapshot
    #: Whether the disk has room for a chunk of so many bytes (`Source.snapshot_room`: the
    #: engine's reserve kept free); None: no check.
    room: Callable[[int], bool] | None = None
    error: BaseException | None = None
    done: bool = False
    #: `on_snapshot` was called: the shape's horizon is this batch's snapshot (its log may
    #: hold changes filtered by it, its clients chunks of it), so the job can never be run
    #: again under another snapshot; if it fails, its shape must be discarded.
    announced: bool = False


def is_bulk(job: SnapshotJob) -> bool:
    """Whether `job` is a whole-table snapshot (`bulk.py`)."""
    return job.query is not None and job.query.bulk is not None


def batch_pieces(
    jobs: Sequence[SnapshotJob],
    conn: Connection,
    split: Split | None = None,
    timeout_ms: int = 0,
) -> list[bytes]:
    """The batch's query strings: the first is sent at once, each next one once the
    whole-table snapshot that ends the one before is read.

    A whole-table snapshot (`bulk.read_bulk`) runs its head in the string and its tail
    after, so the statements behind it wait for the tail; the transaction (holding the
    snapshot a second backend imports) ends only after the last tail. Without one, the
    batch is one string.

    `timeout_ms` (0: none) is each statement's `statement_timeout` (Postgres times each
    statement of a string on its own): a where clause cheap to send can cost seconds per
    row. Whole-table snapshots come last in a batch (`SnapshotScheduler`), and the
    timeout is lifted before the first (`SET LOCAL statement_timeout = 0`, which
    `_read_results` expects): their cost is the table's size, which no client chooses.
    """
    bulk = any(is_bulk(job) for job in jobs)
    # (in the same column as the JIT's: the export, if any, stays the third)
    limit = f" || set_config('statement_timeout', '{int(timeout_ms)}', true)" if timeout_ms else ""
    parts = [
        b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        # JIT off for the transaction: a big table's estimated cost makes Postgres compile
        # and optimise the row expressions with LLVM before the first row (a 30-column
        # table: seconds, and a third more of Postgres's CPU in all than without).
        b"SELECT pg_current_snapshot()::text, set_config('jit', 'off', true)"
        + limit.encode()
        + (b", pg_export_snapshot()" if bulk and split is not None else b""),
    ]
    pieces: list[bytes] = []
    lifted = not timeout_ms
    for job in jobs:
        if job.query is None:
            continue
        if job.query.bulk is not None:
            if not lifted:
                parts.append(b"SET LOCAL statement_timeout = 0")
                lifted = True
            rows = job.query.bulk.for_connection(conn.pgconn)
            parts.append(head_sql(rows, split).as_bytes(conn))
            if split is not None:
                pieces.append(b";\n".join(parts))
                parts = []
        else:
            parts.append(sql.SQL("COPY ({}) TO STDOUT").format(job.query.sql).as_bytes(conn))
    parts.append(b"COMMIT")
    pieces.append(b";\n".join(parts))
    return pieces


def send_batch(
    conn: Connection,
    jobs: Sequence[SnapshotJob],
    split: Split | None = None,
    timeout_ms: int = 0,
) -> list[bytes]:
    """Queue the batch's query on `conn` without waiting (libpq sends what the socket takes);
    returns the batch's query strings (`batch_pieces`), for `run_batch`.

    Synchronous on purpose: a storm's requests are all handled in one pass of the event loop
    before any task started meanwhile runs, so batches are sent from that pass and Postgres
    works on them while the engine is still taking requests. `split`: as `run_batch`'s.
    """
    pieces = batch_pieces(jobs, conn, split, timeout_ms)
    conn.pgconn.send_query(pieces[0])
    return pieces


async def run_batch(
    conn: Connection,
    jobs: Sequence[SnapshotJob],
    chunk_bytes: int,
    fsync: bool,
    *,
    sent: bool = False,
    must_see: Sequence[int] = (),
    split: Split | None = None,
    pieces: list[bytes] | None = None,
    timeout_ms: int = 0,
) -> list[SnapshotJob]:
    """Snapshot `jobs` in one transaction on `conn` (an idle autocommit connection).

    `sent`: `send_batch` already queued the query (with the same `split`; `pieces`: what it
    returned, so the strings are not composed twice). `split`: big
    whole-table snapshots are read by two backends (see `bulk.py`); None: by this one.
    `must_see`: xids of transactions the replication stream delivered before the query was
    sent; raises `SnapshotBehind` (before any job hears of the snapshot) when the snapshot
    does not see one of them, leaving the connection mid-query (the caller closes it).
    Marks each job `done` or sets its `error`; returns the jobs that did not run because
    an earlier one failed (to be retried). Raises when the connection itself fails, in
    which case every job not `done` is to be retried or failed by the caller.
    """
    c = SocketWaiter(conn.pgconn)
    if pieces is None:
        pieces = batch_pieces(jobs, conn, split, timeout_ms)
    if not sent:
        conn.pgconn.send_query(pieces[0])
    try:
        await c.flush()
        packer = _Packer(fsync)
        try:
            return await _read_results(
                c, jobs, chunk_bytes, fsync, must_see, packer, pieces, split, bool(timeout_ms)
            )
        finally:
            await packer.close()
    finally:
        c.unwatch()


async def _read_results(
    c: SocketWaiter,
    jobs: Sequence[SnapshotJob],
    chunk_bytes: int,
    fsync: bool,
    must_see: Sequence[int],
    packer: _Packer,
    pieces: list[bytes],
    split: Split | None,
    limited: bool,
) -> list[SnapshotJob]:
    # One result per statement, then None once the whole string is done.
    _expect(await c.result(), pq.ExecStatus.COMMAND_OK)  # BEGIN
    res = await c.result()
    _expect(res, pq.ExecStatus.TUPLES_OK)
    assert res is not None
    current = (res.get_value(0, 0) or b"").decode()
    snapshot = XidSnapshot.parse(current)
    exported = None
    if res.nfields > 2:
        exported = Exported(current, (res.get_value(0, 2) or b"").decode())
    if must_see:
        unseen = snapshot.invisible(must_see)
        if unseen:
            raise SnapshotBehind(f"snapshot {snapshot} does not see delivered xids {unseen}")
    end = snapshot_end_message(snapshot)
    record = snapshot.to_json()
    sent = 1
    for i, job in enumerate(jobs):
        if job.query is None:
            _announce(job, snapshot, record)
            packer.add(job, 1, end)
            continue
        if limited and job.query.bulk is not None:  # (`batch_pieces`: the limit lifted)
            limited = False
            res = await c.result()
            if res is None or res.status != pq.ExecStatus.COMMAND_OK:
                job.error = _error(res)
                await _rollback(c)
                return _not_run(jobs[i + 1 :])
        res = await c.result()
        if res is not None and res.status == pq.ExecStatus.COPY_OUT:
            # Each job hears of the snapshot as its rows start, not before: a job after a
            # failed one (not run, so retried in another batch) must not have its horizon
            # set (and changes filtered by it) by a snapshot it does not get the rows of.
            _announce(job, snapshot, record)
            index, tail, res = await _copy(c, job, chunk_bytes, fsync, packer, split, exported)
            if res is not None and res.status == pq.ExecStatus.COMMAND_OK:
                packer.add(job, index + 1, tail + b"," + end if tail else end)
                if job.query.bulk is not None and sent < len(pieces):
                    c.pgconn.send_query(pieces[sent])  # what follows its tail
                    sent += 1
                    await c.flush()
                continue
        job.error = _error(res)
        await _rollback(c)
        return _not_run(jobs[i + 1 :])
    _expect(await c.result(), pq.ExecStatus.COMMAND_OK)  # COMMIT
    error = await c.drain()
    if error is not None:
        raise _error(error)
    return []


def _announce(job: SnapshotJob, snapshot: XidSnapshot, record: dict[str, object]) -> None:
    job.announced = True
    job.on_snapshot(snapshot)
    job.record["snapshot"] = record


#: Rows joined into one block as they arrive (see `_copy`).
ROW_GROUP = 256
#: The first chunk of a snapshot is cut at this size (or `chunk_bytes` if smaller): a
#: client's first byte must not wait for 10 MB of rows, however wide they are.
FIRST_CHUNK = 1 << 20


async def _copy(
    c: SocketWaiter,
    job: SnapshotJob,
    chunk_bytes: int,
    fsync: bool,
    packer: _Packer,
    split: Split | None,
    exported: Exported | None,
) -> tuple[int, bytes, pq.abc.PGresult | None]:
    """Read one shape's rows into chunk files; returns (chunks written, the last chunk's
    entries, the final result of its last COPY).

    A full chunk is written (and announced) by a task while the next one is read, so
    Postgres is not left waiting on a full socket while the engine writes; at most
    `WRITES_IN_FLIGHT` writes at a time, so about three chunks are in memory.
    """
    query = job.query
    assert query is not None
    writer = _ChunkWriter(job, fsync)
    try:
        if query.bulk is not None:
            packer.flush()  # a whole table: likely big, the small ones before need not wait
            tail, res, failed = await read_bulk(
                c, query, writer.put, chunk_bytes, FIRST_CHUNK, split, exported
            )
            if failed is not None and job.error is None:
                job.error = failed  # rows are missing: the shape must not complete
        else:
            tail = await _copy_rows(c, query, writer, chunk_bytes, packer)
            res = await c.result()
        await writer.drain()
    finally:
        writer.cancel()
    return writer.count, tail, res


async def _copy_rows(
    c: SocketWaiter, query: RowQuery, writer: _ChunkWriter, chunk_bytes: int, packer: _Packer
) -> bytes:
    """One COPY line per row (a shape with a where clause, order or limit).

    The inner loop is the per-row cost of every such snapshot (libpq hands COPY data one
    row at a time), so it does little else: libpq's buffer is drained until it is empty
    or a chunk is full. Rows are joined into blocks of `ROW_GROUP` as they come: holding a
    chunk's 60,000 row objects until the chunk is full cost four times the reading itself
    (fresh memory for each chunk, released again after it), while short-lived rows reuse
    the same few blocks of memory. Waiting for the socket returns to the event loop, so
    other work interleaves with a long snapshot at least once per socket read.
    """
    get_copy_data = c.pgconn.get_copy_data
    overhead = query.line_overhead()
    rows: list[bytes | memoryview] = []  # bytes from psycopg's C libpq binding
    append = rows.append
    blocks: list[bytes] = []
    size = 0
    limit = min(chunk_bytes, FIRST_CHUNK)
    while True:
        nbytes, data = get_copy_data(1)
        while nbytes > 0:
            append(data)
            size += nbytes + overhead
            if size >= limit:
                break
            if len(rows) >= ROW_GROUP:
                blocks.append(b"".join(rows))
                rows.clear()
            nbytes, data = get_copy_data(1)
        if nbytes > 0:  # a chunk is full
            packer.flush()  # a big snapshot: the small ones before it need not wait
            blocks.append(b"".join(rows))
            rows.clear()
            await writer.put(query.finish_block(blocks))
            blocks = []
            size, limit = 0, chunk_bytes
        elif nbytes == 0:
            if packer.due():
                packer.flush()
            await c.readable()
        else:
            break
    blocks.append(b"".join(rows))
    return query.finish_block(blocks)


#: Chunk files of one snapshot written at once, each in a worker thread. Two, because one
#: writer was the cold sync's critical path when new page cache is dear: on this VM a page
#: the host took back costs ~10 µs to fill (`new_page_cost` in benchmarks/initial_sync.py),
#: 25 ms and more per 10 MiB chunk, while the event loop reads a chunk in ~12 ms; the loop
#: then waited on the previous chunk's write for about half of a 10M-row cold sync (12-05,
#: load 10-12: 9.6-16.9 s of 20-32 s). A second write in flight lets the other core share
#: that kernel work; announcements stay in order.
WRITES_IN_FLIGHT = 2


class _ChunkWriter:
    """Writes a job's full chunks, up to `WRITES_IN_FLIGHT` at once while the next ones are
    read, each by a task; a chunk is announced only once it and every chunk before it are
    written."""

    def __init__(self, job: SnapshotJob, fsync: bool) -> None:
        self.job = job
        self.fsync = fsync
        self.count = 0  # chunks handed over
        self._tasks: deque[asyncio.Task[None]] = deque()  # oldest first

    async def put(self, data: bytes) -> None:
        while len(self._tasks) >= WRITES_IN_FLIGHT:
            await self._tasks.popleft()
        before = self._tasks[-1] if self._tasks else None
        self._tasks.append(asyncio.ensure_future(self._write(self.count, data, before)))
        self.count += 1

    async def _write(self, index: int, data: bytes, before: asyncio.Task[None] | None) -> None:
        job = self.job
        await _write(job, index, data, self.fsync)
        if before is not None:  # announced in order: not before the chunks ahead of it
            await asyncio.wait([before])
            if before.cancelled() or before.exception() is not None:
                return  # (raised to the reader by `put` or `drain`)
        if job.error is None and not job.cancelled():
            job.on_chunk(index + 1, False)

    async def drain(self) -> None:
        """Wait for the chunks being written (a failed write is in `job.error`)."""
        while self._tasks:
            await self._tasks.popleft()

    def cancel(self) -> None:
        """The COPY failed: the writes in progress are not awaited (its shape is discarded)."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()


class _Packer:
    """The batch's finished snapshots on their way into packs (`log.store.PackBuilder`).

    A job is `done`, and its shape hears that its snapshot is complete, only once the pack
    holding its last chunk is written (and fsynced, with `fsync`).
    """

    def __init__(self, fsync: bool) -> None:
        self.fsync = fsync
        self.loop = asyncio.get_running_loop()
        self._builder = PackBuilder()
        self._jobs: list[tuple[SnapshotJob, int]] = []
        self._since = 0.0
        self._writing: set[asyncio.Task[None]] = set()
        self._bytes = 0  # (of the jobs pending: counted in `_UNWRITTEN` until written)

    def add(self, job: SnapshotJob, count: int, last: bytes) -> None:
        """`job`'s snapshot of `count` chunks is read; `last` is its last chunk.

        Refused as a chunk file is (`_write`) when it would take the disk below the
        engine's reserve, counting the last chunks of every pack not yet written: a burst
        of new shapes of one chunk each (most `where` shapes) was checked only as each
        request came, and filled the disk past the reserve (soak 14:20)."""
        if job.error is not None or job.cancelled():
            return
        if job.room is not None and not job.room(_UNWRITTEN[0] + len(last)):
            job.error = OSError(errno.ENOSPC, "No space left on device (the engine's reserve)")
            return
        _UNWRITTEN[0] += len(last)
        self._bytes += len(last)
        if not self._jobs:
            self._since = self.loop.time()
        self._builder.add(job.log, count, last, job.record)
        self._jobs.append((job, count))
        if self.due():  # the engine is busy reading: the first ones have waited enough
            self.flush()

    def due(self) -> bool:
        return bool(self._jobs) and self.loop.time() - self._since >= PACK_WAIT

    def flush(self) -> None:
        """Start writing what is pending as one pack (in a worker thread)."""
        if not self._jobs:
            return
        builder, jobs, size = self._builder, self._jobs, self._bytes
        self._builder, self._jobs, self._bytes = PackBuilder(), [], 0
        task = self.loop.create_task(self._write(builder, jobs, size))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(
        self, builder: PackBuilder, jobs: list[tuple[SnapshotJob, int]], size: int
    ) -> None:
        try:
            await asyncio.to_thread(builder.write, self.fsync)
        except OSError as exc:
            for job, _ in jobs:
                job.error = exc
            return
        finally:
            _UNWRITTEN[0] -= size
        builder.publish()
        for job, count in jobs:
            if not job.cancelled():
                job.done = True
                job.on_chunk(count, True)

    async def close(self) -> None:
        """Write what is pending and wait for every pack of the batch."""
        self.flush()
        while self._writing:
            await asyncio.gather(*self._writing)


async def _write(job: SnapshotJob, index: int, data: bytes, fsync: bool) -> None:
    """Write a chunk file unless the job failed or its shape is gone (rows are still read)."""
    if job.error is not None or job.cancelled():
        return
    if job.room is not None and not job.room(_UNWRITTEN[0] + len(data)):
        # (failed as a full disk's: a 503 disk_full, new snapshots held back a while)
        job.error = OSError(errno.ENOSPC, "No space left on device (the engine's reserve)")
        return
    # Counted until written, as a pack's last chunks are: each file of several snapshots
    # written at once was checked against the disk's free space without the others, and a
    # burst went past the reserve by about a chunk per snapshot being written.
    _UNWRITTEN[0] += len(data)
    try:
        if fsync or len(data) >= BIG_WRITE:
            await asyncio.to_thread(job.log.write_snapshot_chunk, index, data)
        else:
            job.log.write_snapshot_chunk(index, data)
    except OSError as exc:
        job.error = exc
        return
    finally:
        _UNWRITTEN[0] -= len(data)
    job.log.remember_snapshot_chunk(index, data)


async def _rollback(c: SocketWaiter) -> None:
    await c.drain()
    if c.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        c.pgconn.send_query(b"ROLLBACK")
        await c.flush()
        await c.drain()


def _not_run(jobs: Sequence[SnapshotJob]) -> list[SnapshotJob]:
    return [j for j in jobs if not j.done and j.error is None]


def _expect(res: pq.abc.PGresult | None, status: pq.ExecStatus) -> None:
    if res is None or res.status != status:
        raise _error(res)


def _error(res: pq.abc.PGresult | None) -> psycopg.Error:
    if res is None:
        return psycopg.OperationalError("the snapshot query returned no result")
    return psycopg.errors.error_from_result(res, encoding="utf-8")

"""Subset snapshots (`subset__*` params or a POST body): a one-off query inside the shape.

The rows come from one REPEATABLE READ transaction whose snapshot is returned as metadata, so
the client can drop live changes it already saw in the subset. The subset's `where` is parsed
and checked like the shape's (enums allowed, no subqueries) and ANDed with it; ORDER BY is
limited to plain columns; LIMIT/OFFSET are integers rendered as literals.

The query runs on a pooled connection in a thread of the source's own executor
(`Source.subset_executor`, as many threads as the pool has connections), never in the event
loop's default executor: that one's few threads (CPUs + 4) are shared by every source's
fsync, snapshot chunk writes and secret checks, and a few subset queries of one source
waiting on a lock held them all and stalled replication of every source. While it has not
answered, the request asks every `SUBSET_QUIET` seconds whether Postgres answers at all
(`Source.database_answers`): a silent one (stopped, behind a partition) gets the request a
503, and the query's socket is shut down so that its thread is freed (threads stuck there
would leave this source's subset queries none); a slow query on a live database is waited
for.

The answer is written as the rows arrive (`Spool`): each row's message, as the response will
carry it, is appended to a buffer that spills into an unlinked file in the source's data
directory past `SPOOL_MEMORY` bytes; the rows come from Postgres `STREAM_ROWS` at a time
(`Cursor.stream`: the same single statement, bounded by --snapshot-timeout, not a cursor
whose FETCHes are each). The query was `fetchall()`ed and every row parsed, marked and the
whole body serialized on the event loop: a 20 MB answer held ~65 MB until its client read it,
and 40 clients that did not read took the engine to 4 GB, never given back. The response is
sent only once the query has ended (so its status still says how it ended, and its
Content-Length is the whole body's), from the file, at the client's pace. All the answers
held at once, in memory or spooled, are bounded by `BUDGET.limit` bytes (`SPOOL_BUDGET` unless
`set_spool_budget` says otherwise): past it a subset is a 503 with Retry-After (a 400 if its
answer alone passes it: no retry could help).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import select
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import pq, sql
from psycopg_pool import ConnectionPool

from ..errors import EngineError, InvalidRequest, ServiceUnavailable
from ..pg.xid_snapshot import XidSnapshot
from ..shapes.definition import SubsetParams
from ..shapes.parse_thread import PARSE_IN_THREAD, parse_off_loop
from ..shapes.where import WhereError, guarded_and, parse_order_by, parse_where
from ..shapes.where.clause import full_parse
from ..tables import not_answering, stopping
from . import errors as snapshot_errors
from .query import RowQuery, row_json_sql

if TYPE_CHECKING:
    from ..pg.catalog import ColumnInfo, TableInfo
    from ..shapes.shape import Shape
    from ..source import Source


@dataclass(frozen=True, slots=True)
class SubsetQuery:
    """The subset's validated pieces; the SQL is built once the shape is known."""

    where_sql: str | None
    order_by: str | None
    limit: int | None
    offset: int | None


def build_subset_query(
    columns: Sequence[ColumnInfo], sub: SubsetParams, *, templates: bool = True
) -> SubsetQuery:
    """Validate the subset against `columns` (raises InvalidRequest): every column of the
    shape's table, as Electric, which names one missing in the table "unknown reference".
    `templates=False` parses the long way (`full_parse`: the same answer), without the
    where templates' cache, which only the event loop may touch."""
    cols = {c.name: c for c in columns}
    where_sql = None
    if sub.where:
        parse = parse_where if templates else full_parse
        try:
            where_sql = parse(sub.where, dict(sub.params), cols, allow_enums=True, live=False).sql
        except WhereError as e:
            raise InvalidRequest({"subset": {"where": [str(e)]}}) from None
    order = None
    if sub.order_by:
        try:
            order = parse_order_by(sub.order_by, cols)
        except WhereError as e:
            raise InvalidRequest({"subset": {"order_by": [str(e)]}}) from None
    return SubsetQuery(where_sql, order, sub.limit, sub.offset)


async def parse_subset(columns: Sequence[ColumnInfo], sub: SubsetParams) -> SubsetQuery:
    """`build_subset_query`, a long clause (where, order_by and params together) parsed in
    the parse thread (`parse_thread`): a 63 KB clause took the event loop 0.5-1.1 s, and
    8-16 of them in flight held every other client of the engine for seconds (attack)."""
    size = len(sub.where or "") + len(sub.order_by or "")
    size += sum(len(k) + len(v) for k, v in sub.params.items())
    if size < PARSE_IN_THREAD:
        return build_subset_query(columns, sub)
    return await parse_off_loop(
        functools.partial(build_subset_query, columns, sub, templates=False)
    )


def within_shape(shape_where: str | None, subset_where: str | None) -> str | None:
    """The shape's where AND the subset's, the subset's evaluated only for rows the shape
    holds (`guarded_and`): behind an auth proxy the shape's where holds the policy's filter,
    and a subset clause failing on a row outside it would tell the caller that row exists."""
    if shape_where and subset_where:
        return guarded_and(shape_where, subset_where)
    return shape_where or subset_where


def within_shape_as_planned(table: TableInfo, shape_where: str, subset_where: str) -> str:
    """`within_shape` whose guard reads the shape's where as a WHERE of its own, which
    Postgres's planner simplifies as it does the shape's snapshot: `(X AND b) OR b` is `b`
    there, X never evaluated, where `within_shape`'s guard evaluates it as an expression
    (X first) and fails on a row whose X fails though the snapshot and `(shape) AND
    (subset)` answer. The guard is `EXISTS (SELECT FROM (SELECT <the row's columns> OFFSET
    0) AS shape_row WHERE <shape's where>)`: in that WHERE the columns are the derived
    table's own (not outer references, which Postgres types differently in an IN list with
    constants, seed 48021), OFFSET 0 keeps the planner from merging it into the query.
    The subset's clause is read the same way, as a WHERE of that one row: there a NULL
    conjunct ends the row's evaluation as false does, and a conjunct the planner makes a
    constant NULL or false makes the whole clause false unevaluated, where the plain guard
    evaluates the clause as an expression. `100 < ANY(ia) AND f4 * 1.1::float4 > 0` failed
    on a row whose ANY is NULL and `(d - d) NOT IN (i4, NULL, i2)` on an infinite date,
    though `(shape) AND (subset)` and a WHERE of each row of the shape answer (live fuzz
    subset arm, seeds 75037 and 75034).
    It costs two sub-plans per row the shape holds (~0.5 us each), so `run_subset` asks for
    it only when the plain guard's query failed on a value (SQLSTATE class 22)."""
    columns = ", ".join('"' + c.name.replace('"', '""') + '"' for c in table.columns)
    row = f"(SELECT {columns} OFFSET 0) AS shape_row"
    guard = f"EXISTS (SELECT FROM {row} WHERE {shape_where})"
    subset = f"EXISTS (SELECT FROM {row} WHERE {subset_where})"
    return f"({shape_where}) AND COALESCE(NULLIF({guard}, true), {subset})"


def _query(
    shape: Shape, subset: SubsetQuery, *, as_planned: bool = False
) -> tuple[RowQuery, sql.Composed]:
    shape_where = shape.where.sql if shape.where else None
    if as_planned and shape_where and subset.where_sql:
        where_sql: str | None = within_shape_as_planned(shape.table, shape_where, subset.where_sql)
    else:
        where_sql = within_shape(shape_where, subset.where_sql)
    rows = row_json_sql(
        shape.table,
        shape.columns,
        shape.pk,
        where_sql,
        order_by=subset.order_by,
        limit=subset.limit,
        offset=subset.offset,
    )
    return rows, rows.sql


#: Seconds a subset query runs before the request asks whether Postgres answers at all
#: (and again every as many).
SUBSET_QUIET = 2.0
#: Seconds the request to cancel an abandoned subset query in Postgres may take.
CANCEL_WAIT = 10.0


class _Running:
    """The connection a subset query runs on, while it runs: `abandon` shuts its socket
    down (from the event loop), so that the thread waiting on it gets an error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self.abandoned = False

    def running(self, conn: psycopg.Connection[Any] | None) -> None:
        with self._lock:
            self._conn = conn
            if conn is not None and self.abandoned:
                self._shut(conn)

    def abandon(self, *, cancel: bool = False) -> None:
        """Shut the running query's socket; with `cancel`, also ask Postgres to cancel the
        query (a database that answers: the client went away). A backend waiting on a lock
        or sorting sends nothing, so it notices a closed socket only when it next writes
        (or with `client_connection_check_interval`, which the engine does not set): the
        query ran on to its end, or to --snapshot-timeout, holding the backend. The cancel
        key is taken before the socket is shut (libpq's, no I/O) and sent from a thread of
        its own, never the event loop's (it connects to Postgres), without blocking and
        within `CANCEL_WAIT`: libpq's blocking PQcancel holds the GIL while it waits, and a
        Postgres that accepts the connection and answers nothing (stopped, SIGSTOP) froze
        every thread of the engine with it, for ever (even its stop)."""
        with self._lock:
            self.abandoned = True
            if self._conn is None:
                return
            if cancel and psycopg.capabilities.has_cancel_safe():  # (libpq 17+)
                try:
                    request: pq.abc.PGcancelConn | None = self._conn.pgconn.cancel_conn()
                except psycopg.Error:
                    request = None
                if request is not None:
                    threading.Thread(
                        target=_send_cancel, args=(request,), name="subset-cancel", daemon=True
                    ).start()
            self._shut(self._conn)

    @staticmethod
    def _shut(conn: psycopg.Connection[Any]) -> None:
        try:
            dup = os.dup(conn.pgconn.socket)
        except (OSError, psycopg.Error):
            return
        with socket.socket(fileno=dup) as sock:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _send_cancel(request: pq.abc.PGcancelConn) -> None:
    """Send the cancel request (a connection of its own to Postgres), non-blocking, giving up
    after `CANCEL_WAIT` seconds; a failure changes nothing, the socket being shut already
    ends the backend when it next writes."""
    deadline = time.monotonic() + CANCEL_WAIT
    try:
        request.start()
        while (status := request.poll()) in (pq.PollingStatus.READING, pq.PollingStatus.WRITING):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock = request.socket
            if status == pq.PollingStatus.READING:
                select.select([sock], [], [], left)
            else:
                select.select([], [sock], [], left)
    except (psycopg.Error, OSError, ValueError):
        pass
    finally:
        request.finish()


#: Rows Postgres sends per batch of a subset query's stream.
STREAM_ROWS = 500

#: Bytes of a subset's answer kept in memory; past them it spills into a file.
SPOOL_MEMORY = 64 * 1024

#: Bytes of subset answers the process holds at once (in memory or spooled to disk), from
#: the first row of each to the end of its response, unless the engine is told otherwise
#: (`set_spool_budget`, from `Settings.subset_spool_budget`): past them a subset is a 503.
SPOOL_BUDGET = 1 << 30


class _Budget:
    """The bytes all subset answers hold, up to `limit`, counted from the threads that
    write them and the event loop that frees them. One per process: every source's subsets
    spend the same memory and disk."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self.held = 0
        self.limit = limit

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


BUDGET = _Budget(SPOOL_BUDGET)


def set_spool_budget(limit: int) -> None:
    """The bytes all subset answers may hold at once (the engine's `--subset-spool-budget`):
    a deployment with little disk or memory lowers it, one serving large subsets raises it.
    Answers already held keep their bytes; only new ones are measured against `limit`."""
    if limit < 1:
        raise ValueError("the subset spool budget must be a positive number of bytes")
    BUDGET.limit = limit


class OverBudget(Exception):
    """The subset answers held at once would pass the budget (`BUDGET.limit`); `alone`:
    this answer alone would (no retry can help)."""

    def __init__(self, *, alone: bool) -> None:
        super().__init__()
        self.alone = alone


#: `os.write`, for the spool's file (a test makes the disk full here).
_write = os.write


class Spool:
    """A subset's answer as it is written: its messages joined by commas (the JSON array's
    inside), in memory up to `SPOOL_MEMORY` bytes, then in an unlinked file of `directory`
    (its space is the file system's again once it is closed, or the process ends). Should
    the disk refuse (full), the rest stays in memory (`tail`): a subset needs no disk, and
    answered before spools; the budget still bounds it. Every byte is counted in `BUDGET`
    until `close`."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._buffer = bytearray()
        self._file: Any = None  # (a tempfile.TemporaryFile once spilled)
        self.file_size = 0  # (bytes in the file)
        self.tail: list[bytes] = []  # (after the file's bytes, once the disk refused)
        self._disk_refused = False
        self.size = 0  # (bytes written so far, in all)
        self._count = 0
        self._closed = False

    def add(self, item: bytes) -> None:
        """Append one message (raises OverBudget)."""
        if self._count:
            item = b"," + item
        if self.size + len(item) > BUDGET.limit:
            raise OverBudget(alone=True)
        if not BUDGET.take(len(item)):
            raise OverBudget(alone=False)
        self.size += len(item)
        self._count += 1
        if self._disk_refused:
            self.tail.append(item)
            return
        self._buffer += item
        if len(self._buffer) > SPOOL_MEMORY:
            self._spill()

    def _spill(self) -> None:
        """The buffer to the file; what the disk refuses stays in memory (`tail`)."""
        data = bytes(self._buffer)
        self._buffer = bytearray()
        done = 0
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self._directory, buffering=0)
            fd = self._file.fileno()
            while done < len(data):
                done += _write(fd, data[done:])
        except OSError:
            self._disk_refused = True
            self.tail.append(data[done:])
        self.file_size += done

    def finish(self) -> None:
        """All written: the buffer goes to the file if there is one."""
        if self._file is not None and self._buffer:
            self._spill()

    @property
    def in_memory(self) -> bytes | None:
        """The whole answer, when none of it is in a file (else None: read `fileno`,
        `file_size` bytes, then `tail`)."""
        if self.file_size:
            return None
        return bytes(self._buffer) + b"".join(self.tail)

    def fileno(self) -> int:
        assert self._file is not None
        return int(self._file.fileno())

    def close(self) -> None:
        """Free its bytes (memory, file, budget); idempotent."""
        if self._closed:
            return
        self._closed = True
        BUDGET.give(self.size)
        self._buffer = bytearray()
        self.tail = []
        if self._file is not None:
            self._file.close()


def _run(
    pool: ConnectionPool[Any],
    rows_query: RowQuery,
    query: sql.Composed,
    running: _Running,
    spool: Spool,
    mark: int,
) -> tuple[str, int]:
    """Run the query, each row's message (marked with `mark`) written to `spool`: as the
    response will carry it, `orjson` normalizing the JSON Postgres built."""
    with pool.connection() as conn:
        running.running(conn)
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # JIT off for the transaction, as for shape snapshots (`batch.py`): a long where
            # has a high estimated cost, and Postgres compiled it with LLVM before the first
            # row (5,000 ORs on 10,000 rows: 4.7 s of the query's 6.8 s; 0.8 s without).
            row = conn.execute(
                "SELECT pg_current_snapshot()::text, (pg_current_wal_lsn() - '0/0')::bigint,"
                " set_config('jit', 'off', true)"
            ).fetchone()
            assert row is not None
            with conn.cursor() as cur:
                for k, v in cur.stream(query, size=STREAM_ROWS):
                    msg = orjson.loads(rows_query.assemble(str(k).encode(), str(v).encode()))
                    msg["headers"]["snapshot_mark"] = mark
                    spool.add(orjson.dumps(msg))
            conn.execute("COMMIT")
            spool.finish()
        finally:
            running.running(None)
    return str(row[0]), int(row[1])


async def _bounded_run(
    source: Source,
    rows_query: RowQuery,
    query: sql.Composed,
    spool: Spool,
    mark: int,
    gone: asyncio.Future[None] | None = None,
) -> tuple[str, int]:
    """`_run` in a thread of the source's subset executor; a 503 (and the query abandoned)
    once Postgres is found not to answer at all, or when the source stops first. When the
    client has gone (`gone` resolved) the query is abandoned too: its answer has no one to
    go to, and a costly one would otherwise run on in Postgres to its end (or to
    --snapshot-timeout), holding a backend and a thread of the subset executor."""
    running = _Running()
    loop = asyncio.get_running_loop()
    try:
        task = loop.run_in_executor(
            source.subset_executor,
            _run,
            source.snapshot_pool,
            rows_query,
            query,
            running,
            spool,
            mark,
        )
    except RuntimeError:  # the executor is shut down: the source stopped
        raise stopping() from None
    try:
        while True:
            waited: set[asyncio.Future[Any]] = {task} if gone is None else {task, gone}
            done, _ = await asyncio.wait(
                waited, timeout=SUBSET_QUIET, return_when="FIRST_COMPLETED"
            )
            if task in done:
                if task.cancelled():  # not started before the source stopped
                    raise stopping()
                return task.result()
            if gone is not None and gone.done():
                running.abandon(cancel=True)  # (its query cancelled in Postgres, socket shut)
                raise ConnectionResetError("the client went away")  # nobody to answer
            if not await source.database_answers() and not task.done():
                running.abandon()
                raise not_answering()
    except BaseException:
        if not task.done() and not running.abandoned:
            # Cancelled: the request ended (the engine stopping on SIGTERM, the source
            # paused or deleted, the connection closed). Nobody waits for the answer, and a
            # query waiting on a lock held its thread, which Python's exit waits for, until
            # --snapshot-timeout: the engine logged "stopped" and did not exit.
            running.abandon(cancel=True)
        # The spool is freed once its thread is done with it (at once if it is).
        task.add_done_callback(_retrieve)
        task.add_done_callback(lambda _task: spool.close())
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # (answered with a 503 already)


#: Postgres's words for an ORDER BY column of a type without an ordering (json, point,
#: xml, ...): the column's type is all they name, and the order_by is at fault.
_NO_ORDERING = "could not identify an ordering operator for type "


def _subset_error(source: Source, shape: Shape, exc: psycopg.Error) -> EngineError:
    """A failed subset query: blamed on the subset's where (no row values) or its order_by
    (a column that cannot be ordered), or transient."""
    message = exc.diag.message_primary or ""
    if exc.sqlstate == "42883" and message.startswith(_NO_ORDERING):
        return InvalidRequest({"subset": {"order_by": [message]}})
    what = snapshot_errors.kind(exc)
    if what == "table_gone":
        source.table_changed(shape.table, dropped=True)
    elif what == "schema_changed":
        source.table_changed(shape.table, dropped=False)
    return snapshot_errors.to_engine_error(
        exc, field="where", schema=shape.table.schema, table=shape.table.name, subset=True
    )


@dataclass(frozen=True, slots=True)
class SubsetResult:
    """The subset's messages (marked; joined by commas, in `answer`, which the caller must
    close) and the snapshot and WAL position they saw."""

    snapshot: XidSnapshot
    lsn: int
    mark: int
    answer: Spool


async def run_subset(
    source: Source, shape: Shape, subset: SubsetQuery, gone: asyncio.Future[None] | None = None
) -> SubsetResult:
    """Run the subset query in one REPEATABLE READ transaction (raises EngineError, or
    ConnectionResetError once `gone`, the client's disconnection, resolves first)."""
    rows_query, query = _query(shape, subset)
    mark = random.randint(0, 2**31 - 1)
    spool = Spool(source.config.data_dir)
    try:
        try:
            snap, lsn = await _bounded_run(source, rows_query, query, spool, mark, gone)
        except (psycopg.DataError, psycopg.errors.IndeterminateCollation):
            # (a collation conflict is raised when a comparison runs, as a value's failure)
            if shape.where is None or subset.where_sql is None:
                raise
            # (a value the plain guard failed on may be one the shape's where, as planned,
            # never computes: asked again with the guard as the planner reads a WHERE;
            # the subset's clause still runs only on the shape's rows. A failure of its
            # own fails this query too.)
            rows_query, query = _query(shape, subset, as_planned=True)
            spool = Spool(source.config.data_dir)
            snap, lsn = await _bounded_run(source, rows_query, query, spool, mark, gone)
    except psycopg.OperationalError as exc:
        # (QueryCanceled is an OperationalError: a statement the subset pool's
        # statement_timeout cancelled is a 503 snapshot_timeout, as a shape snapshot's is,
        # not "Database is unreachable": the database answered)
        if snapshot_errors.kind(exc) != "transient" or snapshot_errors.timed_out(exc):
            raise _subset_error(source, shape, exc) from None
        raise ServiceUnavailable("Database is unreachable", 5, "database_unreachable") from exc
    except psycopg.Error as exc:
        raise _subset_error(source, shape, exc) from None
    except OverBudget as over:
        if over.alone:  # (a 503 would have the client retry it forever)
            raise InvalidRequest(
                {
                    "subset": {
                        "where": [
                            f"the subset's answer is over {BUDGET.limit} bytes:"
                            " ask for fewer rows (a narrower where, or a limit)"
                        ]
                    }
                }
            ) from None
        raise ServiceUnavailable(
            "Too many subset answers are being sent, please retry", 5, "subset_budget"
        ) from None
    return SubsetResult(XidSnapshot.parse(snap), lsn, mark, spool)

"""When and where new shapes take their snapshot: a queue, a few connections, batches.

A storm of new shapes arrives as one pass of the event loop handling hundreds of requests;
a task started during that pass runs only after it. Batches are therefore started right
where shapes are created (`submit`, synchronous: take an idle connection, queue the query),
so Postgres computes snapshots while the engine is still taking requests, and the engine
then reads results that are already waiting instead of each side idling in turn.

- The first shape with nothing in flight starts a batch at once (a lone new shape is never
  delayed). While batches are in flight, another starts when enough shapes wait: 16, then
  twice as many per batch in flight (at most `BATCH_MAX`), so a storm fills the connections
  with growing batches. Whatever still waits at the end of the pass, and whenever a batch
  ends, starts on the idle connections.
- Connections (at most `max_connections`) are opened when first needed, all of them, so
  the next storm finds them ready; one idle for `IDLE_CLOSE` seconds is closed.
- A shape whose batch hit an earlier shape's error is queued again; a shape whose own
  query failed is reported to `on_failed`. A connection the server closed while idle (a
  restart) is dropped when next taken; one that dies under a batch costs its shapes one
  more try on a fresh connection (the idle ones are closed with it: they were likely
  killed too), then they are reported too.
"""

from __future__ import annotations

import asyncio
import logging
import select
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, pq
from psycopg.errors import QueryCanceled

from ..stopping import STOP_WAIT, cancel_and_wait
from . import errors as snapshot_errors
from .batch import Connection, SnapshotBehind, SnapshotJob, is_bulk, run_batch, send_batch
from .bulk import Split
from .errors import Abandoned

if TYPE_CHECKING:
    from ..shapes.shape import Shape

logger = logging.getLogger(__name__)

#: Most shapes in one batch (one transaction, one query string).
BATCH_MAX = 128
#: Shapes waiting before a batch starts while another is in flight (doubles per batch).
EAGER_BATCH = 16
#: Seconds an idle snapshot connection is kept.
IDLE_CLOSE = 300.0
#: Seconds before a batch whose snapshot missed a delivered transaction runs again.
BEHIND_RETRY = 0.005
#: Tries after which a shape's snapshot is no longer checked against delivered transactions
#: (a safety valve: a delivered commit is visible within milliseconds).
BEHIND_MAX_TRIES = 200
#: Seconds without a request for any of a batch's unfinished snapshots (none waiting, none
#: asked: `Shape.snapshot_asked_at`) after which the batch is cancelled in Postgres: a
#: costly where clause kept a backend busy long after its client had gone. Longer than a
#: client's pause between tries (a 503 after `http.shape.SNAPSHOT_WAIT` asks it back in 5 s).
ABANDONED_AFTER = 30.0
#: Seconds between looks at a running batch's requests.
ABANDON_CHECK = 5.0
#: Seconds a running batch may go without progress (a chunk written, a snapshot finished or
#: failed) before Postgres is asked whether the batch's backend still works on it. Postgres
#: answering twice in a row (`ABANDON_CHECK` apart, no progress between) that the backend is
#: gone (a crash or restart ended it), idle (it sent everything and waits for the engine) or
#: blocked sending to the engine fails the batch (`SnapshotStalled`): the engine is the one
#: stuck, on an await no answer of Postgres can end. A backend still running the query (a
#: lock, a costly where clause) is waited for.
STALL_AFTER = 30.0


class SnapshotStalled(Exception):
    """A batch made no progress for `STALL_AFTER` seconds while Postgres said its backend
    was gone or waiting for the engine: it was cancelled (a transient failure: a 503, the
    shape retried once if its snapshot was not announced, else retired: a 409)."""


class SnapshotScheduler:
    def __init__(
        self,
        dsn: str,
        max_connections: int,
        chunk_bytes: int,
        fsync: bool,
        make_job: Callable[[Shape], SnapshotJob],
        on_failed: Callable[[Shape, BaseException], None],
        seen_xids: Callable[[], Sequence[int]] | None = None,
        statement_timeout: float = 0.0,
    ) -> None:
        self.dsn = dsn
        #: Milliseconds a snapshot statement other than a whole-table one may run (0: no
        #: limit; `Settings.snapshot_timeout`): see `batch.batch_pieces`.
        self.timeout_ms = max(0, round(statement_timeout * 1000))
        # Big whole-table snapshots get a second backend (a connection beyond the pool).
        self._split = Split(dsn)
        self.max_connections = max(1, max_connections)
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self._make_job = make_job
        self._on_failed = on_failed
        # The xids the replication stream delivered so far: a snapshot must see them all.
        self._seen_xids = seen_xids
        # Shapes whose batch was run again because its snapshot missed one (see `_run`).
        self._behind: weakref.WeakKeyDictionary[Shape, int] = weakref.WeakKeyDictionary()
        self._runs_behind = 0
        self._queue: deque[Shape] = deque()
        self._idle: list[tuple[Connection, float]] = []
        self._connections = 0  # open or opening
        self._opening = 0  # being opened (`_open`)
        # A connection attempt failed while none was open: no new attempt starts until the
        # round in flight has ended (`_open`).
        self._failing = False
        self._in_flight = 0
        self._flush_pending = False
        self._reaper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False
        # Shapes already run again once because their connection died (see `_run`).
        self._retried: weakref.WeakSet[Shape] = weakref.WeakSet()
        # The task running each shape's batch (`where_waiting`).
        self._running: weakref.WeakKeyDictionary[Shape, asyncio.Future[list[SnapshotJob]]] = (
            weakref.WeakKeyDictionary()
        )

    # -- the API ----------------------------------------------------------------------------

    def submit(self, shape: Shape) -> None:
        """Queue `shape` for its snapshot; a batch may start before this returns."""
        self._queue.append(shape)
        self._launch(eager=True)
        if self._queue and not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def waiting(self) -> int:
        """Shapes queued for a batch."""
        return len(self._queue)

    @property
    def idle_connections(self) -> int:
        """Open connections waiting for a batch."""
        return len(self._idle)

    @property
    def batches_run_again(self) -> int:
        """Batches abandoned because their snapshot missed a delivered transaction."""
        return self._runs_behind

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        await cancel_and_wait(list(self._tasks), "snapshot batches")
        closing = list(self._tasks)  # the connections of the batches cancelled
        if closing:
            await asyncio.wait(closing, timeout=STOP_WAIT)
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()

    def where_waiting(self, shape: Shape) -> str:
        """Where the snapshot of `shape` is, for a log line when its request gives up on it
        (a 503 "taking too long"): queued, or what its batch's task awaits now (its chain
        of awaits, innermost last), or nowhere (none runs it)."""
        if shape in self._queue:
            return f"queued ({len(self._queue)} waiting, {self._in_flight} batches running)"
        task = self._running.get(shape)
        if task is None or task.done():
            return "no batch runs it"
        return "its batch awaits " + (" > ".join(_await_chain(task)) or "?")

    # -- starting batches -------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_pending = False
        self._launch(eager=False)

    def _launch(self, *, eager: bool) -> None:
        if self._closed:
            return
        while self._queue and self._idle:
            if eager and self._in_flight and len(self._queue) < self._threshold():
                break
            conn, _ = self._idle.pop()
            if closed_by_server(conn):  # e.g. Postgres restarted while it was idle
                self._discard(conn)
                continue
            batch = self._take()
            if not batch:
                self._idle.append((conn, asyncio.get_running_loop().time()))
                break
            self._start(conn, batch)
        if self._queue and self._connections < self.max_connections and not self._failing:
            while self._connections < self.max_connections:
                self._connections += 1
                self._opening += 1
                self._spawn(self._open())

    def _threshold(self) -> int:
        return min(BATCH_MAX, EAGER_BATCH << min(self._in_flight - 1, 8))

    def _take(self) -> list[Shape]:
        batch: list[Shape] = []
        while self._queue and len(batch) < BATCH_MAX:
            shape = self._queue.popleft()
            if not shape.rotated:
                batch.append(shape)
        return batch

    def _start(self, conn: Connection, batch: list[Shape]) -> None:
        made = [(shape, self._make_job(shape)) for shape in batch]
        if self.timeout_ms:  # whole-table snapshots last: the timeout is lifted for them
            made.sort(key=lambda pair: is_bulk(pair[1]))
            batch[:] = [shape for shape, _ in made]
        jobs = [job for _, job in made]
        # Taken before the query goes out: these commits precede the snapshot.
        must_see: Sequence[int] = ()
        if self._seen_xids is not None and all(
            self._behind.get(shape, 0) < BEHIND_MAX_TRIES for shape in batch
        ):
            must_see = tuple(self._seen_xids())
        self._in_flight += 1
        try:
            pieces = send_batch(conn, jobs, self._split, self.timeout_ms)
        except Exception as exc:
            self._in_flight -= 1
            self._discard(conn)
            for shape in batch:
                self._on_failed(shape, exc)
            return
        self._spawn(self._run(conn, batch, jobs, must_see, pieces))

    async def _run(
        self,
        conn: Connection,
        batch: list[Shape],
        jobs: list[SnapshotJob],
        must_see: Sequence[int] = (),
        pieces: list[bytes] | None = None,
    ) -> None:
        retry: list[SnapshotJob] = []
        healthy = False
        watch = _Watch(conn, batch, jobs, self.dsn)
        inner = asyncio.ensure_future(
            run_batch(
                conn,
                jobs,
                self.chunk_bytes,
                self.fsync,
                sent=True,
                must_see=must_see,
                split=self._split,
                pieces=pieces,
                timeout_ms=self.timeout_ms,
            )
        )
        for shape in batch:
            self._running[shape] = inner
        try:
            retry = await _unless_stalled(inner, watch)
            healthy = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        except asyncio.CancelledError:
            watch.stop()
            self._in_flight -= 1
            self._discard(conn)
            raise
        except SnapshotBehind as exc:
            watch.stop()
            # No job heard of this snapshot: close the connection (its backend is still
            # running the batch) and run the same shapes again in a moment.
            logger.info("snapshot batch of %d shapes run again: %s", len(batch), exc)
            self._runs_behind += 1
            self._in_flight -= 1
            self._discard(conn)
            for shape in reversed(batch):
                self._behind[shape] = self._behind.get(shape, 0) + 1
                self._queue.appendleft(shape)
            loop = asyncio.get_running_loop()
            loop.call_later(BEHIND_RETRY, lambda: self._launch(eager=False))
            return
        except Exception as exc:
            logger.info(
                "snapshot batch of %d shapes ended by %s: %s",
                len(batch),
                type(exc).__name__,
                str(exc).strip() or "-",
            )
            for job in jobs:
                if not job.done and job.error is None:
                    job.error = exc
        watch.stop()
        self._in_flight -= 1
        if watch.cancelled:
            # Nobody waits for what is left: failed (their shapes retired; a request
            # coming later makes them again), not run again. The connection is not reused
            # (a cancel request may still be on its way to the backend).
            logger.info(
                "snapshot batch of %d shapes cancelled: no request waited for it in %g s",
                len(batch),
                ABANDONED_AFTER,
            )
            self._discard(conn)
            for shape, job in zip(batch, jobs, strict=True):
                if job.done:
                    continue
                if job.error is None or isinstance(job.error, QueryCanceled):
                    # (a request that came meanwhile is told to refetch: `Abandoned`)
                    self._on_failed(shape, Abandoned("no request waits for it"))
                else:
                    self._on_failed(shape, job.error)
            self._launch(eager=False)
            return
        again = {id(j) for j in retry}
        if healthy:
            self._release(conn)
        else:
            # The connection failed under the batch (Postgres restarting, a terminated
            # backend): shapes that failed with it get one more try on a fresh connection
            # before their requests are told to come back later. A query's own error (the
            # request's fault) is not retried, nor a shape whose snapshot was announced:
            # its clients may hold chunks of that snapshot, which another one's chunks
            # (rows moved meanwhile) would not continue; it is discarded (a 409).
            for shape, job in zip(batch, jobs, strict=True):
                if job.done or id(job) in again or shape in self._retried or job.announced:
                    continue
                if job.error is None or snapshot_errors.kind(job.error) == "transient":
                    self._retried.add(shape)
                    job.error = None
                    again.add(id(job))
            self._discard(conn)
            self._discard_idle()
        for shape, job in reversed(list(zip(batch, jobs, strict=True))):
            if id(job) in again:
                self._queue.appendleft(shape)
        for shape, job in zip(batch, jobs, strict=True):
            if id(job) not in again and job.error is not None:
                self._on_failed(shape, job.error)
        self._launch(eager=False)

    # -- connections ------------------------------------------------------------------------

    async def _open(self) -> None:
        """Open a connection for the queue. Attempts go in rounds (all the missing ones at
        once); while one fails with no connection open, no new attempt starts until the
        round has ended, and its end fails every shape waiting: a new shape's submit
        started another as soon as one had failed, and a storm of new shapes (each failing
        in its turn: Postgres stopping refuses every connection) kept the first ones
        waiting, and the transactions they parked unconfirmed, for as long as it went on
        (the stopping walsender waited for them: `pg_ctl stop -m fast` held up 60 s)."""
        try:
            conn = await AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=10)
        except Exception as exc:
            self._connections -= 1
            self._opening -= 1
            if self._connections == self._opening:  # (none open: none may take the queue)
                self._failing = True
            # Said once per outage, when the last attempt fails, not once per connection
            # (all of them are opened at once, and fail together).
            log = logger.warning if self._connections == 0 else logger.debug
            log("could not open a snapshot connection: %s", exc)
            if self._connections == 0:  # nothing could ever take them: fail the waiting
                self._failing = False
                waiting, self._queue = self._queue, deque()
                for shape in waiting:
                    if not shape.rotated:
                        self._on_failed(shape, exc)
            return
        self._opening -= 1
        self._failing = False
        if self._closed:
            await conn.close()
            return
        self._release(conn)
        self._launch(eager=False)

    def _release(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        self._idle.append((conn, loop.time()))
        if self._reaper is None and not self._closed:
            self._reaper = loop.call_later(IDLE_CLOSE / 4, self._reap)

    def _discard(self, conn: Connection) -> None:
        self._connections -= 1
        self._spawn(conn.close())

    def _discard_idle(self) -> None:
        """Close every idle connection: one just died under a batch, so they likely did too.

        A terminated backend (Postgres restarting, `pg_terminate_backend`) only gets a
        signal; until it has exited, its idle connection looks alive to `closed_by_server`.
        The shapes retried after one connection died must not meet another dead one (their
        one retry would be lost and their requests get a 503), so the retry runs on a
        connection opened after the death. Closing healthy idle connections (when only this
        one failed) costs a reconnect each.
        """
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._discard(conn)

    def _reap(self) -> None:
        self._reaper = None
        now = asyncio.get_running_loop().time()
        keep = [(c, t) for c, t in self._idle if now - t < IDLE_CLOSE]
        for conn, t in self._idle:
            if now - t >= IDLE_CLOSE:
                self._discard(conn)
        self._idle = keep
        if self._idle and not self._closed:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_CLOSE / 4, self._reap)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _unless_stalled(
    inner: asyncio.Future[list[SnapshotJob]], watch: _Watch
) -> list[SnapshotJob]:
    """`inner`'s result, or `SnapshotStalled` once `watch` finds the batch stalled (`inner`
    is then cancelled, and waited for a moment only: whatever it awaits may never end)."""
    try:
        either: list[asyncio.Future[Any]] = [inner, watch.stalled]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        inner.cancel()
        raise
    if inner.done():
        return inner.result()
    why = watch.stalled.result()
    inner.cancel()
    await asyncio.wait([inner], timeout=STOP_WAIT)
    if inner.done() and not inner.cancelled():
        inner.exception()  # (retrieved: the batch failed as stalled)
    logger.warning(
        "snapshot batch of %d shapes failed: no progress for %g s while its backend %s%s",
        len(watch.batch),
        STALL_AFTER,
        why,
        "" if inner.done() else " (its task did not end when cancelled)",
    )
    raise SnapshotStalled(f"the snapshot made no progress while its Postgres backend {why}")


class _Watch:
    """Looks every `ABANDON_CHECK` seconds whether any request still wants a running batch's
    unfinished snapshots; when none has for `ABANDONED_AFTER`, cancels its statement in
    Postgres (`cancelled`). Also whether the batch makes progress: when it has made none for
    `STALL_AFTER`, asks Postgres about its backend (`STALL_AFTER`), and resolves `stalled`
    (with what Postgres said) when the batch is stuck on the engine's side."""

    def __init__(
        self, conn: Connection, batch: list[Shape], jobs: list[SnapshotJob], dsn: str = ""
    ) -> None:
        self.conn = conn
        self.batch = batch
        self.jobs = jobs
        self.dsn = dsn
        self.cancelled = False
        loop = asyncio.get_running_loop()
        self.stalled: asyncio.Future[str] = loop.create_future()
        # The backend running the batch, and when the batch started (a backend of the same
        # pid started later, after a restart, is not it).
        self._pid = conn.pgconn.backend_pid if conn.pgconn.status == pq.ConnStatus.OK else 0
        self._started = time.monotonic()
        self._progress = self._progress_now()
        self._since = time.monotonic()
        self._bad = 0
        self._probe: asyncio.Task[None] | None = None
        self._cancel: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_later(ABANDON_CHECK, self._look)

    def _progress_now(self) -> tuple[tuple[bool, bool, int], ...]:
        return tuple((j.done, j.error is not None, j.log.snapshot_chunks) for j in self.jobs)

    def _look(self) -> None:
        self._timer = None
        now = time.monotonic()
        left = [s for s, j in zip(self.batch, self.jobs, strict=True) if not j.done]
        if left and all(
            s.waiting == 0 and now - s.snapshot_asked_at >= ABANDONED_AFTER for s in left
        ):
            self.cancelled = True
            self._cancel = asyncio.ensure_future(self._send_cancel())
            return
        progress = self._progress_now()
        if progress != self._progress:
            self._progress, self._since, self._bad = progress, now, 0
        elif self.dsn and now - self._since >= STALL_AFTER and self._probe is None:
            self._probe = asyncio.ensure_future(self._ask_postgres())
        self._timer = asyncio.get_running_loop().call_later(ABANDON_CHECK, self._look)

    async def _ask_postgres(self) -> None:
        """Ask Postgres what the batch's backend does; two answers in a row that it is not
        working on the batch (and no progress between) resolve `stalled`."""
        try:
            why = await self._backend_idle()
        except Exception as exc:  # Postgres does not answer: not the engine's stall
            logger.debug("could not ask Postgres about a snapshot batch's backend: %s", exc)
            why = None
        finally:
            self._probe = None
        if why is None or self._progress_now() != self._progress:
            self._bad = 0
            return
        self._bad += 1
        if self._bad >= 2 and not self.stalled.done():
            self.stalled.set_result(why)

    async def _backend_idle(self) -> str | None:
        """Why the batch's backend is not working on it (gone, idle, blocked sending to the
        engine), or None when it is (running, waiting on a lock)."""
        async with asyncio.timeout(10):
            conn = await AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
            try:
                cur = await conn.execute(
                    # (the batch's age measured here, compared on Postgres's own clock: a
                    # Postgres host whose clock runs ahead of the engine's must not make a
                    # working backend look gone; a second of slack for the round trip)
                    "SELECT state, wait_event FROM pg_stat_activity"
                    " WHERE pid = %s AND backend_start <= now() - make_interval(secs => %s)",
                    (self._pid, max(0.0, time.monotonic() - self._started - 1.0)),
                )
                row = await cur.fetchone()
            finally:
                await conn.close()
        if row is None:
            return "is gone (Postgres restarted, or it was terminated)"
        state, wait_event = row
        if state != "active":
            return f"is {state}, waiting for the engine"
        if wait_event == "ClientWrite":
            return "is blocked sending rows the engine does not read"
        return None

    async def _send_cancel(self) -> None:
        try:
            await self.conn.cancel_safe(timeout=5.0)
        except Exception as exc:  # (the batch ends anyway; its connection is dropped)
            logger.debug("could not cancel an abandoned snapshot batch: %s", exc)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None


def _await_chain(task: asyncio.Future[list[SnapshotJob]]) -> list[str]:
    """The coroutines a task awaits through, outermost first (`function (file:line)`),
    then what the innermost awaits."""
    chain: list[str] = []
    awaited: object = task.get_coro() if isinstance(task, asyncio.Task) else None
    for _ in range(64):
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            if awaited is not None:
                chain.append(type(awaited).__name__)
            break
        code = frame.f_code
        chain.append(f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return chain


def closed_by_server(conn: Connection) -> bool:
    """Whether an idle connection was closed by the server (restart, terminated backend).

    An idle connection has nothing to read unless the server is saying goodbye (an error
    and EOF); one `poll` of its socket tells, and a batch is not lost on it.
    """
    if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))

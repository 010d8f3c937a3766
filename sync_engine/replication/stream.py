"""Logical replication client: read a pgoutput slot from asyncio with psycopg 3.3.

Why it looks like this:

* **psycopg 3.3, low level.** psycopg has no replication API, but since 3.3 ``execute()``
  accepts ``START_REPLICATION`` and leaves the connection in COPY_BOTH. The stream itself is
  driven through the public libpq wrapper (``pgconn.get_copy_data(1)``, ``put_copy_data``,
  ``flush``, ``consume_input``) and ``loop.add_reader`` on the socket: native asyncio, no
  thread, no busy loop, one driver for the whole engine. (asyncpg and pg8000 cannot do
  COPY_BOTH; psycopg2 is the measured fallback.) ``cursor.copy()`` refuses COPY_BOTH and
  would await once per message anyway.
* **Batches, not an async generator per message.** ``read_batch`` returns everything libpq
  has buffered (up to ``max_messages``) as ``(data_start_lsn, payload)`` pairs, so the
  per-message cost is a ``get_copy_data`` call and a ``bytes`` copy, not a coroutine
  round-trip. Payloads are ``bytes`` because the pgoutput decoder needs ``bytes.index``.
  ``read_raw`` is the same without even the slice and tuple: whole XLogData messages, for
  the replicator, which reads what it needs straight from them.
* **Coalesced reads while busy.** The walsender sends each message as soon as it is
  decoded; a reader faster than it would wake up for every two or three messages, and
  those wake-ups cost more CPU than the messages. Once data has flowed for a few ms without
  a pause, a read that finds little waits ``linger`` (1 ms) once for more. An isolated
  transaction is never delayed.
* **The caller owns durability.** The stream never acknowledges on its own: ``ack(lsn)``
  records what the caller has durably applied (typically a Commit's ``end_lsn`` after the
  shape logs are flushed) and status updates report exactly that as write/flush/apply, so
  the slot's ``confirmed_flush_lsn`` only moves past data that survives a crash; after a
  crash Postgres replays from there.
* **Failures are loud and typed.** Anything that ends the stream (server restart,
  ``pg_terminate_backend``, socket closed, server-side error such as a dropped
  publication) surfaces from ``read_batch`` as :class:`ReplicationConnectionError`
  (chained to the psycopg error) instead of hanging; the caller reconnects with a new
  :class:`ReplicationStream`, which resumes at the slot's ``confirmed_flush_lsn``.
* **Keepalives.** Primary keepalives that ask for a reply are answered as soon as they are
  read, and a status update goes out at least every ``status_interval`` seconds while the
  caller keeps calling ``read_batch`` (so ``wal_sender_timeout`` never fires on a live
  consumer).
* **Idle: a keepalive's WAL end is confirmed at once.** A keepalive's WAL end is the end of
  the last WAL record the walsender decoded; whatever it produced was sent before it. Once
  the caller says everything it read is durable and nothing is held back
  (:meth:`ReplicationStream.caught_up`), a keepalive that comes before any further data
  moves the flushed position to its WAL end: nothing between the two was for this slot.
  This matters at shutdown: a stopping walsender exits only once the reported flush
  position equals the WAL end it sent, asking for replies meanwhile, and Postgres refuses
  every connection until it has; answering with the stale acked position (WAL written
  since in another database, say) played a ping-pong of thousands of keepalives until
  the caller's next idle read confirmed the WAL end (about a second).
* **A silent server is a lost stream.** A server that stops answering closes nothing (its
  processes stopped, a network partition): the socket stays open and quiet, and an idle
  walsender sends nothing of its own. So a stream that has heard nothing for half of
  ``silence_timeout`` asks for a reply (a status update with replyRequested), and fails
  with :class:`ReplicationConnectionError`, like a closed one, when nothing comes in the
  other half; connecting and ``START_REPLICATION`` are bounded by it too.

Gotcha: never use ``async with conn`` on a replication connection; its exit sends COMMIT
while COPY is active. :meth:`ReplicationStream.close` uses ``await conn.close()``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from datetime import datetime
from time import monotonic as _monotonic
from types import TracebackType
from typing import NamedTuple

import psycopg
from psycopg import pq, sql
from psycopg.pq.abc import PGconn

from ..pg.waiter import SocketWaiter
from .wal import Lsn, format_lsn

__all__ = ["XLOGDATA_HEADER", "ReplicationConnectionError", "ReplicationStream", "Walsender"]

logger = logging.getLogger(__name__)

# CopyData sub-messages of the streaming replication protocol.
_XLOGDATA = struct.Struct("!QQq")  # 'w': dataStart, walEnd, sendTime (payload from byte 25)
_KEEPALIVE = struct.Struct("!QqB")  # 'k': walEnd, sendTime, replyRequested
_STATUS = struct.Struct("!cQQQqB")  # 'r': write, flush, apply, clock, replyRequested
XLOGDATA_HEADER = 1 + _XLOGDATA.size  # 25
"""Offset of the pgoutput payload in a raw XLogData message (see `ReplicationStream.read_raw`)."""
_W = ord("w")
_K = ord("k")

_PG_EPOCH_UNIX = 946_684_800  # 2000-01-01T00:00:00Z as a Unix timestamp
_CLOSE_STATUS_TIMEOUT = 2.0  # seconds allowed for the final status update on close()
#: Seconds the server may send nothing (not even an answer to a keepalive request) before
#: the stream counts as lost.
SILENCE_TIMEOUT = 30.0
# Read coalescing (see ReplicationStream's `linger`): a flow is "busy" once reads have kept
# finding data, never `FLOW_GAP` apart, for `BUSY_AFTER`; then a read that finds
# fewer than `_LINGER_BELOW` messages waits until `linger` after the previous read.
FLOW_GAP = 0.002
BUSY_AFTER = 0.005
_LINGER_BELOW = 256


#: A message at least this big grows libpq's input buffer, which it keeps for the life of
#: the connection (`ReplicationStream.big_message`).
BIG_MESSAGE = 16 << 20


class Walsender(NamedTuple):
    """A walsender process, for good: a PID may be reused, a PID and start time may not."""

    pid: int
    started: datetime


class ReplicationConnectionError(Exception):
    """The replication connection failed or the server ended the stream.

    The stream cannot be used any more; close it and start a new one (it resumes at the
    slot's ``confirmed_flush_lsn``). ``__cause__`` holds the underlying psycopg error when
    there is one.
    """


def _quote_literal(value: str) -> str:
    """A string literal for the replication grammar (``'...'`` with ``''``; no ``E''``)."""
    return "'" + value.replace("'", "''") + "'"


def _quote_ident_text(name: str) -> str:
    """``name`` as a double-quoted identifier inside a text option value."""
    return '"' + name.replace('"', '""') + '"'


def _pg_now_us() -> int:
    """The current time in µs since 2000-01-01 UTC, the protocol's clock."""
    return int((time.time() - _PG_EPOCH_UNIX) * 1_000_000)


class ReplicationStream:
    """One ``START_REPLICATION`` session on a pgoutput slot, read in batches.

    Typical use::

        stream = ReplicationStream(dsn, "slot", "pub")
        await stream.start()
        try:
            while True:
                for lsn, payload in await stream.read_batch(timeout=1.0):
                    msg = pgoutput.decode(payload)
                    ...
                stream.ack(last_durable_commit_end_lsn)
        finally:
            await stream.close()

    Not safe for concurrent ``read_batch`` calls; ``ack`` and ``send_status`` may be called
    from other tasks. Also usable as ``async with ReplicationStream(...) as stream``.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        start_lsn: int = 0,
        status_interval: float = 10.0,
        *,
        busy_status_interval: float | None = None,
        messages: bool = False,
        linger: float = 0.001,
        busy_after: float = BUSY_AFTER,
        flow_gap: float = FLOW_GAP,
        silence_timeout: float = SILENCE_TIMEOUT,
    ) -> None:
        """``start_lsn`` 0 means "from the slot's confirmed_flush_lsn". ``messages`` adds
        the ``messages 'true'`` option so ``pg_logical_emit_message`` payloads ('M') are
        delivered too.

        ``busy_status_interval`` (seconds; default ``status_interval``): how often a status
        update goes out while data keeps coming. The walsender's own requests for one are
        answered as they are read, but while a big transaction streams in, a request waits
        behind the megabytes sent before it; a short ``wal_sender_timeout`` runs out first.
        An idle stream still sends one every ``status_interval`` (many sources, few wake-ups).

        ``linger`` (seconds, 0 = off) trades a little latency for CPU while the stream
        is busy. The walsender sends each message as soon as it is decoded, so a reader
        faster than it wakes up (or calls ``recv``) for every two or three messages, and
        those per-read costs, ~5-10 µs each, were most of the CPU of a change no shape
        wants. Once data has been flowing for ``busy_after`` without a pause longer than
        ``flow_gap``, a read that finds fewer than ``_LINGER_BELOW`` messages less than
        ``linger`` after the previous one returned waits until ``linger`` has passed since
        then: busy
        reads come at most every ``linger``. A caller slower than that (processing the
        last batch took longer) never waits, and a lone transaction (or the start of a
        burst) is never delayed: its messages arrive within microseconds of each other,
        long before the flow counts as busy.
        """
        if status_interval <= 0:
            raise ValueError("status_interval must be positive")
        if busy_status_interval is None:
            busy_status_interval = status_interval
        if busy_status_interval <= 0:
            raise ValueError("busy_status_interval must be positive")
        self.busy_status_interval = busy_status_interval
        if silence_timeout <= 0:
            raise ValueError("silence_timeout must be positive")
        self.silence_timeout = silence_timeout
        self._last_heard = 0.0  # when the server last sent anything
        self._asked_at: float | None = None  # a reply asked for and not yet heard
        if linger < 0:
            raise ValueError("linger must not be negative")
        self.linger = linger
        self.busy_after = busy_after
        self.flow_gap = flow_gap
        # start of the current uninterrupted flow of messages, and when the last one came
        self._flow_since = 0.0
        self._last_data = -1.0
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.start_lsn = Lsn(start_lsn)
        self.status_interval = status_interval
        self.messages = messages
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._flushed_lsn = self.start_lsn
        #: The most a status update may confirm (None: no limit): what the engine saved as
        #: confirmable in its data dir (`position.SavedPosition`).
        self.confirm_limit: Lsn | None = None
        #: Told each time the position to confirm moves (`ack`, a keepalive while caught
        #: up), so that it is saved at once (`position.SavedPosition.want`).
        self.on_confirmable: Callable[[Lsn], None] | None = None
        self._wal_end = Lsn(0)
        self._last_status = 0.0
        self._reply_due = False
        # The caller has everything read so far durable, nothing held (`caught_up`): until
        # the next XLogData a keepalive's WAL end may be confirmed.
        self._caught_up = False
        self._failed: ReplicationConnectionError | None = None
        #: The size of the biggest message read of `BIG_MESSAGE` bytes or more, else 0:
        #: libpq grew its input buffer to hold it and keeps it (a 200 MB value: ~256 MB)
        #: until the connection closes; the replicator starts a new stream once it is
        #: confirmed past it (`Replicator._consume`).
        self.big_message = 0
        self._reading = False
        self._send_lock = asyncio.Lock()
        # waits on the socket; close() wakes a pending read_batch through it
        self._sockets: SocketWaiter | None = None
        #: The walsender serving this stream, once started: its PID and start time, which
        #: name it for good (a PID alone may be reused). A stream given up on a network
        #: that went silent leaves this walsender holding the slot until Postgres's own
        #: `wal_sender_timeout`; the replicator ends it (`slot.end_walsender`).
        self.walsender: Walsender | None = None

    # ------------------------------------------------------------------ properties

    @property
    def wal_end(self) -> Lsn:
        """Highest WAL end position the server reported (XLogData and keepalives)."""
        return self._wal_end

    @property
    def flushed_lsn(self) -> Lsn:
        """The LSN last recorded by :meth:`ack`, reported to the server as flushed."""
        return self._flushed_lsn

    @property
    def last_heard(self) -> float:
        """When (``time.monotonic()``) the server last sent anything on this stream, or the
        stream started (0.0: not started): read by the engine's /metrics."""
        return self._last_heard

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and enter COPY_BOTH with ``START_REPLICATION``.

        Raises :class:`ReplicationConnectionError` if connecting fails or the server
        refuses (unknown slot, slot in use by another walsender, ...).
        """
        if self._conn is not None:
            raise RuntimeError("ReplicationStream.start() called twice")
        try:
            async with asyncio.timeout(self.silence_timeout):
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    replication="database",
                    autocommit=True,
                    connect_timeout=max(2, int(self.silence_timeout)),
                )
        except psycopg.Error as exc:
            raise ReplicationConnectionError(f"cannot open replication connection: {exc}") from exc
        except TimeoutError:
            raise ReplicationConnectionError(
                f"cannot open replication connection: no answer in {self.silence_timeout:g} s"
            ) from None
        publications = _quote_literal(_quote_ident_text(self.publication))
        options = f"proto_version '1', publication_names {publications}"
        if self.messages:
            options += ", messages 'true'"
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self.slot), sql.SQL(format_lsn(self.start_lsn)), sql.SQL(options)
        )
        try:
            try:
                async with asyncio.timeout(self.silence_timeout):
                    cur = await conn.execute(
                        "SELECT pid, backend_start FROM pg_stat_activity"
                        " WHERE pid = pg_backend_pid()"
                    )
                    row = await cur.fetchone()
                    walsender = Walsender(*row) if row is not None else None
                    cur = await conn.execute(query)
            except TimeoutError:
                raise ReplicationConnectionError(
                    f"START_REPLICATION on slot {self.slot!r}: no answer in"
                    f" {self.silence_timeout:g} s"
                ) from None
            result = cur.pgresult
            if (
                result is None
                or result.status != pq.ExecStatus.COPY_BOTH
                or conn.pgconn.transaction_status != pq.TransactionStatus.ACTIVE
            ):
                raise ReplicationConnectionError(
                    "START_REPLICATION did not enter COPY_BOTH mode "
                    f"(result status {result.status if result else None!r})"
                )
        except psycopg.Error as exc:
            await conn.close()
            raise ReplicationConnectionError(
                f"START_REPLICATION on slot {self.slot!r} failed: {exc}"
            ) from exc
        except BaseException:
            await conn.close()
            raise
        try:
            self._sockets = SocketWaiter(conn.pgconn)
        except psycopg.Error as exc:
            await conn.close()
            raise ReplicationConnectionError(f"replication connection lost: {exc}") from exc
        self._conn = conn
        self.walsender = walsender
        self._last_status = self._last_heard = _monotonic()
        logger.debug(
            "replication started: slot=%r publication=%r from %s",
            self.slot,
            self.publication,
            format_lsn(self.start_lsn),
        )

    async def close(self) -> None:
        """Send a last status update (best effort) and close the connection.

        A ``read_batch`` waiting in another task is woken with
        :class:`ReplicationConnectionError`.
        """
        conn = self._conn
        live = conn is not None and not conn.closed
        if live and self._failed is None:
            try:
                async with asyncio.timeout(_CLOSE_STATUS_TIMEOUT):
                    await self.send_status()
            except (ReplicationConnectionError, TimeoutError) as exc:
                logger.debug("final status update failed: %s", exc)
        if self._sockets is not None:
            self._sockets.abort(ReplicationConnectionError("the replication stream was closed"))
        if live:
            assert conn is not None
            # Not `async with conn`: its exit would send COMMIT while COPY is active.
            await conn.close()

    async def __aenter__(self) -> ReplicationStream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ acks / status

    def ack(self, lsn: Lsn) -> None:
        """Record that everything up to ``lsn`` is durably applied (never moves back).

        Sent to the server with the next status update (periodic, on a keepalive reply,
        or an explicit :meth:`send_status`).
        """
        if lsn > self._flushed_lsn:
            self._flushed_lsn = lsn
            if self.on_confirmable is not None:
                self.on_confirmable(lsn)

    def caught_up(self) -> None:
        """Record that everything read so far is durably applied (or needs nothing), no
        transaction is open, held or waiting, and :meth:`ack` has been told as much.

        Until the next XLogData is read, a keepalive's WAL end is confirmed as flushed as it
        comes (and a keepalive asking for a reply is answered with it): the walsender sent
        everything the WAL before it produced, so nothing in between is for this slot. Any
        XLogData read afterwards ends this until the caller says so again.
        """
        self._caught_up = True

    def _confirm_pending(self) -> bool:
        """Whether more is to be confirmed than may be yet (`confirm_limit`): a reply asked
        for then waits for the save (whose end sends it): answered with the older position,
        a stopping walsender asked again at once, thousands of times."""
        limit = self.confirm_limit
        return limit is not None and self._flushed_lsn > limit

    async def send_status(self, reply: bool = False) -> None:
        """Send one standby status update now: write = flush = apply = the acked LSN.

        ``reply`` asks the server to answer with a keepalive.
        """
        async with self._send_lock:
            pgconn = self._pgconn()
            lsn = self._flushed_lsn
            limit = self.confirm_limit
            if limit is not None and lsn > limit:
                lsn = limit
            msg = _STATUS.pack(b"r", lsn, lsn, lsn, _pg_now_us(), 1 if reply else 0)
            try:
                while pgconn.put_copy_data(msg) == 0:  # libpq's output buffer is full
                    await self._sockets_of(pgconn).writable()
                while pgconn.flush() == 1:
                    await self._sockets_of(pgconn).writable()
            except psycopg.Error as exc:
                raise self._fail("sending a standby status update failed", exc) from exc
            self._last_status = _monotonic()
            self._reply_due = False
            if reply and self._asked_at is None:
                self._asked_at = self._last_status
            logger.debug("status update sent: flushed=%s", format_lsn(lsn))

    # ------------------------------------------------------------------ reading

    async def read_batch(
        self,
        max_messages: int = 5000,
        timeout: float | None = None,
    ) -> list[tuple[int, bytes]]:
        """The XLogData messages available now, as ``(data_start_lsn, payload)``.

        Waits until at least one arrives, or returns ``[]`` once ``timeout`` seconds have
        passed (``None``: wait as long as it takes; ``0``: only what is already here).
        Meanwhile answers keepalives and sends periodic status updates. Raises
        :class:`ReplicationConnectionError` when the connection breaks or the server ends
        the stream.

        ``data_start_lsn`` is what the walsender puts in the XLogData header (observed on
        PG 15): the change's LSN for row messages, the transaction's first LSN for Begin,
        the *end* LSN for Commit, and 0 for Relation/Type messages. Acknowledge a decoded
        Commit's ``end_lsn``, not a header LSN.
        """
        raw = await self.read_raw(max_messages, timeout)
        unpack = _XLOGDATA.unpack_from
        return [(unpack(m, 1)[0], bytes(m[XLOGDATA_HEADER:])) for m in raw]

    async def read_raw(
        self,
        max_messages: int = 5000,
        timeout: float | None = None,
    ) -> list[bytes]:
        """Like :meth:`read_batch`, but each XLogData message whole, header included: the
        pgoutput payload starts at byte :data:`XLOGDATA_HEADER`.

        The replicator's hot path: one copy per message and no slice, header unpacking or
        tuple. ``bytes``, not libpq's memoryviews: those are tracked by the garbage
        collector, and a batch of them held while it is processed made the collector
        run (and promote them) every few hundred messages, measurably slower per change.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._reading:
            raise RuntimeError("read_batch() is already running on this stream")
        self._reading = True
        try:
            return await self._read_batch(max_messages, timeout)
        finally:
            self._reading = False

    async def _read_batch(self, max_messages: int, wait_s: float | None) -> list[bytes]:
        # time.monotonic(), not loop.time(): uvloop's is cached per loop iteration (and in
        # ms), and a busy stream is read many times without the loop iterating.
        pgconn = self._pgconn()
        deadline = None if wait_s is None else _monotonic() + wait_s
        suspended = False
        out: list[bytes] = []
        try:
            pgconn.consume_input()  # pick up whatever the socket has, without blocking
        except psycopg.Error as exc:
            raise self._fail("replication connection lost", exc) from exc
        lingered = not self.linger or wait_s == 0
        while True:
            self._drain(pgconn, out, max_messages)
            now = _monotonic()
            interval = self.busy_status_interval if out else self.status_interval
            if (
                self._reply_due and not self._confirm_pending()
            ) or now - self._last_status >= interval:
                await self.send_status()
                now = _monotonic()
            if out:
                since = now - self._last_data  # since the previous read returned data
                if since > self.flow_gap:
                    self._flow_since = now  # a new flow after a pause
                self._last_data = now
                linger = self.linger - since
                if (
                    lingered
                    or linger <= 0  # the caller took a while (processing): don't add to it
                    or len(out) >= min(_LINGER_BELOW, max_messages)
                    or now - self._flow_since < self.busy_after
                    or (deadline is not None and now + linger > deadline)
                ):
                    if not suspended:
                        # Catching up, data always there: let the loop run other tasks
                        # (HTTP) once per batch instead of starving them until caught up.
                        await asyncio.sleep(0)
                    return out
                lingered = suspended = True
                await asyncio.sleep(linger)
                try:
                    pgconn.consume_input()
                except psycopg.Error as exc:
                    raise self._fail("replication connection lost", exc) from exc
                continue
            wait = self._last_status + self.status_interval - now
            half = self.silence_timeout / 2
            if self._asked_at is None:
                if now - self._last_heard >= half:
                    await self.send_status(reply=True)  # a live server answers at once
                    continue
                wait = min(wait, self._last_heard + half - now)
            elif now - self._asked_at >= half:
                raise self._fail(
                    f"the server stopped answering (nothing received for"
                    f" {now - self._last_heard:.0f} s, not even a keepalive asked for)"
                )
            else:
                wait = min(wait, self._asked_at + half - now)
            if deadline is not None:
                if now >= deadline:
                    return out
                wait = min(wait, deadline - now)
            suspended = True
            if await self._sockets_of(pgconn).wait_readable(max(wait, 0.0)):
                try:
                    pgconn.consume_input()
                except psycopg.Error as exc:
                    raise self._fail("replication connection lost", exc) from exc

    def _drain(self, pgconn: PGconn, out: list[bytes], limit: int) -> None:
        """Move complete CopyData messages from libpq's buffer into ``out`` (no I/O wait).

        XLogData messages are appended whole; the WAL end is taken from the last one (the
        server's WAL end only grows) rather than unpacked from each.
        """
        get_copy_data = pgconn.get_copy_data
        append = out.append
        start = len(out)
        heard = False
        try:
            while len(out) < limit:
                nbytes, data = get_copy_data(1)
                if nbytes <= 0:
                    if nbytes == 0:  # no complete message buffered
                        break
                    raise self._stream_ended(pgconn)
                heard = True
                kind = data[0]
                if kind == _W:
                    append(bytes(data))
                    if nbytes >= BIG_MESSAGE:
                        self.big_message = max(self.big_message, nbytes)
                elif kind == _K:
                    end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                    if end > self._wal_end:
                        self._wal_end = end
                    # (`out` empty: no XLogData came before it that the caller has not seen)
                    if self._caught_up and not out and end > self._flushed_lsn:
                        self._flushed_lsn = end
                        if self.on_confirmable is not None:
                            self.on_confirmable(end)
                    if reply:
                        self._reply_due = True
                else:
                    logger.warning("ignoring unknown replication message %r", bytes(data[:1]))
        except psycopg.Error as exc:
            raise self._fail("reading the replication stream failed", exc) from exc
        finally:
            if heard:
                self._last_heard = _monotonic()
                self._asked_at = None
            if len(out) > start:
                self._caught_up = False
                end = _XLOGDATA.unpack_from(out[-1], 1)[1]
                if end > self._wal_end:
                    self._wal_end = end

    def _stream_ended(self, pgconn: PGconn) -> ReplicationConnectionError:
        """The server ended COPY (error, shutdown): build the error from its final result.

        The error result (e.g. ``AdminShutdown`` after ``pg_terminate_backend``) is turned
        into the matching psycopg exception and chained as ``__cause__``.
        """
        cause: psycopg.Error | None = None
        try:
            if not pgconn.is_busy():  # never block here: only take a result already read
                result = pgconn.get_result()
                if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                    cause = psycopg.errors.error_from_result(result)
        except psycopg.Error as exc:
            cause = exc
        if cause is None:
            detail = pgconn.get_error_message() or "no reason given"
            cause = psycopg.OperationalError(detail)
        err = self._fail("the server ended the replication stream", cause)
        err.__cause__ = cause
        return err

    # ------------------------------------------------------------------ helpers

    def _pgconn(self) -> PGconn:
        if self._failed is not None:
            raise ReplicationConnectionError(str(self._failed)) from self._failed
        conn = self._conn
        if conn is None:
            raise RuntimeError("ReplicationStream.start() has not been called")
        if conn.closed:
            raise ReplicationConnectionError("the replication connection is closed")
        return conn.pgconn

    def _fail(self, what: str, exc: BaseException | None = None) -> ReplicationConnectionError:
        err = ReplicationConnectionError(
            f"{what} (slot {self.slot!r})" + (f": {exc}" if exc else "")
        )
        self._failed = err
        if self._sockets is not None:
            self._sockets.lost()  # before the loop runs again (see `SocketWaiter`)
        logger.debug("%s", err)  # the caller logs what it does about it
        return err

    def _sockets_of(self, pgconn: PGconn) -> SocketWaiter:
        """The waiter on the socket of `pgconn`, the stream's connection."""
        sockets = self._sockets
        assert sockets is not None and sockets.pgconn is pgconn, "set by start()"
        return sockets

"""The replication loop: the source's slot -> shape logs, durably, then the ack.

One task per source reads the slot (`stream`) in batches; the `assembler` turns each
batch into committed transactions per shape, and each goes where `transactions.sort_out`
says: parked on its shape, skipped, or appended to the shape's log with offsets
`<commit lsn>_<op>`. Appends are staged: after a batch the loop fsyncs the touched log
files, then publishes what they hold (readers see it, live requests wake) and only then
confirms the commit's end LSN to the slot, so a crash at any point replays instead of
losing changes; replayed transactions are recognised by their LSN and skipped per shape.

A failed write or fsync (a full disk, EIO) cuts every staged append back, logs one ERROR
and pauses replication (`write_error`, reported by /v1/health): nothing is confirmed, the
slot keeps the WAL, existing shapes are served as they are. A small probe write, retried
with backoff up to a few seconds, tells when space is back; the stream then restarts from
the slot's confirmed position and replays what was cut back, once.

A big transaction (`assembler.BIG_TRANSACTION` changes for its shapes, or one of a few huge
values) is not written in one
go at its Commit, which held the event loop for tens of seconds for a million rows (no HTTP
answer meanwhile, not even /v1/health) and, past Postgres's wal_sender_timeout, got the stream
dropped and the transaction replayed from the start, again and again. `_deliver_big` writes
each shape's entries a part at a time (`PART_ENTRIES`, each encoded and written before the
next, so the encoding is never held whole), the loop serving requests in between, while a
task sends a standby status update every `KEEPALIVE_EVERY` (any reply resets the walsender's
timer). The parts stay staged, invisible to every reader, until all of them are written and
fsynced; a part is a record that does not end its transaction, which `load` cuts off after a
crash, and the slot, not confirmed past the transaction, sends it again.

A lost stream (Postgres restarting, the network) is reconnected with backoff, and a
failure someone has to fix (a dropped slot, a wrong password) is retried slowly and said
once (`failures.Retries`).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable

import psycopg

from ..errors import ServiceUnavailable
from ..log.ends import End
from ..log.entries import change_messages
from ..log.files import LogCutBack, LogWriteError, is_log_chunk, note_durable_size
from ..pg.row_where import Unevaluable
from ..pg.values import UnrepresentableValue
from ..shapes.changes import Change, ChangeEntry, Row, convert_change, moved_onto_held_key
from ..shapes.registry import ShapeRegistry
from ..shapes.router import ShapeRouter
from ..shapes.shape import Shape
from .assembler import BIG_TRANSACTION, BIG_TRANSACTION_BYTES, TransactionAssembler
from .failures import FIRST_DELAY, MAX_DELAY, Retries, describe_failure
from .position import SavedPosition
from .slot import end_walsender, slot_confirmed_lsn
from .stream import SILENCE_TIMEOUT, ReplicationConnectionError, ReplicationStream, Walsender
from .transactions import APPEND, ParkedShapes, admit, sort_out
from .wal import Lsn, Xid

__all__ = ["ReplicationState", "Replicator"]

logger = logging.getLogger(__name__)

PROBE_BYTES = 64 * 1024
#: Longest pause between two space probes while the disk is full: a 64 kB write is nothing,
#: and replication resumes within a second of space coming back (MAX_DELAY, 5 s, made it
#: wait up to 5 s, and a test of it as long, twice).
PROBE_MAX_DELAY = 1.0


class ReplicationState(enum.StrEnum):
    """What the loop reports through `on_state` (with a reason unless ACTIVE)."""

    ACTIVE = "active"
    CONNECTING = "connecting"  # (re)connecting after a failure
    DISK_FULL = "disk_full"  # paused: shape logs cannot be written


#: Seconds between looks whether the stream is past a held transaction again (`_settle`).
REDELIVERY_POLL = 0.05

#: Entries per part of a big transaction (`Replicator._append_parts`): a record of ~100 kB.
PART_ENTRIES = 1000
#: Seconds between standby status updates while data streams in (`busy_status_interval`) and
#: while a big transaction is written and fsynced: any reply resets the walsender's
#: wal_sender_timeout timer (60 s by default; an operator may set a few seconds). Answering
#: the walsender's own requests is not enough: while a big transaction streams in, a request
#: waits in the socket behind megabytes of changes the engine reads first, and a 1 s
#: timeout ran out before the engine read it.
KEEPALIVE_EVERY = 0.25

#: The default limit of a shape's log (`Replicator.log_limit`, no `--max-log-bytes`): the
#: larger of this many bytes and `AUTO_LOG_SNAPSHOTS` times its snapshot's bytes.
AUTO_LOG_FLOOR = 64 << 20
AUTO_LOG_SNAPSHOTS = 4


class StreamReleased(Exception):
    """The replicator let its stream go (`Replicator._release_stream`)."""


class StreamRecycled(Exception):
    """The stream read a huge message and is confirmed past it: a new one gives back the
    memory libpq keeps for it (`ReplicationStream.big_message`)."""


def _fsync_paths(paths: set[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # rotated meanwhile
        try:
            # (a chunk file notes how long it was durable: `load` finds it cut shorter)
            size = os.fstat(fd).st_size if is_log_chunk(path) else None
            os.fsync(fd)
            if size is not None:
                note_durable_size(fd, size)
        finally:
            os.close(fd)


def _probe_write(directory: str) -> None:
    """Write, fsync and delete a small file: raises OSError while the disk is full."""
    path = os.path.join(directory, ".space-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = b"\0" * PROBE_BYTES
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass


def _big(changes: list[Change]) -> bool:
    """Whether a transaction's changes for a shape are too many, or too big, to write in
    one go (`assembler.BIG_TRANSACTION`, `BIG_TRANSACTION_BYTES`: what makes the stream
    loop write one a part at a time), for one applied apart from the stream loop."""
    if len(changes) >= BIG_TRANSACTION:
        return True
    size = 0
    for _kind, old, new, _op in changes:
        for row in (old, new):
            if row is not None:
                for value in row.values():
                    if isinstance(value, str):
                        size += len(value)
        if size >= BIG_TRANSACTION_BYTES:
            return True
    return False


def _unreadable_rows(shape: Shape, changes: list[Change]) -> list[Row]:
    """The rows of `changes` on which the shape's where clause cannot tell (old and new
    ones alike), in order."""
    where = shape.where
    if where is None:
        return []
    rows: list[Row] = []
    for _kind, old, new, _op in changes:
        for row in (old, new):
            if row is None:
                continue
            try:
                where.matches(row)
            except UnrepresentableValue:
                rows.append(row)
    return rows


def _answered(shape: Shape, rows: list[Row], answers: list[bool]) -> Callable[[Row], bool]:
    """The shape's `matches`, with Postgres's answers for the rows it cannot tell (by
    identity: those very row objects of the transaction)."""
    where = shape.where
    assert where is not None
    decided = {id(row): answer for row, answer in zip(rows, answers, strict=True)}

    def matches(row: Row) -> bool:
        try:
            return where.matches(row)
        except UnrepresentableValue:
            return decided[id(row)]

    return matches


#: Asks Postgres whether each row matches the shape's where clause.
Evaluate = Callable[[Shape, list[Row]], Awaitable[list[bool]]]


class _KeepAlive:
    """While a big transaction is written: a task sends the stream a standby status update
    every `KEEPALIVE_EVERY` (the acked position, unchanged: it only says the engine is
    alive), and `step` lets the event loop run (after each part: a few ms of work; a
    20 ms budget between turns let a health request wait for the whole of a 20,000-row
    transaction under load).

    `fatal`: a lost stream ends the writing (`step` raises), as for the stream loop's own
    writing; else (a held transaction written beside the stream loop, which reconnects on
    its own) the keepalives just stop."""

    def __init__(self, stream: ReplicationStream | None, fatal: bool = True) -> None:
        self.stream = stream
        self.fatal = fatal
        self.failed: ReplicationConnectionError | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _KeepAlive:
        if self.stream is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        assert self.stream is not None
        while True:
            await asyncio.sleep(KEEPALIVE_EVERY)
            try:
                await self.stream.send_status()
            except ReplicationConnectionError as exc:  # the stream is lost: `step` says so
                if self.fatal:
                    self.failed = exc
                return
            except RuntimeError:  # (a stream not started yet, or closed: the loop's own)
                return

    async def step(self) -> None:
        """Let the loop run now (after a part, or a piece of a huge record: each a few ms
        of work); raises if the stream was lost meanwhile (what was staged is cut back, and
        the slot sends it all again)."""
        if self.failed is not None:
            raise self.failed
        await asyncio.sleep(0)
        if self.failed is not None:
            raise self.failed


def _slot_in_use(exc: BaseException) -> bool:
    """Whether a stream failed to start because another walsender holds the slot."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, psycopg.errors.ObjectInUse):
            return True
        cause = cause.__cause__
    return False


async def _close(stream: ReplicationStream) -> None:
    try:
        await stream.close()
    except Exception:
        logger.debug("error closing replication stream", exc_info=True)


class Replicator:
    """One source's replication: `run` streams its slot into its shapes' logs until cancelled.

    Also the way in for the rest of the engine: `release_pending` when a shape's snapshot
    horizon is known, `global_lsn` and `recent_xids` for requests and snapshots,
    `write_error` for /v1/health.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        registry: ShapeRegistry,
        router: ShapeRouter,
        *,
        fsync: bool = True,
        on_state: Callable[[ReplicationState, str | None], None] | None = None,
        replace_slot_if_gone: Callable[[], Awaitable[bool]] | None = None,
        went_back: Callable[[], Awaitable[bool]] | None = None,
        silence_timeout: float = SILENCE_TIMEOUT,
        evaluate: Evaluate | None = None,
        find_ancestors: Callable[[int], Awaitable[None]] | None = None,
        verify_table: Callable[[int], Awaitable[None]] | None = None,
        position: SavedPosition | None = None,
        max_log_bytes: int | None = None,
        auto_log_floor: int = AUTO_LOG_FLOOR,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.registry = registry
        self.router = router
        self.fsync = fsync
        #: Seconds the stream may hear nothing before it counts as lost (`ReplicationStream`).
        self.silence_timeout = silence_timeout
        self.on_state = on_state or (lambda state, reason: None)
        #: Asked after a failure: makes a new slot (retiring every shape) if it is gone.
        self.replace_slot_if_gone = replace_slot_if_gone
        #: Whether Postgres went back in time (`Source._went_back_while_running`), asked as
        #: each stream starts: if it did, nothing more is read (the engine is stopping).
        self.went_back = went_back
        #: Asks Postgres whether rows match a shape's where clause (`pg/row_where.py`), for
        #: rows the engine cannot read exactly; None: such a shape is rotated instead.
        self.evaluate = evaluate
        #: Looks up a table's ancestors into the router (`ShapeRouter.add_ancestors`), for a
        #: relation the stream names for the first time while shaped parents exist.
        self.find_ancestors = find_ancestors
        #: Compares the shapes of a table (and its ancestors') with the catalog and retires
        #: the changed ones, for a Relation message naming it (`Tables.verify_relation`).
        self.verify_table = verify_table
        #: What the stream may confirm, saved in the data dir first (None: no limit).
        self.position = position
        #: A shape whose log grows past this many bytes is rotated (`_rotate_oversized`):
        #: None is the default, `log_limit`'s relative one; 0: no limit.
        self.max_log_bytes = max_log_bytes
        #: The least the default limit is (`log_limit`; smaller only in tests).
        self.auto_log_floor = auto_log_floor
        if position is not None:
            position.on_saved = self._position_saved
        self._stream: ReplicationStream | None = None
        # The WAL end and the time last heard of the streams before this one (`wal_end`,
        # `last_heard`: a new stream knows neither until Postgres sends something).
        self._wal_end_before = Lsn(0)
        self._heard_before = 0.0
        self._background_status: set[asyncio.Future[None]] = set()
        # Shapes holding transactions for Postgres's answer, each with its task (`_settle`).
        self._holding: dict[Shape, asyncio.Task[None]] = {}
        self.connected = asyncio.Event()
        self.assembler = TransactionAssembler(registry, router, self._deliver)
        self.assembler.verify_relations = verify_table is not None
        #: Apply raw XLogData messages; returns the end LSN of the last commit among them.
        self.handle_batch = self.assembler.handle_batch
        self._dirty: set[Shape] = set()  # shapes with appends staged since the last flush
        self._parked = ParkedShapes()
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        #: Why shape log writes fail (disk full, ...) while replication is paused, else None.
        self.write_error: str | None = None
        self._write_error_since = 0.0
        # Seconds to wait before the next space probe: grows while writes fail again after
        # a probe succeeded (the probe's 64 kB fit, a bigger transaction does not).
        self._space_delay = 0.0
        self._failure: LogWriteError | None = None  # a background flush's failed write
        self._slot_checked = False
        #: Set once the slot was asked about the cuts the load made (`_check_repaired_shapes`):
        #: a cut shape is not served before (`Source.resolve`).
        self.cuts_checked = asyncio.Event()
        #: The walsender of the last stream that started and then failed: on a network that
        #: went silent it may still hold the slot (`_end_abandoned_walsender`).
        self._abandoned: Walsender | None = None
        self._readable_lsn = Lsn(0)
        #: The LSN of the last commit the stream delivered since appends were last cut back
        #: (0 since: the slot sends them again). A held transaction is appended only once
        #: the stream is past it again: before, an earlier transaction of its shape that
        #: was cut back (a failed write or fsync) would be skipped as a replay once it came.
        self._delivered = 0
        #: How many times staged appends were cut back (`_rollback_staged`): a held big
        #: transaction written beside the stream loop stops when it changes (`_write_part`).
        self._cut_backs = 0
        #: Set when the stream should be let go (`_release_stream`): the loop closes it.
        self._release: str | None = None

    @property
    def global_lsn(self) -> Lsn:
        """The LSN of the last commit read from the stream (at least the slot's confirmed
        position at start: every commit before it was read, by this process or before)."""
        return self.assembler.global_lsn

    @property
    def readable_lsn(self) -> Lsn:
        """The LSN through which every commit read is readable in its shapes' logs.

        What an up-to-date may promise (`global_last_seen_lsn`): clients such as pglite-sync
        drop a later change at or below it as already applied. `global_lsn` runs ahead of it
        while a commit's appends wait for their fsync and publish; a shape still holding
        unpublished appends (parked changes released after its snapshot) is behind it too
        (`ShapeLog.has_unpublished`).
        """
        return self._readable_lsn

    @property
    def wal_end(self) -> Lsn:
        """The highest WAL end Postgres's walsender reported (keepalives and XLogData: the
        WAL it has decoded and sent) on any stream of this replicator; 0 before any."""
        stream = self._stream
        return max(self._wal_end_before, stream.wal_end if stream is not None else Lsn(0))

    @property
    def last_heard(self) -> float:
        """When (`time.monotonic()`) Postgres last sent anything on a replication stream (or
        one started); 0.0 before any."""
        stream = self._stream
        return max(self._heard_before, stream.last_heard if stream is not None else 0.0)

    @property
    def recent_xids(self) -> deque[Xid]:
        """The xids of the last transactions read (see `TransactionAssembler.recent_xids`)."""
        return self.assembler.recent_xids

    @property
    def transactions_seen(self) -> int:
        return self.assembler.transactions_seen

    @property
    def changes_seen(self) -> int:
        return self.assembler.changes_seen

    @property
    def unflushed(self) -> bool:
        """Whether appends were staged since the last `flush` (invisible to readers until it
        runs): the stream loop, and a benchmark driving `handle_batch` itself, flush then."""
        return bool(self._dirty)

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Stream forever: reconnect with backoff (Postgres restarts, network blips), slowly
        for failures someone has to fix (they are logged as such), and pause while shape
        logs cannot be written."""
        retries = Retries()
        self.assembler.deliver_later = True  # big transactions: `_deliver_big`
        while True:
            wait = 0.0
            if self.write_error is not None:
                await self._wait_for_space()
            stream = ReplicationStream(
                self.dsn,
                self.slot,
                self.publication,
                busy_status_interval=KEEPALIVE_EVERY,
                silence_timeout=self.silence_timeout,
            )
            started_at: float | None = None
            if self.position is not None:
                stream.confirm_limit = self.position.saved
                stream.on_confirmable = self.position.want
            self._stream = stream
            try:
                await stream.start()
                if self.went_back is not None and await self.went_back():
                    await _close(stream)
                    await asyncio.Event().wait()  # (until the stop cancels this task)
                started_at = time.monotonic()
                self._abandoned = None  # (the slot is this stream's now)
                if not self._slot_checked:
                    await self._check_repaired_shapes()
                    if self.max_log_bytes != 0:  # (loaded over a limit set since: the
                        for shape in list(self.registry.by_handle.values()):  # disk may be full)
                            limit = self.log_limit(shape)
                            if limit is not None and shape.log.log_bytes > limit:
                                self._rotate_oversized(shape, limit)
                if not self._readable_lsn:
                    # Nothing read since start: every commit before the slot's position is
                    # in the shape logs (the slot only confirms what is durable), so that is
                    # what an up-to-date may promise (Electric's LsnTracker is initialised
                    # to the slot's flushed LSN), not "0". It is also what the engine has
                    # seen (`global_lsn`): an offset at or below it is not "beyond anything
                    # seen", so one the shape never issued is its 409 at once, not a wait
                    # for the next commit read and a 400 (after a restart with no writes
                    # PG15 sends no transaction at all: that lasted until the next write).
                    confirmed = await slot_confirmed_lsn(self.dsn, self.slot)
                    if confirmed is not None and not self._readable_lsn:
                        self._readable_lsn = confirmed
                        self.assembler.global_lsn = max(self.assembler.global_lsn, confirmed)
                self.connected.set()
                if self.write_error is None:
                    self.on_state(ReplicationState.ACTIVE, None)
                took = retries.started(started_at)
                if took is not None:
                    logger.info(
                        "replication recovered after %.1f s (%d attempts)", took, retries.attempts
                    )
                await self._consume(stream)
            except asyncio.CancelledError:
                raise
            except LogWriteError as exc:
                self.connected.clear()
                self._write_failed(exc)
                continue  # _wait_for_space() paces the retries
            except StreamRecycled as recycled:
                self.connected.clear()
                # Closed before it says so (the `finally` closed it after): what libpq kept
                # is given back when the line is logged, which a watcher of the RSS waits for.
                await _close(stream)
                logger.info(
                    "replication stream started again: it read a message of %d MB, whose"
                    " buffer the connection would have kept",
                    recycled.args[0] >> 20,
                )
            except Exception as exc:
                self.connected.clear()
                self._rollback_staged()
                await _close(stream)  # its walsender lets go of the slot, if it may be dropped
                if started_at is not None:
                    self._abandoned = stream.walsender
                if await self._slot_replaced():
                    continue  # a new slot: stream from it at once
                if _slot_in_use(exc) and await self._end_abandoned_walsender():
                    continue  # the slot is let go of at once: stream again
                problem = describe_failure(exc)
                retry = retries.failed(problem, time.monotonic(), started_at)
                if problem.permanent:
                    if retry.report:
                        logger.error(
                            "replication cannot start (slot %r): %s. This will not fix itself:"
                            " %s. Retrying every %d s.",
                            self.slot,
                            problem.reason,
                            problem.fix,
                            retry.wait,
                        )
                else:
                    logger.warning(
                        "replication %s (%s); retrying in %.1f s",
                        "stream lost" if started_at is not None else "cannot connect",
                        problem.reason,
                        retry.wait,
                    )
                self.on_state(ReplicationState.CONNECTING, problem.reason)
                wait = retry.wait
            finally:
                self._wal_end_before = max(self._wal_end_before, stream.wal_end)
                self._heard_before = max(self._heard_before, stream.last_heard)
                self.assembler.reset()
                self._delivered = 0  # the next stream starts again from the slot
                # The next stream sends again from the slot's confirmed position: older
                # transactions than a shape's last one come again, and those a shape has no
                # entry for must meet its snapshot's visibility test again (`past_xmax`
                # skipped it: a replayed one its snapshot holds was appended twice).
                for shape in self.registry.by_handle.values():
                    shape.past_xmax = False
                await _close(stream)
            if wait:  # after closing: a dead connection is not kept through the wait
                await asyncio.sleep(wait)

    async def _end_abandoned_walsender(self) -> bool:
        """Whether the walsender of this engine's last stream, given up on, held the slot and
        was ended (a network gone silent: Postgres would keep it until its own
        `wal_sender_timeout`, and the stream down all that while)."""
        abandoned, self._abandoned = self._abandoned, None
        if abandoned is None:
            return False
        try:
            ended = await end_walsender(self.dsn, self.slot, abandoned)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres unreachable, say: the stream's retries go on
            logger.debug("could not end the previous stream's walsender: %s", exc)
            return False
        if ended:
            logger.warning(
                "replication: the walsender of the stream given up on (pid %d) still held"
                " slot %r; ended it, so the stream starts again now instead of when"
                " Postgres's wal_sender_timeout runs out",
                abandoned.pid,
                self.slot,
            )
            await asyncio.sleep(FIRST_DELAY)  # (it lets go of the slot as it exits)
        return ended

    async def _slot_replaced(self) -> bool:
        """Whether the slot was gone (dropped, invalidated) and has been made again."""
        if self.replace_slot_if_gone is None:
            return False
        try:
            return await self.replace_slot_if_gone()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres unreachable, say: the stream's retries go on
            logger.debug("could not check the replication slot: %s", exc)
            return False

    async def _consume(self, stream: ReplicationStream) -> None:
        if self._nothing_unconfirmed():
            stream.caught_up()  # (nothing read yet: all there is to confirm is WAL it skips)
        while True:
            if self._release is not None:
                why, self._release = self._release, None
                raise StreamReleased(why)
            batch = await stream.read_raw(timeout=1.0)
            last_end = self.handle_batch(batch) if batch else 0
            got = bool(batch)
            # (not kept while a big transaction is written: a huge row's message is freed
            # once read, before its entries are encoded)
            del batch
            while self.assembler.unhandled:
                if self.assembler.big_commit:
                    touched, xid, lsn, end = self.assembler.take_commit()
                    await self._deliver_big(stream, touched, xid, lsn)
                    del touched  # (a huge row's values were kept until the next big one)
                    last_end = self.handle_batch(self.assembler.unhandled) or end
                    continue
                rest = self.assembler.unhandled
                verify = self.assembler.unverified_oid
                if verify and self.verify_table is not None:
                    # A Relation message for a shaped table: its description may have
                    # changed in a way the message does not show (a new primary key under
                    # REPLICA IDENTITY FULL); its changed shapes are retired before its
                    # next change is applied. (Fails: the stream is read again.)
                    try:
                        await self.verify_table(verify)
                    except ServiceUnavailable as exc:
                        # The catalog cannot be read now (Postgres stopping: new connections
                        # refused while the walsender waits for this engine's confirmation).
                        # A message that shows no change goes on unchecked (the periodic
                        # schema check looks again); one that shows a change waits.
                        if not self.assembler.relation_unchanged():
                            raise
                        logger.info(
                            "table %d's description could not be checked (%s): going on,"
                            " the periodic schema check looks again",
                            verify,
                            exc.message,
                        )
                    self.assembler.relation_verified(verify)
                else:  # a new relation: its ancestors, then on
                    oid = self.assembler.unresolved_oid
                    if self.find_ancestors is not None:
                        await self.find_ancestors(oid)  # (fails: the stream is read again)
                    self.assembler.ancestry_resolved(oid)
                last_end = self.handle_batch(rest) or last_end
            read_through = self.assembler.session_lsn
            idle = not self.assembler.in_transaction and not got
            # What may be confirmed once this flush is done: computed first, so that a
            # transaction released from a shape's parking meanwhile is not confirmed
            # before it is durable.
            read_to = Lsn(last_end or stream.wal_end)
            ack = self.held_horizon(self._parked.ack_horizon(read_to))
            if self._dirty:
                await self.flush()
            if self._failure is not None:
                raise self._failure
            # Every commit read so far is published (or parked for a snapshot in progress).
            if read_through > self._readable_lsn:
                self._readable_lsn = read_through
            if self.write_error is not None and (last_end or idle):
                self._writes_ok()
            if last_end or idle:
                if self.registry.store.unsettled:
                    # A shape retired by what was read (TRUNCATE, a schema change) must
                    # not come back after a crash once the slot is past it.
                    await self.registry.store.settle()
                # Idle and nothing half-done: everything up to wal_end is processed.
                stream.ack(ack)
                if ack == read_to and self._nothing_unconfirmed():
                    # A keepalive's WAL end may be confirmed at once until more data comes:
                    # a stopping walsender waits for exactly that (`ReplicationStream`).
                    stream.caught_up()
                    if stream.big_message and (
                        self.position is None or self.position.saved >= stream.flushed_lsn
                    ):
                        # Confirmed past the huge message (else the slot sends it again):
                        # a new stream gives back what libpq kept for it, per source.
                        await stream.send_status()
                        raise StreamRecycled(stream.big_message)
            if self.position is not None:
                self.position.want(stream.flushed_lsn)  # (saved first, then confirmed)

    def _position_saved(self, lsn: Lsn) -> None:
        """A later position is saved: the stream may confirm it, and says so at once (a
        stopping walsender waits for its WAL to be confirmed)."""
        stream = self._stream
        if stream is None:
            return
        stream.confirm_limit = lsn
        task = asyncio.ensure_future(self._send_status(stream))
        self._background_status.add(task)
        task.add_done_callback(self._background_status.discard)

    @staticmethod
    async def _send_status(stream: ReplicationStream) -> None:
        try:
            await stream.send_status()
        except Exception as exc:  # (the stream's own loop finds it failed)
            logger.debug("could not send a status update: %s", exc)

    def _nothing_unconfirmed(self) -> bool:
        """Whether everything read from the stream is durable in its shapes' logs (or needs
        no log): no transaction half-read, parked, held for Postgres's answer, staged or
        being flushed, and no failed write waiting to pause replication."""
        return (
            not self.assembler.in_transaction
            and not self._dirty
            and not self._holding
            and not self._background
            and not len(self._parked)
            and self._failure is None
            and self.write_error is None
            and not self.registry.store.unsettled
        )

    async def _check_repaired_shapes(self) -> None:
        """Shapes whose torn log tail was cut on load are whole again only if the slot
        sends the cut transactions again; retire those it will not (clients refetch)."""
        repaired = [s for s in self.registry.by_handle.values() if s.log.repaired_from]
        if repaired:
            confirmed = await slot_confirmed_lsn(self.dsn, self.slot)
            kept: list[str] = []
            for shape in repaired:
                cut_from = shape.log.repaired_from
                if confirmed is None or (cut_from is not None and cut_from < confirmed):
                    self.registry.rotate(shape, "its log was damaged past what can be replayed")
                else:
                    logger.info("shape %s: torn log tail cut, replaying it", shape.handle)
                    kept.append(shape.handle)
                shape.log.repair_checked()
            if kept:
                self.registry.store.cuts_replayed(kept)
        self._slot_checked = True
        self.cuts_checked.set()

    # -- shape log writes: stage, flush, pause while they fail -----------------------------

    def _deliver(self, touched: dict[Shape, list[Change]], xid: Xid, lsn: Lsn) -> None:
        """A committed transaction's changes per shape, from the assembler."""
        if self._failure is None:  # (else the stream is replayed: not past anything)
            self._delivered = lsn
        to_append, parked = sort_out(touched, xid, lsn)
        for shape in parked:
            self._parked.add(shape)
        for shape, changes in to_append:
            if shape.held:  # behind a transaction waiting for Postgres's answer
                shape.hold(xid, lsn, changes)
                self._start_settling(shape)
            else:
                self._append(shape, xid, lsn, changes)

    async def _deliver_big(
        self,
        stream: ReplicationStream | None,
        touched: dict[Shape, list[Change]],
        xid: Xid,
        lsn: Lsn,
    ) -> None:
        """`_deliver` for a big transaction, written a part at a time (`_append_parts`), the
        event loop running between parts and the walsender kept from timing out; published
        (fsynced first) once every shape has all of it, before the stream is read on.

        Holds the flush lock throughout: another task's flush (a released shape's, a held
        transaction's) would publish the parts written so far."""
        started = time.monotonic()
        logger.info(
            "transaction %d: writing %d changes for %d shapes, a part at a time",
            xid,
            sum(map(len, touched.values())),
            len(touched),
        )
        async with _KeepAlive(stream) as alive, self._flush_lock:
            try:
                # What earlier transactions staged is published first, so that a shape
                # whose part needs Postgres's answer (or a failed write) cuts back this one
                # only.
                await self._flush_staged()
                if self._failure is not None:
                    raise self._failure
                self._delivered = lsn
                to_append, parked = sort_out(touched, xid, lsn)
                for shape in parked:
                    self._parked.add(shape)
                for shape, changes in to_append:
                    if shape.rotated:  # (meanwhile, by a request or a schema check)
                        continue
                    if shape.held:
                        shape.hold(xid, lsn, changes)
                        self._start_settling(shape)
                    else:
                        await self._append_parts(shape, xid, lsn, changes, alive)
                await self._flush_staged()
                if self._failure is not None:
                    raise self._failure
            except BaseException:
                # Cut back before the lock is let go: the keep-alive's exit awaits, and a
                # flush waiting for the lock (a new shape's parked transactions released, a
                # held one settled) would publish the parts written so far; the replay then
                # takes the shape for having the transaction and skips it (rows lost).
                self._rollback_staged()
                raise
        logger.info(
            "transaction %d: %d changes delivered to %d shapes in %.1f s",
            xid,
            sum(map(len, touched.values())),
            len(to_append),
            time.monotonic() - started,
        )

    async def _append_parts(
        self,
        shape: Shape,
        xid: Xid,
        lsn: Lsn,
        changes: list[Change],
        alive: _KeepAlive,
        matches: Callable[[Row], bool] | None = None,
        epoch: int | None = None,
    ) -> bool:
        """`_append` for a big transaction: its entries for the shape are encoded and
        written `PART_ENTRIES` at a time, staged (see `_deliver_big`). `matches`: Postgres's
        answers on the rows the engine cannot read (a held transaction, `_settle_held`);
        `epoch`: `_cut_backs` when it began (a held one: see `_write_part`).

        Returns whether all of it is staged, which may be nothing (none of its rows is the
        shape's): False if the shape was rotated meanwhile, or the transaction held whole
        for a row whose where clause only Postgres can evaluate."""
        log = shape.log
        relation = shape.relation
        entries: list[ChangeEntry] = []
        written = False
        moved_in: set[str] = set()
        deferrable = shape.table.pk_deferrable
        for kind, old, new, op in changes:
            start = len(entries)
            try:
                convert_change(shape, kind, old, new, op, entries, matches)
            except UnrepresentableValue:
                # Held whole (`_hold_unreadable`): the parts written go (nothing else of
                # the shape's is staged: flushed before).
                if written:
                    log.rollback()
                self._hold_unreadable(shape, xid, lsn, changes)
                return False
            if deferrable and moved_onto_held_key(entries, start, moved_in):
                if written:
                    log.rollback()
                self._rotate_key_swap(shape, xid)
                return False
            if len(entries) > PART_ENTRIES:
                # The last entry is kept back: the last part must end the transaction (its
                # last entry says so to the client), and a part never ends with op 0 (the
                # offset `<lsn>_0` names the transaction's end, `log/files.py`).
                part = entries[:-1]
                del entries[:-1]
                messages = change_messages(relation, xid, lsn, part, ends=False)
                del part
                if not await self._write_part(shape, lsn, messages, False, alive, epoch):
                    return False
                written = True
        if entries:
            messages = change_messages(relation, xid, lsn, entries)
            entries.clear()
            return await self._write_part(shape, lsn, messages, True, alive, epoch)
        return not shape.rotated

    async def _write_part(
        self,
        shape: Shape,
        lsn: Lsn,
        messages: list[tuple[int, bytes]],
        ends: bool,
        alive: _KeepAlive,
        epoch: int | None = None,
    ) -> bool:
        """Stage one part of a big transaction in the shape's log, paced (a huge value is
        written a few MB at a time, the loop running in between); returns False once the
        shape is rotated (its files are being deleted: nothing more is written).

        `epoch` (a held transaction, written beside the stream loop): raises `LogCutBack`
        once staged appends were cut back since (`_rollback_staged`: a failed write
        elsewhere, a lost stream), the parts written so far among them. The next part
        would start at the published end, and the last one publish the rest of the
        transaction as if whole (rows lost; and an earlier transaction of the shape, cut
        back too, skipped as a replay when the slot sent it again)."""
        self._check_not_cut_back(epoch)
        self._dirty.add(shape)  # (before: a failed write elsewhere cuts it back too)
        try:
            written = await shape.log.append_transaction_paced(lsn, messages, ends, alive.step)
        except LogCutBack:
            if self._failure is not None:  # (what cut it back: the stream loop pauses)
                raise self._failure from None
            raise
        if self._failure is not None:  # cut back meanwhile: the stream loop pauses
            raise self._failure
        self._check_not_cut_back(epoch)
        if not written or shape.rotated:
            return False
        await alive.step()  # (a part is a few ms of work: the loop runs after each)
        return not shape.rotated

    def _check_not_cut_back(self, epoch: int | None) -> None:
        """Raise `LogCutBack` if staged appends were cut back since `epoch` (`_cut_backs`
        when a held transaction's writing began; None: not a held one, nothing to check)."""
        if epoch is not None and epoch != self._cut_backs:
            raise LogCutBack(errno.ECANCELED, "the log was cut back while being written")

    def release_pending(self, shape: Shape) -> None:
        """The shape's snapshot horizon is known: apply what was parked, in order."""
        parked = shape.take_parked()
        self._parked.discard(shape)
        try:
            for xid, lsn, changes in parked:
                if shape.rotated:  # `_append` rotated it (an unrepresentable value)
                    break
                if admit(shape, Xid(xid), Lsn(lsn)) is APPEND:
                    if shape.held or _big(changes):
                        # A big one is written a part at a time by the settling task
                        # (`_settle_held`), the loop running meanwhile; the shape's later
                        # transactions wait behind it, in order, as behind any held one.
                        shape.hold(xid, lsn, changes)
                        self._start_settling(shape)
                    else:
                        self._append(shape, Xid(xid), Lsn(lsn), changes)
        except LogWriteError as exc:
            # Not confirmed (they were parked): the stream replays them after the pause.
            self._failure = exc  # the stream loop pauses replication at its next batch
            self._rollback_staged()
            return
        finally:
            # `past_xmax` (set by `admit` of a parked one past the snapshot) says every later
            # transaction *the stream reads* is past it too: only the stream's own order
            # proves that. The stream may be behind the parked ones (started again after a
            # cut-back: the slot re-sends what it did not confirm), and a big one held
            # leaves the log's last LSN behind too: a re-sent transaction the snapshot holds
            # would take the fast path and be appended (chaos t_storm seed 11: a delete of
            # a row the clients never had, an insert of one they held). The next one the
            # stream reads past the snapshot sets it again.
            shape.past_xmax = False
        if self._dirty:
            # Announce now rather than after the stream's next (possibly idle) batch.
            task = asyncio.get_running_loop().create_task(self.flush())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _append(self, shape: Shape, xid: Xid, lsn: Lsn, changes: list[Change]) -> None:
        """Stage one transaction's changes in the shape's log (`sort_out` said to append)."""
        entries: list[ChangeEntry] = []
        try:
            for kind, old, new, op in changes:
                convert_change(shape, kind, old, new, op, entries)
        except UnrepresentableValue:  # (its message holds the row's value: not logged)
            self._hold_unreadable(shape, xid, lsn, changes)
            return
        if shape.table.pk_deferrable and moved_onto_held_key(entries, 0, set()):
            self._rotate_key_swap(shape, xid)
            return
        if entries:
            shape.log.append_transaction(lsn, change_messages(shape.relation, xid, lsn, entries))
            self._dirty.add(shape)

    def _rotate_key_swap(self, shape: Shape, xid: Xid) -> None:
        """Retire a shape a transaction moved a row onto a key another row still held
        (`moved_onto_held_key`): its clients refetch, and get Postgres's rows."""
        logger.info(
            "shape %s: transaction %d moved a row onto a key another row held until later in"
            " it (a deferred primary key): rotating the shape, its clients refetch",
            shape.handle,
            xid,
        )
        self.registry.rotate(shape, "a transaction swapped or shifted primary keys")

    def _hold_unreadable(self, shape: Shape, xid: Xid, lsn: Lsn, changes: list[Change]) -> None:
        """The shape's where clause read a value Postgres holds but the engine cannot read
        exactly (a BC date, a year past 9999, a text cast in a form only Postgres reads, an
        array with bounds): guessing could lose or invent a row. The transaction is held
        and Postgres asked about those rows (`_settle`), the shape's later transactions
        waiting meanwhile; rotated only if Postgres cannot be asked. (Rotating it always
        never finished while such a row kept changing: each change rotated the new shape
        again before its clients were up to date.)"""
        if self.evaluate is None:
            self._rotate_unreadable(shape)
            return
        shape.hold(xid, lsn, changes)
        self._start_settling(shape)

    def _rotate_unreadable(self, shape: Shape, failed: str | None = None) -> None:
        """Rotate a shape whose where clause read a value only Postgres can evaluate, when
        Postgres cannot be asked (no `evaluate`), or was and failed (`failed` says how: a
        data error of the clause on the row, say: the line said "could not be asked" for
        those too, sending an operator looking for BC dates; attack)."""
        if failed is not None:
            logger.warning(
                "shape %s of table %s.%s rotated: Postgres could not evaluate its where"
                " clause on a row (%s)",
                shape.handle,
                *shape.relation,
                failed,
            )
            self.registry.rotate(shape, "where clause could not be evaluated on a row")
            return
        logger.warning(
            "shape %s of table %s.%s rotated: its where clause read a value only Postgres "
            "can evaluate (a date outside years 1-9999, or a text cast in a form the engine "
            "does not read exactly as Postgres), and Postgres could not be asked",
            shape.handle,
            *shape.relation,
        )
        self.registry.rotate(shape, "where clause read an unrepresentable value")

    # -- rows only Postgres can evaluate the where clause on -------------------------------

    @property
    def holding(self) -> int:
        """Shapes whose transactions wait for Postgres's answer on some row."""
        return len(self._holding)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Its tasks besides `run` (held transactions settling, flushes), for a stop."""
        return [*self._holding.values(), *self._background]

    def _start_settling(self, shape: Shape) -> None:
        if shape not in self._holding:
            task = asyncio.get_running_loop().create_task(
                self._settle(shape), name=f"settle-{shape.handle}"
            )
            self._holding[shape] = task

    def held_horizon(self, lsn: Lsn) -> Lsn:
        """`lsn`, or just before the oldest transaction held for Postgres's answer: the
        slot must send it again if the engine stops before it is in the log."""
        for shape in self._holding:
            if shape.held and not shape.rotated:
                lsn = Lsn(min(lsn, shape.held[0][1] - 1))
        return lsn

    async def _settle(self, shape: Shape) -> None:
        """Append the shape's held transactions in order, asking Postgres whether the rows
        the engine cannot read match the where clause. Until Postgres answers (it may be
        restarting) they wait, with backoff; if it cannot be asked about a row at all, the
        shape is rotated as it used to be."""
        try:
            await self._settle_held(shape)
        finally:
            # Forgotten in the step that saw nothing held (no await since): a transaction
            # held after it starts another task (`_start_settling`).
            if self._holding.get(shape) is asyncio.current_task():
                del self._holding[shape]

    async def _settle_held(self, shape: Shape) -> None:
        evaluate = self.evaluate
        delay = FIRST_DELAY
        while shape.held and not shape.rotated:
            entry = shape.held[0]
            xid, lsn, changes = entry
            if lsn > self._delivered:
                # Appends were cut back since the stream delivered it (a failed write): an
                # earlier transaction of the shape may be among them, and comes again
                # first (held before this one, `_deliver`); appending this one now would
                # make it look like a replay of what the log holds, and skip it.
                await asyncio.sleep(REDELIVERY_POLL)
                continue
            unreadable = _unreadable_rows(shape, changes)
            if unreadable and evaluate is None:
                self._rotate_unreadable(shape)
                return
            try:
                answers = await evaluate(shape, unreadable) if evaluate and unreadable else []
            except asyncio.CancelledError:
                raise
            except ServiceUnavailable as exc:  # Postgres unreachable: the transactions wait
                self._release_stream()
                logger.info(
                    "shape %s: Postgres could not evaluate its where clause on a row (%s);"
                    " retrying in %.1f s",
                    shape.handle,
                    exc.message,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            except Exception as exc:  # (Unevaluable says why; anything else: its kind only,
                # a message may hold the row's values)
                why = str(exc) if isinstance(exc, Unevaluable) else type(exc).__name__
                self._rotate_unreadable(shape, why)
                return
            if shape.rotated or not shape.held or shape.held[0] is not entry:
                continue  # (one sent again after a cut-back came before it: that first)
            if lsn > self._delivered:
                continue  # (cut back while Postgres answered: the check above again)
            matches = None if shape.where is None else _answered(shape, unreadable, answers)
            if _big(changes):
                undone = await self._write_held_parts(shape, Xid(xid), Lsn(lsn), changes, matches)
                if shape.rotated:
                    return
                if undone is None:
                    delay = FIRST_DELAY
                    shape.release_held(entry)
                    continue
                retry, reason = undone
                if not retry:
                    # Never again otherwise: its clients would be told "up to date" with
                    # the shape as it was before it, for good (chaos t_storm, 2026-12-06).
                    logger.warning(
                        "shape %s: transaction %d could not be delivered (%s): rotating the"
                        " shape, its clients refetch it",
                        shape.handle,
                        xid,
                        reason,
                    )
                    self.registry.rotate(shape, "a held transaction could not be delivered")
                    return
                logger.warning(
                    "shape %s: transaction %d not delivered yet (%s); trying again in %.1f s",
                    shape.handle,
                    xid,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            entries: list[ChangeEntry] = []
            for kind, old, new, op in changes:
                convert_change(shape, kind, old, new, op, entries, matches)
            if shape.table.pk_deferrable and moved_onto_held_key(entries, 0, set()):
                self._rotate_key_swap(shape, Xid(xid))
                return
            if entries:
                try:
                    messages = change_messages(shape.relation, Xid(xid), Lsn(lsn), entries)
                    shape.log.append_transaction(Lsn(lsn), messages)
                    self._dirty.add(shape)
                except LogWriteError as exc:
                    self._failure = exc  # the stream loop pauses replication
                    self._rollback_staged()
                    logger.warning(
                        "shape %s: transaction %d not delivered yet (a shape log write"
                        " failed: %s); trying again in %.1f s",
                        shape.handle,
                        xid,
                        exc.strerror,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_DELAY)
                    continue
                # Held (the slot not confirmed past it) until it is durable and published:
                # a failed flush or stream cuts it back, and it is appended again.
                await self.flush()
                if shape.log.last_lsn < lsn:
                    logger.warning(
                        "shape %s: transaction %d not delivered yet (cut back before it was"
                        " published: a failed fsync or a lost stream); trying again in %.1f s",
                        shape.handle,
                        xid,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_DELAY)
                    continue
            delay = FIRST_DELAY
            shape.release_held(entry)

    async def _write_held_parts(
        self,
        shape: Shape,
        xid: Xid,
        lsn: Lsn,
        changes: list[Change],
        matches: Callable[[Row], bool] | None,
    ) -> tuple[bool, str] | None:
        """Write and publish a big held transaction (one released after its shape's
        snapshot, say) a part at a time, as `_deliver_big` does: the flush lock held (no
        other flush publishes a part of it), the walsender kept from timing out while the
        stream loop waits for that lock, the event loop running between parts.

        Returns None once it is published whole (or had nothing for the shape: none of its
        rows matches, which wrote nothing and was taken for a failure, retried forever),
        else `(retry, why)`: retry after a failed or cut-back write (the stream sends it
        again); not for anything else, which would never go better."""
        started = time.monotonic()
        logger.info(
            "transaction %d: writing %d changes for shape %s, a part at a time",
            xid,
            len(changes),
            shape.handle,
        )
        async with _KeepAlive(self._stream, fatal=False) as alive, self._flush_lock:
            try:
                await self._flush_staged()  # (what is staged before it goes first)
                if self._failure is not None:
                    return True, f"a shape log write failed: {self._failure.strerror}"
                if shape.rotated:
                    return None
                epoch = self._cut_backs
                if lsn > self._delivered:  # (cut back since the check before Postgres's answer)
                    return True, "appends were cut back: waiting for the stream to send it again"
                complete = await self._append_parts(shape, xid, lsn, changes, alive, matches, epoch)
                if not complete or shape.rotated:
                    if shape.rotated:
                        return None
                    return False, "a row's where clause could not be evaluated"
                self._check_not_cut_back(epoch)  # (while the loop ran after the last part)
                wrote = shape.log.has_unpublished  # (else none of its rows is the shape's)
                await self._flush_staged()
                # Published whole, whatever was cut back elsewhere meanwhile (its fsync over,
                # the shape is no longer among the dirty): never written again.
                if not wrote or (shape.log.last_lsn >= lsn and not shape.log.has_unpublished):
                    failure = None
                elif self._failure is not None:
                    failure = True, f"a shape log write failed: {self._failure.strerror}"
                elif epoch != self._cut_backs:
                    failure = True, "appends were cut back while it was published"
                else:
                    failure = False, "its parts were written but not published"
                if failure is not None:
                    self._dirty.discard(shape)
                    if shape.log.has_unpublished:
                        shape.log.rollback()
                    return failure
            except LogCutBack:
                self._dirty.discard(shape)
                if shape.log.has_unpublished:
                    shape.log.rollback()
                return (
                    True,
                    "appends were cut back while it was written (a failed write or a lost stream)",
                )
            except LogWriteError as exc:
                self._failure = exc  # the stream loop pauses replication
                self._rollback_staged()
                if shape.log.has_unpublished:  # (not among the dirty: cut back all the same)
                    shape.log.rollback()
                return True, f"a shape log write failed: {exc.strerror}"
            except BaseException:
                # This shape's parts cut back before the lock goes (see `_deliver_big`); the
                # transaction stays held and is written again. Only this shape's: the stream
                # loop goes on, and what others staged meanwhile is theirs to publish.
                self._dirty.discard(shape)
                if shape.log.has_unpublished:
                    shape.log.rollback()
                raise
        if shape.rotated:
            return None
        logger.info(
            "transaction %d: %d changes delivered to shape %s in %.1f s",
            xid,
            len(changes),
            shape.handle,
            time.monotonic() - started,
        )
        return None

    def _release_stream(self) -> None:
        """Close the replication stream (the loop starts it again, with its usual backoff):
        a held transaction cannot be confirmed until Postgres answers about it, and a
        Postgres shutting down (fast) waits for its walsender, which waits for the engine
        to confirm everything it sent: neither would ever go on. Closing the stream lets
        the shutdown finish; the slot sends the held transaction again once Postgres is
        back (it is kept held meanwhile: nothing is lost or appended twice)."""
        if self.connected.is_set():
            self._release = "Postgres could not be asked about a held change"

    async def flush(self) -> None:
        """fsync what was appended, publish it, then wake the waiters of the shapes that grew.

        Serialised, so that when the stream loop's flush returns (and it acks), every
        append made before it, including by `release_pending`, is on disk. A failed fsync
        cuts back everything staged and leaves the error in `_failure` for the stream loop.
        """
        async with self._flush_lock:
            await self._flush_staged()

    async def _flush_staged(self) -> None:
        """`flush`, the lock held."""
        dirty, self._dirty = self._dirty, set()
        tokens = []
        paths: set[str] = set()
        ends: list[tuple[str, End]] = []
        for shape in dirty:
            if (end := shape.log.durable_end()) is not None:
                ends.append((shape.handle, end))
            files, token = shape.log.take_dirty()
            paths |= files
            tokens.append((shape, token))
        try:  # (where each log ends, apart from its files: `log/ends.py`)
            self.registry.store.ends.note(ends)
        except OSError as exc:
            self._dirty |= dirty
            self._rollback_staged()
            self._failure = LogWriteError(exc.errno, f"noting log ends: {exc.strerror}")
            return
        if self.fsync and paths:
            try:
                await asyncio.to_thread(_fsync_paths, paths)
            except OSError as exc:
                self._dirty |= dirty
                self._rollback_staged()
                self._failure = LogWriteError(exc.errno, f"fsync: {exc.strerror}")
                return
        bounded = self.max_log_bytes != 0
        for shape, token in tokens:
            if shape.log.publish(token):
                shape.notify()
                if bounded and (limit := self.log_limit(shape)) is not None:
                    if shape.log.log_bytes > limit:
                        self._rotate_oversized(shape, limit)

    def log_limit(self, shape: Shape) -> int | None:
        """The bytes `shape`'s transaction log may hold before the shape is rotated (None:
        no limit now). `--max-log-bytes N`: N (0: none). By default, relative to what a
        new client pays anyway: the larger of `auto_log_floor` (64 MiB) and 4 times the
        shape's snapshot bytes (the sizes of its chunk files, from its marker once loaded):
        a new client then downloads at most ~5 times the snapshot, and a shape with a big
        snapshot is not refetched for a log that is small beside it. Not before its
        snapshot is complete (its size is not known yet): checked at its next publish."""
        fixed = self.max_log_bytes
        if fixed is not None:
            return fixed or None
        if not shape.log.snapshot_complete:
            return None
        return max(self.auto_log_floor, AUTO_LOG_SNAPSHOTS * shape.log.snapshot_bytes)

    def _rotate_oversized(self, shape: Shape, limit: int) -> None:
        """Rotate a shape whose log passed its limit (`log_limit`): shape logs are never
        compacted, so a busy table's shapes grew their logs for good, and a new client
        downloaded all of it (soak: 1.7 MB after an hour for a 20-row shape), and repeated
        big transactions (or huge rows) would fill the disk. Its clients get 409
        must-refetch and a fresh snapshot (which has what was just published): nothing
        lost, nothing served twice. Its files are deleted in the executor; a read in
        flight gets its 409 (`ShapeLog.read_after_async`), a snapshot chunk being sent
        keeps its open file."""
        # (the default named as such: an operator who set no flag looked for who did)
        which = (
            "the default log limit (the larger of 64 MiB and 4 times its snapshot;"
            " --max-log-bytes sets one)"
            if self.max_log_bytes is None
            else "--max-log-bytes"
        )
        logger.info(
            "shape %s: its log holds %d bytes, over %s of %d: rotating",
            shape.handle,
            shape.log.log_bytes,
            which,
            limit,
        )
        if self.max_log_bytes is None:
            self.registry.rotate(shape, f"its log passed the default log limit ({limit} bytes)")
        else:
            self.registry.rotate(shape, f"its log passed --max-log-bytes ({limit} bytes)")

    def _rollback_staged(self) -> None:
        """Cut every append not yet published off its log (the slot replays them)."""
        self._delivered = 0
        self._cut_backs += 1
        dirty, self._dirty = self._dirty, set()
        for shape in dirty:
            shape.log.rollback()

    def _write_failed(self, exc: LogWriteError) -> None:
        """Cut every staged append back; enter (or stay in) the paused state."""
        self._failure = None
        self._rollback_staged()
        if self.write_error is None:
            what = "the disk is full" if exc.disk_full else "a write failed"
            # (said to anyone by /v1/health, and through the proxy: the kind only; the
            # file and the system's words go to the log, soak 14:32)
            self.write_error = f"cannot write shape logs ({what})"
            self._write_error_since = time.monotonic()
            logger.error(
                "%s (%s) in %s; replication paused: the slot is not confirmed and keeps the"
                " WAL, existing shapes are still served, new shapes get 503. Resuming by"
                " itself once writes succeed (checked every few seconds).",
                self.write_error,
                exc.strerror,
                self.registry.directory,
            )
            self.on_state(ReplicationState.DISK_FULL, self.write_error)
        else:
            # The probe succeeded, the writes did not: without a growing pause the stream
            # was started again at once, ten times a second, each time replaying the slot.
            self._space_delay = min(max(FIRST_DELAY, self._space_delay * 2), MAX_DELAY)
            logger.debug("shape log write failed again: %s", exc)

    async def _wait_for_space(self) -> None:
        """Probe with a small write, backing off up to PROBE_MAX_DELAY, until it succeeds."""
        delay = FIRST_DELAY
        directory = str(self.registry.directory)
        if self._space_delay:
            await asyncio.sleep(self._space_delay)
        while True:
            try:
                await asyncio.to_thread(_probe_write, directory)
                return
            except OSError as exc:
                logger.debug("space probe failed: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_DELAY)

    def _writes_ok(self) -> None:
        """A flush after a write failure succeeded: leave the paused state."""
        if self.write_error is not None:
            logger.info(
                "shape log writes succeed again; replication resumed %.1f s after it paused",
                time.monotonic() - self._write_error_since,
            )
            self.write_error = None
            self._space_delay = 0.0
            self.on_state(ReplicationState.ACTIVE, None)

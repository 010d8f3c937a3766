"""The replication stream -> shape logs: decode, assemble transactions, route, append, ack.

One task per source reads pgoutput from the source's slot. For each committed transaction
it asks the router which shapes each row may belong to, converts the change per shape and
appends the shape's entries with offsets `<commit lsn>_<op>`. Appends are staged: after a
batch it fsyncs the touched log files, then publishes what they hold (readers see it, live
requests wake) and only then confirms the commit's end LSN to the slot, so a crash at any
point replays instead of losing changes; replayed transactions are recognised by their LSN
(`<= log.last_lsn`) and skipped per shape.

A failed write or fsync (a full disk, EIO) cuts every staged append back, logs one ERROR
and pauses replication (`write_error`, reported by /v1/health): nothing is confirmed, the
slot keeps the WAL, existing shapes are served as they are. A small probe write, retried
with backoff up to a few seconds, tells when space is back; the stream then restarts from
the slot's confirmed position and replays what was cut back, once.

Transactions committed while a shape's snapshot horizon is still unknown are parked on the
shape (`shape.pending`) and applied, in order, once it is known.

Most changes match no shape, so `handle_batch` works on the raw messages: Begin and Commit
are read from their fixed-size headers, and a row is only decoded as far as the columns the
router's equality indexes need (one dict probe each) unless some shape may want it. Only
those rows, and the rare other messages, become `pgoutput` objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..log.files import LogWriteError
from ..pg.values import UnrepresentableValue
from ..shapes.changes import convert_change, encode_entries
from ..shapes.registry import ShapeRegistry
from ..shapes.router import KeyParser, RowPlan, ShapeRouter
from ..shapes.shape import Shape
from . import pgoutput
from .pgoutput import UNCHANGED_TOAST
from .stream import (
    XLOGDATA_HEADER,
    ReplicationStream,
    describe_failure,
    slot_confirmed_lsn,
)

log = logging.getLogger(__name__)

Change = tuple[str, dict[str, str | None] | None, dict[str, str | None] | None, int]

# The fast path reads raw XLogData messages: the pgoutput payload starts at byte 25.
_H = XLOGDATA_HEADER
_u32 = struct.Struct("!I").unpack_from
_begin = struct.Struct("!QqI").unpack_from  # final_lsn, commit_ts, xid
_commit = struct.Struct("!BQQq").unpack_from  # flags, commit_lsn, end_lsn, commit_ts
_INSERT, _UPDATE, _DELETE, _BEGIN, _COMMIT = b"IUDBC"
_T, _N, _U = b"tnu"  # tuple value kinds: text, NULL, unchanged TOAST
_OLD_KEY, _OLD_ROW = b"KO"

Probes = tuple[tuple[int, KeyParser | None, dict[object, set[Shape]]], ...]


def _tuple_hits(buf: bytes, pos: int, probes: Probes) -> bool:
    """Whether the pgoutput TupleData at ``pos`` has an indexed value some shape is filed
    under; decodes only the probed columns' values and stops after the last one.

    Anything unexpected (an unknown value kind, fewer values than the probed position)
    answers True: the caller then takes the full decoder, which raises or routes exactly
    as `ShapeRouter.candidates` would.
    """
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    col = 0
    for target, parse, by_key in probes:
        if target >= n:
            return True
        while col < target:
            kind = buf[pos]
            if kind == _T:
                pos += 5 + _u32(buf, pos + 1)[0]
            elif kind == _N or kind == _U:
                pos += 1
            else:
                return True
            col += 1
        kind = buf[pos]
        if kind == _T:
            start = pos + 5
            pos = start + _u32(buf, pos + 1)[0]
            if parse is None:
                if by_key.get(buf[start:pos].decode()):
                    return True
            else:
                try:
                    key = parse(buf[start:pos].decode())
                except ValueError:
                    pass
                else:
                    if by_key.get(key):
                        return True
        elif kind == _N or kind == _U:
            pos += 1
        else:
            return True
        col += 1
    return False


def _tuple_end(buf: bytes, pos: int) -> int:
    """The position after the pgoutput TupleData at ``pos`` (-1 if it holds an unknown
    value kind)."""
    n = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    for _ in range(n):
        kind = buf[pos]
        if kind == _T:
            pos += 5 + _u32(buf, pos + 1)[0]
        elif kind == _N or kind == _U:
            pos += 1
        else:
            return -1
    return pos


def _update_may_match(buf: bytes, probes: Probes) -> bool:
    """Whether an Update (raw XLogData: 'U' oid ['K'|'O' TupleData] 'N' TupleData) may
    belong to an indexed shape through its old or its new row: the same answer as
    `ShapeRouter.candidates` being non-empty, without decoding the row."""
    pos = _H + 6
    tuple_kind = buf[_H + 5]
    if tuple_kind == _OLD_KEY or tuple_kind == _OLD_ROW:
        if _tuple_hits(buf, pos, probes):
            return True
        pos = _tuple_end(buf, pos)
        if pos < 0:
            return True
        pos += 1  # the 'N'
    return _tuple_hits(buf, pos, probes)


class _Relation:
    __slots__ = ("columns", "name", "names", "oid", "positions", "schema", "type_oids")

    def __init__(self, rel: pgoutput.Relation) -> None:
        self.oid = rel.oid
        self.schema = rel.schema
        self.name = rel.name
        self.names = tuple(c.name for c in rel.columns)
        self.type_oids = tuple(c.type_oid for c in rel.columns)
        self.positions = {n: i for i, n in enumerate(self.names)}


def _fsync_paths(paths: set[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # rotated meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: Backoff between attempts: replication reconnects and, while writes fail, space probes.
FIRST_DELAY = 0.25
MAX_DELAY = 5.0
#: Slow retry for failures that need someone to fix something (wrong password, ...).
PERMANENT_DELAY = 30.0
PROBE_BYTES = 64 * 1024
#: A stream that ran this long before failing starts a new episode (backoff from the start).
STABLE_AFTER = 10.0


def _probe_write(directory: str) -> None:
    """Write, fsync and delete a small file: raises OSError while the disk is full."""
    path = os.path.join(directory, ".space-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


#: How many of the last transactions' xids `Replicator.recent_xids` keeps.
RECENT_XIDS = 256


class Replicator:
    def __init__(
        self,
        dsn: str,
        slot: str,
        publication: str,
        registry: ShapeRegistry,
        router: ShapeRouter,
        *,
        fsync: bool = True,
        on_state: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.registry = registry
        self.router = router
        self.fsync = fsync
        self.on_state = on_state or (lambda state, reason: None)
        self.global_lsn = 0
        self.connected = asyncio.Event()
        self._relations: dict[int, _Relation] = {}
        self._txn_xid = 0
        self._in_txn = False
        self._op = 0
        self._touched: dict[Shape, list[Change]] = {}
        self._dirty: set[Shape] = set()
        self._parked: set[Shape] = set()
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._stream: ReplicationStream | None = None
        #: Why shape log writes fail (disk full, ...) while replication is paused, else None.
        self.write_error: str | None = None
        self._write_error_since = 0.0
        self._failure: LogWriteError | None = None  # a background flush's failed write
        self._slot_checked = False
        self.changes_seen = 0
        self.transactions_seen = 0
        #: The xids of the last transactions read from the stream, whatever they touched. A
        #: commit reaches the stream a moment before Postgres shows it to new snapshots, so a
        #: new shape's snapshot must be checked against them (see `snapshots.SnapshotBehind`).
        self.recent_xids: deque[int] = deque(maxlen=RECENT_XIDS)
        # Routing plans of the tables with shapes and a known Relation, valid while
        # router.version == self._plans_version (see handle_batch).
        self._plans: dict[int, RowPlan] = {}
        self._plans_version = -1

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Stream forever: reconnect with backoff (Postgres restarts, network blips), slowly
        for failures someone has to fix (they are logged as such), and pause while shape
        logs cannot be written."""
        delay = FIRST_DELAY
        failing_since: float | None = None  # start of the current episode of failures
        attempts = 0
        last_permanent: str | None = None
        announced = False
        while True:
            if self.write_error is not None:
                await self._wait_for_space()
            stream = ReplicationStream(self.dsn, self.slot, self.publication)
            self._stream = stream
            started_at: float | None = None
            try:
                await stream.start()
                started_at = time.monotonic()
                if not self._slot_checked:
                    await self._check_repaired_shapes()
                self.connected.set()
                if self.write_error is None:
                    self.on_state("active", None)
                if failing_since is not None and not announced:
                    announced = True
                    log.info(
                        "replication recovered after %.1f s (%d attempts)",
                        started_at - failing_since,
                        attempts,
                    )
                await self._consume(stream)
            except asyncio.CancelledError:
                raise
            except LogWriteError as exc:
                self.connected.clear()
                self._write_failed(exc)
                continue  # _wait_for_space() paces the retries
            except Exception as exc:
                self.connected.clear()
                self._rollback_staged()
                problem = describe_failure(exc)
                now = time.monotonic()
                if started_at is not None and now - started_at >= STABLE_AFTER:
                    failing_since = None  # it ran fine for a while: a new episode
                if failing_since is None:
                    failing_since, attempts, delay = now, 0, FIRST_DELAY
                    last_permanent, announced = None, False
                attempts += 1
                if problem.permanent:
                    wait = PERMANENT_DELAY
                    if problem.reason != last_permanent:
                        log.error(
                            "replication cannot start (slot %r): %s. This will not fix itself:"
                            " %s. Retrying every %d s.",
                            self.slot,
                            problem.reason,
                            problem.fix,
                            wait,
                        )
                    last_permanent = problem.reason
                else:
                    # Backoff grows through the episode, also when the stream starts and
                    # then fails at once (no fixed 0.2 s loop).
                    wait = delay
                    delay = min(delay * 2, MAX_DELAY)
                    log.warning(
                        "replication %s (%s); retrying in %.1f s",
                        "stream lost" if started_at is not None else "cannot connect",
                        problem.reason,
                        wait,
                    )
                self.on_state("connecting", problem.reason)
                await asyncio.sleep(wait)
            finally:
                self._reset_txn()
                try:
                    await stream.close()
                except Exception:
                    log.debug("error closing replication stream", exc_info=True)

    async def _check_repaired_shapes(self) -> None:
        """Shapes whose torn log tail was cut on load are whole again only if the slot
        sends the cut transactions again; retire those it will not (clients refetch)."""
        repaired = [s for s in self.registry.by_handle.values() if s.log.repaired_from]
        if repaired:
            confirmed = await slot_confirmed_lsn(self.dsn, self.slot)
            for shape in repaired:
                if confirmed is None or shape.log.repaired_from < confirmed:  # type: ignore[operator]
                    self.registry.rotate(shape, "its log was damaged past what can be replayed")
                else:
                    log.info("shape %s: torn log tail cut, replaying it", shape.handle)
                shape.log.repaired_from = None
        self._slot_checked = True

    def _write_failed(self, exc: LogWriteError) -> None:
        """Cut every staged append back; enter (or stay in) the paused state."""
        self._failure = None
        self._rollback_staged()
        if self.write_error is None:
            what = "the disk is full" if exc.disk_full else "a write failed"
            self.write_error = f"cannot write shape logs ({what}: {exc.strerror})"
            self._write_error_since = time.monotonic()
            log.error(
                "%s in %s; replication paused: the slot is not confirmed and keeps the WAL,"
                " existing shapes are still served, new shapes get 503. Resuming by itself"
                " once writes succeed (checked every few seconds).",
                self.write_error,
                self.registry.directory,
            )
            self.on_state("disk_full", self.write_error)
        else:
            log.debug("shape log write failed again: %s", exc)

    async def _wait_for_space(self) -> None:
        """Probe with a small write, backing off up to MAX_DELAY, until it succeeds."""
        delay = FIRST_DELAY
        directory = str(self.registry.directory)
        while True:
            try:
                await asyncio.to_thread(_probe_write, directory)
                return
            except OSError as exc:
                log.debug("space probe failed: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    def _writes_ok(self) -> None:
        """A flush after a write failure succeeded: leave the paused state."""
        if self.write_error is not None:
            log.info(
                "shape log writes succeed again; replication resumed %.1f s after it paused",
                time.monotonic() - self._write_error_since,
            )
            self.write_error = None
            self.on_state("active", None)

    def _rollback_staged(self) -> None:
        """Cut every append not yet published off its log (the slot replays them)."""
        dirty, self._dirty = self._dirty, set()
        for shape in dirty:
            shape.log.rollback()

    async def _consume(self, stream: ReplicationStream) -> None:
        while True:
            batch = await stream.read_raw(timeout=1.0)
            last_end = self.handle_batch(batch) if batch else 0
            idle = not self._in_txn and not batch
            # What may be confirmed once this flush is done: computed first, so that a
            # transaction released from a shape's parking meanwhile is not confirmed
            # before it is durable.
            ack = self._ackable(last_end or stream.wal_end)
            if self._dirty:
                await self._flush()
            if self._failure is not None:
                raise self._failure
            if self.write_error is not None and (last_end or idle):
                self._writes_ok()
            if last_end or idle:
                # Idle and nothing half-done: everything up to wal_end is processed.
                stream.ack(ack)

    def _ackable(self, lsn: int) -> int:
        """`lsn`, or just before the oldest transaction still parked in memory on a shape.

        Parked transactions are not in any log yet; confirming past them would lose them
        in a crash, so the slot must send them again.
        """
        if not self._parked:
            return lsn
        self._parked = {s for s in self._parked if s.pending and not s.rotated}
        if not self._parked:
            return lsn
        oldest = min(s.pending[0][1] for s in self._parked if s.pending)
        return min(lsn, oldest - 1)

    async def _flush(self) -> None:
        """fsync what was appended, publish it, then wake the waiters of the shapes that grew.

        Serialised, so that when the stream loop's flush returns (and it acks), every
        append made before it, including by `release_pending`, is on disk. A failed fsync
        cuts back everything staged and leaves the error in `_failure` for the stream loop.
        """
        async with self._flush_lock:
            dirty, self._dirty = self._dirty, set()
            tokens = []
            paths: set[str] = set()
            for shape in dirty:
                files, token = shape.log.take_dirty()
                paths |= files
                tokens.append((shape, token))
            if self.fsync and paths:
                try:
                    await asyncio.to_thread(_fsync_paths, paths)
                except OSError as exc:
                    self._dirty |= dirty
                    self._rollback_staged()
                    self._failure = LogWriteError(exc.errno, f"fsync: {exc.strerror}")
                    return
            for shape, token in tokens:
                if shape.log.publish(token):
                    shape.notify()

    def _reset_txn(self) -> None:
        self._in_txn = False
        self._touched = {}
        self._op = 0

    # -- messages -------------------------------------------------------------------------

    def handle_batch(self, messages: Sequence[bytes]) -> int:
        """Apply raw XLogData messages (`ReplicationStream.read_raw`); returns the end LSN
        of the last commit among them, or 0.

        The hot path of the engine: during catch-up it runs for every message. Begin,
        Commit and rows that no shape can want are handled from the bytes without building
        message objects: a row costs its relation id, the indexed columns' values and one
        dict probe per indexed column (`_tuple_hits`). Rows some shape may want, tables
        with unindexed shapes and every other message kind go through `pgoutput.decode`
        and `_handle`, which produce the same state changes.
        """
        router = self.router
        if self._plans_version != router.version:
            self._refresh_plans()
        plans = self._plans
        last_end = 0
        for buf in messages:
            kind = buf[_H]
            if kind == _INSERT or kind == _UPDATE or kind == _DELETE:
                plan = plans.get(_u32(buf, _H + 1)[0])
                if plan is None:  # no shape on the table, or no Relation seen yet
                    self._op += 2
                    continue
                # Insert: 'I' oid 'N' TupleData; Delete: 'D' oid 'K'|'O' TupleData.
                if not plan.unindexed and not (
                    _tuple_hits(buf, _H + 6, plan.probes)
                    if kind != _UPDATE
                    else _update_may_match(buf, plan.probes)
                ):
                    self._op += 2
                    self.changes_seen += 1
                    continue
                self._row_change(pgoutput.decode(buf[_H:]))
            elif kind == _BEGIN:
                _, _, self._txn_xid = _begin(buf, _H + 1)
                self._in_txn = True
                self._op = 0
                if self._touched:
                    self._touched = {}
            elif kind == _COMMIT:
                _, commit_lsn, last_end, _ = _commit(buf, _H + 1)
                self.recent_xids.append(self._txn_xid)
                if self._touched:
                    self._commit(commit_lsn)
                else:  # _commit() without changes to apply
                    self.transactions_seen += 1
                    self._in_txn = False
                    if commit_lsn > self.global_lsn:
                        self.global_lsn = commit_lsn
            else:
                end = self._handle(pgoutput.decode(buf[_H:]))
                if end:
                    last_end = end
                if self._plans_version != router.version:
                    self._refresh_plans()
                    plans = self._plans
        return last_end

    def _refresh_plans(self) -> None:
        router = self.router
        plans: dict[int, RowPlan] = {}
        for oid, rel in self._relations.items():
            plan = router.plan(oid, rel.positions)
            if plan is not None:
                plans[oid] = plan
        self._plans = plans
        self._plans_version = router.version

    def _handle(self, msg: object) -> int:
        """Apply one decoded message; returns the end LSN when it was a commit."""
        t = type(msg)
        if t is pgoutput.Insert or t is pgoutput.Update or t is pgoutput.Delete:
            self._row_change(msg)
        elif t is pgoutput.Begin:
            self._in_txn = True
            self._txn_xid = msg.xid  # type: ignore[attr-defined]
            self._op = 0
            self._touched = {}
        elif t is pgoutput.Commit:
            self.recent_xids.append(self._txn_xid)
            self._commit(msg.commit_lsn)  # type: ignore[attr-defined]
            return msg.end_lsn  # type: ignore[attr-defined]
        elif t is pgoutput.Relation:
            self._relation(msg)  # type: ignore[arg-type]
        elif t is pgoutput.Truncate:
            for oid in msg.relation_oids:  # type: ignore[attr-defined]
                self.registry.rotate_table(oid, "table truncated")
        return 0

    def _relation(self, msg: pgoutput.Relation) -> None:
        rel = _Relation(msg)
        self._relations[rel.oid] = rel
        self._plans_version = -1  # column positions may have moved
        # Every session starts with a Relation per table, so this runs on each reconnect:
        # compare each distinct table description once, not once per shape (100k shapes
        # of one table share a handful of descriptions).
        for known, shapes in self.router.shapes_by_table_info(rel.oid):
            if (
                tuple(c.name for c in known.columns) != rel.names
                or tuple(c.type_oid for c in known.columns) != rel.type_oids
                or (known.schema, known.name) != (rel.schema, rel.name)
            ):
                for shape in shapes:
                    self.registry.rotate(shape, "table schema changed")

    def _row_change(self, msg: object) -> None:
        op = self._op
        self._op += 2
        oid: int = msg.relation_oid  # type: ignore[attr-defined]
        if not self.router.has_table(oid):
            return
        rel = self._relations.get(oid)
        if rel is None:
            return
        self.changes_seen += 1
        t = type(msg)
        old_t = None if t is pgoutput.Insert else msg.old  # type: ignore[attr-defined]
        new_t = None if t is pgoutput.Delete else msg.new  # type: ignore[attr-defined]
        if t is pgoutput.Update and old_t is None:
            old_t = new_t  # no old row (identity not FULL at the time): treat as in place
        shapes = self.router.candidates(oid, rel.positions, old_t, new_t)
        if not shapes:
            return
        old: dict[str, str | None] | None = None
        new: dict[str, str | None] | None = None
        if old_t is not None:
            old = dict(zip(rel.names, old_t, strict=False))
        if new_t is not None:
            new = dict(zip(rel.names, new_t, strict=False))
        if new is not None and old is not None:
            for k, v in new.items():
                if v is UNCHANGED_TOAST:
                    new[k] = old.get(k)
        kind = "insert" if t is pgoutput.Insert else "update" if t is pgoutput.Update else "delete"
        change: Change = (kind, old, new, op)
        for shape in shapes:
            self._touched.setdefault(shape, []).append(change)

    def _commit(self, lsn: int) -> None:
        """End of the transaction committed at `lsn`: apply or park what it touched."""
        self.transactions_seen += 1
        if self._touched:
            xid = self._txn_xid
            for shape, changes in self._touched.items():
                if shape.rotated:
                    continue
                if shape.pending is not None:
                    # After a reconnect the slot sends parked transactions again: keep one.
                    if not shape.pending or shape.pending[-1][1] < lsn:
                        shape.pending.append((xid, lsn, changes))
                    self._parked.add(shape)
                else:
                    self.apply(shape, xid, lsn, changes)
            self._touched = {}
        self._in_txn = False
        if lsn > self.global_lsn:
            self.global_lsn = lsn

    def apply(self, shape: Shape, xid: int, lsn: int, changes: list[Change]) -> None:
        """Append one transaction's changes to a shape whose snapshot horizon is known."""
        if lsn <= shape.log.last_lsn:
            return  # replayed after a restart: already in the log
        snap = shape.snapshot
        assert snap is not None
        if not shape.past_xmax:
            if snap.visible(xid):
                return
            if snap.widen(xid) >= snap.xmax:
                shape.past_xmax = True
        items: list[tuple[int, dict[str, object]]] = []
        try:
            for kind, old, new, op in changes:
                items.extend(convert_change(shape, kind, old, new, op=op))
        except UnrepresentableValue:
            # The where clause read a value Postgres holds but the engine cannot (a BC date,
            # a year past 9999): guessing could lose or invent a row, so clients refetch a
            # snapshot Postgres filters exactly. Each later change to such a row rotates the
            # new shape again (no loop: one rotation per such change).
            # (the exception's message holds the row's value: not logged)
            log.warning(
                "shape %s of table %s.%s rotated: its where clause read a date or timestamp "
                "outside years 1-9999, which only Postgres can compare",
                shape.handle,
                *shape.relation,
            )
            self.registry.rotate(shape, "where clause read an unrepresentable value")
            return
        if not items:
            return
        shape.log.append_transaction(lsn, encode_entries(shape, items, txid=xid, lsn=lsn))
        self._dirty.add(shape)

    def release_pending(self, shape: Shape) -> None:
        """The shape's snapshot horizon is known: apply what was parked, in order."""
        pending, shape.pending = shape.pending, None
        self._parked.discard(shape)
        try:
            for xid, lsn, changes in pending or []:
                if shape.rotated:  # `apply` rotated it (an unrepresentable value)
                    break
                self.apply(shape, xid, lsn, changes)
        except LogWriteError as exc:
            # Not confirmed (they were parked): the stream replays them after the pause.
            self._failure = exc  # the stream loop pauses replication at its next batch
            self._rollback_staged()
            return
        if self._dirty:
            # Announce now rather than after the stream's next (possibly idle) batch.
            task = asyncio.get_running_loop().create_task(self._flush())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

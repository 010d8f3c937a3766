"""A shape: its definition (what identifies it) and its runtime state (handle, log, waiters).

Two requests with the same definition share one shape and one handle. The definition holds
only what changes the log's content: table (by oid and name), the canonical where clause
with params substituted, the selected columns, `replica` and `log` mode.

A shape's life, each step a method of `Shape` (nothing else writes its state)::

    SNAPSHOTTING --snapshot_taken + take_parked--> ACTIVE --retire--> GONE
         |                                                             ^
         +------------------snapshot_failed + retire-------------------+

While SNAPSHOTTING, the replication stream parks the transactions touching the shape
(`park`), as only the snapshot's xid horizon tells which of them the snapshot already holds;
`take_parked` hands them over once it is known. GONE is final: waiters get a 409 (or the
snapshot's error), and the next request for the definition makes a new shape and handle.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NewType, TypeAlias

import orjson

from ..log.entries import relation_prefix
from ..log.offsets import LogOffset
from ..pg.xid_snapshot import XidSnapshot
from .definition import ShapeDefinition

__all__ = [
    "HandleFactory",
    "ParkedTransaction",
    "Shape",
    "ShapeDefinition",
    "ShapeHandle",
    "ShapeState",
    "schema_header",
]

if TYPE_CHECKING:
    from ..errors import EngineError
    from ..log.files import ShapeLog
    from ..pg.catalog import ColumnInfo, TableInfo
    from .changes import Change
    from .where import Where

#: A shape's handle, `<hash of definition>-<unix µs>` (see `HandleFactory`).
ShapeHandle = NewType("ShapeHandle", str)
#: A transaction parked on a shape while its snapshot's horizon is unknown: (xid, commit
#: LSN, its changes to the shape's table, as the replicator collected them).
ParkedTransaction: TypeAlias = "tuple[int, int, list[Change]]"


class ShapeState(enum.Enum):
    """Where a shape is in its life (see the module docstring)."""

    SNAPSHOTTING = "snapshotting"
    ACTIVE = "active"
    GONE = "gone"


# Read once: on Python 3.11 reading a member off its Enum class costs ~1 µs, and `park` runs
# for every replicated transaction a shape gets (S4/replication_cpu "matches one").
_SNAPSHOTTING = ShapeState.SNAPSHOTTING


class HandleFactory:
    """`<hash of definition>-<unix µs>`: unique forever, strictly increasing per process."""

    def __init__(self) -> None:
        self._last_us = 0

    def new(self, definition: ShapeDefinition) -> ShapeHandle:
        digest = hashlib.blake2b(orjson.dumps(definition.to_json()), digest_size=4).digest()
        now = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = now
        return ShapeHandle(f"{int.from_bytes(digest, 'big')}-{now}")


#: `schema_header` by the id of its columns tuple (kept in the entry, so the id cannot be
#: reused while the entry lives): every shape of a table shares the table's tuple.
_schemas: dict[int, tuple[tuple[ColumnInfo, ...], str]] = {}


def schema_header(columns: tuple[ColumnInfo, ...]) -> str:
    """The `electric-schema` header: column -> {type, dims?, pk_index?, not_null?, modifiers}."""
    known = _schemas.get(id(columns))
    if known is not None and known[0] is columns:
        return known[1]
    text = _schema_header(columns)
    if len(_schemas) >= 4096:
        _schemas.clear()
    _schemas[id(columns)] = (columns, text)
    return text


def _schema_header(columns: tuple[ColumnInfo, ...]) -> str:
    out: dict[str, dict[str, object]] = {}
    for c in columns:
        d: dict[str, object] = {"type": c.base_type}
        if c.is_array:
            d["dims"] = max(c.dims, 1)
        if c.pk_index is not None:
            d["pk_index"] = c.pk_index
        if c.not_null:
            d["not_null"] = True
        d.update(_type_modifiers(c.base_type, c.type_mod))
        out[c.name] = d
    return orjson.dumps(out).decode()


def _type_modifiers(type_name: str, mod: int) -> dict[str, object]:
    if mod < 0:
        return {}
    if type_name in ("varchar", "text"):
        return {"max_length": mod - 4}
    if type_name in ("bpchar",):
        return {"length": mod - 4}
    if type_name in ("bit", "varbit"):
        return {"length": mod}
    if type_name in ("time", "timetz", "timestamp", "timestamptz"):
        return {"precision": mod}
    if type_name == "numeric":
        mod -= 4
        return {"precision": (mod >> 16) & 0xFFFF, "scale": mod & 0xFFFF}
    if type_name == "interval":
        precision = mod & 0xFFFF
        return {} if precision == 0xFFFF else {"precision": precision}
    return {"type_mod": mod}


#: A shape's completion record lists its table's descendants up to this many; beyond, it
#: holds their digest (100k shapes of a table with 5,000 partitions must not each write
#: 30 kB of oids): after a restart, a changed family then retires the shape (its clients
#: refetch) even where the new members are partitions made as such.
FAMILY_LISTED = 256


def family_digest(family: frozenset[int]) -> str:
    """A digest of a set of table oids (`Shape.family`)."""
    return hashlib.sha256(",".join(map(str, sorted(family))).encode()).hexdigest()


@dataclass(eq=False)
class Shape:
    """A live shape: definition, handle, compiled where, log and the futures waiters wait on.

    Made SNAPSHOTTING, or ACTIVE when `snapshot` is given (a shape loaded after a restart).
    """

    handle: ShapeHandle
    definition: ShapeDefinition
    table: TableInfo
    where: Where | None
    columns: tuple[ColumnInfo, ...]
    log: ShapeLog
    snapshot: XidSnapshot | None = None
    #: Its table's partitions and inheritance children (oids) as routed when it was made
    #: (`Tables.family`): a shape is equal to `SELECT` only while they stay its table's
    #: descendants (`Tables.check_families`). In its completion record; None when unknown
    #: (recorded by an older engine).
    family: frozenset[int] | None = None
    #: `family_digest(family)` in place of `family` when a restart brought back a shape of
    #: a table with more descendants than a record lists (`FAMILY_LISTED`).
    family_digest: str | None = None
    schema_json: str = field(init=False, default="")
    key_prefix: str = field(init=False, default="")
    #: (schema, table), as each change's `relation` header says it.
    relation: tuple[str, str] = field(init=False, default=("", ""))
    column_names: tuple[str, ...] = field(init=False, default=())
    pk: tuple[str, ...] = field(init=False, default=())
    #: Set once a transaction at or past the snapshot's xmax was seen: every later one is
    #: past it too, so `in_snapshot` need not ask the snapshot again.
    past_xmax: bool = field(init=False, default=False)
    #: Retired (GONE): its files are being deleted, its requests get a 409. A field, not a
    #: property over the state, and written only by `retire`: it is read for each shape of
    #: each replicated transaction (a property call there is ~0.1 µs per shape, S5 ILIKE).
    rotated: bool = field(init=False, default=False)
    _state: ShapeState = field(init=False, default=ShapeState.SNAPSHOTTING)
    _error: EngineError | None = field(init=False, default=None)
    _parked: list[ParkedTransaction] = field(init=False, default_factory=list)
    #: Transactions held until Postgres has evaluated the where clause on rows the engine
    #: cannot read exactly (`hold`), in commit order; later ones wait behind them.
    _held: list[ParkedTransaction] = field(init=False, default_factory=list)
    #: Requests waiting in `wait_until` now (long-polls and SSE streams at the tip).
    waiting: int = field(init=False, default=0)
    #: Answers of it being written now (a chunk to a slow client, an SSE stream): it is in
    #: use, as while `waiting` (`ShapeRegistry.evict` keeps it).
    sending: int = field(init=False, default=0)
    #: When (`time.monotonic`) a request last asked for it, or an answer of it was last
    #: written or a request stopped waiting for it: `ShapeRegistry.evict` keeps a shape
    #: used in the last `min_idle` seconds (a client paging through it, between two
    #: requests). A shape loaded from disk has not been used since (`-inf`).
    used_at: float = field(init=False, default=float("-inf"))
    #: When (`time.monotonic`) it last gave an answer that was not up to date (a snapshot
    #: chunk, a log chunk with more after it), and one that was: while the first is the
    #: later, a client is paging through it, which keeps it from eviction for `min_idle`
    #: seconds even once a client has left it for another definition
    #: (`ShapeRegistry.left`).
    paged_at: float = field(init=False, default=float("-inf"))
    caught_up_at: float = field(init=False, default=float("-inf"))
    #: A client left it for another definition, and no request asked for it since
    #: (`ShapeRegistry.left`, `touch`): a held request or an answer that ends then does not
    #: count as a use (the proxy's stream of a definition its clients left ended after they
    #: had moved, and kept the shape from eviction 60 s more).
    left: bool = field(init=False, default=False)
    #: When (`time.monotonic`) a request last asked for a chunk of its snapshot (or stopped
    #: waiting for one): a snapshot no request asked for in a while is cancelled in Postgres
    #: (`snapshot.scheduler`: nobody would read it).
    snapshot_asked_at: float = field(init=False, default_factory=time.monotonic)
    _changed: asyncio.Future[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.schema_json = schema_header(self.columns)
        self.key_prefix = relation_prefix(self.table.schema, self.table.name)
        self.relation = (self.table.schema, self.table.name)
        self.column_names = tuple(c.name for c in self.columns)
        # A table without a primary key is keyed by all (selected) columns.
        self.pk = self.table.pk or self.column_names
        if self.snapshot is not None:
            self._state = ShapeState.ACTIVE

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> ShapeState:
        return self._state

    @property
    def snapshot_error(self) -> EngineError | None:
        """The answer for this shape's requests once its snapshot failed."""
        return self._error

    @property
    def parked(self) -> Sequence[ParkedTransaction]:
        """Transactions parked until the snapshot's horizon is known, in commit order."""
        return self._parked

    def park(self, xid: int, lsn: int, changes: list[Change]) -> bool:
        """Keep a transaction until the snapshot's horizon is known; False once it is known
        (the caller applies it at once).

        After a reconnect the slot sends parked transactions again: each is kept once.
        """
        if self._state is not _SNAPSHOTTING:
            return False
        if not self._parked or self._parked[-1][1] < lsn:
            self._parked.append((xid, lsn, changes))
        return True

    @property
    def held(self) -> Sequence[ParkedTransaction]:
        """Transactions held for Postgres's answer on some of their rows (see `hold`)."""
        return self._held

    def hold(self, xid: int, lsn: int, changes: list[Change]) -> bool:
        """Keep a transaction, to be appended once Postgres has said which of its rows
        match the where clause (the engine cannot read one of them exactly). Every later
        transaction of the shape is held behind it, so the log stays in commit order; one
        the slot sends again after its append was cut back (a failed write or stream)
        takes its place in that order. False when it is held already."""
        if self.rotated:
            return False
        held = self._held
        i = len(held)
        while i and held[i - 1][1] >= lsn:
            if held[i - 1][1] == lsn:
                return False
            i -= 1
        held.insert(i, (xid, lsn, changes))
        return True

    def release_held(self, entry: ParkedTransaction) -> None:
        """A held transaction is in the log for good (published: durable)."""
        for i, held in enumerate(self._held):
            if held is entry:
                del self._held[i]
                return

    def snapshot_taken(self, snapshot: XidSnapshot) -> None:
        """The snapshot query ran: its `pg_current_snapshot()` is the shape's xid horizon."""
        self.snapshot = snapshot

    def take_parked(self) -> list[ParkedTransaction]:
        """The parked transactions, to apply now that the horizon is known; the shape is ACTIVE
        from here (a GONE shape stays GONE)."""
        parked, self._parked = self._parked, []
        if self._state is ShapeState.SNAPSHOTTING:
            self._state = ShapeState.ACTIVE
        return parked

    def in_snapshot(self, xid: int) -> bool:
        """Whether a WAL transaction's changes are already in the snapshot's rows (so they
        must not be appended again)."""
        if self.past_xmax:
            return False
        snap = self.snapshot
        assert snap is not None, "the horizon is known before transactions are applied"
        if snap.visible(xid):
            return True
        if snap.widen(xid) >= snap.xmax:
            self.past_xmax = True
        return False

    def snapshot_progress(self, chunks: int, complete: bool) -> None:
        """`chunks` snapshot chunks are readable (all of them when `complete`): wake readers."""
        self.log.chunks_readable(chunks, complete)
        self.notify()

    def snapshot_failed(self, error: EngineError) -> None:
        """The snapshot cannot be taken: `error` is the answer its requests get (the registry
        then retires the shape)."""
        self._error = error

    def retire(self) -> bool:
        """GONE: wake every waiter (they answer 409). False if it already was."""
        if self._state is ShapeState.GONE:
            return False
        self._state = ShapeState.GONE
        self.rotated = True
        self._parked = []
        self._held = []
        self.notify()
        return True

    # -- offsets --------------------------------------------------------------------------

    def issued(self, offset: LogOffset) -> bool:
        """Whether the real offset `offset` (`<lsn>_<op>`) can have been handed out for this
        shape: every one the engine gives a client of it (its log's entries, an SSE
        up-to-date's `<lsn>_0`, the client's own offset echoed) is at or past its log's
        first transaction. One below that, or any on a log with no transaction yet, was
        handed out for another shape (an earlier generation of the definition, before a
        rotation or a wiped data dir): served from there, a client would take this log
        without its snapshot and keep rows deleted meanwhile for good. Client 1.5.28 does
        send one: after a 409 on a `requestSnapshot` it moves its stream to the new handle
        at its old offset, with no must-refetch.

        The first transaction's LSN comes from the log's index (`first_published_lsn`): it
        was read, the whole first chunk (up to 10 MB) checked and split on the event loop,
        once per shape: clients resuming many shapes after a restart stalled the engine.
        """
        latest = self.log.latest_offset
        if latest.is_virtual:  # (no transaction yet)
            return False
        if offset >= latest:
            return True
        first = self.log.first_published_lsn
        return first is None or offset.tx >= first

    # -- waiting for log growth -----------------------------------------------------------

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next append, snapshot progress or rotation."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float,
        *,
        poll: float | None = None,
        gone: asyncio.Future[None] | None = None,
    ) -> bool:
        """Wait until `condition()` holds, checked now and at each append, snapshot progress
        or rotation of the shape (and every `poll` seconds, for what the shape does not
        announce), or until `timeout` seconds ran out, or until `gone` is resolved (the
        request's client closed its connection: nobody would read the answer); returns
        `condition()`.

        The request is counted in `waiting` meanwhile. Every waiter shares one future and
        only ever takes its own callback off it: a waiter that times out (or whose client
        goes away) does not cancel it for the others.
        """
        if condition():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or (gone is not None and gone.done()):
                    return False
                delay = remaining if poll is None else min(poll, remaining)
                await _woken(self.changed(), delay, gone)
                if condition():
                    return True
        finally:
            self.waiting -= 1
            if not self.left:
                self.used_at = time.monotonic()

    def sent(self) -> None:
        """An answer of it was written (or ended): one fewer `sending`, used now (unless a
        client left it since, `left`)."""
        self.sending -= 1
        if not self.left:
            self.used_at = time.monotonic()

    def notify(self) -> None:
        fut = self._changed
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._changed = None


async def _woken(
    changed: asyncio.Future[None], delay: float, gone: asyncio.Future[None] | None = None
) -> None:
    """Return once `changed` (or `gone`) is resolved or `delay` seconds have passed.

    One future and one timer per wait, where `asyncio.wait_for(asyncio.shield(changed))`
    made a task, two futures, a timer and four callbacks, and woke the request after three
    turns of the event loop instead of two: a storm of new shapes waits once per shape.
    """
    loop = changed.get_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    changed.add_done_callback(wake)
    if gone is not None:
        gone.add_done_callback(wake)
    timer = loop.call_later(delay, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        changed.remove_done_callback(wake)
        if gone is not None:
            gone.remove_done_callback(wake)

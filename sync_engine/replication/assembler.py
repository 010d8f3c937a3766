"""Raw replication messages -> each committed transaction's row changes, per shape.

The hot path of the engine: during catch-up `handle_batch` runs for every message of the
stream. Most changes match no shape, so it works on the raw XLogData messages: Begin and
Commit are read from their fixed-size layouts, and a row is only decoded as far as the
columns the router's equality indexes need (one dict probe each, `pgoutput.row_may_match`)
unless some shape may want it; those rows are read whole where they lie
(`pgoutput.read_row`). Only the rare other messages become `pgoutput` objects (`handle`),
with the same effect as if every message had been decoded.

At each Commit the changes collected per shape go to `deliver(touched, xid, lsn)` (the
replicator's: park, apply or skip them), at once: encoding them blocks the event loop for
as long as it takes. A big transaction (`BIG_TRANSACTION` changes for its shapes, or
`BIG_TRANSACTION_BYTES` of their row messages: one huge value, say; with
`deliver_later` set) is instead handed back: `handle_batch` stops at its Commit
(`big_commit`) and the replicator takes it (`take_commit`) and writes it a part at a time,
serving requests and keeping the walsender's timer reset in between. Relation messages
check the shapes' table descriptions (a changed table rotates them) and Truncate rotates
the table's shapes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, cast

from ..shapes.changes import Change, ChangeKind, Row
from ..shapes.registry import ShapeRegistry
from ..shapes.router import RowPlan, ShapeRouter
from ..shapes.shape import Shape
from . import pgoutput
from .pgoutput import (
    BEGIN,
    COMMIT,
    DELETE,
    INSERT,
    RELATION,
    UNCHANGED_TOAST,
    UPDATE,
    TupleValue,
    read_begin,
    read_commit,
    read_row,
    read_row_oid,
    row_may_match,
)
from .stream import XLOGDATA_HEADER
from .wal import Lsn, Xid

__all__ = [
    "BIG_TRANSACTION",
    "BIG_TRANSACTION_BYTES",
    "RECENT_XIDS",
    "Deliver",
    "TransactionAssembler",
]

logger = logging.getLogger(__name__)

#: How many of the last transactions' xids `TransactionAssembler.recent_xids` keeps.
RECENT_XIDS: Final = 256

#: Changes (summed over the shapes they go to) from which a transaction is handed back to be
#: written a part at a time (`TransactionAssembler.deliver_later`) rather than in one go:
#: below, writing it holds the event loop for tens of milliseconds at most.
BIG_TRANSACTION: Final = 5000
#: ... or bytes of the row messages some shape may want: one change can be big too (a
#: 200 MB text value held every request, of every source, for seconds while it was
#: checksummed and written in one go).
BIG_TRANSACTION_BYTES: Final = 8 << 20

Deliver = Callable[[dict[Shape, list[Change]], Xid, Lsn], None]
"""Where a committed transaction goes: (its changes per shape, xid, commit LSN)."""

_H: Final = XLOGDATA_HEADER  # the pgoutput message's position in a raw XLogData message
# Read once: reading a member off its Enum class costs ~1 µs on Python 3.11.
_INSERT: Final = ChangeKind.INSERT
_UPDATE: Final = ChangeKind.UPDATE
_DELETE: Final = ChangeKind.DELETE


class _Relation:
    """A table as the stream describes it (its last Relation message), for building rows."""

    __slots__ = (
        "full",
        "identity",
        "keys",
        "name",
        "names",
        "oid",
        "positions",
        "schema",
        "type_oids",
    )

    def __init__(self, rel: pgoutput.Relation) -> None:
        self.oid = rel.oid
        self.schema = rel.schema
        self.name = rel.name
        self.names = tuple(c.name for c in rel.columns)
        self.type_oids = tuple(c.type_oid for c in rel.columns)
        self.positions = {n: i for i, n in enumerate(self.names)}
        #: Whether an update or delete comes with the whole old row (REPLICA IDENTITY FULL,
        #: which the engine sets on what it publishes; not yet on a partition made since,
        #: or an operator set it back): else with its key columns (`keys`) at most.
        self.identity = rel.replica_identity
        self.full = rel.replica_identity == "f"
        self.keys = frozenset(c.name for c in rel.columns if c.is_key)


class _Unknown:
    """An old row's value the stream did not send (REPLICA IDENTITY not FULL): unequal to
    any value, so every column of the new row counts as changed."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


_UNKNOWN: Final = _Unknown()


class TransactionAssembler:
    """Follows the stream's transactions and hands each shape its part at commit."""

    def __init__(self, registry: ShapeRegistry, router: ShapeRouter, deliver: Deliver) -> None:
        self.registry = registry
        self.router = router
        self._deliver = deliver
        #: The LSN of the last commit read (whatever it touched); at least the slot's
        #: confirmed position once the stream started (`Replicator.run`: read before).
        self.global_lsn = Lsn(0)
        #: The LSN of the commit read last in this stream session (unlike `global_lsn` it
        #: starts again at 0 on reconnect, so it never names a commit not yet read again).
        self.session_lsn = Lsn(0)
        self.changes_seen = 0
        self.transactions_seen = 0
        #: Rows decoded in full (`handle`, or some shape may want them; the rest are probed).
        self.rows_decoded = 0
        #: The xids of the last transactions read from the stream, whatever they touched. A
        #: commit reaches the stream a moment before Postgres shows it to new snapshots, so a
        #: new shape's snapshot must be checked against them (see `snapshot.SnapshotBehind`).
        self.recent_xids: deque[Xid] = deque(maxlen=RECENT_XIDS)
        #: The transaction being read: its xid, whether it is open, the next change's op
        #: (ops are even: a primary-key change takes two).
        self.xid = Xid(0)
        self.in_transaction = False
        self.op = 0
        self._touched: dict[Shape, list[Change]] = {}
        # Bytes of the row messages read whole in the open transaction (`big_commit`).
        self._row_bytes = 0
        self._relations: dict[int, _Relation] = {}
        # Routing plans of the tables with shapes and a known Relation, valid while
        # router.version == self._plans_version (see handle_batch).
        self._plans: dict[int, RowPlan] = {}
        # Tables with a plan whose updates and deletes come without their old row: no probe
        # of the new row can rule a shape out (`_row_change` takes them all).
        self._partial: set[int] = set()
        self._plans_version = -1
        #: Messages not handled yet because the first of them, a Relation message, names a
        #: table whose ancestors must be looked up first (`unresolved_oid`): the replicator
        #: looks them up (`ShapeRouter.add_ancestors`) and hands these to `handle_batch`.
        self.unhandled: Sequence[bytes] = ()
        self.unresolved_oid = 0
        # Tables whose ancestors were looked up (or need not be: no shaped parent then).
        self._ancestry_known: set[int] = set()
        #: Whether a Relation message for a shaped table stops `handle_batch` until the
        #: table's description in the catalog was compared with its shapes'
        #: (`unverified_oid`; the replicator sets it when it can do that).
        self.verify_relations = False
        #: With `unhandled`: the shaped table whose Relation message is its first message.
        self.unverified_oid = 0
        #: Whether a big transaction's Commit stops `handle_batch` (`big_commit`), to be
        #: taken by the caller (`take_commit`) instead of delivered at once; the replicator
        #: sets it (it writes those a part at a time, letting the event loop run between).
        self.deliver_later = False
        #: With `unhandled`: its first message is the Commit of a big transaction.
        self.big_commit = False
        # The table whose Relation message, next to be handled, was verified.
        self._verified_oid = 0
        #: Shaped tables (or their descendants) whose changes come without the old row
        #: (REPLICA IDENTITY not FULL) -> the warning, logged once (`_note_identity`);
        #: shown by /v1/health.
        self.identity_warnings: dict[int, str] = {}

    def reset(self) -> None:
        """The stream ended: forget the transaction it was in the middle of (it comes again)."""
        self.in_transaction = False
        self._touched = {}
        self.op = 0
        self._row_bytes = 0
        self.session_lsn = Lsn(0)
        self._verified_oid = 0

    def handle_batch(self, messages: Sequence[bytes]) -> Lsn:
        """Apply raw XLogData messages (`ReplicationStream.read_raw`); returns the end LSN
        of the last commit among them, or 0.

        Begin, Commit and rows that no shape can want are handled from the bytes: a row
        costs its relation id, the indexed columns' values and one dict probe per indexed
        column. Rows some shape may want, and those of tables with unindexed shapes, are
        read whole (`pgoutput.read_row`); every other message kind goes through
        `pgoutput.decode` and `handle`.
        """
        router = self.router
        if self._plans_version != router.version:
            self._refresh_plans()
        plans = self._plans
        last_end = 0
        self.unhandled = ()
        self.unresolved_oid = self.unverified_oid = 0
        self.big_commit = False
        for i, buf in enumerate(messages):
            kind = buf[_H]
            if kind == INSERT or kind == UPDATE or kind == DELETE:
                oid = read_row_oid(buf, _H)[0]
                plan = plans.get(oid)
                if plan is None:  # no shape on the table, or no Relation seen yet
                    self.op += 2
                    continue
                if (
                    not plan.unindexed
                    and (kind == INSERT or oid not in self._partial)
                    and not row_may_match(buf, _H, plan.probes)
                ):
                    self.op += 2
                    self.changes_seen += 1
                    continue
                kind, oid, old, new = read_row(buf, _H)
                self._row_bytes += len(buf)
                self._row_change(kind, oid, old, new)
                if self._plans_version != router.version:  # (it retired shapes)
                    self._refresh_plans()
                    plans = self._plans
            elif kind == BEGIN:
                self.xid = read_begin(buf, _H)[2]
                self.in_transaction = True
                self.op = 0
                self._row_bytes = 0
                if self._touched:
                    self._touched = {}
            elif kind == COMMIT:
                if (
                    self.deliver_later
                    and self._touched
                    and (
                        self._row_bytes >= BIG_TRANSACTION_BYTES
                        or sum(map(len, self._touched.values())) >= BIG_TRANSACTION
                    )
                ):
                    self.big_commit = True
                    self.unhandled = messages[i:]
                    return Lsn(last_end)
                _, commit_lsn, last_end, _ = read_commit(buf, _H)
                self.recent_xids.append(self.xid)
                if self._touched:
                    self._commit(commit_lsn)
                else:  # _commit() without changes to deliver
                    self.transactions_seen += 1
                    self.in_transaction = False
                    self.session_lsn = commit_lsn
                    if commit_lsn > self.global_lsn:
                        self.global_lsn = commit_lsn
            else:
                if kind == RELATION:
                    oid = read_row_oid(buf, _H)[0]
                    if router.parents and oid not in self._ancestry_known:
                        # (maybe a partition of a shaped table, made since: its ancestors
                        # first, or its rows would miss their shapes)
                        self.unresolved_oid = oid
                        self.unhandled = messages[i:]
                        return Lsn(last_end)
                    if self.verify_relations and oid != self._verified_oid and router.routed(oid):
                        # Sent after the table's relcache entry was invalidated (DDL, and
                        # also VACUUM, ANALYZE, GRANT, a publication change), before its
                        # next change: its shapes are checked against the catalog first
                        # (a new primary key shows in no Relation message).
                        self.unverified_oid = oid
                        self.unhandled = messages[i:]
                        return Lsn(last_end)
                    self._verified_oid = 0
                end = self.handle(pgoutput.decode(buf[_H:]))
                if end:
                    last_end = end
                if self._plans_version != router.version:
                    self._refresh_plans()
                    plans = self._plans
        return Lsn(last_end)

    def take_commit(self) -> tuple[dict[Shape, list[Change]], Xid, Lsn, Lsn]:
        """The big transaction whose Commit is first in `unhandled` (`big_commit`): its
        changes per shape, xid, commit LSN and end LSN, to be delivered by the caller. It
        counts as read (as `_commit` does); `unhandled` is left with what follows it."""
        assert self.big_commit and self.unhandled
        _, commit, end_lsn, _ = read_commit(self.unhandled[0], _H)
        commit_lsn = Lsn(commit)
        touched, self._touched = self._touched, {}
        self.recent_xids.append(self.xid)
        self.transactions_seen += 1
        self.in_transaction = False
        self.session_lsn = commit_lsn
        if commit_lsn > self.global_lsn:
            self.global_lsn = commit_lsn
        self.unhandled = self.unhandled[1:]
        self.big_commit = False
        return touched, self.xid, commit_lsn, Lsn(end_lsn)

    def ancestry_resolved(self, oid: int) -> None:
        """The ancestors of table `oid` are in the router (`unhandled` may go on)."""
        self._ancestry_known.add(oid)

    def relation_unchanged(self) -> bool:
        """Whether the Relation message first in `unhandled` describes its table as the
        last one for it did (names, types, identity, name), or, the first one for it, as
        its shapes were made (names, types, name): nothing the message shows moved."""
        if not self.unhandled:
            return False
        msg = pgoutput.decode(self.unhandled[0][_H:])
        if not isinstance(msg, pgoutput.Relation):
            return False
        rel = _Relation(msg)
        known = self._relations.get(msg.oid)
        if known is None:
            groups = self.router.shapes_by_table_info(msg.oid)
            return bool(groups) and all(
                tuple(c.name for c in info.columns) == rel.names
                and tuple(c.type_oid for c in info.columns) == rel.type_oids
                and (info.schema, info.name) == (rel.schema, rel.name)
                for info, _ in groups
            )
        return (rel.schema, rel.name, rel.names, rel.type_oids, rel.identity) == (
            known.schema,
            known.name,
            known.names,
            known.type_oids,
            known.identity,
        )

    def relation_verified(self, oid: int) -> None:
        """The shapes of table `oid` (and its ancestors') were compared with the catalog,
        the changed ones retired: its Relation message, first of `unhandled`, may go on."""
        self._verified_oid = oid

    def handle(self, msg: pgoutput.Message) -> Lsn:
        """Apply one decoded message; returns the end LSN when it was a commit, else 0."""
        if isinstance(msg, pgoutput.Insert):
            self._row_change(INSERT, msg.relation_oid, None, msg.new)
        elif isinstance(msg, pgoutput.Update):
            self._row_change(UPDATE, msg.relation_oid, msg.old, msg.new)
        elif isinstance(msg, pgoutput.Delete):
            self._row_change(DELETE, msg.relation_oid, msg.old, None)
        elif isinstance(msg, pgoutput.Begin):
            self.in_transaction = True
            self.xid = msg.xid
            self.op = 0
            self._row_bytes = 0
            self._touched = {}
        elif isinstance(msg, pgoutput.Commit):
            self.recent_xids.append(self.xid)
            self._commit(msg.commit_lsn)
            return msg.end_lsn
        elif isinstance(msg, pgoutput.Relation):
            self._relation(msg)
        elif isinstance(msg, pgoutput.Truncate):
            # A TRUNCATE sent again after a reconnect (from the slot's confirmed position)
            # must not rotate the shapes made after it: their snapshot saw it committed.
            # A partition's (or child's) truncation empties part of its ancestors' shapes.
            xid = self.xid
            for truncated in msg.relation_oids:
                for oid in self.router.routes(truncated):
                    self.registry.rotate_table(
                        oid,
                        "table truncated",
                        keep=lambda s: s.snapshot is not None and s.in_snapshot(xid),
                    )
        return Lsn(0)

    def _refresh_plans(self) -> None:
        router = self.router
        plans: dict[int, RowPlan] = {}
        partial: set[int] = set()
        for oid, rel in self._relations.items():
            plan = router.plan_for(oid, rel.positions)
            if plan is not None and not rel.full:
                partial.add(oid)  # (its updates and deletes come without their old row)
            if plan is not None:
                plans[oid] = plan
        self._plans = plans
        self._partial = partial
        self._plans_version = router.version

    def _relation(self, msg: pgoutput.Relation) -> None:
        rel = _Relation(msg)
        self._relations[rel.oid] = rel
        if rel.full:
            self.identity_warnings.pop(rel.oid, None)  # (set FULL again: warn again if not)
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

    def _note_identity(self, rel: _Relation) -> None:
        """Warn once per table (and again once it was FULL in between) that a shaped
        table's updates and deletes come without their old row: correct, but each one
        retires its shapes whose where clause reads non-key columns, and their clients
        refetch (a refetch storm an operator should hear about: someone set the table's
        REPLICA IDENTITY back, or the engine could not set it on a new partition). Said at
        the first such change, not at its Relation message: a partition the stream names
        before the engine set its identity FULL (`Tables.find_ancestors`) is no storm."""
        what = {"d": "DEFAULT", "n": "NOTHING", "i": "USING INDEX"}.get(rel.identity, rel.identity)
        table = f'"{rel.schema}"."{rel.name}"'
        warning = (
            f"table {table} has REPLICA IDENTITY {what}: its updates and deletes come"
            " without their old row, so each one retires the shapes whose where clause reads"
            " other columns than its key (their clients refetch); run ALTER TABLE"
            f" {table} REPLICA IDENTITY FULL"
        )
        self.identity_warnings[rel.oid] = warning
        logger.warning("%s", warning)

    def _row_change(
        self,
        kind: int,
        oid: int,
        old_t: tuple[TupleValue, ...] | None,
        new_t: tuple[TupleValue, ...] | None,
    ) -> None:
        """A row change some shape may want (`pgoutput.read_row`'s fields): routed, and
        collected for each shape it may belong to until the commit."""
        op = self.op
        self.op = op + 2
        self.rows_decoded += 1
        rel = self._relations.get(oid)
        if rel is None or not self.router.routed(oid):
            return
        self.changes_seen += 1
        change_kind: ChangeKind
        if kind == INSERT:
            change_kind = _INSERT
        elif kind == UPDATE:
            change_kind = _UPDATE
            if old_t is None:
                old_t = new_t  # no old row (identity not FULL at the time): treat as in place
        else:
            change_kind = _DELETE
        partial = kind != INSERT and not rel.full  # its old row is the key at most
        if partial:
            if oid not in self.identity_warnings:
                self._note_identity(rel)
            shapes = self.router.shapes_of(oid)  # (the old row could have matched any)
        else:
            shapes = self.router.candidates_for(oid, rel.positions, old_t, new_t)
        if not shapes:
            return
        names = rel.names
        if partial:
            shapes = self._without_old_row(rel, shapes, new_t)
            if not shapes:
                return
            if kind == UPDATE and old_t is new_t:  # (no old tuple: the key did not change)
                assert new_t is not None
                old_t = cast(
                    "tuple[TupleValue, ...]",
                    tuple(
                        v if n in rel.keys else _UNKNOWN for n, v in zip(names, new_t, strict=False)
                    ),
                )
        old = None if old_t is None else dict(zip(names, old_t, strict=False))
        new = None if new_t is None else dict(zip(names, new_t, strict=False))
        if new is not None and old is not None:
            for k, v in new.items():
                if v is UNCHANGED_TOAST:
                    new[k] = old.get(k)
        # (Rows hold Postgres text or None; an unchanged TOASTed value stays the sentinel
        # only when there is no old row to take it from.)
        change: Change = (change_kind, cast("Row | None", old), cast("Row | None", new), op)
        touched = self._touched
        for shape in shapes:
            changes = touched.get(shape)
            if changes is None:
                touched[shape] = [change]
            else:
                changes.append(change)

    def _without_old_row(
        self, rel: _Relation, shapes: set[Shape], new_t: tuple[TupleValue, ...] | None
    ) -> set[Shape]:
        """The shapes that can take an update or delete whose old row is its key at most:
        those that need no other old value. The others are retired (their clients refetch
        a snapshot): deciding whether the old row was in a where clause on other columns,
        or what a `replica=full` update's old values were, or an unchanged TOASTed value,
        would be a guess, and a wrong one leaves a row a client should not have, or stale."""
        toast = new_t is not None and any(v is UNCHANGED_TOAST for v in new_t)
        keep: set[Shape] = set()
        for shape in shapes:
            where = shape.where
            if (
                toast
                or shape.definition.replica == "full"
                or (where is not None and not where.referenced_columns <= rel.keys)
            ):
                self.registry.rotate(
                    shape,
                    f'a change of "{rel.schema}"."{rel.name}" came without its old row'
                    " (its REPLICA IDENTITY is not FULL)",
                )
            else:
                keep.add(shape)
        return keep

    def _commit(self, lsn: Lsn) -> None:
        """End of the transaction committed at `lsn`: deliver what it touched."""
        self.transactions_seen += 1
        if self._touched:
            self._deliver(self._touched, self.xid, lsn)
            self._touched = {}
        self.in_transaction = False
        self.session_lsn = lsn
        if lsn > self.global_lsn:
            self.global_lsn = lsn

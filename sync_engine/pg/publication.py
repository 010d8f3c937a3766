"""The engine's publication: created once, tables added when a shape first needs them.

Adding a table also sets `REPLICA IDENTITY FULL`, without which updates arrive without the
old row and where-clause transitions, `old_value` and key changes cannot be computed.
When either statement is refused (not the owner, a view, ...), the caller gets a reason a
person can act on.

A transaction that was already running when the table joined the publication may have
written rows that pgoutput decodes with the old membership (not published) but that commit
after the shape's snapshot; `wait_for_older_transactions` closes that window by waiting,
like CREATE INDEX CONCURRENTLY, until every transaction older than the change has ended.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

logger = logging.getLogger(__name__)

#: Every descendant of the given tables (partitions, sub-partitions, inheritance children),
#: once per (table, descendant): its kind, replica identity, whether it is a partition,
#: and the xid that linked it to its parent when the same transaction made it (the link's
#: and its row type's xmin agree: the raw xmin, kept through a freeze), else NULL.
#: A partition left "detach pending" by an interrupted DETACH PARTITION CONCURRENTLY is not
#: one: its parent's SELECT no longer reads it (`inhdetachpending` is read through jsonb so
#: that the query runs on Postgres 13 too, which has no such column). Nor is a session's
#: temporary child: a scan of the parent from another session skips it and logical decoding
#: never sees it (its identity could not even be set: "cannot alter temporary tables of
#: other sessions" made the shape a 500; wherefuzz 08:31).
_DESCENDANTS = """
WITH RECURSIVE down(root, relid, parent) AS (
    SELECT i.inhparent, i.inhrelid, i.inhparent FROM pg_inherits i
    WHERE i.inhparent = ANY(%(roots)s)
      AND NOT COALESCE((to_jsonb(i) ->> 'inhdetachpending')::bool, false)
    UNION ALL
    SELECT d.root, i.inhrelid, i.inhparent
    FROM pg_inherits i JOIN down d ON i.inhparent = d.relid
    WHERE NOT COALESCE((to_jsonb(i) ->> 'inhdetachpending')::bool, false)
)
SELECT DISTINCT ON (d.root, d.relid)
       d.root::int8, d.relid::int8, c.relkind::text, c.relreplident::text, n.nspname, c.relname,
       c.relispartition,
       CASE WHEN i.xmin = t.xmin THEN i.xmin::text END
FROM down d
JOIN pg_inherits i ON i.inhrelid = d.relid AND i.inhparent = d.parent
JOIN pg_class c ON c.oid = d.relid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_type t ON t.oid = c.reltype
WHERE c.relpersistence <> 't'
ORDER BY d.root, d.relid
"""

#: A table's ancestors (not through a "detach pending" link, as `_DESCENDANTS`).
_ANCESTORS = """
WITH RECURSIVE up(relid) AS (
    SELECT i.inhparent FROM pg_inherits i
    WHERE i.inhrelid = %s AND NOT COALESCE((to_jsonb(i) ->> 'inhdetachpending')::bool, false)
    UNION ALL
    SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.relid
    WHERE NOT COALESCE((to_jsonb(i) ->> 'inhdetachpending')::bool, false)
)
SELECT relid::int8 FROM up
"""


class PublicationError(Exception):
    """A table could not be published; the message says why and what to do."""


async def publication_exists(conn: AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
    return await cur.fetchone() is not None


async def ensure_publication(conn: AsyncConnection[Any], name: str) -> bool:
    """Create the publication unless it exists; True if this call created it."""
    if not await publication_exists(conn, name):
        try:
            await conn.execute(sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(name)))
            return True
        except psycopg.errors.DuplicateObject:
            pass
    return False


class TableBusy(Exception):
    """Another transaction holds a lock on the table that the statement's lock conflicts
    with (`LockWatch`), or one try at the lock (`LOCK_TRY_MS`) ran out: nothing was done, the
    caller tries again after `LOCK_LOOK` (`Tables.publish`)."""


#: Milliseconds one try at a table's lock may wait (`lock_timeout`): while a lock request
#: waits in the queue, every later query of the application on the table waits behind it.
LOCK_TRY_MS = 100
#: Seconds between two looks at `pg_locks` (and tries) while the table's lock is busy.
LOCK_LOOK = 0.05

#: The lock modes (as `pg_locks` names them) each mode the engine takes conflicts with.
_CONFLICTS = {
    # ALTER TABLE ... REPLICA IDENTITY FULL
    "AccessExclusiveLock": (
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ),
    # ALTER PUBLICATION ... ADD TABLE (of the table and, not ONLY, its partitions)
    "ShareUpdateExclusiveLock": (
        "ShareUpdateExclusiveLock",
        "ShareLock",
        "ShareRowExclusiveLock",
        "ExclusiveLock",
        "AccessExclusiveLock",
    ),
}

#: The transactions (virtualtransaction; a prepared one has no pid) other than this session
#: holding or awaiting a lock on the tables $1 of one of the modes $2.
_LOCK_HOLDERS = """
SELECT DISTINCT l.virtualtransaction FROM pg_catalog.pg_locks l
WHERE l.locktype = 'relation' AND l.relation = ANY(%s::pg_catalog.oid[])
  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                    WHERE d.datname = pg_catalog.current_database())
  AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
  AND l.mode = ANY(%s::pg_catalog.text[])
"""


class LockWatch:
    """Whether to ask for a table's lock now, from what `pg_locks` shows, so that the
    engine's lock request never sits queued ahead of the application's queries.

    A lock request that waits blocks every later query of the table behind it: a first
    shape's `ALTER TABLE ... REPLICA IDENTITY FULL`, waiting (2 s, then again at the
    client's retry) for a long transaction that had read the table, blocked the
    application's writes 5.8 s of 9. So a lock is asked for (for `LOCK_TRY_MS` at most) only
    when no other transaction holds a conflicting one, or when every one that does is new
    since the last look (short queries of a busy table: a try waits for them, briefly). A
    transaction seen holding at two looks in a row is a long one: not queued behind."""

    def __init__(self) -> None:
        # The holders at the last look (None: not looked yet).
        self._seen: frozenset[str] | None = None
        #: A try was put off or ran out (the table may have changed while it waited).
        self.waited = False

    async def clear(self, conn: AsyncConnection[Any], oids: Collection[int], mode: str) -> bool:
        """Whether a lock of `mode` on the tables `oids` may be asked for now."""
        cur = await conn.execute(_LOCK_HOLDERS, (sorted(oids), list(_CONFLICTS[mode])))
        holders = frozenset(str(r[0]) for r in await cur.fetchall())
        seen, self._seen = self._seen, holders
        if not holders:
            return True
        if seen is None:
            return False  # (held: how long is seen at the next look)
        return not holders & seen

    async def run(
        self, conn: AsyncConnection[Any], oids: Collection[int], mode: str, statement: sql.Composed
    ) -> None:
        """`statement` (which takes a lock of `mode` on `oids`) if the lock is clear and had
        within `LOCK_TRY_MS`; else `TableBusy`, nothing done."""
        if not await self.clear(conn, oids, mode):
            self.waited = True
            raise TableBusy()
        await conn.execute(f"SET lock_timeout = '{LOCK_TRY_MS}ms'")
        try:
            await conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            self.waited = True
            raise TableBusy() from None
        finally:
            await conn.execute("RESET lock_timeout")


async def add_table(
    conn: AsyncConnection[Any],
    publication: str,
    schema: str,
    table: str,
    replica_identity: str,
    watch: LockWatch,
    oids: Collection[int],
) -> bool:
    """Publish the table with REPLICA IDENTITY FULL; True if it was newly added. Each
    statement that locks the table does so through `watch` (`LockWatch.run`): `TableBusy`
    when its lock is not to be had now, the caller trying again (idempotent: what was done
    is found done). `oids`: the table's and its descendants' (`ADD TABLE` of a partitioned
    table locks its partitions too)."""
    ident = sql.Identifier(schema, table)
    try:
        cur = await conn.execute(
            "SELECT c.relreplident, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        )
        row = await cur.fetchone()
        partitioned = row is not None and row[1] == "p"
        if row is not None:
            replica_identity = str(row[0])  # fresher than the caller's description
        own = list(oids)[:1]
        if replica_identity != "f":
            # Takes an ACCESS EXCLUSIVE lock: only when needed, never while it is already FULL.
            alter = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident)
            await watch.run(conn, own, "AccessExclusiveLock", alter)
        cur = await conn.execute(
            "SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
            " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE p.pubname = %s AND n.nspname = %s AND c.relname = %s",
            (publication, schema, table),
        )
        if await cur.fetchone() is not None:
            return False
        # ONLY: an inheritance parent's children are published by `prepare_descendants`,
        # each after its REPLICA IDENTITY FULL (published without, a keyless one's UPDATEs
        # would be refused), and one the engine may not own is said by its name, not as
        # "must own" the parent. (A partitioned table publishes all its partitions: the
        # caller readies them first, `ready_partitions`.)
        add = (
            "ALTER PUBLICATION {} ADD TABLE {}"
            if partitioned
            else "ALTER PUBLICATION {} ADD TABLE ONLY {}"
        )
        statement = sql.SQL(add).format(sql.Identifier(publication), ident)
        await watch.run(conn, oids if partitioned else own, "ShareUpdateExclusiveLock", statement)
        return True
    except psycopg.errors.DuplicateObject:
        return False
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PublicationError(
            f'cannot publish table "{schema}"."{table}": the engine\'s database role must own it'
            f" (to set REPLICA IDENTITY FULL and add it to publication {publication}),"
            f" or a DBA must do both: {exc.diag.message_primary}"
        ) from exc
    except psycopg.OperationalError:
        raise  # the connection, not the table (Postgres restarted): the caller retries
    except psycopg.Error as exc:
        raise PublicationError(
            f'cannot publish table "{schema}"."{table}": {exc.diag.message_primary or exc}'
        ) from exc


@dataclass(frozen=True)
class HowPublished:
    """How the engine's publication publishes one table, as the catalog says now.

    Compared with what it was when the table's shapes were made (`Tables.check_published`):
    pgoutput sends a change only as the publication stood when it was written, so a table
    taken out and added again between two looks, or the publication's `publish` option
    narrowed and set back, lost changes while every state looked at was right. What
    publishes it is told apart by identity: its `pg_publication_rel` rows (a table added
    again is a new row), the `pg_publication_namespace` rows of its schema, and the
    publication row's xmin (`ALTER PUBLICATION ... SET (...)` writes a new version of it;
    adding or dropping a table does not)."""

    #: The publication's oid and xmin.
    publication: tuple[int, str]
    #: insert, update, delete and truncate are all published.
    every_change: bool
    #: The `pg_publication_rel` rows that publish it (itself or a partition ancestor).
    entries: tuple[int, ...]
    #: The `pg_publication_namespace` rows of its (or an ancestor's) schema (PG 15+).
    schemas: tuple[int, ...]
    #: One of those entries has a row filter or a column list (PG 15+): not every row or
    #: column is sent.
    narrowed: bool
    #: The publication is FOR ALL TABLES.
    all_tables: bool

    @property
    def published(self) -> bool:
        return self.all_tables or bool(self.entries) or bool(self.schemas)


_HOW_PUBLISHED = """
SELECT t.oid::int8, p.oid::int8, p.xmin::text,
       p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate,
       ARRAY(SELECT r.oid::int8 FROM pg_publication_rel r
             WHERE r.prpubid = p.oid AND (r.prrelid = t.oid
               OR r.prrelid IN (SELECT relid FROM pg_partition_ancestors(t.oid)))
             ORDER BY 1),
       {schemas}, {narrowed}, p.puballtables
FROM unnest(%(oids)s::oid[]) AS t(oid)
JOIN pg_class c ON c.oid = t.oid
JOIN pg_publication p ON p.pubname = %(pub)s
"""
_SCHEMAS_15 = """ARRAY(SELECT s.oid::int8 FROM pg_publication_namespace s
             JOIN pg_class ac ON ac.relnamespace = s.pnnspid
             WHERE s.pnpubid = p.oid AND (ac.oid = t.oid
               OR ac.oid IN (SELECT relid FROM pg_partition_ancestors(t.oid)))
             ORDER BY 1)"""
_NARROWED_15 = """EXISTS (SELECT 1 FROM pg_publication_rel r
             WHERE r.prpubid = p.oid AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)
               AND (r.prrelid = t.oid
                 OR r.prrelid IN (SELECT relid FROM pg_partition_ancestors(t.oid))))"""


async def how_published(
    conn: AsyncConnection[Any], publication: str, oids: Collection[int]
) -> dict[int, HowPublished]:
    """`HowPublished` of each of the tables `oids` that exists, none when the publication
    is gone (the stream fails then, and `Source` makes it again)."""
    v15 = conn.info.server_version >= 150000
    query = _HOW_PUBLISHED.format(
        schemas=_SCHEMAS_15 if v15 else "'{}'::int8[]", narrowed=_NARROWED_15 if v15 else "false"
    )
    cur = await conn.execute(query.encode(), {"oids": sorted(oids), "pub": publication})
    return {
        int(r[0]): HowPublished(
            publication=(int(r[1]), str(r[2])),
            every_change=bool(r[3]),
            entries=tuple(r[4]),
            schemas=tuple(r[5]),
            narrowed=bool(r[6]),
            all_tables=bool(r[7]),
        )
        for r in await cur.fetchall()
    }


async def publish_every_change(conn: AsyncConnection[Any], publication: str) -> None:
    """Set the publication's `publish` option back to every kind of change."""
    await conn.execute(
        sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')").format(
            sql.Identifier(publication)
        )
    )


async def drop_narrowed(conn: AsyncConnection[Any], publication: str) -> list[str]:
    """Take the tables published with a row filter or a column list out of the publication
    (they are added again whole by `add_table`); their names."""
    if conn.info.server_version < 150000:
        return []
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel r"
        " JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %s AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)",
        (publication,),
    )
    names = []
    for schema, name in await cur.fetchall():
        await conn.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(publication), sql.Identifier(schema, name)
            )
        )
        names.append(f'"{schema}"."{name}"')
    return names


async def wait_for_older_transactions(conn: AsyncConnection[Any], timeout: float = 10.0) -> bool:
    """Wait until every transaction running now has ended; False on timeout."""
    cur = await conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
    row = await cur.fetchone()
    assert row is not None
    horizon = int(row[0])
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        cur = await conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        row = await cur.fetchone()
        assert row is not None
        if int(row[0]) >= horizon:
            return True
        if time.monotonic() > deadline:
            logger.warning("transactions older than a new publication entry are still running")
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass(frozen=True, slots=True)
class Descendant:
    """A partition or inheritance child (at any depth) of a table with shapes (`root`)."""

    root: int
    oid: int
    kind: str  # relkind: 'r' a table, 'p' a partitioned table, 'f' foreign
    identity: str  # relreplident
    schema: str
    name: str
    partition: bool
    #: The xid of the transaction that made the table and linked it to its parent (CREATE
    #: TABLE ... PARTITION OF, or CREATE, ATTACH in one transaction); None when the link
    #: came later (ATTACH PARTITION, ALTER TABLE ... INHERIT).
    born_xid: str | None


async def descendants_of(conn: AsyncConnection[Any], roots: Collection[int]) -> list[Descendant]:
    """Every descendant of the tables `roots` (one recursive query over pg_inherits: cheap
    enough to ask every few seconds)."""
    cur = await conn.execute(_DESCENDANTS, {"roots": sorted(roots)})
    return [
        Descendant(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], bool(r[6]), r[7])
        for r in await cur.fetchall()
    ]


#: Tables the engine was refused the publication of (said once each).
_refused: set[int] = set()


async def prepare_descendants(
    conn: AsyncConnection[Any],
    publication: str,
    descendants: Iterable[Descendant],
    busy: set[int],
) -> tuple[bool, set[int]]:
    """Make descendants' changes reach the stream whole; returns whether a table was added
    to the publication, and the inheritance children left unpublished (`busy`, below).

    Postgres publishes a partition's changes under the partition's relation (the
    publication is not `publish_via_partition_root`, so that a shape on one partition works)
    and an inheritance child's under its own, while the parent's snapshot reads their rows:
    each descendant gets `REPLICA IDENTITY FULL` (the old row, as its parent has; an
    inheritance child without a primary key could not even be updated once published
    without one), and an inheritance child is published itself (a partitioned table
    publishes its partitions, also later ones; `ADD TABLE` of a parent takes only the
    children it has then). The identity waits at most 2 s for the table's lock (100 ms for
    one in `busy` already: `make_identity_full`); a table whose lock was busy is added to
    `busy`, and left unpublished if it is an inheritance child.
    """
    added = False
    unready: set[int] = set()
    seen: set[int] = set()
    published: set[tuple[str, str]] | None = None
    for d in descendants:
        if d.kind != "r" or d.oid in seen:
            continue
        seen.add(d.oid)
        if published is None:
            cur = await conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (publication,),
            )
            published = {(str(r[0]), str(r[1])) for r in await cur.fetchall()}
        ident = sql.Identifier(d.schema, d.name)
        if d.identity != "f" and not await make_identity_full(conn, d.oid, retrying=d.oid in busy):
            busy.add(d.oid)
            if (d.schema, d.name) not in published:
                # Not published without its identity: a child without a primary key could
                # not be updated (the application's writes refused). Tried again later.
                unready.add(d.oid)
                continue
        else:
            # (Only once it has its identity: a partition, published with its root, whose
            # lock was busy was forgotten here at once, and never got FULL.)
            busy.discard(d.oid)
        if (d.schema, d.name) not in published:
            try:
                await conn.execute(
                    sql.SQL("ALTER PUBLICATION {} ADD TABLE ONLY {}").format(
                        sql.Identifier(publication), ident
                    )
                )
            except psycopg.errors.InsufficientPrivilege as exc:
                # (not fatal: the engine serves the rest; said once per table)
                if d.oid not in _refused:
                    _refused.add(d.oid)
                    logger.warning(
                        'cannot publish table "%s"."%s", an inheritance child of a table with'
                        " shapes: its changes do not reach its parents' shapes until the"
                        " engine's role owns it or a DBA runs ALTER PUBLICATION %s ADD TABLE"
                        " ONLY it (%s)",
                        d.schema,
                        d.name,
                        publication,
                        exc.diag.message_primary or exc,
                    )
                unready.add(d.oid)
                continue
            added = True
    return added, unready


async def born_in_family(conn: AsyncConnection[Any], d: Descendant) -> bool:
    """Whether every row partition `d` ever held reached the stream as a change of it: it
    was made a partition by the transaction that made it (`Descendant.born_xid`), and holds
    no row that transaction wrote (one written before the link was not published; one
    after, maybe updated, cannot be told apart cheaply: both count). Then a shape of its
    ancestor, made before or after it, has all of its rows from its snapshot or the stream
    (`TransactionAssembler` routes a relation it first meets), and need not refetch. Not for
    an inheritance child: the engine publishes it only once it finds it. False when its
    lock is not had within 2 s (an ALTER in progress): the caller then refetches."""
    if not d.partition or d.born_xid is None:
        return False
    if d.kind != "r":
        return True  # (a partitioned table holds no rows; its partitions are asked)
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM ONLY {} WHERE xmin = %s::xid)").format(
        sql.Identifier(d.schema, d.name)
    )
    try:
        await conn.execute("SET lock_timeout = '2s'")
        cur = await conn.execute(query, (d.born_xid,))
        row = await cur.fetchone()
        return row is not None and not row[0]
    except (psycopg.errors.LockNotAvailable, psycopg.errors.UndefinedTable):
        return False
    except psycopg.errors.InsufficientPrivilege:
        return False
    finally:
        await conn.execute("RESET lock_timeout")


async def ancestors_of(conn: AsyncConnection[Any], oid: int) -> frozenset[int]:
    """The oids of table `oid`'s ancestors (partitioned tables, inheritance parents)."""
    cur = await conn.execute(_ANCESTORS, (oid,))
    return frozenset(int(r[0]) for r in await cur.fetchall())


#: Whether the engine's role owns table `oid`, and whether the table has an index an UPDATE
#: or DELETE can use as its replica identity (the primary key under DEFAULT, the chosen
#: index under USING INDEX): Postgres refuses those statements on a published table that
#: has neither that nor FULL.
_HAS_REPLICA_INDEX = """
SELECT pg_has_role(c.relowner, 'USAGE'), EXISTS (
    SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisvalid
      AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
) FROM pg_class c WHERE c.oid = %s
"""


#: Whether the engine's role owns table `oid` (may set its identity and publish it), or it
#: is in a publication already (a DBA did it).
_MAY_PUBLISH = """
SELECT pg_has_role(c.relowner, 'USAGE')
       OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prrelid = c.oid)
FROM pg_class c WHERE c.oid = %s
"""


async def ready_partitions(
    conn: AsyncConnection[Any], root: int, descendants: Iterable[Descendant], busy: set[int]
) -> tuple[list[Descendant], list[Descendant]]:
    """Before partitioned table `root` is added to the publication, `REPLICA IDENTITY FULL`
    on each of its partitions (`make_identity_full`); returns those still without any
    identity, as (lock busy: worth a retry, the engine's role not their owner: a DBA's
    work). Adding the root would publish them at once, and Postgres would then refuse the
    application's UPDATEs and DELETEs on them
    ("does not have a replica identity and publishes updates"). The caller must not
    publish the root then. Both empty when the root is published already (nothing to
    save: its partitions are published, `prepare_descendants` retries their identity).
    (A partition attached or made later is published by Postgres at once, before the
    engine's family check can set its identity: a window only the application's DDL can
    close, `REPLICA IDENTITY FULL` or a primary key with the partition.)"""
    cur = await conn.execute("SELECT 1 FROM pg_publication_rel WHERE prrelid = %s", (root,))
    published = await cur.fetchone() is not None
    busy_stuck: list[Descendant] = []
    refused: list[Descendant] = []
    for d in descendants:
        if d.root != root or d.kind != "r":
            continue
        if not d.partition:
            # An inheritance child is published by itself (`prepare_descendants`, after its
            # identity): one the engine may not publish, and nobody did, would never send
            # its changes, while the parent's snapshot has its rows.
            cur = await conn.execute(_MAY_PUBLISH, (d.oid,))
            row = await cur.fetchone()
            if not published and row is not None and not row[0]:
                refused.append(d)
            continue
        if d.identity == "f":
            continue
        if await make_identity_full(conn, d.oid, retrying=d.oid in busy):
            busy.discard(d.oid)
            continue
        busy.add(d.oid)
        cur = await conn.execute(_HAS_REPLICA_INDEX, (d.oid,))
        row = await cur.fetchone()
        if published or row is None or row[1]:
            continue  # (gone meanwhile, or its UPDATEs use its key)
        (busy_stuck if row[0] else refused).append(d)
    return busy_stuck, refused


class Identity(enum.Enum):
    """What `set_identity_full` found and did."""

    WAS_FULL = "was_full"  # nothing to do (another shape's request set it, say)
    SET = "set"  # it was not FULL: the ALTER ran
    NOT_SET = "not_set"  # the lock was busy, or the engine may not: tried again later


async def make_identity_full(
    conn: AsyncConnection[Any], oid: int, *, retrying: bool = False
) -> bool:
    """`REPLICA IDENTITY FULL` on table `oid` (a partition made after its parent's shapes)
    unless it has it, waiting at most 2 s for the table's lock: on a busy table the
    replication stream must not wait longer (its changes retire the shapes that need the
    old row meanwhile, see `TransactionAssembler`), nor the application's queries queued
    behind the ALTER's lock request. False when the lock was not had: the caller tries
    again later (`retrying`: waiting 100 ms only, said at DEBUG, the first failure warned)."""
    return await set_identity_full(conn, oid, retrying=retrying) is not Identity.NOT_SET


async def set_identity_full(
    conn: AsyncConnection[Any], oid: int, *, retrying: bool = False
) -> Identity:
    """`make_identity_full`, saying whether the ALTER ran: a caller that logs "set again"
    says it only when it was set back (15 concurrent new shapes of one table each logged
    "it had been set back" for a table just published FULL)."""
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.oid = %s AND c.relkind = 'r'"
        " AND c.relreplident <> 'f'",
        (oid,),
    )
    row = await cur.fetchone()
    if row is None:
        return Identity.WAS_FULL
    ident = sql.Identifier(str(row[0]), str(row[1]))
    try:
        await conn.execute("SET lock_timeout = '100ms'" if retrying else "SET lock_timeout = '2s'")
        await conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident))
    except psycopg.errors.LockNotAvailable:
        logger.log(
            logging.DEBUG if retrying else logging.WARNING,
            "could not set REPLICA IDENTITY FULL on %s.%s (busy: tried again every few seconds)",
            row[0],
            row[1],
        )
        return Identity.NOT_SET
    except psycopg.errors.InsufficientPrivilege as exc:
        logger.log(
            logging.DEBUG if retrying else logging.WARNING,
            "could not set REPLICA IDENTITY FULL on %s.%s: %s",
            row[0],
            row[1],
            exc.diag.message_primary or exc,
        )
        return Identity.NOT_SET
    finally:
        await conn.execute("RESET lock_timeout")
    return Identity.SET

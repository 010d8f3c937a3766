"""A source's tables: catalog lookups, publication membership and schema drift.

Everything here runs on the source's one catalog connection (`on_catalog`), apart from the
replication stream, the snapshot connections and the still-there checks:
- `lookup`: a table by name, cached for a few seconds; a storm of first requests for one
  table asks the catalog once;
- `still_there`: whether a shape's table is still there under its name, for a client
  starting at `-1` (by a check begun after the request arrived, in rounds shared by a
  storm, on a connection of their own: `pg.still_there`);
- `publish`: add a table to the publication before its first shape's snapshot;
- `check_schemas`: every `schema_check_interval`, rotate the shapes whose table was dropped,
  renamed or altered (a change without DML since never reaches the replication stream),
  or taken out of the publication (`check_published`: published again);
- `answers`: whether Postgres answers at all (a request waiting for a snapshot that does
  not come asks, see `http/shape.py`), on a connection of its own.

Each use of the catalog connection is bounded in time (`catalog_timeout`, longer for
`publish`): a Postgres that stops answering without closing anything (its processes
stopped, a network partition) must get requests a 503, not hold them (and, through the
connection's lock, every request after them) until it wakes up. The connection of a call
that ran out of time is given up (its query cancelled in the background), and the next
call opens another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from .errors import InvalidRequest, ServiceUnavailable
from .pg.catalog import TableInfo, load_table
from .pg.encoding import UnsupportedEncoding, check_encoding
from .pg.publication import (
    LOCK_LOOK,
    Descendant,
    HowPublished,
    Identity,
    LockWatch,
    PublicationError,
    TableBusy,
    add_table,
    ancestors_of,
    born_in_family,
    descendants_of,
    drop_narrowed,
    ensure_publication,
    how_published,
    make_identity_full,
    prepare_descendants,
    publication_exists,
    publish_every_change,
    ready_partitions,
    set_identity_full,
    wait_for_older_transactions,
)
from .pg.still_there import (
    StillThere,
    ask_on,
    collations_text,
    columns_text,
    published_text,
    types_of,
)
from .shapes.registry import ShapeRegistry
from .shapes.shape import Shape, family_digest
from .single_flight import single_flight
from .tenants.diagnose import public_reason

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a table found by `lookup` is trusted.
LOOKUP_TTL = 2.0
#: Seconds a catalog query may take before a 503 (the default of `Settings.catalog_timeout`).
CATALOG_TIMEOUT = 5.0
#: Seconds a call may wait for the catalog connection (others' queries before it) before a
#: 503: a storm of first requests for many tables queues there.
QUEUE_TIMEOUT = 20.0
#: Seconds `publish` may take: adding a table waits for locks and older transactions.
PUBLISH_TIMEOUT = 30.0
#: Seconds a first shape's publish tries for the table's lock (`_publish_new`) before its
#: 503 `table_locked`.
PUBLISH_LOCK_WAIT = 10.0
#: Seconds `answers` gives Postgres to accept a connection and answer `SELECT 1` (the
#: default of `Settings.probe_timeout`).
PROBE_TIMEOUT = 5.0
#: Seconds an answer to that probe is trusted (requests waiting meanwhile share it).
PROBE_TTL = 2.0
#: Seconds `close` lets the catalog work in progress finish before cancelling it, and then
#: waits for it to let go of the connection.
CLOSE_GRACE = 2.0
CLOSE_WAIT = 15.0


class StaleDescription(ServiceUnavailable):
    """The table a new shape was described from has changed since (`Tables.publish`): the
    request describes it again (`http/shape.py` does, once), else a 503 to retry at once."""

    def __init__(self, table: TableInfo, reason: str) -> None:
        super().__init__(
            f'table "{table.schema}"."{table.name}" changed while a shape of it was being made'
            f" ({reason}): retry",
            retry_after=1,
            code="table_changed",
        )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


K = TypeVar("K")


async def _begun_since(
    runs: dict[K, tuple[float, asyncio.Future[T]]],
    key: K,
    asked: float,
    known: Callable[[], tuple[bool, T]],
    begin: Callable[[float], Awaitable[T]],
) -> T:
    """What a catalog read of `key` begun at or after `asked` (monotonic) found: `known`'s
    answer when it has one (a result kept from such a read), else a read in progress
    begun since, joined; after one begun earlier, `begin(started)` begins one, which every
    caller waiting meanwhile shares: a storm of callers makes about one read per read's
    duration (`Tables._read_since`)."""
    while True:
        have, value = known()
        if have:
            return value
        running = runs.get(key)
        if running is None:
            break
        started, read = running
        if read.done() and started < asked:
            break  # (its starter has not taken it out yet)
        if started >= asked:
            return await asyncio.shield(read)
        await asyncio.wait([read])  # (begun too early: wait for it, then look again)
    started = time.monotonic()
    read = asyncio.ensure_future(begin(started))
    read.add_done_callback(_retrieve)  # (its error is seen even if no one awaits it)
    runs[key] = (started, read)
    try:
        return await asyncio.shield(read)
    finally:
        if runs.get(key) == (started, read):
            del runs[key]


def not_answering() -> ServiceUnavailable:
    """The 503 for a database that does not answer (stopped, or behind a partition)."""
    return ServiceUnavailable(
        "Database is not answering", retry_after=5, code="database_unreachable"
    )


def stopping() -> ServiceUnavailable:
    """The 503 for catalog work asked for (or cut off) while the source stops."""
    return ServiceUnavailable("The source is stopping", retry_after=1)


class Tables:
    def __init__(
        self,
        dsn: str,
        publication: str,
        registry: ShapeRegistry,
        *,
        catalog_timeout: float = CATALOG_TIMEOUT,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        #: Seconds a catalog query may take, and `answers` may wait for Postgres, before
        #: the 503 (`Settings.catalog_timeout`, `Settings.probe_timeout`).
        self.catalog_timeout = catalog_timeout
        self.probe_timeout = probe_timeout
        self.publication = publication
        self.registry = registry
        self._conn: AsyncConnection[Any] | None = None
        self._conn_lock = asyncio.Lock()
        self._cache: dict[tuple[str, str], tuple[float, TableInfo | None]] = {}
        # Catalog reads of a table for a new shape, in progress: (when begun, the read).
        self._fresh_reads: dict[tuple[str, str], tuple[float, asyncio.Future[TableInfo | None]]]
        self._fresh_reads = {}
        self._lookups: dict[tuple[str, str], asyncio.Future[TableInfo | None]] = {}
        # The WAL's insert position as last read (when begun, the LSN), and such reads in
        # progress (`wal_end_since`).
        self._wal_end: tuple[float, int] | None = None
        self._wal_reads: dict[None, tuple[float, asyncio.Future[int]]] = {}
        # Still-there checks, in rounds on a connection of their own.
        self._still_there = StillThere(
            dsn,
            publication,
            lambda: self.catalog_timeout,
            lambda question: self.on_catalog(partial(ask_on, question=question)),
        )
        # Each description's columns as the checks' rounds say them (`_columns_text`).
        self._columns_texts: dict[int, tuple[TableInfo, str]] = {}
        # The collations, publication and types a round last found of each description
        # with nothing changed that matters (`_unchanged`).
        self._extras_seen: dict[int, tuple[TableInfo, tuple[str, str | None, str]]] = {}
        self._restoring: dict[int, asyncio.Future[None]] = {}  # (`_restore_identity`)
        self._publishing: dict[int, asyncio.Future[TableInfo]] = {}  # (`publish`)
        self._published: set[int] = set()
        # How the publication published each table (and family member) when its shapes were
        # made, or when first looked at by this process (`check_published`).
        self._how_published: dict[int, HowPublished] = {}
        self._closing: set[asyncio.Future[None]] = set()  # given-up connections closing
        self._probes: dict[None, asyncio.Future[bool]] = {}
        # The connection `verify_relation` reads the catalog on (the replicator's only).
        self._verify_conn: AsyncConnection[Any] | None = None
        self._answered_at = -PROBE_TTL  # (monotonic) when Postgres last answered `answers`
        self._closed = False
        self._work: asyncio.Future[Any] | None = None  # the work holding the connection
        #: Published tables -> their descendants (partitions, inheritance children) as the
        #: engine routes them (`ShapeRouter.set_families`); a new shape records its table's
        #: (`Shape.family`), and `check_families` retires the shapes whose family changed.
        self.families: dict[int, frozenset[int]] = {}
        self._partitioned: set[int] = set()  # published tables that are partitioned
        # Tables whose family moved since `check_families` last compared their shapes'.
        self._unsettled: set[int] = set()
        # Descendants whose REPLICA IDENTITY FULL waited in vain for their lock: retried.
        self._identity_busy: set[int] = set()
        self._identity_retry_at = 0.0
        #: Seconds between family checks (`check_families_forever` sets it).
        self.family_check_interval = 2.0
        self._families_checked = False
        #: Set to have `check_families_forever` look now (the stream met a new relation).
        self.family_kick = asyncio.Event()

    async def close(self) -> None:
        """Close the catalog connection once the work on it is through: closed under a
        query, its socket's wait stayed registered, the query hung until its timeout and the
        next connection given that descriptor number failed at once. The work in progress
        gets `CLOSE_GRACE` seconds to finish, then is cancelled (psycopg cancels its query,
        within seconds): a `publish` may wait 30 s for older transactions, and a stop must
        not. Later work gets a 503 and opens nothing."""
        self._closed = True
        self._drop_verify_conn()
        await self._still_there.close()
        work = self._work
        if work is not None:
            await asyncio.wait({work}, timeout=CLOSE_GRACE)
            work.cancel()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self._conn_lock.acquire()
        except TimeoutError:
            # Still not through: the connection is closed when it is (never under it).
            left, self._conn = self._conn, None
            if left is not None and work is not None:
                logger.warning("catalog work did not end within %.0f s of the stop", CLOSE_WAIT)
                work.add_done_callback(lambda _: self._close_later(left))
            return
        try:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()
        finally:
            self._conn_lock.release()

    def _close_later(self, conn: AsyncConnection[Any]) -> None:
        if not conn.closed:
            closing = asyncio.ensure_future(conn.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # -- the catalog connection -----------------------------------------------------------

    async def _connection(self) -> AsyncConnection[Any]:
        if self._closed:
            raise stopping()
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = await AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
            try:
                # Every catalog read goes through here, the source's start (`prepare`)
                # first: no table of such a database is ever described (`pg.encoding`).
                check_encoding(conn)
            except UnsupportedEncoding:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def on_catalog(
        self,
        work: Callable[[AsyncConnection[Any]], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """`work` on the catalog connection; once more on a new one if that one had died
        (Postgres restarted since it was last used), else 503 Database is unreachable; 503
        Database is not answering after `timeout` (`catalog_timeout` unless given)."""
        if timeout is None:
            timeout = self.catalog_timeout

        async def attempts() -> T:
            for attempt in range(2):
                try:
                    return await work(await self._connection())
                except UnsupportedEncoding as exc:
                    # (a request before the source's start refused it: a subset's or a
                    # DELETE's description; said by kind, as `Source._wait_ready` does)
                    raise ServiceUnavailable(
                        f"Source is not ready: {public_reason(str(exc))}", retry_after=5
                    ) from exc
                except psycopg.OperationalError as exc:
                    if attempt or self._conn is None or not self._conn.broken:
                        raise ServiceUnavailable(
                            "Database is unreachable", retry_after=1, code="database_unreachable"
                        ) from exc
            raise AssertionError("unreachable")

        return await self._bounded(attempts, timeout)

    async def _on_connection(
        self, work: Callable[[AsyncConnection[Any]], Awaitable[T]], timeout: float
    ) -> T:
        """`work` on the catalog connection, within `timeout` (see `_bounded`)."""

        async def run() -> T:
            return await work(await self._connection())

        return await self._bounded(run, timeout)

    async def _bounded(self, work: Callable[[], Awaitable[T]], timeout: float) -> T:
        """`work` (on the catalog connection, `_connection()`), holding it alone, within
        `timeout` seconds once it has it (and `QUEUE_TIMEOUT` to get it), else
        `ServiceUnavailable`. The connection of work that ran out of time is given up: the
        next call opens another, and the work is cancelled in the background (psycopg then
        cancels its query, or closes the connection)."""
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                await self._conn_lock.acquire()
        except TimeoutError:
            raise not_answering() from None
        try:
            if self._closed:  # (it waited for the connection while the source stopped)
                raise stopping()
            task: asyncio.Future[T] = asyncio.ensure_future(work())
            self._work = task
            try:
                done, _ = await asyncio.wait({task}, timeout=timeout)
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                self._work = None
            if task.cancelled():  # by `close`, not this caller
                raise stopping()
            if not done:
                self._give_up(task)
                logger.warning(
                    "the database did not answer a catalog query in %g s: answering 503",
                    timeout,
                )
                raise not_answering()
            return task.result()
        finally:
            self._conn_lock.release()

    def _give_up(self, task: asyncio.Future[Any]) -> None:
        """Forget the connection `task` is stuck on; cancel it, and close the connection
        once the cancellation is through."""
        conn, self._conn = self._conn, None

        def done(_: asyncio.Future[Any]) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: it was answered with a 503 already
            if conn is not None and not conn.closed:
                closing = asyncio.ensure_future(conn.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

        task.add_done_callback(done)
        task.cancel()

    async def answers(self) -> bool:
        """Whether Postgres accepts a connection and answers `SELECT 1` within
        `probe_timeout`: False when it is stopped, behind a partition or refusing
        connections (restarting). An error Postgres sends (too many clients, say) is an
        answer. Asked on a new connection, not the catalog's, which may be busy with a long
        `publish`; at most once per `PROBE_TTL` when it answers, and once at a time."""
        if time.monotonic() - self._answered_at < PROBE_TTL:
            return True
        return await single_flight(self._probes, None, self._probe)

    async def _probe(self) -> bool:
        conn: AsyncConnection[Any] | None = None
        try:
            async with asyncio.timeout(self.probe_timeout):
                conn = await AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, round(self.probe_timeout))
                )
                await conn.execute("SELECT 1")
            answered = True
        except TimeoutError:
            answered = False
        except psycopg.Error as exc:
            answered = exc.sqlstate is not None
        finally:
            if conn is not None:
                closing = asyncio.ensure_future(conn.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        if answered:
            self._answered_at = time.monotonic()
        else:
            logger.warning(
                "the database did not answer a new connection in %g s", self.probe_timeout
            )
        return answered

    async def publication_exists(self) -> bool:
        """Whether the publication is there (someone may have dropped it)."""
        return await self.on_catalog(lambda conn: publication_exists(conn, self.publication))

    async def prepare(self, before_making: Callable[[], None] | None = None) -> bool:
        """Check the database's encoding (as the catalog connection is made: `_connection`)
        and `wal_level` and make the publication (raises when the database cannot serve);
        True when it had to be created. Every source's start comes here first, however it
        was added (`pg.encoding`). `before_making` is called (on the event loop) once the
        database is reached, before anything is made in it (`Source.note_made`)."""

        async def work(conn: AsyncConnection[Any]) -> bool:
            # (its encoding was checked as it connected: `_connection`)
            cur = await conn.execute("SHOW wal_level")
            row = await cur.fetchone()
            if row is None or row[0] != "logical":
                raise RuntimeError(
                    f"wal_level is {row[0] if row else '?'}, not logical: set wal_level ="
                    " logical in postgresql.conf (or ALTER SYSTEM) and restart Postgres"
                )
            if before_making is not None:
                before_making()
            return await ensure_publication(conn, self.publication)

        created = await self._on_connection(work, PUBLISH_TIMEOUT)
        self._published = set()
        if created:  # (what published the tables is gone; their shapes are retired)
            self._how_published = {}
        return created

    # -- lookups --------------------------------------------------------------------------

    async def lookup(self, schema: str, name: str) -> TableInfo | None:
        """The table `schema.name`, or None; asks the catalog at most every `LOOKUP_TTL`."""
        now = time.monotonic()
        key = (schema, name)
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < LOOKUP_TTL:
            return hit[1]
        # A storm of first requests for a table asks the catalog once (each lookup is three
        # queries on the one catalog connection, so they would queue).

        async def load() -> TableInfo | None:
            table = await self.on_catalog(lambda conn: load_table(conn, schema, name))
            if table is not None:  # a table created right after a miss is found at once
                self._cache[key] = (now, table)
            return table

        return await single_flight(self._lookups, key, load)

    async def _read_since(self, schema: str, name: str, asked: float) -> TableInfo | None:
        """The table `schema.name` as a catalog read begun at or after `asked` (monotonic)
        found it, or None. Joins such a read in progress (or takes its cached result);
        after one begun earlier, begins one: every caller waiting meanwhile shares it, so
        a storm of callers makes about one read per read's duration."""
        key = (schema, name)

        def known() -> tuple[bool, TableInfo | None]:
            hit = self._cache.get(key)
            return (True, hit[1]) if hit is not None and hit[0] >= asked else (False, None)

        async def load(started: float) -> TableInfo | None:
            table = await self.on_catalog(lambda conn: load_table(conn, schema, name))
            if table is not None:
                self._cache[key] = (started, table)
            return table

        return await _begun_since(self._fresh_reads, key, asked, known, load)

    async def wal_end_since(self, asked: float) -> int:
        """Postgres's WAL insert position (an LSN) as a read begun at or after `asked`
        (monotonic) found it: no transaction committed before then, so no offset any engine
        could have given, lies past it (`http.shape._check_bounds`). Shared as `_read_since`
        shares table reads: a storm of such requests makes about one query per round trip."""

        def known() -> tuple[bool, int]:
            hit = self._wal_end
            return (True, hit[1]) if hit is not None and hit[0] >= asked else (False, 0)

        async def read(started: float) -> int:
            async def ask(conn: AsyncConnection[Any]) -> int:
                cur = await conn.execute(
                    "SELECT (pg_catalog.pg_current_wal_insert_lsn() - '0/0'::pg_catalog.pg_lsn)"
                    "::pg_catalog.int8"
                )
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

            end = await self.on_catalog(ask)
            self._wal_end = (started, end)
            return end

        return await _begun_since(self._wal_reads, None, asked, known, read)

    async def read_fresh(self, schema: str, name: str) -> TableInfo | None:
        """The table `schema.name` as a catalog read begun now finds it (`_read_since`),
        never a description read (or begun) earlier: what a request asks after its table
        was found changed (`http.shape._resolve`)."""
        return await self._read_since(schema, name, time.monotonic())

    def _check_fresh(self, table: TableInfo, current: TableInfo | None) -> None:
        """Raise `StaleDescription` if `table` (a description a new shape is made from) is
        not what the catalog now says (`current`, read after the shape was asked for)."""
        reason = _drift(table, current)
        if reason is not None:
            if current is None:  # (else the read replaced the cached description)
                self._cache.pop((table.schema, table.name), None)
            raise StaleDescription(table, reason)

    async def still_there(self, table: TableInfo, asked: float) -> bool:
        """Whether a shape's table is still there under its name, for a client starting at
        -1 whose request arrived at `asked` (monotonic), by a check begun at or after then.

        A new client of a table dropped (or dropped and created again) since the shape was
        made gets the table's 400 (or a new shape), not the old rows: the table's shapes are
        rotated here. Postgres streams no DROP (Electric notices one at its 60 s publication
        reconcile), so only a read begun after the request can say; a check trusted for 1 s
        (`TABLE_CHECK_TTL`, before) answered a request arriving right after
        `DROP` + `CREATE` + inserts with the dropped table's rows under the old handle. A
        table rewritten since (a new relfilenode), or whose columns changed (`columns_text`),
        is as good as a new one. The checks run
        in rounds on a connection of their own, each round one query for every
        table asked about since the last began (`pg.still_there`).

        A check Postgres does not answer (stopped, silent, unreachable) raises its 503
        (`database_unreachable`, Retry-After): the log is never served unchecked. Served
        after the timeout, a table dropped and made again just before Postgres went silent
        gave a new client the dropped table's rows as up to date (chaos: DROP + CREATE,
        SIGSTOP, `-1`).
        """
        names, rewritten = await self._still_there.check(
            table.oid, table.files or (), asked, types=bool(table.enums or table.composites)
        )
        if names is None or names[:2] != (table.schema, table.name):
            self.changed(table, dropped=True, reason="table dropped or renamed")
            return False
        # Rewritten (`ALTER COLUMN v TYPE int USING v + 1`; on a partitioned table, its
        # partitions: its own relfilenode stays 0): every row may read otherwise and no row
        # change reached the stream. `_drift`'s reasons, as the periodic check would say
        # them up to `schema_check_interval` later. (Descendants attached or detached are
        # `check_families`' business, as there.)
        if table.relfilenode is not None and names[2] != table.relfilenode:
            self.changed(table, dropped=True, reason="table rewritten")
            return False
        if rewritten:
            self.changed(table, dropped=True, reason="partition rewritten")
            return False
        # A column added (with a default), dropped, renamed, or retyped or made NOT NULL
        # without a rewrite: no row change streamed, same relfilenode, yet the rows read
        # other columns (chaos 23:20: ADD COLUMN .. DEFAULT, DROP COLUMN served the old
        # columns up to date for ~3 s); or a new primary key, the log keyed by the old one.
        # `_drift`'s reason.
        if names[3] != self._columns_text(table):
            self.changed(table, dropped=True, reason="table schema changed")
            return False
        # A column's collation, the table's publication, an enum's values or a composite's
        # attributes changed: no row streamed, no rewrite, every column the same (each was
        # seen up to `schema_check_interval` later, the -1 meanwhile served the old log).
        extras = names[4:]
        seen = self._extras_seen.get(id(table))
        if seen is not None and seen[0] is table and seen[1] == extras:
            return True
        reason = self._other_change(table, *extras)
        if reason is not None:
            if reason == REPUBLISH:
                logger.warning(
                    'table "%s"."%s" was taken out of publication %s (or its entry changed):'
                    " its shapes are retired (their clients refetch) and it is published"
                    " again",
                    table.schema,
                    table.name,
                    self.publication,
                )
                for member in (table.oid, *self.families.get(table.oid, frozenset())):
                    self._how_published.pop(member, None)  # (`publish` notes it afresh)
            self.changed(table, dropped=True, reason=reason)
            return False
        if len(self._extras_seen) >= 256:  # (descriptions come and go, as `_columns_texts`)
            self._extras_seen.clear()
        self._extras_seen[id(table)] = (table, extras)
        return True

    def _other_change(
        self, table: TableInfo, collations: str, published: str | None, types: str
    ) -> str | None:
        """Why a shape of `table` is stale, a round having found these texts of it
        (`pg.still_there.Found`), beyond its name, files and columns: `_drift`'s reason
        (the periodic check's), or `REPUBLISH`; None when nothing that matters changed."""
        then = collations_text((c.attnum, c.collation) for c in table.columns)
        if then is not None and collations != then:
            return "column collation changed"
        how = self._how_published.get(table.oid)
        if (
            how is not None
            and published is not None  # (the publication gone: `Source` makes it again)
            and published != published_text(how.entries, how.all_tables, how.schemas)
        ):
            return REPUBLISH
        if table.enums is None and table.composites is None:
            return None
        values, attributes = types_of(types)
        if table.enums is not None and not {(o, label) for _, o, label in table.enums} <= values:
            return "enum value renamed"  # (`_renamed_enum_value`: values added change no row)
        if table.composites is not None and attributes != {
            (t, n, at, a) for t, n, a, at in table.composites
        }:
            return "a composite type's attributes changed"
        return None

    def _columns_text(self, table: TableInfo) -> str:
        """`columns_text` of `table`'s columns, kept per description (a -1 compares it)."""
        kept = self._columns_texts.get(id(table))
        if kept is not None and kept[0] is table:
            return kept[1]
        if len(self._columns_texts) >= 256:  # (descriptions come and go: dropped, made again)
            self._columns_texts.clear()
        key = sorted((c.pk_index, c.attnum) for c in table.columns if c.pk_index is not None)
        text = columns_text(
            ((c.attnum, c.type_oid, c.type_mod, c.not_null, c.name) for c in table.columns),
            (attnum for _, attnum in key),
        )
        self._columns_texts[id(table)] = (table, text)
        return text

    def changed(self, table: TableInfo, *, dropped: bool = False, reason: str = "") -> None:
        """A table changed: forget what is cached about it, so the next request looks again;
        when it was dropped, its shapes are rotated (`reason`)."""
        self._cache.pop((table.schema, table.name), None)
        self._published.discard(table.oid)
        self._still_there.forget(table.oid)
        if dropped:
            self.registry.rotate_table(table.oid, reason)

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, table: TableInfo) -> None:
        """Make sure the publication has `table` before a shape of it takes its snapshot.

        A table just added waits for the transactions that were running before, whose
        changes the slot would not send (`wait_for_older_transactions`).

        Called once for each new shape, which must not be made from a description older
        than its request: `lookup` trusts one for `LOOKUP_TTL` (2 s), and a table changed
        meanwhile without a row change (`ALTER TABLE ... ADD PRIMARY KEY (code)`) gave a
        shape keyed by the old primary key until the periodic check retired it. So the
        table is read again, by a read begun after this call, and `StaleDescription` raised
        if it changed (`_check_fresh`). A published table's is a read of its own, shared
        by a storm of new shapes (`_read_since`), as is a table another first shape of it
        is publishing: one publish per table in flight (`_publish_new`), which the others
        share, then read the table as for one published.
        """
        asked = time.monotonic()
        if table.oid in self._published:
            self._check_fresh(table, await self._read_since(table.schema, table.name, asked))
            if table.replica_identity != "f" and table.kind == "r":
                await self._restore_identity(table)
            return
        published = await single_flight(
            self._publishing, table.oid, partial(self._publish_new, table)
        )
        if published is not table:  # (another description's publish, shared)
            self._check_fresh(table, await self._read_since(table.schema, table.name, asked))

    async def _publish_new(self, table: TableInfo) -> TableInfo:
        """Publish `table` (`publish`), the first shape of it; returns `table`.

        A table to publish is read in the same turn on the catalog connection as its
        publishing: a read queued on its own ahead of it put the new shapes' publishing
        behind others' (a partitioned table's second new shape then published after a busy
        partition's lock was free, never learning it had been busy).

        Its statements that lock the table (`add_table`) never wait queued ahead of the
        application's queries (`LockWatch`): each is tried for `LOCK_TRY_MS` at most, only
        while no long transaction holds a conflicting lock, and tried again every
        `LOCK_LOOK` s, the catalog connection free between tries, for up to
        `PUBLISH_LOCK_WAIT` s (then 503 `table_locked`). Waiting 2 s in the lock queue
        behind a long transaction (then again at each retry of the client's), the
        `REPLICA IDENTITY FULL` blocked the application's writes of the table 5.8 s of 9.
        """
        watch = LockWatch()
        descendants: list[Descendant] = []

        async def first(conn: AsyncConnection[Any]) -> bool:
            nonlocal descendants
            started = time.monotonic()
            current = await load_table(conn, table.schema, table.name)
            if current is not None:
                self._cache[(table.schema, table.name)] = (started, current)
            self._check_fresh(table, current)
            if table.oid in self._published:  # published while this request waited
                return True
            # its partitions and inheritance children: their changes come under their own
            # relations (routed to this table's shapes), each with the old row
            descendants = await descendants_of(conn, [table.oid])
            # A partitioned table publishes its partitions at once: each gets its identity
            # first, or the application's UPDATEs on a keyless one would be refused.
            busy, refused = await ready_partitions(
                conn, table.oid, descendants, self._identity_busy
            )
            if refused:
                raise InvalidRequest({"table": [self._refusal(table, refused[0])]})
            if busy:
                names = ", ".join(f'"{d.schema}"."{d.name}"' for d in busy[:5])
                raise ServiceUnavailable(
                    f'cannot publish table "{table.schema}"."{table.name}" yet: its partition'
                    f" {names} has no primary key and its lock is busy (an open transaction"
                    " used it), so the engine could not set its REPLICA IDENTITY FULL;"
                    " published without one, Postgres would refuse the application's"
                    " UPDATEs and DELETEs on it. Retry.",
                    retry_after=1,
                    code="partition_identity_pending",
                )
            return await add(conn)

        async def add(conn: AsyncConnection[Any]) -> bool:
            """The table added (False: its lock busy, tried again later), then the rest."""
            members = [table.oid, *(d.oid for d in descendants)]
            try:
                added = await add_table(
                    conn,
                    self.publication,
                    table.schema,
                    table.name,
                    table.replica_identity,
                    watch,
                    members,
                )
            except PublicationError as exc:
                raise InvalidRequest({"table": [str(exc)]}) from None
            except TableBusy:
                return False
            if watch.waited:  # (changed while its lock was awaited: a migration's ALTER)
                started = time.monotonic()
                current = await load_table(conn, table.schema, table.name)
                if current is not None:
                    self._cache[(table.schema, table.name)] = (started, current)
                self._check_fresh(table, current)
            # (a busy descendant's identity is not waited for: the application's queries on
            # it would queue behind the ALTER's lock request; it is tried again later)
            more, unready = await prepare_descendants(
                conn, self.publication, descendants, self._identity_busy
            )
            if added or more:
                await wait_for_older_transactions(conn)
            # (kept, not replaced: a table found out of the publication here while it has
            # shapes lost changes meanwhile, which the next `check_published` sees)
            for oid, how in (await how_published(conn, self.publication, members)).items():
                self._how_published.setdefault(oid, how)
            if table.kind == "p":
                self._partitioned.add(table.oid)
            # (a child left unpublished is not routed: `check_families` adds it once it is
            # published, and retires the shapes made without it)
            self._set_families({table.oid: frozenset(d.oid for d in descendants) - unready})
            return True

        # (a connection found dead, Postgres restarted since it was last used, is replaced
        # once: a 503 otherwise, never the 400 of a table that cannot be published)
        done = await self.on_catalog(first, PUBLISH_TIMEOUT)
        deadline = time.monotonic() + PUBLISH_LOCK_WAIT
        while not done:
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f'table "{table.schema}"."{table.name}" is locked by another transaction'
                    " (a migration's ALTER TABLE, a VACUUM FULL, a long transaction that read"
                    " it?): its first shape cannot publish it until that ends. Retry.",
                    retry_after=1,
                    code="table_locked",
                )
            await asyncio.sleep(LOCK_LOOK)
            done = await self.on_catalog(add, PUBLISH_TIMEOUT)
        self._published.add(table.oid)
        self._cache.pop((table.schema, table.name), None)
        return table

    async def _restore_identity(self, table: TableInfo) -> None:
        """Set REPLICA IDENTITY FULL again on a published table someone set back (a DBA, a
        migration tool), as Electric does whenever it configures a shape's table: without
        it every UPDATE retires the table's shapes whose where reads other columns than the
        key, their refetched shapes too, for as long as writes go on (clients never
        settle). Best effort (the lock busy for 2 s, or a table the engine does not own:
        the warning in /v1/health stays); the next new shape tries again."""

        async def work(conn: AsyncConnection[Any]) -> Identity:
            return await set_identity_full(conn, table.oid)

        async def restore() -> None:
            try:
                if await self.on_catalog(work, PUBLISH_TIMEOUT) is Identity.SET:
                    logger.info(
                        'set REPLICA IDENTITY FULL again on "%s"."%s" (it had been set back)',
                        table.schema,
                        table.name,
                    )
            except ServiceUnavailable:
                pass
            self._cache.pop((table.schema, table.name), None)

        # (a storm of new shapes of the table, all with the description read before: one
        # turn on the catalog connection, one line)
        await single_flight(self._restoring, table.oid, restore)

    def _refusal(self, table: TableInfo, d: Descendant) -> str:
        """The 400 for a shape on `table` whose descendant `d` the engine may not ready:
        names `d` and what a DBA runs."""
        child = f'"{d.schema}"."{d.name}"'
        if d.partition:
            return (
                f'cannot publish table "{table.schema}"."{table.name}": its partition {child}'
                " has no primary key and the engine's database role does not own it, so"
                " cannot set its REPLICA IDENTITY FULL; published without one, Postgres would"
                " refuse the application's UPDATEs and DELETEs on it. A DBA must run"
                f" ALTER TABLE {child} REPLICA IDENTITY FULL (or make the engine's role its"
                " owner)."
            )
        return (
            f'cannot publish table "{table.schema}"."{table.name}": its inheritance child'
            f" {child} is not owned by the engine's database role, so its changes cannot be"
            " published, while the parent's rows include its rows. A DBA must run"
            f" ALTER TABLE {child} REPLICA IDENTITY FULL and"
            f" ALTER PUBLICATION {self.publication} ADD TABLE ONLY {child}"
            " (or make the engine's role its owner)."
        )

    async def _retry_identities(self, descendants: set[int]) -> None:
        """Try again to set REPLICA IDENTITY FULL on the descendants whose lock was busy
        when the engine found them: until then their updates and deletes retire the where
        shapes of their ancestors (each client refetching), for as long as it lasts. Every
        5 family checks, waiting 100 ms for the lock: the ALTER's lock request queues the
        application's queries on the table behind it while it waits.

        Forgotten only once no family the engine knows has it (detached, dropped), not
        because its root has no shapes at the moment: at a restart the shapes of a table
        whose family changed are retired, and a check before their clients made new ones
        dropped the partition for good (it never got FULL, test_families.py)."""
        known = set(descendants)
        for family in self.families.values():
            known |= family
        self._identity_busy &= known
        now = time.monotonic()
        if not self._identity_busy or now < self._identity_retry_at:
            return
        self._identity_retry_at = now + 5 * self.family_check_interval
        for oid in sorted(self._identity_busy):

            async def work(conn: AsyncConnection[Any], oid: int = oid) -> bool:
                return await make_identity_full(conn, oid, retrying=True)

            if await self.on_catalog(work, PUBLISH_TIMEOUT):
                self._identity_busy.discard(oid)

    def _set_families(self, families: dict[int, frozenset[int]]) -> None:
        """Record these tables' descendants and route by what is known."""
        for oid, family in families.items():
            if self.families.get(oid) != family:
                self._unsettled.add(oid)
        self.families.update(families)
        parents = {t for t, f in self.families.items() if f or t in self._partitioned}
        self.registry.router.set_families(self.families, parents)

    def family(self, oid: int) -> frozenset[int] | None:
        """The descendants of published table `oid` as routed now (what a new shape of it
        is consistent with), None if unknown."""
        return self.families.get(oid)

    async def find_ancestors(self, oid: int) -> None:
        """Route table `oid`'s changes to its ancestors' shapes too (`ShapeRouter.routes`):
        asked by the replicator for a relation the stream names for the first time while
        shaped parents exist (a partition made after their shapes), before it reads the
        relation's changes. The family check is asked to look at once (a partition attached
        with rows needs its ancestors' shapes refetched)."""

        async def work(conn: AsyncConnection[Any]) -> frozenset[int]:
            ancestors = await ancestors_of(conn, oid)
            if ancestors & self.families.keys() and not await make_identity_full(conn, oid):
                self._identity_busy.add(oid)
            return ancestors

        ancestors = await self.on_catalog(work)
        known = {a: self.families[a] | {oid} for a in ancestors if a in self.families}
        if any(oid not in self.families[a] for a in known):
            self._set_families(known)
            self.family_kick.set()

    # -- families -------------------------------------------------------------------------

    async def check_families_forever(self, interval: float) -> None:
        """`check_families` every `interval` seconds, or at once when kicked; a failure is
        retried, and logged once until it changes or the check succeeds."""
        self.family_check_interval = interval
        said = ""
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self.family_kick.wait()
            except TimeoutError:
                pass
            self.family_kick.clear()
            try:
                await self.check_families()
                said = ""
            except asyncio.CancelledError:
                raise
            except ServiceUnavailable as exc:
                logger.debug("family check: %s", exc.message)
            except Exception as exc:
                if str(exc) != said:
                    said = str(exc)
                    logger.warning(
                        "could not check the partitions and inheritance children of"
                        " shaped tables (retrying every %g s): %s",
                        interval,
                        exc,
                    )

    async def check_families(self) -> None:
        """Retire the shapes whose table's family (partitions, inheritance children) is not
        what they were made with, once the new family is published and routed.

        A family changes without a row change in the WAL: ATTACH PARTITION and ALTER TABLE
        ... INHERIT bring a table's rows into its new ancestors' SELECT, DETACH, NO INHERIT
        and DROP take them out, and a new inheritance child is not published (its changes
        never reach the stream) until the engine adds it. Such a shape would differ from
        `SELECT` for ever: it is retired (its clients get a 409 and refetch), except for a
        partition made as one (`born_in_family`), whose every row reached the stream.

        In this order, so that no change falls between the DDL and the retirement: (1) the
        descendants of the shaped tables (one catalog query); (2) the new ones published,
        with REPLICA IDENTITY FULL, and transactions older than that waited for
        (`wait_for_older_transactions`); (3) routes switched to the new families; (4) the
        shapes made with another family retired. A shape made after (3) takes its snapshot
        after the new family is published and routed: the stream's later transactions reach
        it, earlier ones are in its snapshot. A shape made before (3) records the old family
        and is retired in (4) (or at the next check). Each shape's family is in its
        completion record: after a restart (even a SIGKILL between (3) and (4), or DDL
        while the engine was down) the first check, before the stream starts, compares
        again."""
        router = self.registry.router
        roots = router.tables()
        if not roots:
            return
        first = not self._families_checked
        if first:  # (shapes loaded from disk: their tables' kinds, their recorded families)
            self._partitioned |= {
                s.definition.table_oid
                for s in self.registry.by_handle.values()
                if s.table.kind == "p"
            }
        found = await self.on_catalog(lambda conn: descendants_of(conn, roots))
        members: dict[int, set[int]] = {r: set() for r in roots}
        by_oid: dict[int, Descendant] = {}
        for d in found:
            members[d.root].add(d.oid)
            by_oid[d.oid] = d
        current = {r: frozenset(m) for r, m in members.items()}
        new = [d for d in found if d.oid not in self.families.get(d.root, frozenset())]
        if new:

            async def prepare(conn: AsyncConnection[Any]) -> set[int]:
                added, unready = await prepare_descendants(
                    conn, self.publication, new, self._identity_busy
                )
                if added:
                    await wait_for_older_transactions(conn)
                return unready

            unready = await self.on_catalog(prepare, PUBLISH_TIMEOUT)
            if unready:
                # An inheritance child that could not be published yet (its lock busy):
                # not routed, and its parents' shapes not retired for it until it is (they
                # would refetch without it again); looked at again at the next check.
                current = {r: f - unready for r, f in current.items()}
        self._set_families(current)
        self._families_checked = True
        await self._retry_identities(set(by_oid))
        # The tables whose shapes may have been made with another family: those whose
        # family moved since the last check (here, or by `publish`, `find_ancestors`); all
        # at the first check. The others' shapes are not walked (100k shapes, every 2 s).
        tables = roots if first else roots & self._unsettled
        if not tables:
            return

        def shapes() -> list[Shape]:
            return [
                shape
                for oid in tables
                for _, of_info in router.shapes_by_table_info(oid)
                for shape in of_info
            ]

        # which shapes were made with another family, and whether the new members are
        # partitions made as such (their rows all reached the stream)
        suspects: set[int] = set()
        for shape in shapes():
            have = current[shape.definition.table_oid]
            if shape.family is None and shape.family_digest is not None:
                if shape.family_digest != family_digest(have):  # (a big family: no lists)
                    self.registry.rotate(shape, "the table's family changed")
                    continue
                shape.family, shape.family_digest = have, None
            if shape.family is None:  # (recorded by an older engine: trusted, as before)
                shape.family = have
            elif shape.family != have:
                suspects |= have - shape.family
        born: set[int] = set()
        for oid in sorted(suspects):
            d = by_oid[oid]

            async def ask(conn: AsyncConnection[Any], d: Descendant = d) -> bool:
                return await born_in_family(conn, d)

            if await self.on_catalog(ask, PUBLISH_TIMEOUT):
                born.add(oid)
        for shape in shapes():
            have = current[shape.definition.table_oid]
            if shape.family is None or shape.family == have:
                continue
            gone, came = shape.family - have, have - shape.family
            if gone or not came <= born:
                names = ", ".join(
                    sorted(f"{by_oid[o].schema}.{by_oid[o].name}" for o in came if o in by_oid)
                )
                why = "a partition or inheritance child " + (
                    "left it" if gone else f"joined it, maybe with rows ({names})"
                )
                self.registry.rotate(shape, f"the table's family changed: {why}")
            else:
                shape.family = have
        for oid in tables:
            if self.families.get(oid) == current[oid]:  # (not moved again meanwhile)
                self._unsettled.discard(oid)

    # -- schema drift ---------------------------------------------------------------------

    async def check_schemas_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_schemas()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("schema check failed: %s", exc)

    async def check_schemas(self) -> None:
        """Rotate shapes whose table was dropped, renamed or altered without any DML since."""
        seen: dict[int, TableInfo | None] = {}
        for shape in list(self.registry.by_handle.values()):
            t = shape.table
            if t.oid not in seen:
                seen[t.oid] = await self._on_connection(
                    partial(load_table, schema=t.schema, name=t.name), self.catalog_timeout
                )
            self._retire_if_changed(shape, seen[t.oid])
        await self.check_published()

    def _retire_if_changed(self, shape: Shape, current: TableInfo | None) -> bool:
        """Retire `shape` if its table, as the catalog describes it now (`current`: None
        when no table has its name), is not what the shape was made with (`_drift`);
        whether it was."""
        t = shape.table
        reason = _drift(t, current)
        if reason is None:
            return False
        if current is None or current.oid != t.oid:
            self._published.discard(t.oid)
        self._cache.pop((t.schema, t.name), None)
        self.registry.rotate(shape, reason)
        return True

    async def verify_relation(self, oid: int) -> None:
        """Compare the shapes of table `oid` and of its shaped ancestors with the catalog
        before the stream's next change of it, and retire those whose table changed.

        Called for each Relation message naming a shaped table (or a descendant of one):
        pgoutput sends one after the table's relcache entry was invalidated, before the
        table's next change. What DDL changed is not always in the message: with REPLICA
        IDENTITY FULL (which the engine sets) every column is flagged as key, so a new
        primary key (`DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, org_id)`) shows
        nowhere, and a row new under the new key (`(1, 2)` next to `(1, 1)`) would be
        streamed under the old one and overwrite another row in every client until the
        periodic check (`check_schemas`). Compared here exactly as there (`_drift`).

        The catalog is read now, which may be ahead of the stream: a change seen early
        retires the shapes early (a refetch), never late. VACUUM, ANALYZE, GRANT and any
        change of the publication also make pgoutput send the message again: one table
        description read each (`load_table`), on a connection of its own so that the
        stream never waits behind a `publish` holding the catalog connection for seconds.
        """
        router = self.registry.router
        for table_oid in router.routes(oid):
            groups = router.shapes_by_table_info(table_oid)
            if not groups:
                continue
            names = {(info.schema, info.name) for info, _ in groups}
            current: dict[tuple[str, str], TableInfo | None] = {}
            for schema, name in sorted(names):
                current[(schema, name)] = found = await self._verify_load(schema, name)
                if found is not None and found.oid == table_oid:
                    self._cache[(schema, name)] = (time.monotonic(), found)
            for info, shapes in groups:
                now = current[(info.schema, info.name)]
                if _drift(info, now) is not None:
                    for shape in shapes:
                        self._retire_if_changed(shape, now)

    async def _verify_load(self, schema: str, name: str) -> TableInfo | None:
        """`load_table` on the verification connection, within `catalog_timeout` (else
        `ServiceUnavailable`: the replicator reads the stream again)."""
        if self._closed:
            raise stopping()
        conn = self._verify_conn
        try:
            async with asyncio.timeout(self.catalog_timeout):
                if conn is None or conn.closed or conn.broken:
                    conn = self._verify_conn = await AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=5
                    )
                return await load_table(conn, schema, name)
        except TimeoutError:
            self._drop_verify_conn()
            raise not_answering() from None
        except psycopg.Error as exc:
            self._drop_verify_conn()
            raise ServiceUnavailable(
                "Database is unreachable", retry_after=1, code="database_unreachable"
            ) from exc

    def _drop_verify_conn(self) -> None:
        conn, self._verify_conn = self._verify_conn, None
        if conn is not None:
            self._close_later(conn)

    async def check_published(self) -> None:
        """Retire the shapes of tables whose changes the engine's publication may not have
        sent, and publish them again whole.

        pgoutput sends a change only as the publication stood when it was written, and says
        nothing when that changes: the shapes would answer "up to date" for ever without
        the changes missed. Found here (`HowPublished`), every `--schema-check-interval`:
        the table taken out of the publication (`ALTER PUBLICATION ... DROP TABLE`, also
        added again since the last look: a new entry), the `publish` option narrowed (set
        back to every kind of change here) or set and set back since, a row filter or column
        list on its entry (the entry is dropped and the table added again whole). A table
        counts as published when it or a partition ancestor is in the publication (or its
        schema); the inheritance children the engine published for a shaped parent (its
        family) are looked at too. The shapes go first, then the table is published again as
        for a first shape (`publish`): a client's refetch takes its snapshot after that (a
        request in between publishes it itself, `_published` being forgotten).

        What publishes a table is compared with what published it when the first shape of
        it was made in this process, else when this process first looked (after a restart:
        a change made while the engine was stopped, and undone before it started, is not
        seen)."""
        roots: dict[int, TableInfo] = {}
        for shape in self.registry.by_handle.values():
            roots.setdefault(shape.definition.table_oid, shape.table)
        if not roots:
            return
        of: dict[int, int] = {oid: oid for oid in roots}
        for oid in roots:
            for member in self.families.get(oid, frozenset()):
                of.setdefault(member, oid)
        pub = self.publication
        now = await self.on_catalog(lambda conn: how_published(conn, pub, of))
        why: dict[int, str] = {}  # root -> what changed
        for oid, how in now.items():
            was = self._how_published.setdefault(oid, how)
            if not how.published:
                reason = "was taken out of the publication"
            elif not how.every_change:
                reason = "is published without every kind of change (its `publish` option)"
            elif how.narrowed:
                reason = "is published with a row filter or a column list"
            elif was != how:
                reason = (
                    "had its publication changed since (taken out and added again, or the"
                    " publication's options set)"
                )
            else:
                continue
            why.setdefault(of[oid], reason)
        if not why:
            return
        restored: list[str] = []
        if any(not how.every_change for how in now.values()):
            await self.on_catalog(lambda conn: publish_every_change(conn, pub))
            restored.append("its publish option set back to every kind of change")
        if any(how.narrowed for how in now.values()):
            names = await self.on_catalog(lambda conn: drop_narrowed(conn, pub))
            restored.append(f"{', '.join(names)} taken out to be added again whole")
        for oid in sorted(why):
            table = roots[oid]
            logger.warning(
                'table "%s"."%s" (or one of its inheritance children) %s in publication %s:'
                " changes may not have been streamed; its shapes are retired (their clients"
                " refetch) and it is published again%s",
                table.schema,
                table.name,
                why[oid],
                pub,
                f" ({'; '.join(restored)})" if restored else "",
            )
            self._published.discard(oid)
            for member, root in of.items():
                if root == oid:
                    self._how_published.pop(member, None)  # (`publish` notes it afresh)
            self.registry.rotate_table(oid, REPUBLISH)
            try:
                await self.publish(table)
            except Exception as exc:  # (a new shape's request publishes it, or says why)
                logger.warning(
                    'could not publish "%s"."%s" again: %s', table.schema, table.name, exc
                )


#: `Tables._other_change`'s reason for a table its publication no longer publishes as when
#: its shapes were made (`check_published`'s rotation, seen by a round).
REPUBLISH = "the table's publication changed: changes may not have been streamed"


def _drift(t: TableInfo, current: TableInfo | None) -> str | None:
    """Why the rows of a shape made with table description `t` may no longer be what
    `SELECT` returns, the table now being `current` (None: no table of that name); None
    when nothing that matters changed."""
    if current is None or current.oid != t.oid:
        return "table dropped or renamed"
    if _shape_of(current) != _shape_of(t):
        return "table schema changed"
    if t.relfilenode is not None and current.relfilenode != t.relfilenode:
        # Rewritten: `ALTER COLUMN title TYPE text USING upper(title)` keeps every name,
        # type and attnum and writes no row change, yet every row may read otherwise.
        # VACUUM FULL, CLUSTER and TRUNCATE (which retires the shapes anyway) give a new
        # relfilenode too: a refetch they did not need, the price of not missing a rewrite.
        return "table rewritten"
    if _rewritten_descendant(t, current):
        # A partitioned table's partitions rewritten (its own relfilenode stays 0).
        return "partition rewritten"
    if _renamed_enum_value(t, current):
        return "enum value renamed"
    if t.composites is not None and current.composites != t.composites:
        # (an attribute added, dropped, renamed or retyped: every row's text of such a
        # column reads otherwise, with no WAL row and no rewrite)
        return "a composite type's attributes changed"
    if t.casts is not None and set(current.casts or ()) - set(t.casts):
        # (`CREATE CAST (mood AS text) WITH FUNCTION ...`: a where clause casting through it
        # is now Postgres's to judge, which the shape made again tells: a 400)
        return "a cast was made from or to a column's type"
    if set(current.unsynced) - set(t.unsynced):
        # (a partition set UNLOGGED, an unlogged or foreign one attached: its rows change
        # with no WAL; the shape made again is refused, naming it)
        return "a partition or child table is not replicated (unlogged or foreign)"
    pairs = zip(t.columns, current.columns, strict=False)
    if any(now.generated and not then.generated for then, now in pairs):
        # (a partition or child that generates the column: its changes come without it)
        return "a column is generated in a partition or child table"
    if _collation_changed(t, current):
        return "column collation changed"
    if current.pk_deferrable and not t.pk_deferrable:
        # (the deferred-key check runs only for shapes made on a deferrable key: a key made
        # deferrable since, or a shape recorded before the flag was, would go unchecked and
        # a swap inside a transaction lose a row: `changes.moved_onto_held_key`)
        return "primary key made deferrable"
    return None


def _collation_changed(old: TableInfo, new: TableInfo) -> bool:
    """Whether a column's collation changed (`ALTER COLUMN c TYPE text COLLATE "x"`: same
    type, no rewrite, no WAL row, yet `c < 'b'` and `upper(c)` now judge every row by
    another collation). Its provider, locales, determinism and OID are compared (the first
    five fields of `ColumnInfo.collation`; four in a description recorded before the OID
    was, None before collations were: what both know)."""
    for a, b in zip(old.columns, new.columns, strict=False):
        if a.collation is None or b.collation is None:
            continue
        before, now = a.collation.split("|"), b.collation.split("|")
        known = 5 if len(before) >= 5 else 4
        if before[:known] != now[:known]:
            return True
    return False


def _rewritten_descendant(old: TableInfo, new: TableInfo) -> bool:
    """Whether a descendant both descriptions know has a new relfilenode: rewritten
    (`ALTER TABLE root ALTER COLUMN c TYPE text USING upper(c)` on a partitioned root).
    Descendants attached or detached are `check_families`' business."""
    if old.files is None or new.files is None:
        return False
    before = dict(old.files)
    return any(before.get(oid, f) != f for oid, f in new.files)


def _renamed_enum_value(old: TableInfo, new: TableInfo) -> bool:
    """Whether a value of a column's enum is gone or reads otherwise (`ALTER TYPE mood
    RENAME VALUE 'sad' TO 'happy'`: every row with it now reads 'happy', no WAL row).
    Values added (`ADD VALUE`) change no row: nothing to retire."""
    if old.enums is None or new.enums is None:
        return False
    return not set(old.enums) <= set(new.enums)


def _shape_of(t: TableInfo) -> list[tuple[str, int, int, int | None, bool, int]]:
    """What of a table's description, changed, changes what a shape's rows are: each
    column's name, type, attnum and place in the primary key. DDL that changes these may
    write no row to the WAL, and the Relation message the stream sends next carries only
    names and types: a column dropped and added again under the same name and type (a new
    attnum: every row now reads its default) or a new primary key (`DROP CONSTRAINT ...
    ADD PRIMARY KEY (id, org_id)`: rows are keyed otherwise, a row new under the new key
    would overwrite another under the old one) are only seen here. `attnum` and `pk_index`
    are in every table description an engine ever recorded (`table_to_json`), so an
    upgrade compares like with like and retires nothing. `not_null` and `type_mod` change
    no row but the `electric-schema` header (`SET NOT NULL`, `varchar(20)` to
    `varchar(50)`, which rewrites nothing): clients that create tables from it (pglite-sync)
    would keep the old schema for good; recorded since the first table description too."""
    return [(c.name, c.type_oid, c.attnum, c.pk_index, c.not_null, c.type_mod) for c in t.columns]

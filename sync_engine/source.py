"""One Postgres database served by the engine: its slot, publication, shapes and snapshots.

The engine serves one source in single-database mode; with registered sources it runs one
`Source` per database, each with its own connections, replication task and shape
directory, so a slow or broken database cannot stall another.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.sql
from psycopg import AsyncConnection
from psycopg_pool import ConnectionPool

from .errors import InvalidRequest, ServiceUnavailable
from .http.params import ShapeRequest
from .pg.catalog import TableInfo, load_table
from .pg.publication import (
    PublicationError,
    add_table,
    ensure_publication,
    wait_for_older_transactions,
)
from .pg.session import redact_dsn, with_display_settings
from .pg.xid_snapshot import XidSnapshot
from .replication.failures import describe_failure
from .replication.replicator import Replicator
from .replication.slot import ensure_slot
from .shapes.registry import ShapeRegistry, shape_record
from .shapes.router import ShapeRouter
from .shapes.shape import Shape, ShapeDefinition
from .single_flight import single_flight
from .snapshot import errors as snapshot_errors
from .snapshot.batch import SnapshotJob
from .snapshot.errors import to_engine_error
from .snapshot.query import row_json_sql
from .snapshot.scheduler import SnapshotScheduler

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a table's "still there" check (`Source._table_unchanged`) is trusted.
TABLE_CHECK_TTL = 1.0


@dataclass(frozen=True, slots=True)
class SourceConfig:
    source_id: str
    database_url: str
    data_dir: Path
    chunk_bytes: int = 10 * 1024 * 1024
    max_concurrent_snapshots: int = 8
    max_shapes: int | None = None
    fsync: bool = True
    schema_check_interval: float = 10.0
    # Names the slot and publication; the source id unless set (slot names are per cluster).
    stream_id: str | None = None

    @property
    def _stream(self) -> str:
        return (self.stream_id or self.source_id).replace("-", "_")

    @property
    def slot_name(self) -> str:
        return "shapegate_slot_" + self._stream

    @property
    def publication_name(self) -> str:
        return "shapegate_pub_" + self._stream


class Source:
    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self.dsn = with_display_settings(config.database_url)
        self.router = ShapeRouter()
        self.registry = ShapeRegistry(
            config.data_dir / "shapes", config.chunk_bytes, self.router, fsync=config.fsync
        )
        self.replicator = Replicator(
            self.dsn,
            config.slot_name,
            config.publication_name,
            self.registry,
            self.router,
            fsync=config.fsync,
            on_state=self._on_replication_state,
        )
        self.state = "connecting"
        self.error: str | None = None
        self._conn: AsyncConnection[Any] | None = None
        self._conn_lock = asyncio.Lock()
        self._table_cache: dict[tuple[str, str], tuple[float, TableInfo | None]] = {}
        self._table_lookups: dict[tuple[str, str], asyncio.Future[TableInfo | None]] = {}
        self._table_checks: dict[int, asyncio.Future[bool]] = {}
        self._table_checked: dict[int, float] = {}  # oid -> when last seen unchanged
        # New shapes' snapshots, in batches on up to max_concurrent_snapshots connections.
        self.snapshots = SnapshotScheduler(
            self.dsn,
            config.max_concurrent_snapshots,
            config.chunk_bytes,
            config.fsync,
            make_job=self._job,
            on_failed=self._snapshot_failed,
            seen_xids=lambda: self.replicator.recent_xids,
        )
        # Synchronous connections for subset queries, used from worker threads.
        self.snapshot_pool: ConnectionPool[Any] = ConnectionPool(
            self.dsn,
            min_size=0,
            max_size=config.max_concurrent_snapshots,
            kwargs={"autocommit": True},
            open=False,
            name=f"subsets-{config.source_id}",
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._published: set[int] = set()
        self._main: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.snapshot_pool.open(wait=False)
        self._main = asyncio.create_task(self._run(), name=f"source-{self.config.source_id}")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.snapshots.close()
        await asyncio.to_thread(self.snapshot_pool.close, 5.0)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def destroy(self) -> list[str]:
        """Stop, then drop the slot and publication and delete the shape logs.

        Returns what could not be cleaned up (e.g. the database is unreachable), each with
        the SQL to finish by hand; the shape logs are deleted in any case.
        """
        await self.stop()
        slot, pub = self.config.slot_name, self.config.publication_name
        problems: list[str] = []
        try:
            async with await AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=5
            ) as conn:
                await _drop_slot(conn, slot)
                await conn.execute(
                    psycopg.sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                        psycopg.sql.Identifier(pub)
                    )
                )
        except Exception as exc:
            problems.append(
                f"could not drop replication slot {slot} and publication {pub}"
                f" ({_describe(exc)}); a slot left behind makes Postgres keep WAL, so drop"
                f" them by hand: SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION"
                f" IF EXISTS {pub};"
            )
        await asyncio.to_thread(shutil.rmtree, self.config.data_dir, True)
        return problems

    async def _run(self) -> None:
        """Connect (retrying with backoff), prepare slot and publication, then replicate."""
        delay = 0.5
        while True:
            try:
                await self._prepare()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reported, self.state, self.error = self.error, "error", _describe(exc)
                problem = describe_failure(exc)
                where = f"source {self.config.source_id} ({redact_dsn(self.config.database_url)})"
                if not problem.permanent:
                    log.warning("%s not ready: %s; retrying in %.1f s", where, self.error, delay)
                elif self.error != reported:  # once, not every retry
                    log.error("%s cannot start: %s. This will not fix itself: %s. Retrying"
                              " every 10 s.", where, self.error, problem.fix)  # fmt: skip
                await asyncio.sleep(10.0 if problem.permanent else delay)
                delay = min(delay * 2, 10.0)
        checker = asyncio.create_task(self._check_schemas_forever())
        self._tasks.add(checker)
        await self.replicator.run()

    async def _prepare(self) -> None:
        conn = await self._connection()
        cur = await conn.execute("SHOW wal_level")
        row = await cur.fetchone()
        if row is None or row[0] != "logical":
            raise RuntimeError(
                f"wal_level is {row[0] if row else '?'}, not logical: set wal_level = logical"
                " in postgresql.conf (or ALTER SYSTEM) and restart Postgres"
            )
        await ensure_publication(conn, self.config.publication_name)
        created = await ensure_slot(self.dsn, self.config.slot_name)
        loaded = self.registry.load()
        if created and loaded:
            self.registry.rotate_all("replication slot was (re)created; changes may be lost")
        self._published = set()
        self.state, self.error = "active", None
        self.ready.set()
        log.info(
            "source %s ready: %d shapes loaded, slot %s",
            self.config.source_id,
            len(self.registry),
            self.config.slot_name,
        )

    def _on_replication_state(self, state: str, reason: str | None) -> None:
        if state == "active":
            self.state, self.error = "active", None
        else:
            self.state, self.error = "error", reason

    async def _connection(self) -> AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
        return self._conn

    # -- catalog --------------------------------------------------------------------------

    async def lookup_table(self, schema: str, name: str) -> TableInfo | None:
        now = time.monotonic()
        key = (schema, name)
        hit = self._table_cache.get(key)
        if hit is not None and now - hit[0] < 2.0:
            return hit[1]
        # A storm of first requests for a table asks the catalog once (each lookup is three
        # queries on the one catalog connection, so they would queue).

        async def load() -> TableInfo | None:
            table = await self._on_catalog(lambda conn: load_table(conn, schema, name))
            if table is not None:  # a table created right after a miss is found at once
                self._table_cache[key] = (now, table)
            return table

        return await single_flight(self._table_lookups, key, load)

    # -- shapes ---------------------------------------------------------------------------

    async def resolve(self, req: ShapeRequest) -> Shape:
        """The shape for a request's definition, created (with its snapshot) if new."""
        shape = self.registry.cached(req)
        if shape is not None and (req.offset is None or not req.offset.is_before_all):
            return shape
        if shape is not None and await self._table_unchanged(shape):
            return shape
        await self._wait_ready()
        definition, table, columns = await self.registry.describe(req, self.lookup_table)
        existing = self.registry.by_definition.get(definition)
        if existing is None and self.config.max_shapes is not None:
            if len(self.registry) >= self.config.max_shapes:
                raise ServiceUnavailable("Shape limit reached for this source", retry_after=10)
        with self._admission(definition, existing):
            shape = await self.registry.get_or_create(
                definition, table, columns, self._publish, self._start_snapshot
            )
        self.registry.remember(req, shape)
        return shape

    async def _table_unchanged(self, shape: Shape) -> bool:
        """Whether a shape's table is still there under its name, for a client starting at -1.

        A new client of a table dropped (or dropped and created again) since the shape was
        made gets the table's 400 (or a new shape) within `TABLE_CHECK_TTL`, not the old rows
        until the periodic schema check notices. One query on the catalog connection per
        table and TTL (concurrent checks share it): asking on every request doubled the
        latency of `-1` requests for existing shapes. With the database unreachable the
        intact log is served.
        """
        t = shape.table
        now = time.monotonic()
        checked = self._table_checked.get(t.oid)
        if checked is not None and now - checked < TABLE_CHECK_TTL:
            return True
        try:
            there = await single_flight(self._table_checks, t.oid, lambda: self._table_there(t))
        except ServiceUnavailable:
            return True
        if there:
            self._table_checked[t.oid] = now
            return True
        self._table_checked.pop(t.oid, None)
        self.forget_table(t)
        self.registry.rotate_table(t.oid, "table dropped or renamed")
        return False

    async def _table_there(self, t: TableInfo) -> bool:
        async def ask(conn: AsyncConnection[Any]) -> Any:
            cur = await conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
                (t.oid,),
            )
            return await cur.fetchone()

        row = await self._on_catalog(ask)
        return row is not None and (row[0], row[1]) == (t.schema, t.name)

    async def _on_catalog(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`work` on the catalog connection; once more on a new one if that one had died
        (Postgres restarted since it was last used), else 503 Database is unreachable."""
        async with self._conn_lock:
            for attempt in range(2):
                try:
                    conn = await self._connection()
                    return await work(conn)
                except psycopg.OperationalError as exc:
                    if attempt or self._conn is None or not self._conn.broken:
                        raise ServiceUnavailable(
                            "Database is unreachable", retry_after=1, code="database_unreachable"
                        ) from exc
        raise AssertionError("unreachable")

    async def _wait_ready(self) -> None:
        if self.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.ready.wait(), 5)
        except TimeoutError:
            raise ServiceUnavailable(
                f"Source is not ready: {self.error or 'connecting'}", retry_after=5
            ) from None

    def _admission(
        self, definition: ShapeDefinition, existing: Shape | None
    ) -> AbstractContextManager[None]:
        """Hook for limits on new shapes, held while one is created; admits everything here."""
        return nullcontext()

    async def _publish(self, table: TableInfo) -> None:
        if table.oid in self._published:
            return
        async with self._conn_lock:
            if table.oid in self._published:  # published while this request waited
                return
            conn = await self._connection()
            try:
                added = await add_table(
                    conn,
                    self.config.publication_name,
                    table.schema,
                    table.name,
                    table.replica_identity,
                )
            except PublicationError as exc:
                raise InvalidRequest({"table": [str(exc)]}) from None
            if added:
                await wait_for_older_transactions(conn)
        self._published.add(table.oid)
        self._table_cache.pop((table.schema, table.name), None)

    def _start_snapshot(self, shape: Shape) -> None:
        self.snapshots.submit(shape)

    def _job(self, shape: Shape) -> SnapshotJob:
        query = None
        if shape.definition.log_mode == "full":
            query = row_json_sql(
                shape.table, shape.columns, shape.pk, shape.where.sql if shape.where else None
            )
        return SnapshotJob(
            log=shape.log,
            query=query,
            on_snapshot=lambda text: self._snapshot_known(shape, text),
            on_chunk=shape.snapshot_progress,
            cancelled=lambda: shape.rotated,
            record=shape_record(shape),
        )

    def _snapshot_failed(self, shape: Shape, exc: BaseException) -> None:
        """Discard the shape; its waiting requests get the answer `to_engine_error` picks."""
        t = shape.table
        shape.snapshot_failed(
            to_engine_error(
                exc,
                field="where" if shape.definition.where is not None else "table",
                schema=t.schema,
                table=t.name,
            )
        )
        what = snapshot_errors.kind(exc)
        if what == "transient":
            log.warning("snapshot of shape %s failed: %s", shape.handle, _describe(exc))
        else:  # the request's fault or a schema change: no row values in the log either
            log.info("snapshot of shape %s failed: %s", shape.handle, snapshot_errors.describe(exc))
        if what in ("table_gone", "schema_changed"):
            self.forget_table(t)
        if what == "table_gone":
            self.registry.rotate_table(t.oid, "table dropped")
        self.registry.rotate(shape, f"snapshot failed: {snapshot_errors.describe(exc)}")

    def forget_table(self, table: TableInfo) -> None:
        """Drop what is cached about a table that changed, so the next request looks again."""
        self._table_cache.pop((table.schema, table.name), None)
        self._published.discard(table.oid)

    def _snapshot_known(self, shape: Shape, snapshot: XidSnapshot) -> None:
        shape.snapshot_taken(snapshot)
        if not shape.rotated:
            self.replicator.release_pending(shape)

    # -- schema drift ---------------------------------------------------------------------

    async def _check_schemas_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.schema_check_interval)
            try:
                await self.check_schemas()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("schema check failed: %s", exc)

    async def check_schemas(self) -> None:
        """Rotate shapes whose table was dropped, renamed or altered without any DML since."""
        seen: dict[int, TableInfo | None] = {}
        for shape in list(self.registry.by_handle.values()):
            t = shape.table
            if t.oid not in seen:
                async with self._conn_lock:
                    conn = await self._connection()
                    current = await load_table(conn, t.schema, t.name)
                seen[t.oid] = current
            current = seen[t.oid]
            if current is None or current.oid != t.oid:
                self.registry.rotate(shape, "table dropped or renamed")
                self._published.discard(t.oid)
            elif [(c.name, c.type_oid) for c in current.columns] != [
                (c.name, c.type_oid) for c in t.columns
            ]:
                self.registry.rotate(shape, "table schema changed")


async def _drop_slot(conn: AsyncConnection[Any], slot: str) -> None:
    """Drop a slot once its walsender (this engine's, just stopped) has let go of it."""
    for attempt in range(100):
        cur = await conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        row = await cur.fetchone()
        if row is None:
            return
        if row[0] is None:
            try:
                await conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                pass
            except psycopg.errors.UndefinedObject:
                return
        elif attempt == 30:
            await conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        await asyncio.sleep(0.1)
    raise RuntimeError(f"replication slot {slot} is still in use")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return str(exc) or type(exc).__name__

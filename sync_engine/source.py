"""One Postgres database served by the engine: its slot, publication, shapes and snapshots.

The engine serves one source in single-database mode; with registered sources (`tenants/`)
it runs one `Source` per database, each with its own connections, replication task and
shape directory, so a slow or broken database cannot stall another.

A `Source` puts together its parts (`tables`, `registry`, `replicator`, `snapshots`) and
gives `http/` the few things it asks of them: resolve a request's shape (creating it, with
its snapshot, if new), find one by handle or definition, delete one, and the replication
position (`global_lsn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import select
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from . import stopping
from .errors import EngineError, ServiceUnavailable
from .identity import FILE_NAME as IDENTITY_FILE
from .identity import database_identity, differs, read_identity, write_identity
from .log.ends import MADE as LOG_ENDS_MADE
from .pg.catalog import TableInfo
from .pg.row_where import RowDataError, row_matches, rows_match
from .pg.session import engine_conninfo, redact_dsn
from .pg.xid_snapshot import XidSnapshot
from .replication.failures import describe_failure
from .replication.position import FILE_NAME as POSITION_FILE
from .replication.position import DamagedPosition, SavedPosition, read_saved
from .replication.replicator import AUTO_LOG_FLOOR, Replicator
from .replication.slot import SlotState, ensure_slot, slot_confirmed_lsn, slot_state, wal_end
from .replication.wal import Lsn, format_lsn
from .shapes.changes import Row
from .shapes.definition import Described, LogMode, ShapeDefinition, ShapeParams, describe
from .shapes.registry import ShapeRegistry, shape_record
from .shapes.router import ShapeRouter
from .shapes.shape import Shape, ShapeHandle
from .shapes.where.zones import ZoneAgreement
from .single_flight import single_flight
from .snapshot import errors as snapshot_errors
from .snapshot.batch import SnapshotJob
from .snapshot.errors import Abandoned, to_engine_error
from .snapshot.query import row_json_sql
from .snapshot.scheduler import SnapshotScheduler
from .stopping import cancel_and_wait, in_own_thread
from .tables import Tables
from .tenants.diagnose import public_reason

logger = logging.getLogger(__name__)

#: Rows the engine cannot read that Postgres is asked about per use of the catalog connection.
ROWS_PER_ASK = 100
#: Seconds `destroy` gives Postgres to drop the slot and publication (then it is retried).
DROP_WAIT = 30.0
#: Seconds `stop` waits for the subset pool to close (it gives its workers 5).
POOL_CLOSE_WAIT = 10.0
#: Seconds `destroy` waits for the shape logs to be deleted (it goes on in the background).
RMTREE_WAIT = 60.0
#: Seconds a request for a new shape waits for its source to become ready (connecting, or
#: Postgres unreachable) before its 503, as Electric waits for its stack (5 s).
READY_WAIT = 5.0
#: `_run`'s retries of a failed start: the first after RETRY_FIRST seconds, doubled up to
#: RETRY_MAX; a failure only a person can fix is retried every PERMANENT_RETRY seconds.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
PERMANENT_RETRY = 10.0
#: Seconds new shapes get a 503 (with Retry-After) after a snapshot failed for want of disk
#: space, as the failed snapshot's own requests do (`_check_snapshot_room`), unless space
#: comes back sooner: `SPACE_BACK` bytes more free than when it failed. Doubled after each
#: such failure that follows a wait, up to `DISK_FULL_WAIT_MAX`, until a snapshot is whole.
DISK_FULL_WAIT = 5.0
DISK_FULL_WAIT_MAX = 60.0
#: The most a disk's default reserve is (`Settings.disk_reserve`; else 5% of it): room for
#: the live changes of the shapes there are, which need little (machines with a few hundred
#: MB free serve new shapes, as Electric does).
DEFAULT_DISK_RESERVE = 64 << 20
#: Seconds between two warnings that the reserve refused a snapshot.
RESERVE_WARN_EVERY = 60.0
SPACE_BACK = 1 << 20
#: Seconds a request that needs the replication stream (a new shape's snapshot, an
#: up-to-date at the tip) waits for it to follow again before its 503 (`require_following`).
FOLLOW_WAIT = 5.0
#: The 503's `code` while the replication stream is not following (`require_following`).
STREAM_NOT_READY = "stream_not_ready"


def _looks_alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection may still be used: nothing to read on it. The server
    writes only when asked, so an idle connection with something to read was closed by it
    (a Postgres restart: its FATAL message, then the end). One poll(), no round trip."""
    if conn.closed:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)


class _SubsetPool(ConnectionPool[psycopg.Connection[Any]]):
    """The subset queries' pool: hands out no connection Postgres has closed (a restart):
    it is closed and replaced. It handed them out, and their query failed as a 503
    "Database is unreachable" from a database that answered. (A silent Postgres, stopped or
    behind a partition, is found by the query's own watch: `snapshot/subset.py`.)"""

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        # One deadline for all the tries: a Postgres closing each new connection at once
        # must not keep a caller here (and a worker thread busy) for ever.
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = super().getconn(max(0.0, deadline - time.monotonic()))
            if _looks_alive(conn):
                return conn
            conn.close()
            self.putconn(conn)  # (discarded, being closed)


def _with_statement_timeout(dsn: str, seconds: float) -> str:
    """`dsn` with a `statement_timeout` of `seconds` (0: as it was) for every statement of
    its sessions: the subset queries' (a client's where, order and limit)."""
    if not seconds:
        return dsn
    given = conninfo_to_dict(dsn).get("options")
    limit = f"-c statement_timeout={max(1, round(seconds * 1000))}"
    return make_conninfo(dsn, options=f"{given} {limit}" if given else limit)


class SourceState(enum.StrEnum):
    """Whether a source serves: CONNECTING until its slot and publication are ready, ERROR
    while it cannot reach or use its database (`Source.error` says why)."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    ERROR = "error"


#: A file in a source's data dir: it may have made its publication or slot (`note_made`).
MADE_FILE = LOG_ENDS_MADE


@dataclass(frozen=True, slots=True)
class SourceConfig:
    source_id: str
    database_url: str
    data_dir: Path
    chunk_bytes: int = 10 * 1024 * 1024
    max_concurrent_snapshots: int = 8
    max_shapes: int | None = None
    max_log_bytes: int | None = None  # see `Settings.max_log_bytes` (None: the default)
    #: The least the default log limit is (`Replicator.log_limit`): a test's, not a setting.
    auto_log_floor: int = AUTO_LOG_FLOOR
    disk_reserve: int | None = None  # see `Settings.disk_reserve`
    fsync: bool = True
    schema_check_interval: float = 10.0
    replication_timeout: float = 30.0  # see `Settings.replication_timeout`
    family_check_interval: float = 2.0  # see `Settings.family_check_interval`
    catalog_timeout: float = 5.0  # see `Settings.catalog_timeout`
    probe_timeout: float = 5.0  # see `Settings.probe_timeout`
    snapshot_timeout: float = 300.0  # see `Settings.snapshot_timeout`
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
        #: Whether the data dir showed, as `destroy` stopped the source, that it may have
        #: made its slot or publication (`made_in_database`).
        self.made_before = True
        self.dsn = engine_conninfo(config.database_url)
        self.router = ShapeRouter()
        self.registry = ShapeRegistry(
            config.data_dir / "shapes", config.chunk_bytes, self.router, fsync=config.fsync
        )
        self.tables = Tables(
            self.dsn,
            config.publication_name,
            self.registry,
            catalog_timeout=config.catalog_timeout,
            probe_timeout=config.probe_timeout,
        )
        # (before the first family check, at start, which schedules the next retry of a busy
        # REPLICA IDENTITY from it: else 5 default intervals, 10 s, whatever the flag said)
        self.tables.family_check_interval = config.family_check_interval
        self.zones = ZoneAgreement(self.tables.on_catalog)
        #: What the slot may be told is processed: saved in the data dir first, so that a
        #: data dir that went back in time (restored from a backup) is noticed at start.
        self.position = SavedPosition(config.data_dir / POSITION_FILE, config.fsync)
        # (the log ends noted by the flushes it confirms: durable first, `log/ends.py`)
        self.position.before_save = self.registry.store.ends.sync
        self.replicator = Replicator(
            self.dsn,
            config.slot_name,
            config.publication_name,
            self.registry,
            self.router,
            fsync=config.fsync,
            on_state=self._on_replication_state,
            replace_slot_if_gone=self._replace_slot_if_gone,
            went_back=self._went_back_while_running,
            silence_timeout=config.replication_timeout,
            evaluate=self._rows_match,
            find_ancestors=self.tables.find_ancestors,
            verify_table=self.tables.verify_relation,
            position=self.position,
            max_log_bytes=config.max_log_bytes,
            auto_log_floor=config.auto_log_floor,
        )
        self.state = SourceState.CONNECTING
        self.error: str | None = None
        # New shapes' snapshots, in batches on up to max_concurrent_snapshots connections.
        self.snapshots = SnapshotScheduler(
            self.dsn,
            config.max_concurrent_snapshots,
            config.chunk_bytes,
            config.fsync,
            make_job=self._job,
            on_failed=self._snapshot_failed,
            seen_xids=lambda: self.replicator.recent_xids,
            statement_timeout=config.snapshot_timeout,
        )
        # Synchronous connections for subset queries, used from worker threads.
        self.snapshot_pool: ConnectionPool[Any] = _SubsetPool(
            _with_statement_timeout(self.dsn, config.snapshot_timeout),
            min_size=0,
            max_size=config.max_concurrent_snapshots,
            kwargs={"autocommit": True},
            open=False,
            name=f"subsets-{config.source_id}",
        )
        # The threads subset queries run in (`snapshot/subset.py`), one per pooled
        # connection: not the event loop's default executor, whose few threads (CPUs + 4)
        # the whole engine shares (the replicator's fsync, snapshot chunk writes, secret
        # checks). Subset queries of this source waiting on a lock, or just slow, held them
        # all and stalled every source's replication.
        self.subset_executor = ThreadPoolExecutor(
            max_workers=config.max_concurrent_snapshots,
            thread_name_prefix=f"subset-{config.source_id}",
        )
        self._creating: dict[ShapeDefinition, asyncio.Future[Shape]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._closing: Callable[[], EngineError] | None = None
        # Whether the last failure to start is one only a person can fix (`_wait_ready`).
        self._start_permanent = False
        # When a snapshot last failed for want of disk space, and the bytes then free
        # (`_check_snapshot_room`); and the wait after it (0: no such failure since a
        # snapshot was last whole).
        self._snapshot_disk_full: tuple[float, int | None] | None = None
        self._disk_full_wait = 0.0
        self._reserve_said_at = float("-inf")  # (`snapshot_room`'s warning, once a minute)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.snapshot_pool.open(wait=False)
        self.snapshot_room(0)  # (says so at once when the disk is under its reserve already)
        self._main = asyncio.create_task(self._run(), name=f"source-{self.config.source_id}")

    async def stop(self) -> None:
        """Stop its tasks and close its connections: within seconds whatever state Postgres
        and the connections are in (each wait is bounded, see `stopping.cancel_and_wait`)."""
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        await cancel_and_wait([*tasks, *self.replicator.tasks], f"source {self.config.source_id}")
        await self.snapshots.close()
        # Without waiting: a query still running goes on until Postgres answers (its request
        # is gone; the pool's close below gives it 5 s); those not started yet never start.
        self.subset_executor.shutdown(wait=False, cancel_futures=True)
        await self._close_subset_pool()
        await self.tables.close()

    async def _close_subset_pool(self) -> None:
        """Close the subset pool (it waits up to 5 s for its workers) in a thread of its
        own (`stopping.in_own_thread`), not in the default executor, which other work may
        hold (it once held this source's subset queries too: the close queued behind
        them)."""
        await in_own_thread(
            lambda: self.snapshot_pool.close(5.0),
            f"closing the subset pool of source {self.config.source_id}",
            POOL_CLOSE_WAIT,
        )

    def note_made(self) -> None:
        """Note in the data dir, before the source first makes anything in its database
        (its publication, then its slot), that it may have: a source deleted before it
        ever got that far has nothing to drop (`made_in_database`). Durable before it
        returns (a crash right after must not forget it)."""
        data_dir = self.config.data_dir
        path = data_dir / MADE_FILE
        if path.exists():
            return
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if self.config.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self.config.fsync:
            dfd = os.open(data_dir, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def made_in_database(self) -> bool:
        """Whether the source may have made its publication or slot: `note_made`'s file, or
        (a data dir of an engine before it) its saved position, identity or shape logs."""
        data_dir = self.config.data_dir
        return any(
            (data_dir / name).exists()
            for name in (MADE_FILE, POSITION_FILE, IDENTITY_FILE, "shapes")
        )

    async def destroy(self) -> list[str]:
        """Stop, then drop the slot and publication and delete the shape logs.

        Returns what could not be cleaned up (e.g. the database is unreachable), each with
        the SQL to finish by hand; the shape logs are deleted in any case. `made_before`
        says afterwards whether the data dir showed the source may have made its slot or
        publication (`made_in_database`, asked once it is stopped): the deletion of one
        that shows none warns of nothing (`SourceManager._delete`).
        """
        await self.stop()
        self.made_before = await asyncio.to_thread(self.made_in_database)
        slot, pub = self.config.slot_name, self.config.publication_name
        problems: list[str] = []
        try:
            # A Postgres that accepts the connection and then stops answering (a partition)
            # must not hold the deletion: it is retried (`SourceManager._cleanup`).
            async with asyncio.timeout(DROP_WAIT):
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
            why = f"no answer in {DROP_WAIT:g} s" if isinstance(exc, TimeoutError) else None
            problems.append(
                f"could not drop replication slot {slot} and publication {pub}"
                f" ({why or _describe(exc)}); a slot left behind makes Postgres keep WAL, so drop"
                f" them by hand: SELECT pg_drop_replication_slot('{slot}'); DROP PUBLICATION"
                f" IF EXISTS {pub};"
            )
        await self._delete_data_dir()
        return problems

    async def _delete_data_dir(self) -> None:
        # (not in the default executor, which other work may hold: `in_own_thread`)
        data_dir = self.config.data_dir
        await in_own_thread(
            lambda: shutil.rmtree(data_dir, True), f"deleting {data_dir}", RMTREE_WAIT
        )

    async def _run(self) -> None:
        """Connect (retrying with backoff), prepare slot and publication, then replicate."""
        delay = RETRY_FIRST
        while True:
            try:
                await self._prepare()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reported, self.state, self.error = self.error, SourceState.ERROR, _describe(exc)
                problem = describe_failure(exc)
                self._start_permanent = problem.permanent
                where = f"source {self.config.source_id} ({redact_dsn(self.config.database_url)})"
                if not problem.permanent:
                    logger.warning("%s not ready: %s; retrying in %.1f s", where, self.error, delay)
                elif self.error != reported:  # once, not every retry
                    logger.error(
                        "%s cannot start: %s. This will not fix itself: %s. Retrying every %g s.",
                        where,
                        self.error,
                        problem.fix,
                        PERMANENT_RETRY,
                    )
                await asyncio.sleep(PERMANENT_RETRY if problem.permanent else delay)
                delay = min(delay * 2, RETRY_MAX)
        checker = asyncio.create_task(
            self.tables.check_schemas_forever(self.config.schema_check_interval)
        )
        self._tasks.add(checker)
        families = asyncio.create_task(
            self.tables.check_families_forever(self.config.family_check_interval)
        )
        self._tasks.add(families)
        await self.replicator.run()

    async def _prepare(self) -> None:
        publication_created = await self.tables.prepare(self.note_made)
        loaded = self.registry.load()
        await self._check_identity()
        for shape in loaded:
            if not shape.rotated:  # (retired by `_check_identity`)
                await self._check_zones(shape)
        # (partitions and inheritance children of their tables: routed to their shapes,
        # and the shapes whose table's family changed while the engine was down retired)
        await self.tables.check_families()
        if not await self._replace_slot_if_gone(publication_created=publication_created):
            await ensure_slot(self.dsn, self.config.slot_name)  # checks it is ours
        await self._check_position()
        self.state, self.error = SourceState.ACTIVE, None
        self.ready.set()
        logger.info(
            "source %s ready: %d shapes loaded, slot %s",
            self.config.source_id,
            len(self.registry),
            self.config.slot_name,
        )

    async def _check_identity(self) -> None:
        """Retire every shape of a data directory written for another source or database
        (`identity`), before any is served; write the identity where it is missing."""
        sid = self.config.source_id
        current = await self.tables.on_catalog(lambda conn: database_identity(conn, sid))
        saved = await asyncio.to_thread(read_identity, self.config.data_dir)
        why = differs(saved, current) if saved is not None else None
        if why is not None:
            logger.error(
                "source %s: its data directory %s is not this database's (%s: restored from"
                " another source's backup? directories swapped?); its %d shapes are retired,"
                " their clients refetch",
                sid,
                self.config.data_dir,
                why,
                len(self.registry),
            )
            await self.registry.retire_all("the data directory was another database's")
            await asyncio.to_thread(self.position.forget)
        if saved != current:
            await asyncio.to_thread(
                write_identity, self.config.data_dir, current, self.config.fsync
            )

    async def _check_position(self) -> None:
        """Retire every shape when the slot has confirmed more than this data dir saved as
        confirmable (`replication.position`): the data dir is older than what the engine
        processed (restored from a backup or a VM snapshot, or writes lost under
        `--no-fsync`), and Postgres will never send the changes in between again. Served
        on, the old shapes would lack them for every client, new ones included, for good."""
        confirmed = await slot_confirmed_lsn(self.dsn, self.config.slot_name)
        if confirmed is None:
            return
        try:
            saved = read_saved(self.position.path)
            unknown = None if saved is not None else "missing"
        except DamagedPosition as exc:
            saved, unknown = None, f"damaged ({exc})"
        if await self._postgres_went_back(saved):
            saved = unknown = None  # (what this data dir saved is of a history gone)
        if unknown is not None and len(self.registry):
            # Its shapes may be older than the slot, and nothing says how much: a data dir
            # this engine wrote always has the file before its first shape (saved below at
            # its first start), so shapes without it are damage or an older engine's. Taken
            # as a new data dir, such shapes were served without the changes in between,
            # for good (chaos 10:40); retired, their clients refetch once.
            logger.error(
                "source %s: its saved replication position %s is %s, and its %d shapes may"
                " lack changes its slot %s confirmed (up to %s): they are retired, their"
                " clients refetch",
                self.config.source_id,
                self.position.path,
                unknown,
                len(self.registry),
                self.config.slot_name,
                format_lsn(confirmed),
            )
            await self.registry.retire_all(
                "the engine's saved replication position was lost: its shapes may lack changes"
            )
        elif saved is not None and confirmed > saved and len(self.registry):
            logger.error(
                "source %s: its replication slot %s confirmed WAL up to %s, but its data dir"
                " saved only %s: the data dir is older than what was processed (restored from"
                " a backup? writes lost?); the changes in between are not in its shapes and"
                " Postgres will not send them again: %d shapes retired, their clients refetch",
                self.config.source_id,
                self.config.slot_name,
                format_lsn(confirmed),
                format_lsn(saved),
                len(self.registry),
            )
            await self.registry.retire_all(
                "the engine's data is older than its replication slot: changes were lost"
            )
        if saved is None or confirmed > saved:
            await asyncio.to_thread(self.position.save_now, confirmed)

    async def _postgres_went_back(self, saved: Lsn | None) -> bool:
        """Retire every shape when Postgres's WAL ends before what this engine has already
        processed (its saved position, its shapes' last transactions): Postgres went back in
        time (its data restored from a disk or VM snapshot, the slot with it; a crash with
        `fsync` off). The shapes hold changes Postgres no longer has, and the changes of its
        new history come at positions the shapes take for replays and skip: served on, every
        client, new ones included, kept rows that are gone and missed new writes, for good.
        A crash of Postgres is not this: its WAL keeps all it had sent (a walsender sends
        only flushed WAL). Returns whether it went back."""
        ahead = max([saved or 0, *(s.log.last_lsn for s in self.registry.by_handle.values())])
        end = await wal_end(self.dsn)
        if end >= ahead:
            return False
        logger.error(
            "source %s: Postgres's WAL ends at %s, before %s this engine has already"
            " processed: Postgres went back in time (restored from a disk or VM snapshot? a"
            " crash with fsync off?); its shapes hold changes Postgres no longer has: %d shapes"
            " retired, their clients refetch",
            self.config.source_id,
            format_lsn(end),
            format_lsn(Lsn(ahead)),
            len(self.registry),
        )
        await self.registry.retire_all("Postgres went back in time: its history changed")
        return True

    async def _check_zones(self, shape: Shape) -> None:
        """Rotate a restored shape whose where's AT TIME ZONEs this Postgres no longer reads
        as the engine does: a new shape is checked when it is made (`describe`), but either
        side's time zone data can change between two runs (a new tzdata in the engine's image,
        a Postgres upgrade, the URL now naming another server), and the shape would go on
        filtering live rows by rules its snapshots no longer follow. Its clients get a 409,
        and a new request for it the 400 that says why."""
        zones = shape.where.zones if shape.where is not None else frozenset()
        if zones:
            problem = await self.zones.problem(zones)
            if problem is not None:
                self.registry.rotate(shape, problem)

    async def _went_back_while_running(self) -> bool:
        """Whether Postgres went back in time under the running engine (its data restored
        from a disk or VM snapshot while the stream was down), checked as the stream starts
        again. Then every shape is retired (their clients refetch, and wait while the source
        starts again) and the source needs a fresh start (`_start_afresh`): what it holds in
        memory of the old history (positions, recent xids) only a fresh start clears, which
        then resets the saved position (`_check_position`)."""
        ahead = max(
            [
                self.position.saved,
                self.replicator.global_lsn,  # (what up-to-dates promised: `readable_lsn`)
                *(s.log.last_lsn for s in self.registry.by_handle.values()),
            ]
        )
        end = await wal_end(self.dsn)
        if end >= ahead:
            return False
        await self._start_afresh(
            f"source {self.config.source_id}: Postgres's WAL ends at {format_lsn(end)}, before"
            f" {format_lsn(Lsn(ahead))} this engine has already processed: Postgres went back"
            " in time (restored from a disk or VM snapshot?); its shapes are retired"
        )
        return True

    async def _start_afresh(self, why: str) -> None:
        """Retire every shape and have this source started afresh, for a state only a fresh
        start clears (Postgres went back in time under it). The single database's source is
        the engine's: the engine process stops with status 1, for its supervisor to start
        it again (a registered source is started again on its own: `ManagedSource`)."""
        await self.registry.retire_all("Postgres went back in time: its history changed")
        stopping.stop_process(why)

    async def _replace_slot_if_gone(self, *, publication_created: bool = False) -> bool:
        """Make a new slot if the slot is gone (dropped), lost (invalidated), or its
        publication was dropped (and made again: what the slot decoded meanwhile is not
        to be trusted, as Electric does). The changes since the engine last read the slot
        are gone with it, so every shape is retired first, on disk (a crash after the new
        slot exists must not load them again), and new shapes wait meanwhile (a snapshot
        taken before the new slot exists would miss the changes in between). Returns
        whether the slot was replaced.

        Called at start and whenever the replication stream fails (`Replicator`).
        """
        slot = self.config.slot_name
        # (bounded as the stream's silence is: a Postgres that stopped answering, SIGSTOP or
        # a VM paused, accepts the connection in its kernel and answers nothing, and the
        # stream's retry waited out the connect timeout, then a query with no bound at all)
        async with asyncio.timeout(self.config.replication_timeout):
            state = await slot_state(self.dsn, slot)
        if not publication_created and not await self.tables.publication_exists():
            publication_created = await self.tables.prepare()
        if state is SlotState.OK and not publication_created:
            return False
        had = len(self.registry)
        was_ready = self.ready.is_set()
        self.ready.clear()
        try:
            if publication_created and state is SlotState.OK:
                why = f"its publication {self.config.publication_name} was dropped"
            elif state is SlotState.LOST:
                why = (
                    "invalidated: Postgres removed WAL it still needed, see max_slot_wal_keep_size"
                )
            else:
                why = "dropped"
            reason = f"replication slot replaced ({why}); changes since it was last read are gone"
            if had:
                logger.error(
                    "replication slot %r is %s (%s): %d shapes retired, their clients refetch"
                    " (409); making the slot again",
                    slot,
                    "missing" if state is SlotState.MISSING else "unusable",
                    why,
                    had,
                )
            await self.registry.retire_all(reason)
            if state is not SlotState.MISSING:
                async with (  # (bounded: a silent Postgres; the next stream failure retries)
                    asyncio.timeout(DROP_WAIT),
                    await AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=5
                    ) as conn,
                ):
                    await _drop_slot(conn, slot)
            await ensure_slot(self.dsn, slot)
            # Shapes made while the slot was being replaced may have a snapshot older
            # than the new slot.
            await self.registry.retire_all(reason)
        finally:
            if was_ready:
                self.ready.set()
        return True

    async def _rows_match(self, shape: Shape, rows: list[Row]) -> list[bool]:
        """Whether each row (as a change carries it) matches the shape's where clause, by
        Postgres, on the catalog connection (`pg/row_where.py`): for rows the engine cannot
        read exactly. A few at a time, each call within the catalog timeout."""
        where = shape.where
        assert where is not None
        table, clause, referenced = shape.table, where.sql, where.referenced_columns
        answers: list[bool] = []
        for i in range(0, len(rows), ROWS_PER_ASK):
            part = rows[i : i + ROWS_PER_ASK]

            async def ask(conn: AsyncConnection[Any], part: list[Row] = part) -> list[bool]:
                return await rows_match(conn, table, clause, referenced, part)

            try:
                answers += await self.tables.on_catalog(ask)
                continue
            except RowDataError:  # the clause fails on one of them: one by one
                pass
            for row in part:

                async def ask_one(conn: AsyncConnection[Any], row: Row = row) -> bool:
                    return await row_matches(conn, table, clause, referenced, row)

                answers.append(await self.tables.on_catalog(ask_one))
        return answers

    def _on_replication_state(self, state: str, reason: str | None) -> None:
        if state == "active":
            self.state, self.error = SourceState.ACTIVE, None
        else:
            self.state, self.error = SourceState.ERROR, reason

    # -- the replication stream following ------------------------------------------------

    @property
    def stream_down(self) -> str | None:
        """Why the replication stream is not following the database now (not started yet,
        reconnecting, its slot held by another walsender: a second engine on the same
        slot, or a half-dead connection Postgres has not timed out yet), or None while it
        follows. None too while it is paused for a full disk (`write_error`: served as
        before, new shapes refused by their own check).

        While it is down the engine's logs stop at what the stream reached: an up-to-date
        would tell a client it is current while Postgres has moved on, and a new shape's
        snapshot would hold rows the older shapes never get until it follows again (two
        shapes a client holds, both "up-to-date", disagreeing). Electric answers 503 "Stack
        not ready" meanwhile; so do the requests that need it (`require_following`)."""
        if self.replicator.connected.is_set() or self.replicator.write_error is not None:
            return None
        return self.error or "connecting"

    async def require_following(self, wait: float = FOLLOW_WAIT) -> None:
        """Return once the replication stream follows (at once while it does), waiting up
        to `wait` seconds for it; then a 503 with Retry-After saying why (its client retries
        with backoff, as @electric-sql/client does)."""
        if self.stream_down is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (why := self.stream_down) is not None:
            self.check_open()  # (paused or deleted meanwhile: that reason, at once)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self.not_following(why)
            # (polled: `connected` is set by the stream, `write_error` by a flush)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self.replicator.connected.wait()
        self.check_open()

    def not_following(self, why: str | None = None) -> ServiceUnavailable:
        """The 503 of a request that needs the replication stream while it is down. It says
        why by kind only (`public_reason`): the error's text names the database's host,
        port, role and name, and this answer reaches browsers; the log has the text."""
        why = why or self.stream_down
        return ServiceUnavailable(
            f"Stack not ready: the replication stream is not following the database"
            f" ({public_reason(None if why == 'connecting' else why)}); retry shortly",
            retry_after=5,
            code=STREAM_NOT_READY,
        )

    @property
    def start_problem(self) -> str | None:
        """Why the source cannot start, by kind (`public_reason`), when only a person can
        fix it (wal_level, a slot of another database...): /v1/health says it, as a 503,
        rather than "starting" for good. None while it starts, retries a transient failure
        or runs."""
        if self.state is SourceState.ERROR and self._start_permanent:
            return public_reason(self.error)
        return None

    async def _wait_ready(self) -> None:
        # (its 503 says why by kind only, as `not_following`'s does)
        if self.ready.is_set():
            return
        if self.state is SourceState.ERROR and self._start_permanent:
            # (waiting would not help: wal_level, a role without REPLICATION, ...)
            raise ServiceUnavailable(
                f"Source is not ready: {public_reason(self.error)}", retry_after=5
            )
        try:
            async with asyncio.timeout(READY_WAIT):  # (3.11's wait_for can drop a cancellation)
                await self.ready.wait()
        except TimeoutError:
            raise ServiceUnavailable(
                f"Source is not ready: {public_reason(self.error)}", retry_after=5
            ) from None

    # -- closing to requests ------------------------------------------------------------

    @property
    def closing(self) -> Callable[[], EngineError] | None:
        """Why this source takes no more requests (paused, deleted), as the error each gets;
        None while it serves."""
        return self._closing

    def close_to_requests(self, error: Callable[[], EngineError]) -> None:
        """Refuse new requests with `error()`, and wake the held ones (long-polls, SSE
        streams, requests waiting for a snapshot) to answer the same at once (`check_open`):
        cut off at the end of a grace period instead, a client got no answer, only its
        next request the reason."""
        self._closing = error
        for shape in list(self.registry.by_handle.values()):
            shape.notify()

    def check_open(self) -> None:
        """Raise the error of `close_to_requests`, if the source was closed to requests."""
        if self._closing is not None:
            raise self._closing()

    # -- what http/ asks ------------------------------------------------------------------

    @property
    def global_lsn(self) -> int:
        """The LSN of the last transaction the replication stream delivered."""
        return self.replicator.global_lsn

    @property
    def readable_lsn(self) -> int:
        """The LSN through which every commit read is in its shapes' logs (`Replicator`)."""
        return self.replicator.readable_lsn

    @property
    def warnings(self) -> list[str]:
        """What an operator should know while it serves correctly (shown by /v1/health):
        shaped tables whose changes come without their old row (their where shapes refetch
        on each update and delete)."""
        return list(self.replicator.assembler.identity_warnings.values())

    @property
    def write_error(self) -> str | None:
        """Why shape logs cannot be written (disk full): replication is paused meanwhile."""
        return self.replicator.write_error

    @property
    def parked_requests(self) -> int:
        """Requests waiting for one of this source's shapes to change (long-polls, SSE)."""
        return sum(shape.waiting for shape in self.registry.by_handle.values())

    async def database_answers(self) -> bool:
        """Whether Postgres answers at all (`Tables.answers`)."""
        return await self.tables.answers()

    async def describe(self, params: ShapeParams) -> Described:
        """The definition the parameters ask for, checked against the catalog."""
        return await describe(params, self.tables.lookup, self.zones.problem)

    async def describe_fresh(self, params: ShapeParams) -> Described:
        """`describe` from a catalog read begun now (`Tables.read_fresh`), not the lookup's
        cache: a table dropped is its 400 "does not exist" here, whatever a read begun
        before the DROP left in the cache."""
        return await describe(params, self.tables.read_fresh, self.zones.problem)

    async def resolve(self, params: ShapeParams, *, from_start: bool = False) -> Shape:
        """The shape of a definition, created (with its snapshot) if new.

        `from_start`: the client starts at `-1`, so the table is checked to be still there,
        by a check begun after this call (see `Tables.still_there`); a client further on
        keeps its shape until rotated.

        A shape whose log the load cut (`ShapeLog.repaired_from`: damage, an older chunk,
        a log-ends that cannot vouch for it) is not answered at all until the replicator has
        asked the slot whether the cut is replayed (`Replicator.cuts_checked`): it is
        retired if not, and its snapshot, whole and right but of a shape about to go, was
        served to `-1` first, a download its client then threw away at its 409. Meanwhile
        the request waits, as an up-to-date waits for the stream (`require_following`).
        """
        asked = time.monotonic()  # (what `Tables.still_there` checks after)
        shape = await self._resolve(params, from_start, asked)
        if shape.log.repaired_from is not None:
            await self._until_cuts_checked()
            if shape.rotated:
                shape = await self._resolve(params, from_start, asked)
        return shape

    async def _until_cuts_checked(self) -> None:
        """Wait up to `FOLLOW_WAIT` seconds for the replicator's slot check of the cuts the
        load made (then the 503 of a stream not following, retried by the client)."""
        checked = self.replicator.cuts_checked
        if not checked.is_set():
            try:
                async with asyncio.timeout(FOLLOW_WAIT):
                    await checked.wait()
            except TimeoutError:
                raise self.not_following() from None
        self.check_open()

    async def _resolve(self, params: ShapeParams, from_start: bool, asked: float) -> Shape:
        """`resolve`, before the wait for the slot check."""
        shape = self.registry.cached(params)
        if shape is not None and not from_start:
            self.registry.touch(shape)
            return shape
        if shape is not None and await self.tables.still_there(shape.table, asked):
            self.registry.touch(shape)
            return shape
        await self._wait_ready()
        described = await self.describe(params)
        definition = described.definition
        existing = self.registry.current(definition)
        if (
            existing is not None
            and from_start
            and not await self.tables.still_there(existing.table, asked)
        ):
            # The same check as a request spelled as the shape's first (above): the table
            # was dropped (or dropped and created again) and the description came from the
            # lookup's cache (`LOOKUP_TTL`), so the definition named the old table and its
            # shape. Spelled otherwise (`public.t` for `t`, `columns=` listing every
            # column), such a request was served the dropped table's rows, and none of the
            # new table's changes, until the schema check retired the shape (fidelity
            # 08:44). `still_there` retired it and forgot the cached description: the
            # request is described again, from the catalog.
            described = await self.describe(params)
            definition = described.definition
            existing = self.registry.current(definition)
        if existing is None:
            # A new snapshot's point must be followed by the stream: taken while the
            # stream is down, it holds rows the other shapes do not get until it follows.
            await self.require_following()
        with self._admission(definition, existing):
            shape = await self._get_or_create(described)
        self.registry.remember(params, shape)
        self.registry.touch(shape)
        return shape

    def _make_room(self) -> None:
        """Keep this source at `max_shapes`: a new shape first retires the least recently
        requested shapes no client is reading now (as Electric's expiry of least recently
        used shapes, but at once rather than once a minute, so the limit holds). Their
        clients get a 409 and refetch. Refused (503) only when every shape is in use: a
        request held at its tip or a snapshot being taken (those end within a long-poll),
        or requested in the last `min_idle` (60) seconds (a client paging through it
        between two requests); the 503's Retry-After says when the first may go.
        """
        limit = self.config.max_shapes
        if limit is None or len(self.registry) < limit:
            return
        over = len(self.registry) - limit + 1
        if self.registry.evict(over, f"least recently used of more than {limit} shapes") < over:
            raise self.registry.no_room(limit)

    def shape(self, handle: str) -> Shape | None:
        """The live shape with this handle, if any."""
        return self.registry.by_handle.get(ShapeHandle(handle))

    def current(self, definition: ShapeDefinition) -> Shape | None:
        """The live shape of a definition, if any."""
        return self.registry.current(definition)

    def current_handle(self, shape: Shape) -> ShapeHandle | None:
        """The handle that now serves a (rotated) shape's definition, if one does."""
        current = self.registry.current(shape.definition)
        return current.handle if current is not None else None

    def delete(self, shape: Shape, reason: str) -> None:
        """Retire a shape: its clients get a 409 and refetch under a new handle."""
        self.registry.rotate(shape, reason)

    def table_changed(self, table: TableInfo, *, dropped: bool) -> None:
        """A query found a table changed (or `dropped`, then its shapes are rotated)."""
        self.tables.changed(table, dropped=dropped, reason="table dropped")

    # -- creating shapes ------------------------------------------------------------------

    def is_creating(self, definition: ShapeDefinition) -> bool:
        """Whether a shape of `definition` is being created (requests for it join that)."""
        return definition in self._creating

    def holding_live(self) -> AbstractContextManager[None]:
        """Held while a live request (a long-poll or an SSE stream) waits: a hook for a
        bound on how many one source holds (`ManagedSource`); none here."""
        return nullcontext()

    def revoked(self) -> bool:
        """Whether the current request's secret stopped working while it was held (a hook:
        only a registered source's secret is rotated, `ManagedSource.revoke`). A held
        long-poll then ends as at its timeout, an SSE stream after its last whole event."""
        return False

    def _admission(
        self, definition: ShapeDefinition, existing: Shape | None
    ) -> AbstractContextManager[None]:
        """Hook for limits on new shapes, held while one is created; admits everything here."""
        return nullcontext()

    async def _get_or_create(self, described: Described) -> Shape:
        """The live shape of the definition, or a new one whose snapshot is submitted.

        Single-flight: N concurrent requests for the same new definition share one creation
        (one publication change, one snapshot query).
        """
        definition = described.definition
        shape = self.registry.current(definition)
        if shape is not None and not shape.rotated:
            return shape

        async def create() -> Shape:
            self._check_snapshot_room()
            await self.tables.publish(described.table)
            self._make_room()  # (here, with no await before `create`: the count is exact)
            created = self.registry.create(described)
            # (what its snapshot is consistent with: `Tables.check_families`)
            created.family = self.tables.family(described.table.oid)
            self.snapshots.submit(created)
            return created

        return await single_flight(self._creating, definition, create)

    def _check_snapshot_room(self) -> None:
        """Refuse a new shape (503, Retry-After) for `DISK_FULL_WAIT` seconds after a
        snapshot failed for want of disk space.

        With room for a first chunk but not for the snapshot (64 KB free, a 750 KB
        snapshot: preflight's probe passes), every new shape answered its client's `-1`
        with chunk 0, failed on a later chunk and was rotated, and the client's next
        request made another one: a 409 must-refetch every ~50 ms, a snapshot query each.
        Client 1.5.28 takes five requests at one offset within 500 ms for a loop of its own
        and resets without a must-refetch: it then received the rows it held again as
        inserts (chaos, seed 3102 and t_fullnew.py). Now the client waits, holding its
        first chunk, and is told to refetch only once a new snapshot may fit: after the
        wait, or as soon as `SPACE_BACK` more bytes are free than when the snapshot failed
        (space freed: new shapes at once, as before). The wait grows, 5 s to 60 s, with each
        snapshot the disk refused in a row (`_snapshot_failed`): a disk that stays full cost
        a snapshot query and its chunks written and deleted every 5 s, for ever.

        Refused too while the disk has less free than its reserve (`snapshot_room`): no
        query is started for a snapshot that could not be written."""
        full = self._snapshot_disk_full
        if full is not None:
            failed, free_then = full
            left = failed + self._disk_full_wait - time.monotonic()
            free = _free_bytes(self.config.data_dir)
            if left > 0 and (free is None or free_then is None or free < free_then + SPACE_BACK):
                raise snapshot_errors.disk_full_error(max(1, math.ceil(left)))
            self._snapshot_disk_full = None  # (waited, or space is back: try)
        if not self.snapshot_room(0):
            raise snapshot_errors.disk_full_error()

    def snapshot_room(self, size: int) -> bool:
        """Whether `size` more bytes of snapshot leave the disk its reserve
        (`Settings.disk_reserve`): free for the live changes of the shapes there are. A
        burst of new shapes (a new `where` each, every snapshot kept) filled the data
        directory's disk, and then no source could write its changes (attack, 05:20)."""
        free = _free_bytes(self.config.data_dir)
        reserve = self._disk_reserve()
        if free is None or free - size >= reserve:
            return True
        now = time.monotonic()
        if now - self._reserve_said_at >= RESERVE_WARN_EVERY:  # (the operator's to act on)
            self._reserve_said_at = now
            # (the number compared: free less the chunk about to be written; "N free, under
            # a reserve of R" with N > R read as a contradiction, chaos 08:36)
            logger.warning(
                "source %s: %d bytes free on the data directory's disk (%d once a snapshot"
                " chunk of %d bytes is written), under its reserve of %d (--disk-reserve): new"
                " snapshots are refused (503 disk_full) until there is more; free space,"
                " delete shapes or set --max-shapes (or a smaller reserve)",
                self.config.source_id,
                free,
                free - size,
                size,
                reserve,
            )
        return False

    def _disk_reserve(self) -> int:
        reserve = self.config.disk_reserve
        if reserve is not None:
            return reserve
        try:
            st = os.statvfs(self.config.data_dir)
        except OSError:
            return 0
        return min(DEFAULT_DISK_RESERVE, st.f_blocks * st.f_frsize // 20)

    def _job(self, shape: Shape) -> SnapshotJob:
        query = None
        if shape.definition.log_mode is LogMode.FULL:
            query = row_json_sql(
                shape.table, shape.columns, shape.pk, shape.where.sql if shape.where else None
            )
        return SnapshotJob(
            log=shape.log,
            query=query,
            on_snapshot=lambda snapshot: self._snapshot_taken(shape, snapshot),
            on_chunk=partial(self._snapshot_progress, shape),
            cancelled=lambda: shape.rotated,
            record=shape_record(shape),
            room=self.snapshot_room,
        )

    def _snapshot_taken(self, shape: Shape, snapshot: XidSnapshot) -> None:
        shape.snapshot_taken(snapshot)
        if not shape.rotated:
            self.replicator.release_pending(shape)

    def _snapshot_progress(self, shape: Shape, chunks: int, complete: bool) -> None:
        shape.snapshot_progress(chunks, complete)
        if complete:  # (the disk took a whole snapshot: the next refusal waits the least)
            self._disk_full_wait = 0.0

    def _snapshot_failed(self, shape: Shape, exc: BaseException) -> None:
        """Discard the shape; its waiting requests get the answer `to_engine_error` picks
        (a full disk's with the Retry-After of the wait it begins, `_check_snapshot_room`)."""
        t = shape.table
        error = to_engine_error(
            exc,
            field="where" if shape.definition.where is not None else "table",
            schema=t.schema,
            table=t.name,
        )
        if snapshot_errors.is_disk_full(exc):
            # The free space once its own chunks are deleted (the rotation below, its
            # batch): deleting them is no space come back, or its clients' next requests
            # made the same snapshot again at once, refused again at the same place, a 409
            # and a snapshot query each time, never the 503 (ci1, 2026-12-07).
            own = shape.log.snapshot_bytes_on_disk()  # (first: then freed ones count once)
            free = _free_bytes(self.config.data_dir)
            if self._snapshot_disk_full is None:  # (else one refused in the same wait)
                wait = self._disk_full_wait
                self._disk_full_wait = min(2 * wait, DISK_FULL_WAIT_MAX) or DISK_FULL_WAIT
                logger.warning(
                    "source %s: the disk refused a snapshot: new snapshots wait %g s (doubled"
                    " after each refusal in a row, up to %g s) unless space comes back",
                    self.config.source_id,
                    self._disk_full_wait,
                    DISK_FULL_WAIT_MAX,
                )
            self._snapshot_disk_full = (time.monotonic(), None if free is None else free + own)
            error = snapshot_errors.disk_full_error(math.ceil(self._disk_full_wait))
        shape.snapshot_failed(error)
        what = snapshot_errors.kind(exc)
        if isinstance(exc, Abandoned):
            logger.info("snapshot of shape %s cancelled: %s", shape.handle, exc)
        elif what == "transient":
            logger.warning("snapshot of shape %s failed: %s", shape.handle, _describe(exc))
        else:  # the request's fault or a schema change: no row values in the log either
            logger.info(
                "snapshot of shape %s failed: %s", shape.handle, snapshot_errors.describe(exc)
            )
        if what in ("table_gone", "schema_changed"):
            self.tables.changed(t, dropped=what == "table_gone", reason="table dropped")
        self.registry.rotate(shape, f"snapshot failed: {snapshot_errors.describe(exc)}")


def _free_bytes(path: Path) -> int | None:
    """Bytes free to the engine on the filesystem of `path` (None: cannot tell)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


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

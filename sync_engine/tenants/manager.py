"""SourceManager: the store of sources and the running sources, kept in step.

The app's lifespan starts it (load the store, start every source that is not paused,
watch states) and stops it. The admin API calls its create/rotate/pause/resume/delete;
`/v1/shape` calls `authenticate`. Mutations are serialised by one lock; each is written to
SQLite first, so a failed one leaves the store as it was.

Every call of the store runs in a thread of its own (`_db`), one at a time, never on the
event loop: a write's fsync on a slow disk, or a wait for another program's lock on the
file, holds up the admin request that asked for it, not the requests of every source. A
mutation, once begun, runs to its end even if its request is cancelled (`_whole`), so the
records in memory never part from what the store holds: a rotation written is a rotation
in force, an old secret never comes back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .. import stopping
from ..errors import ServiceUnavailable, Unauthorized
from ..log.store import count_on_disk
from ..pg.encoding import refused_encoding
from ..settings import Settings
from ..source import SourceConfig, SourceState
from ..stopping import cancel_and_wait
from .auth import Overloaded, SourceAuth, canonical_source_id, parse_source_id
from .credentials import (
    hash_secret,
    is_slow,
    new_secret,
    seal_secret,
    sealing_key,
    unseal_secret,
    verify_secret,
)
from .dburl import check_database_url
from .errors import DuplicateName, InvalidInput, UnknownSource
from .managed import ManagedSource
from .store import SourceRecord, SourceStore, StoreReadOnly

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_GRACE_SECONDS = 30 * 24 * 3600
#: Seconds between records of what is left of grace periods under way (`_record_graces`)
GRACE_RECORD_INTERVAL = 60.0
#: Seconds a retried creation waits for the same creation's answer still being sent.
ANSWER_WAIT = 30.0
#: Seconds between attempts to drop a deleted source's slot and publication (doubling).
CLEANUP_RETRY_FIRST = 5.0
CLEANUP_RETRY_MAX = 300.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("name", "name is required")
    name = name.strip()
    if not _NAME.match(name):
        raise InvalidInput(
            "name",
            "name must be 1-64 characters: letters, digits, space, '.',"
            " '_' or '-', starting with a letter or digit",
        )
    return name


def check_limit(field: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise InvalidInput(field, f"{field} must be a whole number from 1 to 1000000, or null")
    return value


def check_grace(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidInput("grace_period_seconds", "grace_period_seconds must be a number")
    if not 0 <= value <= MAX_GRACE_SECONDS:
        raise InvalidInput(
            "grace_period_seconds",
            f"grace_period_seconds must be between 0 and {MAX_GRACE_SECONDS} (30 days)",
        )
    return float(value)


def _duplicate(
    same: SourceRecord, retry: bool, busy: bool = False, lost: bool = False
) -> DuplicateName:
    sid = same.source_id
    if busy:
        hint = "it is being created by another request right now; retry in a few seconds"
    elif same.secret_delivered or lost:
        hint = (
            f"if the answer that created it was lost, give it a new secret:"
            f" POST /api/sources/{sid}/rotate-secret (sync-engine sources rotate-secret {sid})"
        )
    else:
        hint = (
            "its creation's answer may not have been received; to get its secret, send the"
            " same database_url and limits again (or delete it)"
        )
    what = "with other settings " if not retry and not same.secret_delivered and not lost else ""
    return DuplicateName(
        f"a source named {same.name!r} already exists {what}(source_id {sid}); {hint}", sid
    )


def _same_grace(known: SourceRecord, read: SourceRecord) -> SourceRecord:
    """`read` (just read from the store) with the grace period this process counts for it:
    read again, it would be counted from the wall clock, which may have been stepped."""
    if read.previous_secret_hash != known.previous_secret_hash:
        return read
    return replace(
        read,
        previous_secret_expires_at=known.previous_secret_expires_at,
        grace_checked_at=known.grace_checked_at,
        previous_secret_deadline=known.previous_secret_deadline,
    )


def _paused() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Source is paused; an operator must resume it", retry_after=30, code="source_paused"
    )


class SourceManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.data_dir / "sources.db"
        self.store: SourceStore | None = None
        self.records: dict[str, SourceRecord] = {}
        self.running: dict[str, ManagedSource] = {}
        self.auth = SourceAuth()
        self._lock = asyncio.Lock()
        self._persisted: dict[str, tuple[str, str | None]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._ever_registered = False
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._cleanups: dict[str, asyncio.Task[None]] = {}
        # Sources whose creation's answer is being sent: set when that request is over.
        self._answering: dict[str, asyncio.Event] = {}
        # Seals a creation's secret until its answer was recorded as sent (`create`)
        self._seal_key = sealing_key(settings.admin_token)
        # The store's thread (`_db`), and the mutations under way (`_whole`)
        self._io: ThreadPoolExecutor | None = None
        self._mutations: set[asyncio.Task[Any]] = set()
        # Sources whose first secret was just used, being recorded as delivered (`_used`)
        self._confirming: set[str] = set()

    # -- the store, off the event loop ----------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` (a call of the store) in the store's thread: one thread,
        so calls run one at a time in the order made, and the connection is used by it
        alone (SQLite serialises a connection's calls: a read on the event loop would wait
        for a write's fsync in another thread)."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="sources-db")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, partial(fn, *args, **kwargs))

    async def _whole(
        self, work: Coroutine[Any, Any, T], orphaned: Callable[[T], None] | None = None
    ) -> T:
        """Run a mutation to its end even if the caller is cancelled (its client gone, the
        engine stopping): cancelled between its store write and its update of the records
        in memory, the two would part (a rotated-out secret working until a restart).
        `orphaned(result)` is called when it ends after its caller was cancelled."""
        task = asyncio.ensure_future(work)
        self._mutations.add(task)
        task.add_done_callback(self._mutations.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:

            def done(t: asyncio.Future[T]) -> None:
                if t.cancelled():
                    return
                if t.exception() is not None:  # (retrieved: nobody else will)
                    logger.info("a mutation whose request was cancelled failed: %s",
                                t.exception())  # fmt: skip
                elif orphaned is not None:
                    orphaned(t.result())

            task.add_done_callback(done)
            raise

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        self.store = store = await self._db(SourceStore, self.path)
        self._ever_registered = await self._db(store.ever_had_sources)
        if not self._ever_registered:
            self._ever_registered = await self._db(self._sources_without_registry)
        for rec in await self._db(store.all):
            self.records[rec.source_id] = rec
            self._persisted[rec.source_id] = (rec.state, rec.last_error)
            if not rec.paused:
                await self._start_source(rec)
            self._revoke_at_expiry(rec)
        await self._refresh_auth()
        for source_id, database_url in await self._db(store.cleanup_pending):
            self._start_cleanup(source_id, database_url, retry_first=False)
        if self.records:
            logger.info("%d registered sources (%d running)", len(self.records), len(self.running))
        self._watcher = asyncio.create_task(self._watch_states(), name="source-states")

    async def stop(self) -> None:
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
        await cancel_and_wait(list(self._cleanups.values()), "deleted sources' cleanups")
        if self._watcher is not None:
            await cancel_and_wait([self._watcher], "source states")
        # mutations under way (their requests cancelled as the server stops) end first
        await asyncio.gather(*list(self._mutations), return_exceptions=True)
        if self.store is not None:
            try:
                async with self._lock:  # the states as they were when the engine stopped
                    await self._persist_states()
                    await self._record_graces()
            except StoreReadOnly as exc:
                logger.warning("source states not recorded: %s", exc)
            except Exception:
                logger.exception("could not record source states")
        running, self.running = list(self.running.values()), {}
        await asyncio.gather(*(s.stop() for s in running), return_exceptions=True)
        self.auth.close()
        if self.store is not None:
            await self._db(self.store.close)
            self.store = None
        if self._io is not None:
            self._io.shutdown(wait=False)
            self._io = None

    async def _refresh_auth(self) -> None:
        """Scrypt dummies while a source has a scrypt hash (registered before schema 4)."""
        self.auth.slow_dummies = any(
            is_slow(h)
            for r in self.records.values()
            for h in (r.secret_hash, r.previous_secret_hash)
            if h is not None
        )
        await self.auth.prepare()

    def has_sources(self) -> bool:
        """Whether requests naming a `source_id` are for registered sources: once one was
        ever registered here. Deleting the last one must not send its clients' requests to
        the engine's single database (`--database-url`), which may need no secret."""
        return bool(self.records) or self._ever_registered

    def _sources_without_registry(self) -> bool:
        """Whether `<data-dir>/sources/` holds source directories though the registry
        knows of no source, ever (called only then; `sources/default` is the single
        database's, not a source's): `sources.db` was lost (a backup
        restored without it, an operator who "reset" it) while the sources' data stayed.
        Requests naming a `source_id` are then still for registered sources, refused with
        401, never answered from `--database-url`'s database (a proxy configured for such
        a source served its users that database's rows); and the operator is told."""
        try:
            found = sorted(d.name for d in (self.settings.data_dir / "sources").iterdir()
                           if d.is_dir() and canonical_source_id(d.name) == d.name)  # fmt: skip
        except OSError:  # (none: no source ever ran here)
            return False
        if not found:
            return False
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        logger.error(
            "%s knows of no source, but %s holds the data of %d (%s): the registry was lost"
            " or replaced. Requests naming a source_id are refused (401) until the sources"
            " are registered again; restore %s from a backup to keep them, or drop their"
            " replication slots (they hold WAL in their databases) and remove those"
            " directories.",
            self.path.name,
            self.settings.data_dir / "sources",
            len(found),
            shown,
            self.path.name,
        )
        return True

    def _store(self) -> SourceStore:
        if self.store is None:  # (not started, or sources.db could not be opened at all)
            raise sqlite3.OperationalError(f"{self.path.name} is not open")
        return self.store

    def source_dir(self, source_id: str) -> Path:
        return self.settings.data_dir / "sources" / source_id

    def _config(self, rec: SourceRecord) -> SourceConfig:
        s = self.settings
        return SourceConfig(
            source_id=rec.source_id,
            database_url=rec.database_url,
            data_dir=self.source_dir(rec.source_id),
            chunk_bytes=s.chunk_bytes,
            max_concurrent_snapshots=s.max_concurrent_snapshots,
            max_shapes=rec.max_shapes if rec.max_shapes is not None else s.max_shapes,
            max_log_bytes=s.max_log_bytes,
            disk_reserve=s.disk_reserve,
            fsync=s.fsync,
            schema_check_interval=s.schema_check_interval,
            replication_timeout=s.replication_timeout,
            snapshot_timeout=s.snapshot_timeout,
            family_check_interval=s.family_check_interval,
            catalog_timeout=s.catalog_timeout,
            probe_timeout=s.probe_timeout,
        )

    def _initial_syncs_limit(self, rec: SourceRecord) -> int | None:
        if rec.max_initial_syncs is not None:
            return rec.max_initial_syncs
        return self.settings.max_initial_syncs

    def _make_source(self, rec: SourceRecord) -> ManagedSource:
        return ManagedSource(
            self._config(rec),
            rec.database_url,
            self._initial_syncs_limit(rec),
            start_afresh=self._start_afresh,
            peers=lambda: len(self.running),
        )

    def _start_afresh(self, source: ManagedSource, why: str) -> None:
        """Stop a running source and start it again from its data dir, the other sources
        serving on (`ManagedSource._start_afresh`: its Postgres went back in time). Run
        as a mutation (`_whole`): the engine's stop waits for it."""
        task = asyncio.ensure_future(self._restart(source, why))
        self._mutations.add(task)
        task.add_done_callback(self._mutations.discard)

    async def _restart(self, source: ManagedSource, why: str) -> None:
        sid = source.config.source_id
        try:
            async with self._lock:
                if self.running.get(sid) is not source:
                    return  # (paused or deleted meanwhile: stopped already)
                del self.running[sid]
                await source.end_requests(source.closing or _paused)
                await source.stop()
                rec = self.records.get(sid)
                if rec is not None and not rec.paused:
                    await self._start_source(rec)
            logger.info("source %s started again", sid)
        except Exception:  # (left stopped, it would answer 503 for good: as before, then)
            logger.exception("source %s could not be started again", sid)
            stopping.stop_process(why)

    async def _start_source(self, rec: SourceRecord) -> None:
        source = self._make_source(rec)
        self.running[rec.source_id] = source
        await source.start()

    # -- requests -------------------------------------------------------------------------

    async def authenticate(self, source_id: str | None, secret: str | None) -> ManagedSource:
        """The source for a /v1/shape request, or the same Unauthorized for any mistake
        (an id not in its canonical spelling included: `canonical_source_id`)."""
        sid = canonical_source_id(source_id)
        rec = self.records.get(sid) if sid is not None else None
        try:
            matched = await self.auth.matched(rec, secret)
        except Overloaded:
            raise ServiceUnavailable(
                "Too many secret checks are waiting; retry shortly",
                retry_after=2,
                code="secret_checks_busy",
            ) from None
        if matched is None:
            raise Unauthorized()
        rec = self.records.get(sid) if sid is not None else None
        if rec is None or matched not in rec.valid_hashes():
            raise Unauthorized()  # deleted, or the secret rotated, while it was checked
        if rec.pending_secret is not None and matched == rec.secret_hash:
            self._used(rec.source_id)
        if rec.paused:
            raise _paused()
        source = self.running.get(rec.source_id)
        if source is None:
            raise ServiceUnavailable("Source is starting", retry_after=5)
        source.admit(matched)
        return source

    # -- management -----------------------------------------------------------------------

    def get(self, source_id: str) -> SourceRecord:
        sid = parse_source_id(source_id)
        rec = self.records.get(sid) if sid is not None else None
        if rec is None:
            if sid is None:  # not echoed: it can be anything (a NUL, 5000 characters)
                raise UnknownSource("no such source: a source id is a uuid")
            raise UnknownSource(f"no source with id {sid}")
        return rec

    def all(self) -> list[SourceRecord]:
        return sorted(self.records.values(), key=lambda r: (r.created_at, r.name))

    async def create(
        self,
        name: object,
        database_url: object,
        max_shapes: object = None,
        max_initial_syncs: object = None,
    ) -> tuple[SourceRecord, str, bool]:
        """A new source and its secret, and False; or, for a retry of a creation whose
        answer was not recorded as sent, that source with the same secret, and True.

        A retry is the same request again: same name, database URL and limits, for a
        source whose secret was never recorded as delivered (`secret_delivered`). Its
        first answer may have been lost (the engine killed before writing it, the client
        gone) or may have reached its client (the engine killed right after writing it):
        either way answering with the same secret, kept sealed until then
        (`pending_secret`), is right, and nobody's secret is replaced. Like an idempotent
        create: nothing changes, the answer is given again. Anything else with a taken
        name is a 409 naming the source that has it (and how to get a secret of it:
        rotate-secret).
        """
        name = check_name(name)
        url = check_database_url(database_url)
        shapes_limit = check_limit("max_shapes", max_shapes)
        syncs_limit = check_limit("max_initial_syncs", max_initial_syncs)
        # (its start would refuse it for ever: `Tables.prepare`; said now, nothing saved)
        refused = await refused_encoding(url)
        if refused is not None:
            raise InvalidInput("database_url", str(refused))
        secret = new_secret()
        secret_hash = hash_secret(secret)
        same: SourceRecord | None = None
        for _ in range(3):
            made, again, answering, same = await self._whole(
                self._create_step(name, url, shapes_limit, syncs_limit, secret, secret_hash),
                orphaned=self._creation_orphaned,
            )
            if made is not None:
                return made, again or secret, again is not None
            # The same creation is being answered right now (a double submit, a retry
            # before the first gave up): its secret must not be replaced under it. Wait
            # for that answer, then it is a 409 (sent) or this one takes over (not sent).
            assert answering is not None
            try:
                async with asyncio.timeout(ANSWER_WAIT):
                    await answering.wait()
            except TimeoutError:
                break
        assert same is not None
        raise _duplicate(same, True, busy=True)

    def _creation_orphaned(
        self,
        outcome: tuple[SourceRecord | None, str | None, asyncio.Event | None, SourceRecord | None],
    ) -> None:
        """A creation done for a request cancelled meanwhile: no answer will carry it."""
        if outcome[0] is not None:
            self.answer_ended(outcome[0].source_id)

    async def _create_step(
        self,
        name: str,
        url: str,
        shapes_limit: int | None,
        syncs_limit: int | None,
        secret: str,
        secret_hash: str,
    ) -> tuple[SourceRecord | None, str | None, asyncio.Event | None, SourceRecord | None]:
        """(the source made, None, None, None); (the source of a retry, its first secret,
        None, None); or (None, None, the event to wait for, the source with the name) when
        that source's creation is being answered now. Raises DuplicateName for a name taken
        otherwise (or when the first secret cannot be given again)."""
        async with self._lock:
            store = self._store()
            same = await self._db(store.find_name, name)
            if same is None:
                source_id = str(uuid.uuid4())
                rec = await self._db(
                    store.create,
                    name,
                    url,
                    secret_hash,
                    max_shapes=shapes_limit,
                    max_initial_syncs=syncs_limit,
                    source_id=source_id,
                    pending_secret=seal_secret(secret, self._seal_key, source_id),
                )
                self.records[rec.source_id] = rec
                self._ever_registered = True
                self._persisted[rec.source_id] = (rec.state, None)
                self._answering[rec.source_id] = asyncio.Event()
                try:
                    await self._refresh_auth()
                    await self._start_source(rec)
                except BaseException:
                    self.answer_ended(rec.source_id)  # no answer will carry its secret
                    raise
                logger.info(
                    "source %s (%s) registered for %s", rec.name, rec.source_id, rec.redacted_url
                )
                return rec, None, None, None
            retry = (same.database_url, same.max_shapes, same.max_initial_syncs) == (
                url,
                shapes_limit,
                syncs_limit,
            )
            same = self.records.get(same.source_id, same)  # `secret_delivered` as known
            if same.secret_delivered or not retry:
                raise _duplicate(same, retry)
            answering = self._answering.get(same.source_id)
            if answering is not None:
                return None, None, answering, same
            first = await self._first_secret(same)
            if first is None:  # rotated since, or sealed with another admin token
                raise _duplicate(same, retry, lost=True)
            self._answering[same.source_id] = asyncio.Event()
            logger.info(
                "source %s (%s): the same creation again, its answer not recorded as sent:"
                " answered again (same secret)",
                same.name,
                same.source_id,
            )
            return same, first, None, None

    async def _first_secret(self, rec: SourceRecord) -> str | None:
        """The source's first secret, sealed until its answer was recorded as sent, if it
        is still its current secret."""
        if rec.pending_secret is None:
            return None
        secret = unseal_secret(rec.pending_secret, self._seal_key, rec.source_id)
        if secret is None:
            return None
        if is_slow(rec.secret_hash):
            ok = await asyncio.to_thread(verify_secret, secret, rec.secret_hash)
        else:
            ok = verify_secret(secret, rec.secret_hash)
        return secret if ok else None

    def answer_ended(self, source_id: str) -> None:
        """The request that created the source (or answered its creation again on a retry) is
        over, its answer sent (`secret_delivered` first) or not."""
        event = self._answering.pop(source_id, None)
        if event is not None:
            event.set()

    def _used(self, source_id: str) -> None:
        """A request came with the first secret of a source whose creation's answer was not
        recorded as sent: its client has it, which is as good as that record (the secret's
        sealed copy is erased; a retry of the creation is a 409 from then on)."""
        if source_id in self._answering or source_id in self._confirming:
            return  # (its answer is being sent, or this is being recorded already)
        self._confirming.add(source_id)
        task = asyncio.ensure_future(self.secret_delivered(source_id))
        self._mutations.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._mutations.discard(t)
            self._confirming.discard(source_id)

        task.add_done_callback(done)

    async def secret_delivered(self, source_id: str) -> None:
        """The answer carrying a secret of the source was sent: a retry of its creation is
        a 409 from now on (`create`)."""
        rec = self.records.get(source_id)
        if rec is None or (rec.secret_delivered and rec.pending_secret is None):
            return
        self.records[source_id] = replace(rec, secret_delivered=True, pending_secret=None)
        try:
            await self._whole(self._db(self._store().mark_delivered, source_id))
        except sqlite3.Error as exc:  # a full disk: known here, not after a restart
            logger.warning("source %s: could not record its secret as delivered: %s",
                           source_id, exc)  # fmt: skip

    async def rotate_secret(self, source_id: str, grace: object) -> tuple[SourceRecord, str]:
        grace_s = check_grace(grace)
        self.get(source_id)
        secret = new_secret()
        secret_hash = hash_secret(secret)
        rec = await self._whole(self._rotate(source_id, secret_hash, grace_s))
        logger.info(
            "source %s (%s): secret rotated, old secret valid for %ds more",
            rec.name,
            rec.source_id,
            grace_s,
        )
        return rec, secret

    async def _rotate(self, source_id: str, secret_hash: str, grace_s: float) -> SourceRecord:
        async with self._lock:
            rec = self.get(source_id)
            rec = await self._db(self._store().rotate_secret, rec.source_id, secret_hash, grace_s)
            self.records[rec.source_id] = rec
            self._revoke(rec.source_id)
            self._revoke_at_expiry(rec)
            await self._refresh_auth()
        return rec

    async def pause(self, source_id: str) -> SourceRecord:
        return await self._whole(self._pause(source_id))

    async def resume(self, source_id: str) -> SourceRecord:
        return await self._whole(self._resume(source_id))

    async def delete(self, source_id: str) -> list[str]:
        """Remove a source: stop it, drop its slot and publication, delete its shape logs.

        The deletion is recorded first (its requests get 401 from then on, also after a
        crash); its slot and publication are dropped next, and if that fails (the database
        is unreachable, the engine is killed) the engine tries again, every few minutes
        while it runs and at each start, until they are gone (`_cleanup`).
        """
        return await self._whole(self._delete(source_id))

    async def _pause(self, source_id: str) -> SourceRecord:
        async with self._lock:
            rec = self.get(source_id)
            rec = _same_grace(rec, await self._db(self._store().set_paused, rec.source_id, True))
            self.records[rec.source_id] = rec
            self._persisted[rec.source_id] = ("paused", None)
            source = self.running.pop(rec.source_id, None)
            if source is not None:
                await source.end_requests(_paused)
                await source.stop()
        logger.info("source %s (%s) paused", rec.name, rec.source_id)
        return rec

    async def _resume(self, source_id: str) -> SourceRecord:
        async with self._lock:
            rec = self.get(source_id)
            rec = _same_grace(rec, await self._db(self._store().set_paused, rec.source_id, False))
            self.records[rec.source_id] = rec
            self._persisted[rec.source_id] = ("connecting", None)
            if rec.source_id not in self.running:
                await self._start_source(rec)
        logger.info("source %s (%s) resumed", rec.name, rec.source_id)
        return rec

    async def _delete(self, source_id: str) -> list[str]:
        async with self._lock:
            rec = self.get(source_id)
            await self._db(self._store().delete, rec.source_id)
            del self.records[rec.source_id]
            self._persisted.pop(rec.source_id, None)
            await self._refresh_auth()
            # (its verified secrets need no forgetting: they match no valid hash any more;
            # forgetting all of them sent every client of every source through scrypt again)
            timer = self._expiries.pop(rec.source_id, None)
            if timer is not None:
                timer.cancel()
            source = self.running.pop(rec.source_id, None) or self._make_source(rec)
            # Held requests get a 409 (their shapes are gone), then 401; none of them may
            # still use a connection when the source stops.
            source.registry.rotate_all("source deleted")
            try:
                await source.end_requests(Unauthorized)
                warnings = await source.destroy()
            except Exception as exc:  # recorded as deleted: the cleanup is tried again
                logger.exception("cleaning up deleted source %s failed", rec.source_id)
                warnings = [f"could not drop its replication slot and publication ({exc})."]
            if not warnings:
                await self._db(self._store().cleaned, rec.source_id)
        # A source whose data dir shows it never made its slot or publication (it never
        # reached its database) has, most likely, nothing to drop: its deletion warned of
        # a slot to drop by hand and logged every retry (LOW). Its retries go on, quietly:
        # a data dir lost or restored from before its first connection shows nothing either,
        # and a slot left behind keeps WAL for good (review 17:01).
        quiet = bool(warnings) and not source.made_before
        if quiet:
            logger.info(
                "source %s (%s) deleted; its database could not be reached, and its data dir"
                " shows it never made its slot or publication there: the engine drops them,"
                " should they exist, once it can be reached",
                rec.name,
                rec.source_id,
            )
            logger.debug("source %s: %s", rec.source_id, warnings[0])
        for w in [] if quiet else warnings:
            logger.warning("source %s (%s) deleted with a problem: %s", rec.name, rec.source_id, w)
        if warnings:
            self._start_cleanup(rec.source_id, rec.database_url, retry_first=True, quiet=quiet)
            warnings = (
                [] if quiet else [f"{w} The engine keeps trying to drop them." for w in warnings]
            )
        logger.info("source %s (%s) deleted", rec.name, rec.source_id)
        return warnings

    def _start_cleanup(
        self, source_id: str, database_url: str, *, retry_first: bool, quiet: bool = False
    ) -> None:
        if source_id in self._cleanups:
            return
        task = asyncio.create_task(
            self._cleanup(source_id, database_url, retry_first, quiet), name=f"cleanup-{source_id}"
        )
        self._cleanups[source_id] = task
        task.add_done_callback(lambda _: self._cleanups.pop(source_id, None))

    async def _cleanup(
        self, source_id: str, database_url: str, retry_first: bool, quiet: bool = False
    ) -> None:
        """Drop a deleted source's slot and publication (and shape logs) until that works.
        `quiet`: it most likely has none (`_delete`): its retries are logged at debug."""
        ghost = SourceRecord(source_id=source_id, name="", database_url=database_url,
                             secret_hash="")  # fmt: skip
        delay = CLEANUP_RETRY_FIRST
        if retry_first:
            await asyncio.sleep(delay)
        said: str | None = None
        while True:
            problems = await self._make_source(ghost).destroy()
            if not problems:
                await self._db(self._store().cleaned, source_id)
                logger.info(
                    "deleted source %s: its replication slot and publication are dropped now",
                    source_id,
                )
                return
            # Said once, and again only when the reason changes: it is retried for as long
            # as the database cannot be reached (its slot, if it has one, keeps WAL; whether
            # it has one cannot be told), and a source deleted before it ever connected
            # logged the same line every five minutes for as long as the engine ran.
            log = logger.info if problems[0] != said and not quiet else logger.debug
            log("deleted source %s: %s (retrying)", source_id, problems[0])
            said = problems[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, CLEANUP_RETRY_MAX)

    # -- revoked secrets ------------------------------------------------------------------

    def _revoke(self, source_id: str) -> None:
        """End the source's requests whose secret is no longer valid (`ManagedSource.revoke`)."""
        self._expiries.pop(source_id, None)
        rec = self.records.get(source_id)
        if rec is None:
            return
        now = time.monotonic()
        if rec.in_grace(now):  # the timer ran early
            self._revoke_at_expiry(rec)
        source = self.running.get(source_id)
        if source is not None:
            source.revoke(rec.valid_hashes(now))

    def _revoke_at_expiry(self, rec: SourceRecord) -> None:
        """When the previous secret's grace period ends, end the requests made with it too."""
        old = self._expiries.pop(rec.source_id, None)
        if old is not None:
            old.cancel()
        if rec.previous_secret_deadline is None:
            return
        delay = rec.grace_left()  # (the loop's timers are monotonic too)
        loop = asyncio.get_running_loop()
        # a hair late rather than early: `valid_hashes` must no longer list the old one
        self._expiries[rec.source_id] = loop.call_later(delay + 0.01, self._revoke, rec.source_id)

    # -- state ----------------------------------------------------------------------------

    def live_state(self, rec: SourceRecord) -> tuple[str, str | None, str | None]:
        """(state, reason a person can act on, reason code) as of now."""
        if rec.paused:
            return "paused", None, None
        source = self.running.get(rec.source_id)
        if source is None:
            return rec.state, None, None
        diag = source.diagnosis
        if source.state is SourceState.ERROR:
            return "error", diag.message if diag else source.error, diag.code if diag else None
        return source.state, None, None

    def status(self, rec: SourceRecord) -> dict[str, Any]:
        state, error, code = self.live_state(rec)
        source = self.running.get(rec.source_id)
        config = self._config(rec)
        shape_count = (
            source.shape_count
            if source is not None and source.ready.is_set()
            else self._shapes_on_disk(rec)
        )
        # by the wall clock as it reads now (stepped or not), from the monotonic deadline
        expires = time.time() + rec.grace_left() if rec.in_grace() else None
        return {
            "source_id": rec.source_id,
            "name": rec.name,
            "database_url": rec.redacted_url,
            "state": state,
            "error": error,
            "error_code": code,
            "last_error": rec.last_error,
            "last_error_at": iso(rec.last_error_at),
            "paused": rec.paused,
            "secret_delivered": rec.secret_delivered,
            "shape_count": shape_count,
            "replication_lag_bytes": source.lag_bytes if source and state == "active" else None,
            "initial_syncs_in_progress": source.initial_syncs_in_progress() if source else 0,
            "limits": {
                "max_shapes": config.max_shapes,
                "max_initial_syncs": self._initial_syncs_limit(rec),
            },
            "slot_name": config.slot_name,
            "publication_name": config.publication_name,
            "created_at": iso(rec.created_at),
            "secret_rotated_at": iso(rec.secret_rotated_at),
            "previous_secret_expires_at": iso(expires),
        }

    def _shapes_on_disk(self, rec: SourceRecord) -> int:
        d = self.source_dir(rec.source_id) / "shapes"
        try:
            return count_on_disk(d)
        except OSError:
            return 0

    async def _watch_states(self) -> None:
        graces_at = time.monotonic() + GRACE_RECORD_INTERVAL
        while True:
            await asyncio.sleep(1.0)
            try:
                async with self._lock:
                    store = self._store()
                    # open read-only (a full disk at start): try to write again; the states
                    # are recorded once it can be written
                    if store.read_only is not None and not await self._db(store.try_writable):
                        continue
                    await self._persist_states()
                    if time.monotonic() >= graces_at:
                        graces_at = time.monotonic() + GRACE_RECORD_INTERVAL
                        await self._record_graces()
            except Exception:
                logger.exception("could not record source states")

    async def _record_graces(self) -> None:
        """Record by the wall clock what is left of each grace period under way, as this
        process's monotonic clock counts it (call it holding `_lock`): a later start counts
        from there (`store.grace_deadline`), so a clock step while the engine runs is not
        carried over, and one while it is stopped lengthens nothing."""
        store = self._store()
        for rec in list(self.records.values()):
            if not rec.in_grace():
                continue
            now, left = time.time(), rec.grace_left()
            await self._db(store.record_grace, rec.source_id, left, now)
            current = self.records.get(rec.source_id)
            if current is not None and current.previous_secret_hash == rec.previous_secret_hash:
                self.records[rec.source_id] = replace(
                    current, previous_secret_expires_at=now + left, grace_checked_at=now
                )

    async def _persist_states(self) -> None:
        """Record the sources' states that changed (call it holding `_lock`: no mutation
        replaces a record while its state is written)."""
        reg = self._store()
        for rec in list(self.records.values()):
            state, error, _ = self.live_state(rec)
            if self._persisted.get(rec.source_id) == (state, error):
                continue
            previous = self._persisted.get(rec.source_id, ("?", None))[0]
            self._persisted[rec.source_id] = (state, error)  # (a failed write: logged once)
            await self._db(reg.set_state, rec.source_id, state, error)
            now = self.records.get(rec.source_id)  # (`secret_delivered` may have changed)
            if now is None:
                continue
            rec = now
            self.records[rec.source_id] = replace(
                rec,
                state=state,
                last_error=error or rec.last_error,
                last_error_at=time.time() if error else rec.last_error_at,
            )
            if state != previous:
                if error:
                    logger.warning(
                        "source %s (%s) is %s: %s", rec.name, rec.source_id, state, error
                    )
                else:
                    logger.info("source %s (%s) is %s", rec.name, rec.source_id, state)

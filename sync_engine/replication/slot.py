"""The replication slot: created once per source, it keeps the WAL until the engine confirms it."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from .stream import Walsender
from .wal import Lsn, parse_lsn

__all__ = ["SlotState", "end_walsender", "ensure_slot", "slot_confirmed_lsn", "slot_state"]

logger = logging.getLogger(__name__)

#: Seconds to connect (a server that takes the connection and never answers: stopped, or
#: behind a partition) before giving up; the caller retries.
CONNECT_TIMEOUT = 5
#: Seconds a question about the slot or the WAL may take, its connection included: a
#: Postgres that stops answering after the connection is made (SIGSTOP, a proxy whose server
#: went away) held it for as long as that lasted, and what waited on it (the replication
#: stream's restart, a source's start) with it. TimeoutError then; the callers retry.
QUERY_TIMEOUT = 30.0
#: Seconds a slot's creation may wait before the log says what it waits for, then between
#: two such lines (`_explaining_waits`).
FIRST_EXPLAIN = 10.0
EXPLAIN_EVERY = 60.0
#: Seconds to ask Postgres who is in the way (on a connection of its own).
EXPLAIN_TIMEOUT = 5.0

T = TypeVar("T")


class SlotState(enum.StrEnum):
    """Whether the slot can still send every change since the engine last confirmed one."""

    OK = "ok"
    MISSING = "missing"  # dropped (by hand, or never created)
    LOST = "lost"  # invalidated: Postgres removed WAL it still needed (max_slot_wal_keep_size)


async def slot_state(dsn: str, slot: str) -> SlotState:
    """The slot's state; raises `psycopg.Error` when the database cannot be asked.

    A slot of that name in another database of the cluster (slot names are per cluster:
    another engine with the same `--replication-stream-id`) raises ValueError: it is not
    this engine's to replace. Taken as missing or replaced, it was dropped from under the
    other engine, whose walsender was terminated and whose shapes were all retired.
    """
    row = await _ask(
        dsn,
        "SELECT wal_status, database, current_database()"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    if row is None:
        return SlotState.MISSING
    wal_status, database, current = row
    if database != current:
        raise ValueError(
            f"replication slot {slot!r} belongs to database {database!r}, not {current!r}:"
            " another engine uses this name on the same Postgres cluster; give each engine"
            " its own --replication-stream-id (env SYNC_ENGINE_REPLICATION_STREAM_ID)"
        )
    return SlotState.LOST if wal_status == "lost" else SlotState.OK


async def slot_confirmed_lsn(dsn: str, slot: str) -> Lsn | None:
    """The slot's `confirmed_flush_lsn`: where a new stream starts (None: no such slot)."""
    row = await _ask(
        dsn,
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    if row is None or row[0] is None:
        return None
    return parse_lsn(row[0])


async def wal_end(dsn: str) -> Lsn:
    """Where the server's WAL ends now: what it has written (a standby: replayed)."""
    row = await _ask(
        dsn,
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
        " ELSE pg_current_wal_lsn() END)::text",
    )
    assert row is not None
    return parse_lsn(row[0])


async def end_walsender(dsn: str, slot: str, walsender: Walsender) -> bool:
    """End `walsender` if it still holds `slot` (True if it was told to end).

    For a stream the engine gave up on (no word within --replication-timeout) whose network
    went silent rather than closed: Postgres keeps that walsender, and the slot with it,
    until its own `wal_sender_timeout` (60 s by default; never with 0), and every new
    stream meanwhile fails with "replication slot ... is active for PID ...". Only that
    walsender is ended: its PID and start time must both match, so one that a second engine
    (a rolling deploy) or anyone else holds the slot with is never touched.
    """
    row = await _ask(
        dsn,
        "SELECT pg_terminate_backend(a.pid) FROM pg_replication_slots s"
        " JOIN pg_stat_activity a ON a.pid = s.active_pid"
        " WHERE s.slot_name = %s AND a.pid = %s AND a.backend_start = %s",
        (slot, walsender.pid, walsender.started),
    )
    return row is not None and bool(row[0])


async def _ask(dsn: str, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    """The first row of `query` on a connection of its own, within `QUERY_TIMEOUT`."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchone()
    except TimeoutError:
        raise TimeoutError(
            f"Postgres did not answer a question about the replication slot or WAL within"
            f" {QUERY_TIMEOUT:g} s"
        ) from None


async def ensure_slot(dsn: str, slot: str) -> bool:
    """Create the logical replication slot ``slot`` (pgoutput) unless it already exists.

    Returns True when this call created it. The existence check runs on a normal
    connection; creation runs ``CREATE_REPLICATION_SLOT ... LOGICAL pgoutput
    NOEXPORT_SNAPSHOT`` on a replication connection (no snapshot: the engine takes its own
    snapshots and stitches them to the stream by xid). A slot of that name in another
    database or for another plugin is an error (``ValueError``), since streaming from it
    would silently read the wrong changes. A concurrent creator winning the race counts as
    "exists".
    """
    row = await _ask(
        dsn,
        "SELECT database, plugin, slot_type, current_database()"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    if row is not None:
        database, plugin, slot_type, current = row
        if slot_type != "logical" or plugin != "pgoutput" or database != current:
            raise ValueError(
                f"replication slot {slot!r} exists but is a {slot_type} slot for plugin "
                f"{plugin!r} in database {database!r}, not a pgoutput slot in {current!r}"
            )
        return False

    rconn = await psycopg.AsyncConnection.connect(
        dsn, replication="database", autocommit=True, connect_timeout=CONNECT_TIMEOUT
    )
    try:
        query = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT").format(
            sql.Identifier(slot)
        )
        try:
            cur = await _explaining_waits(rconn.execute(query), dsn, slot, rconn.info.backend_pid)
        except psycopg.errors.DuplicateObject:
            logger.info("replication slot %r was created concurrently", slot)
            return False
        created = await cur.fetchone()
        logger.info(
            "created replication slot %r at consistent point %s",
            slot,
            created[1] if created else "?",
        )
        return True
    finally:
        await rconn.close()


async def _explaining_waits(work: Awaitable[T], dsn: str, slot: str, walsender: int) -> T:
    """`work` (the slot's creation), logging a WARNING that names what it waits for past
    `FIRST_EXPLAIN` seconds, and again every `EXPLAIN_EVERY`.

    Postgres makes a logical slot once every transaction that had an xid when the creation
    began has ended (the walsender waits on their locks): one session left idle in a
    transaction that wrote (a forgotten BEGIN, a stuck client) holds the creation, and the
    source's start, for as long as it stays open. Nothing can be done but wait for it or end
    it; without these lines an operator saw only a source "starting" for ever."""
    task = asyncio.ensure_future(work)
    began = time.monotonic()
    wait = FIRST_EXPLAIN
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                return task.result()
            await _explain_wait(dsn, slot, walsender, time.monotonic() - began)
            wait = EXPLAIN_EVERY
    finally:
        if not task.done():
            task.cancel()  # (psycopg cancels the statement; the caller closes the connection)
            await asyncio.wait({task}, timeout=EXPLAIN_TIMEOUT)
        if task.done() and not task.cancelled():
            task.exception()  # (retrieved: raised above, or of no interest once cancelled)


async def _explain_wait(dsn: str, slot: str, walsender: int, waited: float) -> None:
    """Log the sessions in the way of the slot's creation (`pg_blocking_pids` of its
    walsender: visible to any role, unlike other roles' rows of `pg_stat_activity`)."""
    try:
        async with asyncio.timeout(EXPLAIN_TIMEOUT):
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                cur = await conn.execute(
                    "SELECT b.pid, a.state, extract(epoch FROM now() - a.xact_start)::int,"
                    " a.application_name"
                    " FROM unnest(pg_blocking_pids(%s)) AS b(pid)"
                    " LEFT JOIN pg_stat_activity a ON a.pid = b.pid ORDER BY a.xact_start",
                    (walsender,),
                )
                rows = await cur.fetchall()
    except (TimeoutError, psycopg.Error) as exc:
        logger.warning(
            "creating replication slot %r has waited %.0f s (Postgres makes it once the"
            " transactions open when it began have ended); could not ask which: %s",
            slot,
            waited,
            type(exc).__name__,
        )
        return
    sessions = "; ".join(
        f"pid {pid} ({state or 'state hidden'}"
        + (f", transaction open {age} s" if age is not None else "")
        + (f", application {app!r}" if app else "")
        + ")"
        for pid, state, age, app in rows[:10]
    )
    logger.warning(
        "creating replication slot %r has waited %.0f s: Postgres makes it once the"
        " transactions open when it began have ended, and it waits for %s: %s. The source"
        " starts when they end (commit or roll them back, or end them with"
        " pg_terminate_backend(pid))",
        slot,
        waited,
        f"{len(rows)} session(s)" if rows else "transactions (none found blocking now)",
        sessions or "-",
    )

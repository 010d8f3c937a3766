"""Replication failures are told apart and reported: a retry that can help is logged with
its delay and its recovery; one that cannot (wrong password, missing database or slot, bad
sslmode) is logged at ERROR, once, saying what to fix. Real Postgres, real connections."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from sync_engine.pg.publication import ensure_publication
from sync_engine.replication.failures import describe_failure
from sync_engine.replication.replicator import Replicator
from sync_engine.replication.slot import ensure_slot
from sync_engine.replication.stream import ReplicationStream
from sync_engine.shapes.registry import ShapeRegistry
from sync_engine.shapes.router import ShapeRouter
from sync_engine.stopping import cancel_and_wait


def _with(url: str, *, user: str | None = None, db: str | None = None, query: str = "") -> str:
    base, _, name = url.rpartition("/")
    if user is not None:
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://{user}@{rest.partition('@')[2]}"
    return f"{base}/{db or name}{query}"


async def _failure_of(dsn: str, slot: str = "no_such_slot") -> tuple[bool, str, str]:
    stream = ReplicationStream(dsn, slot, "no_such_publication")
    with pytest.raises(Exception) as info:
        await stream.start()
    failure = describe_failure(info.value)
    return failure.permanent, failure.reason, failure.fix


async def test_failures_that_need_a_fix_are_permanent(db_url: str) -> None:
    role = f"norep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        cases = {
            "missing database": _with(db_url, db="no_such_database_x"),
            "no REPLICATION": _with(db_url, user=role),
            "bad sslmode": _with(db_url, query="?sslmode=bogus"),
            "SSL required": _with(db_url, query="?sslmode=require"),
            "missing slot": db_url,
        }
        fixes = {"missing database": "database", "no REPLICATION": "REPLICATION",
                 "bad sslmode": "sslmode", "SSL required": "sslmode", "missing slot": "restart"}  # fmt: skip
        for what, dsn in cases.items():
            permanent, reason, fix = await _failure_of(dsn)
            assert permanent, (what, reason)
            assert fixes[what] in fix, (what, fix)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


async def test_a_closed_port_is_retried() -> None:
    permanent, reason, _ = await _failure_of("postgresql://postgres@127.0.0.1:1/postgres")
    assert not permanent and "refused" in reason.lower()


def _replicator(db_url: str, slot: str, tmp_path: Path) -> Replicator:
    router = ShapeRouter()
    registry = ShapeRegistry(tmp_path / "shapes", 1 << 20, router, fsync=False)
    registry.directory.mkdir(parents=True)
    return Replicator(db_url, slot, "pub_failures", registry, router, fsync=False)


async def _until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_dropped_slot_is_reported_once_with_what_to_do(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sync_engine")
    rep = _replicator(db_url, "slot_never_created", tmp_path)
    task = asyncio.create_task(rep.run())
    try:
        errors = lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]  # noqa: E731
        await _until(lambda: errors())
        await asyncio.sleep(1.0)
        assert len(errors()) == 1
        message = errors()[0].getMessage()
        assert "does not exist" in message and "will not fix itself" in message
        assert "restart the engine" in message
    finally:
        assert not await cancel_and_wait([task], "the replicator"), "it missed its cancellation"


async def test_a_lost_stream_is_retried_and_its_recovery_logged(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sync_engine")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_publication(conn, "pub_failures")
    await ensure_slot(db_url, "slot_failures")
    rep = _replicator(db_url, "slot_failures", tmp_path)
    task = asyncio.create_task(rep.run())
    try:
        await asyncio.wait_for(rep.connected.wait(), 20)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = 'slot_failures'"
            )
        text = lambda: "\n".join(r.getMessage() for r in caplog.records)  # noqa: E731
        await _until(lambda: "replication recovered after" in text())
        assert "replication stream lost (terminating connection" in text()
        assert "retrying in 0.2 s" in text()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        assert not await cancel_and_wait([task], "the replicator"), "it missed its cancellation"

"""Fixtures for registered-source tests: extra databases, clusters and in-process engines."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sources_harness import Cluster, MultiEngine


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


def _drop(server_url: str, dbname: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            (dbname,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s AND NOT active",
                (dbname,),
            ).fetchall()
            active = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE database = %s", (dbname,)
            ).fetchone()
            for (slot,) in rows:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                except psycopg.Error:
                    pass
            if not active or active[0] == len(rows):
                break
            import time

            time.sleep(0.1)
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(dbname)
            )
        )


@pytest.fixture
def make_db(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """make_db() -> URL of a fresh database on the test cluster (dropped afterwards)."""
    made: list[str] = []

    def make() -> str:
        dbname = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
        made.append(dbname)
        return _with_dbname(pg_server_url, dbname)

    yield make
    for dbname in made:
        _drop(pg_server_url, dbname)


@pytest.fixture
def replica_cluster() -> Iterator[Cluster]:
    """A running Postgres with wal_level=replica (not usable for logical replication)."""
    cluster = Cluster("replica")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Callable[..., MultiEngine]]:
    """engines(data_dir=None, **settings) -> a MultiEngine (call .start()); all closed after."""
    made: list[MultiEngine] = []

    def make(data_dir: Path | None = None, **overrides: object) -> MultiEngine:
        engine = MultiEngine(data_dir or tmp_path / "data", **overrides)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()

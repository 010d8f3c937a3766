"""Shared fixtures: a real PostgreSQL with logical replication, started once per test run.

Tests never mock the database. The cluster comes from `scripts/dev-postgres` (or
`TEST_DATABASE_URL` when set, e.g. a server you already run); each test that asks for
`db_url` gets its own fresh database, so replication slots and publications never leak
between tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the test cluster's `postgres` database (admin connection)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    tmp = tempfile.mkdtemp(prefix="shapegate-test-pg-")
    port = _free_port()
    out = subprocess.run(
        [str(ROOT / "scripts" / "dev-postgres"), "start", tmp, str(port)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    url = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("DATABASE_URL="))
    try:
        yield url
    finally:
        subprocess.run([str(ROOT / "scripts" / "dev-postgres"), "stop", tmp], check=False)


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


def drop_database(server_url: str, dbname: str) -> None:
    """Drop a test database, its replication slots and any backend still connected."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            (dbname,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (dbname,)
            ).fetchall()
            if not rows:
                break
            for slot, active in rows:
                if not active:
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    except psycopg.Error:
                        pass
            import time

            time.sleep(0.1)
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(dbname)
            )
        )


@pytest.fixture
def db_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test cluster; dropped (with its slots) afterwards."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(dbname)))
    try:
        yield _with_dbname(pg_server_url, dbname)
    finally:
        drop_database(pg_server_url, dbname)

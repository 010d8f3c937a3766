"""Shared fixtures: a real PostgreSQL with logical replication, started once per test run.

Tests never mock the database. The cluster comes from `scripts/dev-postgres` (or
`TEST_DATABASE_URL` when set, e.g. a server you already run); each test that asks for
`db_url` gets its own fresh database, so replication slots and publications never leak
between tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import create_database, drop_database
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the test cluster's `postgres` database (admin connection)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    # The cluster (~56 MB) lives in the temp dir only while the tests run: stopped and
    # deleted afterwards, also when starting it failed.
    tmp = tempfile.mkdtemp(prefix="shapegate-test-pg-")
    try:
        port = free_port()
        out = subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "start", tmp, str(port)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        url = next(
            line.split("=", 1)[1] for line in out.splitlines() if line.startswith("DATABASE_URL=")
        )
        yield url
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "stop", tmp], check=False, capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def db_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test cluster; dropped (with its slots) afterwards."""
    dbname, url = create_database(pg_server_url)
    try:
        yield url
    finally:
        drop_database(pg_server_url, dbname)

"""Shared fixtures: a real PostgreSQL with logical replication, started once per test run.

Tests never mock the database. The cluster comes from `scripts/dev-postgres` (or
`TEST_DATABASE_URL` when set, e.g. a server you already run); each test that asks for
`db_url` gets its own fresh database, so replication slots and publications never leak
between tests.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.databases import create_database, drop_database
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent

#: Seconds past a test's own timeout (pyproject's `timeout`, or its `timeout` mark) after
#: which the test process dumps every thread's stack and exits.
_HARD_DEADLINE_GRACE = 120

_stderr_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Keep a descriptor of the real stderr: during a test, fd 2 is pytest's capture file,
    which is lost when the process exits."""
    global _stderr_fd
    _stderr_fd = os.dup(2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A hard deadline under pytest-timeout's alarm.

    The alarm fails a test only when Python gets control back, and only once: a test stuck in
    a call that never returns to the interpreter, or whose teardown hangs after the alarm
    failed it, held CI until its 90-minute limit with nothing said about where. Past the
    deadline faulthandler's own thread writes every thread's stack to the real stderr and
    ends the process: xdist reports the test as crashed, starts a new worker and goes on.
    """
    mark = item.get_closest_marker("timeout")
    timeout = float(mark.args[0]) if mark and mark.args else float(item.config.getini("timeout"))
    if _stderr_fd is None or timeout <= 0:
        return (yield)
    faulthandler.dump_traceback_later(timeout + _HARD_DEADLINE_GRACE, exit=True, file=_stderr_fd)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


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
        # TCP without a password (PG_DEV_AUTH=trust), unlike `make run`'s and the Node tests'
        # clusters: tests log in as password-less roles of their own and put made-up passwords
        # in URLs of `postgres`. The cluster lives only while the tests run.
        out = subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "start", tmp, str(port)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PG_DEV_AUTH": "trust"},
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

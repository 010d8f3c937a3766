"""Fixtures for registered-source tests: extra databases, clusters and in-process engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from sync_engine import source as source_module
from sync_engine.replication import failures
from sync_engine.tenants import managed as managed_module
from sync_engine.tenants import manager as manager_module
from sync_engine.tenants.credentials import hash_secret
from tests.support.databases import create_database, drop_database
from tests.sync_engine.engine_harness import stopped_within
from tests.sync_engine.tenants.harness import Cluster, MultiEngine


@pytest.fixture
def make_db(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """make_db() -> URL of a fresh database on the test cluster (dropped afterwards)."""
    made: list[str] = []

    def make() -> str:
        dbname, url = create_database(pg_server_url)
        made.append(dbname)
        return url

    yield make
    for dbname in made:
        drop_database(pg_server_url, dbname)


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
        await stopped_within(engine.close(), "an in-process engine with sources")


@pytest.fixture
def scrypt_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources registered in the test get scrypt hashes, as those registered before schema 4
    (checked in worker threads, queued, remembered once verified)."""
    monkeypatch.setattr(manager_module, "hash_secret", partial(hash_secret, slow=True))


@pytest.fixture
def quick_cutoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests of a paused or deleted source are cut off after 0.5 s, not 5 s: for tests
    whose subject is what happens around the cut-off, not how long it waits."""
    monkeypatch.setattr(managed_module, "END_REQUESTS_WAIT", 0.5)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that failed to start retries within 1 s (not 5 s backoff, 10 s for a problem
    only a person can fix), and so does its replication stream once it is lost; a request
    for a new shape of a source not ready waits 0.5 s for it (not 5) before its 503: for
    tests that break and fix a source and wait for it."""
    monkeypatch.setattr(source_module, "RETRY_MAX", 1.0)
    monkeypatch.setattr(source_module, "PERMANENT_RETRY", 1.0)
    monkeypatch.setattr(failures, "MAX_DELAY", 1.0)
    monkeypatch.setattr(source_module, "READY_WAIT", 0.5)

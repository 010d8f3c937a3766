"""Fixtures for fault probes: a private Postgres cluster to stop and break."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.cluster import FaultCluster
from tests.sync_engine.tenants.harness import PGBIN


@pytest.fixture
def cluster() -> Iterator[FaultCluster]:
    """A running private cluster (wal_level=logical) with an `items (id, v)` table of 20 rows."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    made = FaultCluster()
    try:
        made.start()
        made.query("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        made.query("INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g")
        yield made
    finally:
        made.stop()

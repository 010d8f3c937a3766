"""Fixtures for fault probes: a private Postgres cluster to stop and break."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.faults.cluster import FaultCluster, PartitionedCluster
from tests.sync_engine.tenants.harness import PGBIN

C = TypeVar("C", bound=FaultCluster)


@pytest.fixture
def cluster() -> Iterator[FaultCluster]:
    """A running private cluster (wal_level=logical) with an `items (id, v)` table of 20 rows."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    yield from _with_items(FaultCluster())


@pytest.fixture
def partitioned() -> Iterator[PartitionedCluster]:
    """`cluster`, in a network namespace whose link can be cut; its walsenders give up on a
    silent client after 5 s (wal_sender_timeout), so a healed partition is streamed again
    soon. Needs root."""
    if PGBIN is None or os.geteuid() != 0:
        pytest.skip("needs root and PostgreSQL server binaries (a network namespace)")
    yield from _with_items(PartitionedCluster(wal_sender_timeout="'5s'"))


def _with_items(made: C) -> Iterator[C]:
    try:
        made.start_with_items()
        yield made
    finally:
        made.stop()


@pytest.fixture
def impatient() -> Iterator[FaultCluster]:
    """`cluster`, whose walsenders drop a client that has not replied for 1 s
    (wal_sender_timeout; 60 s by default): what a busy engine must keep replying to."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    yield from _with_items(FaultCluster(wal_sender_timeout="'1s'"))

"""An engine whose replication slot cannot be made while a transaction is open says why.

Postgres makes a logical slot only once every transaction that had an xid when it began has
ended (`CREATE_REPLICATION_SLOT` waits on their locks). One application session left idle
in a transaction that wrote (a forgotten BEGIN, a stuck client) held the engine's start for
as long as it stayed open: health 202 "starting", every shape request 503, and nothing in
the log saying what the engine waited for. Now, while it waits, the engine logs a WARNING
naming the sessions in the way (pid, state, for how long, application), again every
minute; it goes on once they end.

Real path: a private Postgres cluster, the engine as a process with a fresh data dir, a
session idle in a transaction that inserted a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until
from tests.sync_engine.tenants.harness import PGBIN


@pytest.mark.timeout(240)
def test_a_slot_waiting_for_an_open_transaction_is_explained_in_the_log(
    tmp_path: Path,
) -> None:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = FaultCluster()
    idle: psycopg.Connection[Any] | None = None
    engine = EngineProcess(cluster.url, tmp_path / "data")
    try:
        cluster.start_with_items()
        idle = psycopg.connect(cluster.url, application_name="forgotten-tx")
        idle.execute("INSERT INTO items VALUES (5000, 1)")  # an xid, left open
        pid = idle.info.backend_pid
        engine.spawn()
        wait_until(
            lambda: (
                "waits for" in engine.log_tail(100_000) and f"pid {pid}" in engine.log_tail(100_000)
            ),
            timeout=90,
            message="a log line naming the open transaction the slot waits for",
        )
        said = engine.log_tail(100_000)
        assert "forgotten-tx" in said and "idle in transaction" in said, said
        idle.commit()
        engine.wait_healthy()
    finally:
        if idle is not None:
            idle.close()
        engine.stop()
        cluster.stop()

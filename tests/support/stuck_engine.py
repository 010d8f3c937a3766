"""An engine process whose Postgres a test can lock up or silence: a private cluster with the
`items` table, the engine following a shape of it to its tip, a lock holder, SIGSTOP.

For the tests of what the engine does when a query waits in Postgres (a lock in the way, or
every Postgres process stopped) while its client leaves or the engine is told to stop. The
teardown lets Postgres go on (SIGCONT), lets the lock go, and kills the engine if it still
runs (SIGKILL: a frozen one would not stop on SIGTERM), then removes the cluster.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.blocking_http import synced_to_tip
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until
from tests.sync_engine.tenants.harness import PGBIN


@dataclass
class StuckEngine:
    cluster: FaultCluster
    engine: EngineProcess
    #: The synced shape's URL without offset, its handle and its up-to-date offset.
    shape: str
    handle: str
    offset: str
    locker: psycopg.Connection[Any] | None = None
    stopped: list[int] = field(default_factory=list)

    def lock_items(self) -> None:
        """Hold `items` in ACCESS EXCLUSIVE mode (until the teardown): queries of it wait."""
        self.locker = psycopg.connect(self.cluster.url)
        self.locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")

    def wait_for_lock_waiters(self, count: int, message: str) -> None:
        """Wait until `count` queries wait on a lock (30 s at most)."""
        wait_until(
            lambda: (
                self.cluster.query("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] == count
            ),
            timeout=30,
            message=message,
        )

    def silence_postgres(self) -> None:
        """Stop every Postgres process (SIGSTOP; SIGCONT at the teardown): connections are
        accepted by the kernel and answered by nobody."""
        self.stopped = self.cluster.pids()
        self.cluster.signal(self.stopped, signal.SIGSTOP)


@contextlib.contextmanager
def stuck_engine(tmp_path: Path) -> Iterator[StuckEngine]:
    """A `StuckEngine`: its cluster started with `items`, its engine (data in
    `tmp_path / "data"`) healthy and a shape of `items` synced to its up-to-date."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = FaultCluster()
    engine: EngineProcess | None = None
    stuck: StuckEngine | None = None
    try:
        cluster.start_with_items()
        engine = EngineProcess(cluster.url, tmp_path / "data")
        engine.start()
        stuck = StuckEngine(cluster, engine, *synced_to_tip(engine, "items"))
        yield stuck
    finally:
        if stuck is not None:
            cluster.signal(stuck.stopped, signal.SIGCONT)
            if stuck.locker is not None:
                stuck.locker.close()
        if engine is not None and engine.proc is not None and engine.proc.poll() is None:
            engine.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                engine.proc.wait(30)
        cluster.stop()

"""A private Postgres cluster a fault test may stop, restart and break, without touching the
shared test cluster other tests use."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Literal

import psycopg

from tests.sync_engine.tenants.harness import PGBIN, Cluster

StopMode = Literal["fast", "immediate"]


class FaultCluster(Cluster):
    """`Cluster` (wal_level=logical) plus the faults: stop fast or immediate, start again."""

    def __init__(self, **settings: str) -> None:
        super().__init__("logical")
        if settings:
            with open(self.dir / "data" / "postgresql.conf", "a") as f:
                f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def stop_server(self, mode: StopMode) -> None:
        """`pg_ctl stop -m fast` (clean shutdown) or `-m immediate` (as a crash: no
        checkpoint, slots' confirmed positions back to the last one on restart)."""
        assert PGBIN is not None
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)
            return cur.fetchall() if cur.description else []

    def pids(self) -> list[int]:
        """The postmaster's pid, then its children's (backends, walsenders, workers)."""
        postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def signal(self, pids: list[int], sig: signal.Signals) -> None:
        """Send `sig` to each of `pids` that still runs."""
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

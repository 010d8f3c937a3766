"""Fixtures for registered-source tests: extra databases, clusters and in-process engines."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sources_harness import MultiEngine

PGBIN = next(
    (d for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
     if (d / "initdb").exists()),
    None,
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class Cluster:
    """A private Postgres cluster whose settings a test may change and restart."""

    def __init__(self, wal_level: str) -> None:
        if PGBIN is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="shapegate-src-pg-"))
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        root = os.getuid() == 0
        if root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self._run(str(PGBIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        with open(self.dir / "data" / "postgresql.conf", "a") as f:
            f.write(f"\nwal_level = {wal_level}\nfsync = off\nmax_replication_slots = 10\n")

    def _run(self, *cmd: str) -> None:
        if os.getuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1"
                  f" -c unix_socket_directories={self.dir}", "start")  # fmt: skip

    def restart(self) -> None:
        self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                  str(self.dir / "server.log"), "-m", "fast", "-w", "-t", "30",
                  "restart")  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                      "-w", "stop")  # fmt: skip
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, query: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)  # type: ignore[arg-type]


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

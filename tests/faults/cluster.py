"""A private Postgres cluster a fault test may stop, restart and break, without touching the
shared test cluster other tests use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Literal

import psycopg

from tests.support.waiting import wait_until
from tests.sync_engine.tenants.harness import PGBIN, Cluster

StopMode = Literal["fast", "immediate"]
#: The `items (id, v)` table of 20 rows the fault tests follow.
ITEMS = (
    "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)",
    "INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g",
)


class FaultCluster(Cluster):
    """`Cluster` (wal_level=logical) plus the faults: stop fast or immediate, start again."""

    def __init__(self, **settings: str) -> None:
        super().__init__("logical")
        if settings:
            with open(self.dir / "data" / "postgresql.conf", "a") as f:
                f.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def stop_server(self, mode: StopMode = "immediate", timeout: float = 60) -> None:
        """`pg_ctl stop -m fast` (clean shutdown) or `-m immediate` (as a crash: no
        checkpoint, slots' confirmed positions back to the last one on restart). Raises
        `CalledProcessError` if Postgres has not stopped within `timeout` seconds (pg_ctl's
        `-t`; it goes on stopping)."""
        assert PGBIN is not None
        self._run(
            str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w",
            "-t", str(round(timeout)), "stop",
        )  # fmt: skip

    def start_with_items(self) -> None:
        """Start it, with the `ITEMS` table (as the `cluster` fixture's)."""
        self.start()
        for q in ITEMS:
            self.query(q)

    def disk_copy(self) -> Path:
        """A copy of its data directory as a disk or VM snapshot takes it (stopped cleanly,
        copied, started again): `put_back` restores it."""
        data, copy = self.dir / "data", self.dir / "copy"
        self.stop_server("fast")
        subprocess.run(["cp", "-a", str(data), str(copy)], check=True)
        self.start()
        return copy

    def put_back(self, copy: Path) -> None:
        """Postgres restored from `copy` (`disk_copy`): stopped as in a crash, its data
        directory replaced, started again. Its WAL, and its slots, go back in time."""
        data = self.dir / "data"
        self.stop_server("immediate")
        shutil.rmtree(data)
        copy.rename(data)
        self.start()

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


class PartitionedCluster(FaultCluster):
    """A `FaultCluster` in a network namespace of its own, reached over a veth pair: the
    link can be cut (`partition`) so that packets are dropped silently, nothing closed or
    refused, as in a network partition, then restored (`heal`). Needs root."""

    def __init__(self, **settings: str) -> None:
        super().__init__(**settings)
        # A /30 of its own, as unique as the port (two test processes at once: `port % 250`
        # gave two clusters one subnet): 10.(228-231).<8 bits>.<6 bits>*4, the port's bits.
        base = f"10.{228 + (self.port >> 14)}.{(self.port >> 6) & 255}"
        self.ns, self.host_if, self.ns_if = (
            f"sgf{self.port}",
            f"sgfa{self.port}",
            f"sgfb{self.port}",
        )
        last = self.port & 63
        self.host_ip, self.ns_ip = f"{base}.{last * 4 + 1}", f"{base}.{last * 4 + 2}"
        self.url = f"postgresql://postgres@{self.ns_ip}:{self.port}/postgres"
        with open(self.dir / "data" / "pg_hba.conf", "a") as f:
            f.write(f"host all all {self.host_ip}/32 trust\n")
        ip = ("ip", "netns", "exec", self.ns, "ip")
        for cmd in (
            ("ip", "netns", "add", self.ns),
            ("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("ip", "link", "set", self.ns_if, "netns", self.ns),
            ("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if),
            ("ip", "link", "set", self.host_if, "up"),
            (*ip, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
            (*ip, "link", "set", self.ns_if, "up"),
            (*ip, "link", "set", "lo", "up"),
        ):
            subprocess.run(cmd, check=True, capture_output=True)

    def start(self) -> None:
        assert PGBIN is not None
        subprocess.run(
            ("ip", "netns", "exec", self.ns, "runuser", "-u", "postgres", "--",
             str(PGBIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
             str(self.dir / "server.log"), "-w", "-t", "30", "-o",
             f"-p {self.port} -c listen_addresses={self.ns_ip}"
             f" -c unix_socket_directories={self.dir}", "start"),
            check=True, capture_output=True,
        )  # fmt: skip

    def _link(self, state: str) -> None:
        subprocess.run(
            ("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, state),
            check=True,
            capture_output=True,
        )

    def partition(self) -> None:
        """Cut the link: every packet either way is dropped, no error to anyone."""
        self._link("down")

    def heal(self) -> None:
        self._link("up")

    def stop(self) -> None:
        try:
            self.heal()
        except subprocess.CalledProcessError:
            pass
        super().stop()
        subprocess.run(("ip", "link", "del", self.host_if), check=False, capture_output=True)
        subprocess.run(("ip", "netns", "del", self.ns), check=False, capture_output=True)


def hold_slot(url: str, slot: str, publication: str) -> psycopg.Connection[Any]:
    """A replication connection streaming `slot` (Postgres says it is active for that
    walsender's PID), so an engine's own stream cannot start: a second engine on the same
    database in a rolling deploy, or a stuck walsender. It reads and confirms nothing; close
    it to let go of the slot."""
    conn = psycopg.connect(url, replication="database", autocommit=True)
    command = (
        f"START_REPLICATION SLOT {slot} LOGICAL 0/0"
        f" (proto_version '1', publication_names '{publication}')"
    )
    conn.pgconn.send_query(command.encode())
    return conn


def until_slot_found_held(engine: Any) -> None:
    """Block until `engine` (an `EngineProcess`, spawned while `hold_slot` holds its slot)
    logs that its slot is active for another PID: it has loaded and cannot stream."""
    wait_until(
        lambda: "is active for PID" in engine.log_tail(100_000),
        timeout=60,
        message="the engine finds its slot held",
    )

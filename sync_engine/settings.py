"""Engine settings: one frozen object built in `__main__` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: Path = Path("./data")
    secret: str | None = field(default=None, repr=False)
    # Serve the database without a secret on an address other hosts can reach (--insecure):
    # refused otherwise (`__main__.check_secret`), as Electric refuses to start without
    # ELECTRIC_SECRET unless ELECTRIC_INSECURE=true.
    insecure: bool = False
    long_poll_timeout: float = 20.0
    sse_timeout: float = 60.0
    sse_keepalive: float = 21.0
    max_age: int = 60
    stale_age: int = 300
    chunk_bytes: int = 10 * 1024 * 1024
    allow_delete: bool = False
    fsync: bool = True
    max_shapes: int | None = None
    # Bytes of the data directory's file system that snapshots leave free, for the shape
    # logs' live changes (`Source.snapshot_room`). None: the smaller of 64 MiB and 5% of the
    # file system; 0: none.
    disk_reserve: int | None = None
    # Bytes a shape's transaction log may hold before the shape is rotated (its clients
    # refetch a fresh snapshot): logs are never compacted. None (the default): the larger
    # of 64 MiB and 4 times the shape's snapshot bytes (`Replicator.log_limit`); 0: none.
    max_log_bytes: int | None = None
    # Bytes all subset answers may hold at once, in memory or spooled to the data dir's
    # disk, from their first row until sent (`snapshot.subset.set_spool_budget`): past it a
    # subset is a 503 `subset_budget`, one answer over it alone a 400. One per process.
    subset_spool_budget: int = 1 << 30
    max_concurrent_snapshots: int = 8
    out_of_bounds_wait: float = 10.0
    schema_check_interval: float = 10.0
    # Seconds the replication stream may hear nothing from Postgres (not even an answer to
    # a keepalive it asked for) before it counts as lost and is reconnected.
    replication_timeout: float = 30.0
    # Seconds a catalog query (a table look-up, a shape's "is the table still there") may
    # take, and a new connection may take to answer `SELECT 1` (asked when a snapshot is
    # slow to come), before the request gets a 503: a Postgres stopped or behind a network
    # partition answers nothing and closes nothing.
    catalog_timeout: float = 5.0
    probe_timeout: float = 5.0
    # Seconds a request waits for its snapshot's first rows before it asks (every as many)
    # whether Postgres answers at all (`probe_timeout`): 503 if not, else it waits on.
    snapshot_quiet: float = 2.0
    # Seconds a snapshot query with a where clause, or a subset query, may run in Postgres
    # (its statement_timeout; 0: none): a where clause cheap to send can cost seconds per
    # row, and up to `max_initial_syncs` of them would keep as many backends busy.
    snapshot_timeout: float = 300.0
    # Seconds between looks at the partitions and inheritance children of shaped tables
    # (a shape whose table's family changed is retired: its clients refetch).
    family_check_interval: float = 2.0
    # Names the database-mode slot and publication; slot names are per Postgres cluster.
    replication_stream_id: str = "default"
    # Registered sources (see sync_engine/tenants): limits per source, and the admin listener.
    max_initial_syncs: int | None = 32
    admin_host: str = "127.0.0.1"
    admin_port: int = 3100
    admin_token: str | None = field(default=None, repr=False)
    public_url: str | None = None

    @property
    def engine_url(self) -> str:
        """The URL clients and proxies use to reach /v1/shape (shown in the dashboard)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

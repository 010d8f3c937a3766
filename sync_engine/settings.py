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
    long_poll_timeout: float = 20.0
    sse_timeout: float = 60.0
    sse_keepalive: float = 21.0
    max_age: int = 60
    stale_age: int = 300
    chunk_bytes: int = 10 * 1024 * 1024
    allow_delete: bool = False
    fsync: bool = True
    max_shapes: int | None = None
    max_concurrent_snapshots: int = 8
    out_of_bounds_wait: float = 10.0
    schema_check_interval: float = 10.0

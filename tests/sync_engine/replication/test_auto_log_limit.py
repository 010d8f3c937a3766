"""The default log limit: a shape is rotated once its log passes the larger of 64 MiB and 4
times its snapshot's bytes (`Replicator.log_limit`); `--max-log-bytes N` is a fixed limit,
`0` none.

Without a limit by default a shape's log grew for as long as its table changed, and a new
client downloaded all of it (soak: 1.7 MB after 67 minutes for a 20-row shape). Rotated,
its clients get 409 must-refetch with the new handle and end with exactly Postgres's rows.

Real path: Postgres, the replicator, the HTTP API in-process, a client that follows like the
real one (`Follower`: counts anything lost or repeated) and the real npm client. The
relative tests use a small floor (`SourceConfig.auto_log_floor`, a test's, not a setting);
one test runs the default floor (64 MiB) with ~80 MB of changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import psycopg
import pytest

from sync_engine.__main__ import build_parser, settings_from_args
from sync_engine.app import build_app
from sync_engine.replication.replicator import AUTO_LOG_FLOOR, Replicator
from sync_engine.shapes.shape import Shape
from sync_engine.source import Source, SourceConfig
from sync_engine.tenants.manager import SourceManager
from sync_engine.tenants.store import SourceRecord
from tests.faults.test_damaged_files import NpmClient, _npm_view
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS

ROWS = 40
#: Below the snapshot's 4 times (~330 KB for 40 rows of 2 KB): the relative limit rules.
FLOOR = 100_000
ROUNDS = 9

MiB = 1 << 20


def _shape(snapshot_bytes: int, complete: bool = True) -> Shape:
    log = SimpleNamespace(snapshot_bytes=snapshot_bytes, snapshot_complete=complete)
    return SimpleNamespace(log=log)  # type: ignore[return-value]


def _replicator(max_log_bytes: int | None, floor: int = AUTO_LOG_FLOOR) -> Replicator:
    rep = Replicator.__new__(Replicator)
    rep.max_log_bytes, rep.auto_log_floor = max_log_bytes, floor
    return rep


def test_the_default_is_relative_to_the_snapshot_and_0_is_no_limit(tmp_path: Path) -> None:
    """The engine's default settings, and a registered source's, reach the replicator as
    the relative limit (64 MiB at least); `--max-log-bytes` (or its env) fixes it, 0 lifts
    it."""
    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["--database-url", "postgresql://x/y"]))
    assert settings.max_log_bytes is None
    rec = SourceRecord(source_id="s1", name="one", database_url="postgresql://x/y", secret_hash="h")
    config = SourceManager(replace(settings, data_dir=tmp_path))._config(rec)
    assert config.max_log_bytes is None and config.auto_log_floor == 64 * MiB
    auto = _replicator(config.max_log_bytes, config.auto_log_floor)
    assert auto.log_limit(_shape(851)) == 64 * MiB  # (the soak's 20 rows)
    assert auto.log_limit(_shape(16 * MiB)) == 64 * MiB
    assert auto.log_limit(_shape(20 * MiB)) == 80 * MiB  # (a big snapshot: not at 64 MiB)
    assert auto.log_limit(_shape(20 * MiB, complete=False)) is None  # (its size not known)
    for argv, limit in ((["--max-log-bytes", "0"], None), (["--max-log-bytes", "5000"], 5000)):
        args = parser.parse_args(["--database-url", "postgresql://x/y", *argv])
        fixed = _replicator(settings_from_args(args).max_log_bytes)
        assert fixed.log_limit(_shape(20 * MiB)) == limit


async def _engine(aiohttp_client: Any, config: SourceConfig, data: Path) -> tuple[Any, Source]:
    source = Source(config)
    settings = replace(SETTINGS, database_url=config.database_url, data_dir=data)
    client = await aiohttp_client(build_app(settings, {"default": source}))
    await source.ready.wait()
    return client, source


async def test_a_shape_is_rotated_past_4_snapshots_and_its_clients_end_exact(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT i, 0, repeat('a', 2000) FROM generate_series(1, %s) i",
            (ROWS,),
        )
    data = tmp_path / "data"
    config = SourceConfig(
        "default", db_url, data / "sources" / "default", fsync=False, auto_log_floor=FLOOR
    )
    client, source = await _engine(aiohttp_client, config, data)
    base = str(client.make_url("")).rstrip("/")
    follower = Follower(base)
    npm = NpmClient(base, "items")
    stop = asyncio.Event()
    await npm.start()
    kept_past_floor = 0  # rounds after which a shape's log was past the floor, not rotated
    handles = set()
    async with aiohttp.ClientSession() as session:
        tasks = await follow_all(session, [follower], stop)
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                for n in range(1, ROUNDS + 1):
                    conn.execute(f"UPDATE items SET v = v + 1, t = repeat('{chr(97 + n)}', 2000)")
                    want = expected_rows(db_url, None, ("id", "v", "t"))
                    await until_equal([follower], [want], timeout=30)
                    assert follower.handle is not None
                    handles.add(follower.handle)
                    shape = source.shape(follower.handle)
                    assert shape is not None
                    snapshot = shape.log.snapshot_bytes
                    assert FLOOR < 4 * snapshot  # (the relative limit is the larger)
                    assert shape.log.log_bytes <= 4 * snapshot  # (else it was rotated)
                    kept_past_floor += shape.log.log_bytes > FLOOR
            await wait_until_async(lambda: _npm_view(npm.rows) == want, message="npm as SELECT")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await npm.stop()
    assert not [e for e in npm.errors if "409" not in e], npm.errors
    follower.assert_clean()  # (nothing lost, nothing twice across its 409s)
    assert kept_past_floor >= 2  # not rotated at the floor: its snapshot is bigger
    assert follower.resets >= 1 and len(handles) == follower.resets + 1, follower.statuses


async def test_a_log_over_the_default_limit_at_restart_is_rotated_then(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """A log grown with no limit (`--max-log-bytes 0`), the engine restarted with the
    default: the shape is rotated as replication starts. Its snapshot bytes are read back
    from its marker on disk, the same as when it was written."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT i, 0, repeat('a', 2000) FROM generate_series(1, %s) i",
            (ROWS,),
        )
    data = tmp_path / "data"
    config = SourceConfig(
        "default", db_url, data / "sources" / "default", fsync=False, max_log_bytes=0
    )
    client, source = await _engine(aiohttp_client, config, data)
    resp = await client.get("/v1/shape", params={"table": "items", "offset": "-1"})
    assert resp.status == 200
    handle = resp.headers["electric-handle"]
    shape = source.shape(handle)
    assert shape is not None
    snapshot = shape.log.snapshot_bytes
    assert snapshot > ROWS * 2000
    with psycopg.connect(db_url, autocommit=True) as conn:
        for n in range(1, 6):  # (~5 snapshots of changes, no limit)
            conn.execute(f"UPDATE items SET v = v + 1, t = repeat('{chr(97 + n)}', 2000)")
    await wait_until_async(lambda: shape.log.log_bytes > 4 * snapshot, message="log grown")
    assert source.shape(handle) is shape
    await client.close()
    # Restarted with the default (no rotation yet: its limit is not passed by an append).
    again, unlimited = await _engine(aiohttp_client, config, data)
    loaded = unlimited.shape(handle)
    assert loaded is not None and loaded.log.snapshot_bytes == snapshot
    await again.close()
    auto = replace(config, max_log_bytes=None, auto_log_floor=FLOOR)
    third, restarted = await _engine(aiohttp_client, auto, data)
    await wait_until_async(lambda: restarted.shape(handle) is None, message="rotated at start")
    resp = await third.get(
        "/v1/shape", params={"table": "items", "handle": handle, "offset": "0_0"}
    )
    assert resp.status == 409
    resp = await third.get("/v1/shape", params={"table": "items", "offset": "-1"})
    assert resp.status == 200 and resp.headers["electric-handle"] != handle
    with psycopg.connect(db_url) as conn:
        want = {str(i): str(v) for i, v in conn.execute("SELECT id, v FROM items")}
    assert {m["key"].split("/")[-1].strip('"'): str(m["value"]["v"]) for m in await resp.json()
            if "key" in m} == want  # fmt: skip


@pytest.mark.timeout(180)
async def test_the_default_floor_rotates_a_small_shape_past_64_mib(
    aiohttp_client: Any, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default itself, with real arithmetic: a 20-row shape (a snapshot of ~1 KB) keeps
    its log through 60 MB of changes and is rotated by the 4th 20 MB transaction (80 MB >
    64 MiB); its client ends with Postgres's rows."""
    caplog.set_level("INFO")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, t text NOT NULL)")
        conn.execute("INSERT INTO items SELECT i, 0, 'a' FROM generate_series(1, 20) i")
    data = tmp_path / "data"
    config = SourceConfig("default", db_url, data / "sources" / "default", fsync=False)
    client, source = await _engine(aiohttp_client, config, data)
    resp = await client.get("/v1/shape", params={"table": "items", "offset": "-1"})
    assert resp.status == 200
    first = resp.headers["electric-handle"]
    shape = source.shape(first)
    assert shape is not None and shape.log.snapshot_bytes < 4096
    follower = Follower(str(client.make_url("")).rstrip("/"))
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        tasks = await follow_all(session, [follower], stop)
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                for n in range(1, 5):  # (20 rows of 1 MB each)
                    conn.execute(
                        f"UPDATE items SET v = v + 1, t = repeat('{chr(97 + n)}', 1000000)"
                    )
                    want = expected_rows(db_url, None, ("id", "v", "t"))
                    await until_equal([follower], [want], timeout=60)
                    if n < 4:  # (60 MB of changes: under 64 MiB, kept)
                        assert shape.log.log_bytes > n * 20_000_000
                        assert source.shape(first) is shape
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert shape.log.log_bytes > AUTO_LOG_FLOOR and source.shape(first) is None
    follower.assert_clean()
    # Said as the default, which no flag set (chaos, soak 17:10); counted as a log limit's.
    said = [r.getMessage() for r in caplog.records if first in r.getMessage()]
    assert any("the default log limit" in m for m in said), said
    assert not any("--max-log-bytes (" in m or "over --max-log-bytes" in m for m in said), said
    assert source.registry.retired["max_log_bytes"] == 1
    resp = await client.get(
        "/v1/shape", params={"table": "items", "handle": first, "offset": "0_0"}
    )
    assert resp.status == 409

"""`--max-log-bytes`: a shape whose log grows past it is rotated, and its client ends with
exactly Postgres's rows.

Shape logs are never compacted: a table rewritten again and again (or huge rows) grew its
shapes' logs until the disk was full. With the limit, the shape is rotated once its
transaction log passes it: its client gets the normal 409 must-refetch and a fresh snapshot
(nothing lost, nothing served twice), and the old files are deleted.

Real path: Postgres, the replicator, the HTTP API in-process, a client that follows like the
real one (`Follower`: 409 -> start again from -1; counts anything lost or repeated).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from sync_engine.app import build_app
from sync_engine.source import Source, SourceConfig
from tests.faults.test_damaged_files import NpmClient, _npm_view
from tests.support.follower import Follower, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS

ROWS = 40
#: Each round rewrites every row's 2 KB `t` (~86 KB of log): the limit is passed by the
#: third round of a shape.
LIMIT = 250_000
ROUNDS = 8


async def test_a_shape_whose_log_passes_max_log_bytes_is_rotated_and_its_client_ends_exact(
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
        "default", db_url, data / "sources" / "default", fsync=False, max_log_bytes=LIMIT
    )
    source = Source(config)
    settings = replace(SETTINGS, database_url=db_url, data_dir=data)
    client = await aiohttp_client(build_app(settings, {"default": source}))
    await source.ready.wait()
    base = str(client.make_url("")).rstrip("/")
    follower = Follower(base)
    npm = NpmClient(base, "items")  # (the real client too: its 409s, its refetches)
    stop = asyncio.Event()
    await npm.start()
    async with aiohttp.ClientSession() as session:
        tasks = await follow_all(session, [follower], stop)
        first = follower.handle
        assert first is not None
        shapes = data / "sources" / "default" / "shapes"
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                for n in range(1, ROUNDS + 1):  # (each round: every v + 1, a new t)
                    conn.execute(f"UPDATE items SET v = v + 1, t = repeat('{chr(97 + n)}', 2000)")
                    want = expected_rows(db_url, None, ("id", "v", "t"))
                    await until_equal([follower], [want], timeout=30)
            await wait_until_async(lambda: _npm_view(npm.rows) == want, message="npm as SELECT")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await npm.stop()
    assert not [e for e in npm.errors if "409" not in e], npm.errors
    follower.assert_clean()
    assert follower.resets == ROUNDS // 3, follower.statuses  # rotated after rounds 3 and 6
    handle = follower.handle
    assert handle is not None and handle != first
    current = source.shape(handle)
    assert current is not None and 0 < current.log.log_bytes <= LIMIT
    # The rotated shapes' files are deleted (the current one's stay).
    await source.registry.store.settle()
    await wait_until_async(
        lambda: {p.name.split(".")[0] for p in shapes.glob("*.log")} <= {handle},
        message="old logs deleted",
    )
    # A limit set lower while the engine is down (to free a full disk): the shape already
    # over it is rotated when replication starts, not at its next transaction.
    await client.close()
    assert list(shapes.glob(f"{handle}.log.*"))  # (kept, to be loaded)
    smaller = Source(replace(config, max_log_bytes=current.log.log_bytes - 1))
    again = await aiohttp_client(build_app(settings, {"default": smaller}))
    await smaller.ready.wait()
    await wait_until_async(lambda: smaller.shape(handle) is None, message="rotated at start")
    await wait_until_async(lambda: not list(shapes.glob(f"{handle}.*")), message="deleted")
    resp = await again.get(
        "/v1/shape", params={"table": "items", "handle": handle, "offset": "0_0"}
    )
    assert resp.status == 409

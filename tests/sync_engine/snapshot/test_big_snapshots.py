"""Whole-table snapshots (many rows per COPY line, chunks written while the next is read,
big chunks sent from their files), end to end: exact rows, served while written, and
nothing partial after a crash."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg

from sync_engine.app import SOURCES, build_app
from tests.support.engine_process import EngineProcess
from tests.sync_engine.engine_harness import SETTINGS, Engine


async def _engine(aiohttp_client: Any, db_url: str, tmp_path: Path, chunk_bytes: int) -> Engine:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=chunk_bytes
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    return Engine(client, db_url, tmp_path / "data")


async def test_a_whole_table_snapshot_equals_the_row_by_row_one(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """The whole-table query (rows joined per block of pages, binary COPY) against the
    row-by-row one a where clause gets: the same entries for values full of what COPY's
    text format escapes, the separators the bulk rows use, JSON to escape, NULLs; for a
    text key, column names `row_to_json` must render, and a parent of an inheritance
    child (its rows included, as a plain SELECT includes them)."""
    engine = await _engine(aiohttp_client, db_url, tmp_path, chunk_bytes=20_000)
    engine.sql(
        "CREATE TABLE odd (id int PRIMARY KEY, t text, j jsonb, b bool, c char(3), x numeric)"
    )
    engine.sql(
        """INSERT INTO odd SELECT g,
             CASE WHEN g % 7 = 0 THEN NULL
                  ELSE 'a\\b "q" ' || chr(1) || chr(30) || chr(31) || E'\\t\\n\\r' || 'é€' || g END,
             CASE WHEN g % 5 = 0 THEN NULL
                  ELSE jsonb_build_object('k', g, 's', 'x\\y "z"', 'a', jsonb_build_array(g, null))
             END,
             g % 2 = 0, 'c' || (g % 10), g / 3.0
           FROM generate_series(1, 3000) g"""
    )
    engine.sql('CREATE TABLE "we""ird" ("k\\ey" text PRIMARY KEY, "va""l" int)')
    engine.sql(
        """INSERT INTO "we""ird" SELECT 'k/' || g || '\\', g FROM generate_series(1, 500) g"""
    )
    engine.sql("CREATE TABLE parent (id int PRIMARY KEY, v text)")
    engine.sql("CREATE TABLE child (extra int) INHERITS (parent)")
    engine.sql("INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 300) g")
    engine.sql("INSERT INTO child SELECT g, 'c' || g, g FROM generate_series(1001, 1200) g")
    for table, key, count in (("odd", "id", 3000), ('"we""ird"', '"k\\ey"', 500), ("parent", "id", 500)):  # fmt: skip
        whole, _, _ = await engine.sync(table=table)
        by_row, _, _ = await engine.sync(table=table, where=f"{key} IS NOT NULL")
        assert len(whole) == count
        assert whole == by_row


async def test_a_big_snapshot_is_served_whole_while_it_is_written(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    """The first chunk is answered before the snapshot is complete; following the chunks
    gives every row exactly once, in chunks `0_0`, `0_1`, ... without gaps."""
    engine = await _engine(aiohttp_client, db_url, tmp_path, chunk_bytes=64 * 1024)
    engine.sql("CREATE TABLE items (id bigint PRIMARY KEY, title text, n int)")
    engine.sql(
        "INSERT INTO items SELECT g, 'title ' || g, g % 1000 FROM generate_series(1, 100000) g"
    )
    status, h, body = await engine.get(table="items", offset="-1")
    assert status == 200, body
    handle = h["electric-handle"]
    shape = engine.source.registry.by_handle[handle]
    assert not shape.log.snapshot_complete  # answered while Postgres still sends rows
    keys = [m["key"] for m in body if "key" in m]
    offsets = [h["electric-offset"]]
    while "electric-up-to-date" not in h:
        status, h, body = await engine.get(table="items", offset=offsets[-1], handle=handle)
        assert status == 200, body
        keys += [m["key"] for m in body if "key" in m]
        offsets.append(h["electric-offset"])
    assert len(keys) == 100000 and len(set(keys)) == 100000
    chunks = [o for o in offsets if o.startswith("0_") and o != "0_inf"]
    assert chunks == [f"0_{k}" for k in range(len(chunks))] and len(chunks) > 100


async def _follow(s: aiohttp.ClientSession, url: str) -> tuple[list[dict[str, Any]], str]:
    messages: list[dict[str, Any]] = []
    offset, handle = "-1", None
    while True:
        params = {"table": "items", "offset": offset, **({"handle": handle} if handle else {})}
        async with s.get(url + "/v1/shape", params=params) as r:
            assert r.status == 200, await r.text()
            messages += orjson.loads(await r.read())
            offset, handle = r.headers["electric-offset"], r.headers["electric-handle"]
            if "electric-up-to-date" in r.headers:
                return messages, handle


async def test_an_engine_killed_mid_snapshot_serves_nothing_partial_after_restart(
    db_url: str, tmp_path: Path
) -> None:
    """SIGKILL while the snapshot is being written (its first chunk already served): after
    a restart the old handle is gone (409, the client refetches) and a new sync has every
    row exactly once with the table's values."""
    data = tmp_path / "data"
    # fsync on (as in production): each chunk is fsynced before it is announced, which also
    # keeps the snapshot running long after its first chunk was served.
    with_args = ("--chunk-bytes", "65536")
    first = EngineProcess(db_url, data, *with_args)
    first.start()
    try:
        rows = 150_000
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, title text, n int)")
            conn.execute(
                "INSERT INTO items SELECT g, 'title ' || g, g %% 1000 "
                "FROM generate_series(1, %s) g",
                (rows,),
            )
        async with aiohttp.ClientSession() as s:
            async with s.get(
                first.url + "/v1/shape", params={"table": "items", "offset": "-1"}
            ) as r:
                assert r.status == 200
                old = r.headers["electric-handle"]
                await r.read()
        first.kill()
    finally:
        first.stop()
    shapes = data / "sources" / "default" / "shapes"
    # killed mid-snapshot indeed: chunks written, no marker (it would be in a pack)
    assert list(shapes.glob(f"{old}.snapshot.*")) and not list(shapes.glob("*.pack"))

    second = EngineProcess(db_url, data, *with_args)
    second.start()
    try:
        async with aiohttp.ClientSession() as s:
            params = {"table": "items", "offset": "0_0", "handle": old}
            async with s.get(second.url + "/v1/shape", params=params) as r:
                assert r.status == 409, await r.text()
            messages, handle = await _follow(s, second.url)
    finally:
        second.stop()
    assert handle != old
    values = {m["key"]: m["value"] for m in messages if "key" in m}
    assert len(values) == rows == len([m for m in messages if "key" in m])
    assert values['"public"."items"/"123456"'] == {
        "id": "123456",
        "title": "title 123456",
        "n": "456",
    }

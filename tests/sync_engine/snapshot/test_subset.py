"""Subset queries (`subset__*`) that Postgres cancels: the client is told why.

The subset pool's sessions run under `statement_timeout = --snapshot-timeout`. A subset
whose where clause costs too much per row is cancelled there (SQLSTATE 57014, which psycopg
raises as an OperationalError); the engine answered it 503 `database_unreachable`,
"Database is unreachable", though the database had answered. Now it is the 503
`snapshot_timeout` a shape snapshot cancelled the same way gets (Electric's answer to a slow
snapshot query), with Retry-After.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.shapes.definition import ShapeParams, SubsetParams
from sync_engine.snapshot.subset import build_subset_query, run_subset
from tests.sync_engine.engine_harness import SETTINGS, Engine


def _concat(leaves: int) -> str:
    if leaves == 1:
        return "name"
    return f"({_concat(leaves // 2)}||{_concat(leaves - leaves // 2)})"


#: Megabytes of copying per row of 2,000 characters: far beyond 0.2 s over 300 rows.
COSTLY = f"length({_concat(500)}) > 0"


async def test_a_subset_cancelled_by_its_statement_timeout_is_a_snapshot_timeout(
    aiohttp_client: Any, db_url: str, tmp_path: Path
) -> None:
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", snapshot_timeout=0.2
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
    engine.sql("INSERT INTO items SELECT g, repeat('a', 2000) FROM generate_series(1, 300) g")
    rows, handle, offset = await engine.sync(table="items")  # (not limited: no where)
    assert len(rows) == 300
    status, headers, body = await engine.get(
        table="items", offset=offset, handle=handle, subset__where=COSTLY
    )
    assert status == 503, body
    assert body["code"] == "snapshot_timeout", body
    assert "took too long" in body["message"], body
    assert int(headers["retry-after"]) >= 1
    # a cheap subset of the same shape is answered
    status, _headers, body = await engine.get(
        table="items", offset=offset, handle=handle, subset__where="id <= 2"
    )
    assert status == 200, body
    assert sorted(m["value"]["id"] for m in body["data"]) == ["1", "2"]

    # A client gone while its subset query runs abandons the query (its socket shut): the
    # request ends at once, not when the query would (`serve_subset` watches the client).
    source = client.app[SOURCES]["default"]
    shape = await source.resolve(ShapeParams(table="items"))
    subset = build_subset_query(shape.table.columns, SubsetParams(where=COSTLY))
    gone = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, gone.set_result, None)
    with pytest.raises(ConnectionResetError):  # (not the statement timeout's 503)
        await run_subset(source, shape, subset, gone)

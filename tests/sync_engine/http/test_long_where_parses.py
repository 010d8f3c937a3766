"""Long where clauses (OR storms) through the HTTP API: answered right up to the size limit,
refused with a 400 naming it past it, parsed off the event loop (another shape's live change
is delivered meanwhile), and at most `parse_thread.MAX_WAITING` of them at once: one more is
a 503 with Retry-After naming the limit, not one more second of the loop's GIL for every
client (`sync_engine/shapes/parse_thread.py`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import psycopg
import pytest

from sync_engine.shapes import parse_thread
from sync_engine.shapes.where import MAX_WHERE_SIZE
from sync_engine.snapshot import subset
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

ROWS = 60


def or_storm(ids: range, size: int | None = None) -> str:
    """`id = a OR id = b OR …`, padded with `OR id = -1` terms to `size` characters if given."""
    where = " OR ".join(f"id = {i}" for i in ids)
    if size is not None:
        pad = " OR id = -1"
        where += pad * ((size - len(where)) // len(pad))
        where += " " * (size - len(where))
    return where


async def post_subset(engine: Engine, where: str) -> tuple[int, dict[str, str], Any]:
    resp = await engine.client.post(
        "/v1/shape", params={"table": "items", "offset": "-1"}, json={"where": where}
    )
    raw = await resp.read()
    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, orjson.loads(raw)


def ids_of(body: dict[str, Any]) -> list[int]:
    return sorted(int(m["value"]["id"]) for m in body["data"])


@pytest.fixture
def tables(engine: Engine) -> Engine:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, n int)")
    engine.sql(f"INSERT INTO items SELECT g, g FROM generate_series(1, {ROWS}) g")
    engine.sql("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    return engine


async def test_an_or_storm_up_to_the_size_limit_and_past_it(tables: Engine) -> None:
    engine = tables
    # just under the limit: ~5,000 terms, the rows Postgres returns for it
    where = or_storm(range(0, ROWS * 2, 3), MAX_WHERE_SIZE)
    assert len(where) == MAX_WHERE_SIZE and where.count(" OR ") > 5000
    status, _, body = await post_subset(engine, where)
    assert status == 200, body
    expected = [r[0] for r in engine.sql(f"SELECT id FROM items WHERE {where} ORDER BY id")]
    assert ids_of(body) == expected and len(expected) == ROWS // 3
    # one character more: a 400 naming the limit
    status, _, body = await post_subset(engine, where + " ")
    assert status == 400, body
    (message,) = body["errors"]["subset"]["where"]
    assert str(MAX_WHERE_SIZE) in message and "maximum size" in message, message


async def test_long_parses_are_bounded_and_leave_the_loop_free(
    tables: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tables
    monkeypatch.setattr(parse_thread, "MAX_WAITING", 2)
    # A long subset parse, held in the parse thread until `release` (a parse that long,
    # deterministically): `running` says one has started there. Short ones (parsed on the
    # loop, with the templates) go through.
    running, release = threading.Event(), threading.Event()
    build = subset.build_subset_query

    def held(*args: Any, templates: bool = True) -> Any:
        if not templates:
            running.set()
            release.wait(60)
        return build(*args, templates=templates)

    monkeypatch.setattr(subset, "build_subset_query", held)
    rows, handle, offset = await engine.sync(table="notes")
    where = or_storm(range(2, ROWS + 1, 2), 20_000)
    try:
        first = asyncio.create_task(post_subset(engine, where))
        second = asyncio.create_task(post_subset(engine, where))
        await wait_until_async(running.is_set, message="the first parse running")
        await wait_until_async(lambda: parse_thread.waiting() == 2, message="two parses")

        # a third long one is refused while two are in the thread (running or queued) ...
        status, h, body = await post_subset(engine, where)
        assert status == 503, body
        assert h["retry-after"] == str(parse_thread.RETRY_AFTER)
        assert "the limit is 2" in body["message"], body
        # ... a short one is not (parsed on the loop) ...
        status, _, body = await post_subset(engine, "id = 7")
        assert status == 200 and ids_of(body) == [7], body
        # ... and another shape's live change is delivered while the long parse runs
        engine.sql("INSERT INTO notes VALUES (1, 'during the parse')")
        await engine.follow_live(rows, handle, offset, "1", table="notes")
        assert [r["body"] for r in rows.values()] == ["during the parse"]
        assert not first.done() and not second.done()
    finally:
        release.set()
    expected = list(range(2, ROWS + 1, 2))
    for task in (first, second):
        status, _, body = await task
        assert status == 200 and ids_of(body) == expected, body
    await wait_until_async(lambda: parse_thread.waiting() == 0, message="the parses counted out")
    # (a third is served once the two are done)
    status, _, body = await post_subset(engine, where)
    assert status == 200 and ids_of(body) == expected, body


async def test_a_subset_query_runs_without_jit(
    tables: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long where has a high estimated cost, and Postgres JIT-compiled it with LLVM before
    the first row: 5,000 ORs on 10,000 rows took 6.8 s, 4.7 s of it compiling (0.8 s
    without). The subset's query runs with `jit` off, as a shape's snapshot does: the
    setting is read in the query's own transaction, just before it runs."""
    engine = tables
    seen: list[str] = []
    stream = psycopg.Cursor.stream

    def recorded(self: psycopg.Cursor[Any], *args: Any, **kwargs: Any) -> Any:
        row = self.connection.execute("SHOW jit").fetchone()
        seen.append(row[0] if row else "?")
        return stream(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "stream", recorded)
    where = or_storm(range(2, ROWS + 1, 2), 20_000)
    status, _, body = await post_subset(engine, where)
    assert status == 200 and ids_of(body) == list(range(2, ROWS + 1, 2)), body
    status, _, body = await post_subset(engine, "id = 7")
    assert status == 200 and ids_of(body) == [7], body
    assert seen == ["off", "off"], seen

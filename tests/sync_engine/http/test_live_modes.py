"""Live modes and the side doors of `/v1/shape`, checked the way a client sees them.

SSE streams, `log=changes_only`, subset snapshots (GET and POST), DELETE, OPTIONS/CORS,
HEAD, `/v1/health`, clients that hang up mid-request, and many clients on one shape.
The engine fixture runs with long-poll 2 s, SSE 4 s and keep-alives every 1 s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from prometheus_client.parser import text_string_to_metric_families

from sync_engine.app import SOURCES, build_app
from sync_engine.shapes.where import clause
from sync_engine.snapshot import subset
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine, apply

KEY = '"public"."items"/"{}"'.format
REQUIRED_EXPOSED = {
    "electric-offset", "electric-handle", "electric-schema", "electric-cursor",
    "electric-up-to-date", "electric-has-data",
}  # fmt: skip


def make_items(engine: Engine, n: int = 3) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    for i in range(1, n + 1):
        engine.sql("INSERT INTO items VALUES (%s, %s, %s)", (i, f"t{i}", i * 10))


def lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def exposed(headers: dict[str, str]) -> set[str]:
    return {x.strip().lower() for x in headers.get("access-control-expose-headers", "").split(",")}


async def request(
    engine: Engine, method: str = "GET", path: str = "/v1/shape", **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    resp = await engine.client.request(method, path, **kw)
    raw = await resp.read()
    return resp.status, lower(resp.headers), raw


# -- SSE --------------------------------------------------------------------------------------


class SSE:
    """Reads a text/event-stream response frame by frame."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.buf = b""
        self.raw = b""

    async def frame(self, timeout: float) -> bytes | None:
        """The next frame without its blank-line terminator; None at the end of the stream."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            chunk = await asyncio.wait_for(
                self.resp.content.readany(), max(0.01, deadline - time.monotonic())
            )
            if not chunk:
                assert self.buf == b"", f"stream ended inside a frame: {self.buf!r}"
                return None
            self.buf += chunk
            self.raw += chunk
        frame, _, self.buf = self.buf.partition(b"\n\n")
        return frame

    async def messages_until_up_to_date(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Data messages up to and including the next up-to-date, skipping keep-alives."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.frame(deadline - time.monotonic())
            assert frame is not None, f"stream ended before up-to-date: {out}"
            if frame.startswith(b":"):
                continue
            assert frame.startswith(b"data: "), frame
            assert b"\n" not in frame, f"one data line per event: {frame!r}"
            msg = orjson.loads(frame[len(b"data: ") :])
            out.append(msg)
            if msg.get("headers", {}).get("control") == "up-to-date":
                return out

    async def rest(self, timeout: float) -> list[bytes]:
        """All remaining frames until the server ends the stream."""
        frames = []
        deadline = time.monotonic() + timeout
        while (frame := await self.frame(deadline - time.monotonic())) is not None:
            frames.append(frame)
        return frames


async def open_sse(engine: Engine, flags: dict[str, str], **params: Any) -> SSE:
    resp = await engine.client.get(
        "/v1/shape",
        params={"live": "true", **flags, **{k: str(v) for k, v in params.items()}},
        headers={"accept": "text/event-stream"},
    )
    return SSE(resp)


SSE_FLAGS = [
    pytest.param({"live_sse": "true"}, id="live_sse"),
    pytest.param({"experimental_live_sse": "true"}, id="experimental_live_sse"),
    pytest.param({"live_sse": "true", "experimental_live_sse": "true"}, id="both-like-the-client"),
]


@pytest.mark.parametrize("flags", SSE_FLAGS)
async def test_sse_streams_a_change_then_up_to_date(engine: Engine, flags: dict[str, str]) -> None:
    make_items(engine)
    rows, handle, offset = await engine.sync(table="items")
    sse = await open_sse(engine, flags, table="items", handle=handle, offset=offset, cursor="")
    h = lower(sse.resp.headers)
    assert sse.resp.status == 200
    assert h["content-type"].split(";")[0] == "text/event-stream"
    assert h["cache-control"] == "public, max-age=3"  # sse_timeout 4 s - 1
    assert h["electric-handle"] == handle
    assert h["electric-offset"] == offset
    assert h["electric-cursor"].isdigit()
    assert REQUIRED_EXPOSED <= exposed(h)
    assert "electric-schema" not in h

    await engine.until_parked()
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")
    msgs = await sse.messages_until_up_to_date()
    assert len(msgs) == 2, msgs
    change, ctl = msgs
    assert change["key"] == KEY(4)
    assert change["value"] == {"id": "4", "title": "t4", "n": "40"}
    assert change["headers"]["operation"] == "insert"
    assert change["headers"]["lsn"].isdigit()
    assert ctl == {
        "headers": {"control": "up-to-date", "global_last_seen_lsn": change["headers"]["lsn"]}
    }
    # the frames are exactly `data: <json>\n\n`
    assert sse.raw.count(b"data: ") == 2 and sse.raw.endswith(b"\n\n")

    # a second change on the same stream
    engine.sql("UPDATE items SET title = 'changed' WHERE id = 1")
    msgs2 = await sse.messages_until_up_to_date()
    assert [m["headers"].get("operation") for m in msgs2] == ["update", None]
    assert msgs2[0]["value"] == {"id": "1", "title": "changed"}
    assert int(msgs2[-1]["headers"]["global_last_seen_lsn"]) > int(change["headers"]["lsn"])
    apply(rows, msgs + msgs2)
    assert rows[KEY(1)]["title"] == "changed" and rows[KEY(4)]["n"] == "40"
    sse.resp.close()


async def test_sse_opened_behind_the_tip_names_its_own_offset(engine: Engine) -> None:
    """The client adopts an SSE answer's `electric-offset` when the stream opens, before any
    event; a stream cut before its first up-to-date (`forceDisconnectAndRefresh`, a dropped
    connection) resumes from there. Naming the log's end would skip the changes the cut
    stream carried but the client never processed: they must come again."""
    make_items(engine)
    rows, handle, offset = await engine.sync(table="items")
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")
    await wait_until_async(
        lambda: _has_change(engine, handle, offset), message="the insert in the shape log"
    )
    flags = {"live_sse": "true", "experimental_live_sse": "true"}
    sse = await open_sse(engine, flags, table="items", handle=handle, offset=offset)
    h = lower(sse.resp.headers)
    assert h["electric-offset"] == offset
    # Where the log ended (for the proxy's fan-out): the ETag's third field.
    assert h["etag"].strip('"').split(":")[2] != offset
    sse.resp.close()  # cut before anything was processed
    again = await open_sse(engine, flags, table="items", handle=handle, offset=h["electric-offset"])
    msgs = await again.messages_until_up_to_date()
    again.resp.close()
    assert [m["key"] for m in msgs if "key" in m] == [KEY(4)]


@pytest.fixture
async def small_chunks(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """The engine fixture's settings with 2 kB log chunks (a backlog of a few rows spans chunks)."""
    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=2000)
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def _catch_up_responses(engine: Engine, handle: str, offset: str) -> tuple[int, set[str]]:
    """Non-live requests from `offset` to up-to-date: how many, and the keys they carried."""
    keys: set[str] = set()
    for n in range(1, 100):
        status, h, body = await engine.get(table="items", handle=handle, offset=offset)
        assert status == 200, body
        keys |= {m["key"] for m in body if "key" in m}
        if "electric-up-to-date" in h:
            return n, keys
        offset = h["electric-offset"]
    raise AssertionError("never up to date")


async def test_sse_opened_chunks_behind_the_tip_stays_open(small_chunks: Engine) -> None:
    """A client that goes live over SSE a few chunks behind the tip (say, its catch-up came
    from a cache) gets the backlog and then live changes on ONE stream. Ending the stream after
    each chunk gave it one stream of a few ms per chunk, and client 1.5.28 counts a stream under
    1 s as a buffering proxy: after three in a row it falls back to long polling for good."""
    engine = small_chunks
    make_items(engine, 1)
    _, handle, offset = await engine.sync(table="items")
    pad = "x" * 600
    for i in range(2, 14):  # 12 transactions of ~0.7 kB: several 2 kB chunks
        engine.sql("INSERT INTO items VALUES (%s, %s, %s)", (i, pad, i))
    expected = {KEY(i) for i in range(2, 14)}

    async def all_in_the_log() -> bool:
        return (await _catch_up_responses(engine, handle, offset))[1] == expected

    await wait_until_async(all_in_the_log, message="the 12 inserts in the shape log")
    chunks, _ = await _catch_up_responses(engine, handle, offset)
    assert chunks >= 3, f"the backlog spans only {chunks} chunk(s): the test proves nothing"

    flags = {"live_sse": "true", "experimental_live_sse": "true"}
    sse = await open_sse(engine, flags, table="items", handle=handle, offset=offset, cursor="")
    got: set[str] = set()
    try:
        while got != expected:
            msgs = await sse.messages_until_up_to_date()
            got |= {m["key"] for m in msgs if "key" in m}
        assert got == expected
        # still the same stream, now at the tip: a new change arrives on it
        engine.sql("INSERT INTO items VALUES (99, 'live', 99)")
        msgs = await sse.messages_until_up_to_date()
        assert [m["key"] for m in msgs if "key" in m] == [KEY(99)]
    finally:
        sse.resp.close()


async def _has_change(engine: Engine, handle: str, offset: str) -> bool:
    status, _, body = await engine.get(table="items", handle=handle, offset=offset)
    return status == 200 and any("key" in m for m in body)


async def test_sse_keepalives_then_closes_by_itself(engine: Engine) -> None:
    make_items(engine, 1)
    _, handle, offset = await engine.sync(table="items")
    started = time.monotonic()
    sse = await open_sse(engine, {"live_sse": "true"}, table="items", handle=handle, offset=offset)
    first = await sse.frame(2.0)
    assert first is not None and first.startswith(b":"), first  # a comment, not an event
    assert time.monotonic() - started < 2.0
    frames = [first, *await sse.rest(8.0)]
    elapsed = time.monotonic() - started
    assert 3.5 <= elapsed < 6.0, elapsed  # sse_timeout is 4 s
    assert all(f.startswith(b":") for f in frames), frames  # silence: only comments
    assert 2 <= len(frames) <= 4, frames  # one per second of silence


async def test_sse_resume_from_global_last_seen_lsn_redelivers_nothing(engine: Engine) -> None:
    make_items(engine)
    rows, handle, offset = await engine.sync(table="items")
    flags = {"live_sse": "true", "experimental_live_sse": "true"}
    sse = await open_sse(engine, flags, table="items", handle=handle, offset=offset)
    await engine.until_parked()
    # a transaction with several operations: offsets lsn_0, lsn_2, lsn_4
    engine.sql(
        "WITH a AS (INSERT INTO items VALUES (4, 't4', 40)), "
        "b AS (INSERT INTO items VALUES (5, 't5', 50)) "
        "UPDATE items SET n = 11 WHERE id = 1"
    )
    msgs = await sse.messages_until_up_to_date()
    sse.resp.close()
    changes = [m for m in msgs if "key" in m]
    assert sorted(m["key"] for m in changes) == [KEY(1), KEY(4), KEY(5)]
    lsn = msgs[-1]["headers"]["global_last_seen_lsn"]
    assert {m["headers"]["lsn"] for m in changes} == {lsn}
    apply(rows, msgs)

    # the client resumes from `<global_last_seen_lsn>_0`: nothing of that transaction again
    resume = f"{lsn}_0"
    status, h, body = await engine.get(table="items", handle=handle, offset=resume)
    assert status == 200, body
    assert [m for m in body if "key" in m] == []
    assert body[-1]["headers"]["control"] == "up-to-date"

    engine.sql("INSERT INTO items VALUES (6, 't6', 60)")
    # a long-poll from the same offset sees only the new transaction
    status, h, body = await engine.get(table="items", handle=handle, offset=resume, live="true")
    assert [m["key"] for m in body if "key" in m] == [KEY(6)]
    sse2 = await open_sse(engine, flags, table="items", handle=handle, offset=resume)
    assert sse2.resp.status == 200
    msgs2 = await sse2.messages_until_up_to_date()
    assert [m["key"] for m in msgs2 if "key" in m] == [KEY(6)]
    lsn2 = msgs2[-1]["headers"]["global_last_seen_lsn"]
    assert int(lsn2) > int(lsn)
    # data was waiting: it came at once, then the stream goes on at the tip with
    # keep-alives only (nothing of either transaction again: two keep-alives, a second apart)
    for _ in range(2):
        frame = await sse2.frame(8.0)
        assert frame is not None and frame.startswith(b":"), frame
    sse2.resp.close()
    apply(rows, msgs2)
    assert sorted(rows) == [KEY(i) for i in range(1, 7)]
    assert rows[KEY(1)]["n"] == "11"

    # and from the new position: silence, not a replay
    status, h, body = await engine.get(
        table="items", handle=handle, offset=f"{lsn2}_0", live="true"
    )
    assert status == 200
    assert h["electric-has-data"] == "false"
    assert [m for m in body if "key" in m] == []


async def test_sse_bad_requests_stay_plain_json(engine: Engine) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    sse = await open_sse(engine, {"live_sse": "true"}, table="items", handle="nope", offset=offset)
    assert sse.resp.status == 409
    assert await sse.resp.json() == [{"headers": {"control": "must-refetch"}}]
    assert sse.resp.headers["electric-handle"] == handle
    sse = await open_sse(engine, {"live_sse": "true"}, table="nope", handle=handle, offset=offset)
    assert sse.resp.status == 400
    assert sse.resp.headers["content-type"].startswith("application/json")
    assert "table" in (await sse.resp.json())["errors"]


# -- log=changes_only -------------------------------------------------------------------------


async def test_changes_only_skips_the_snapshot(engine: Engine) -> None:
    make_items(engine)
    status, h, body = await engine.get(table="items", offset="-1", log="changes_only")
    assert status == 200
    assert len(body) == 1, body
    end = body[0]["headers"]
    assert end["control"] == "snapshot-end"
    assert end["xmin"].isdigit() and end["xmax"].isdigit()
    assert all(x.isdigit() for x in end["xip_list"])
    assert h["electric-offset"] == "0_0" and "electric-up-to-date" not in h
    assert "electric-schema" in h
    handle = h["electric-handle"]
    _, full_handle, _ = await engine.sync(table="items")
    assert full_handle != handle  # log mode is part of the shape's identity

    status, h, body = await engine.get(
        table="items", offset="0_0", handle=handle, log="changes_only"
    )
    assert status == 200 and "electric-up-to-date" in h
    assert [m for m in body if "key" in m] == []
    offset = h["electric-offset"]

    async def live() -> tuple[int, dict[str, str], Any]:
        return await engine.get(
            table="items", offset=offset, handle=handle, live="true", log="changes_only"
        )

    task = asyncio.create_task(live())
    await engine.until_parked()
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")
    status, h, body = await task
    assert status == 200
    assert [(m["key"], m["headers"]["operation"]) for m in body if "key" in m] == [
        (KEY(4), "insert")
    ]
    offset = h["electric-offset"]
    engine.sql("UPDATE items SET title = 'x' WHERE id = 2")
    status, h, body = await live()
    changes = [m for m in body if "key" in m]
    assert [(m["key"], m["headers"]["operation"]) for m in changes] == [(KEY(2), "update")]
    assert changes[0]["value"] == {"id": "2", "title": "x"}


# -- subset snapshots -------------------------------------------------------------------------


def check_subset(status: int, h: dict[str, str], raw: bytes, handle: str) -> dict[str, Any]:
    assert status == 200, raw
    assert h["cache-control"] == "no-cache"
    assert h["electric-snapshot"] == "true"
    assert h["electric-handle"] == handle
    assert "electric-schema" in h and "electric-offset" in h
    assert REQUIRED_EXPOSED - {"electric-cursor", "electric-up-to-date"} <= exposed(h)
    body = orjson.loads(raw)
    assert set(body) == {"metadata", "data"}, body
    meta = body["metadata"]
    assert set(meta) >= {"xmin", "xmax", "xip_list", "database_lsn", "snapshot_mark"}
    assert isinstance(meta["xmin"], str) and meta["xmin"].isdigit()
    assert isinstance(meta["xmax"], str) and meta["xmax"].isdigit()
    assert int(meta["xmin"]) <= int(meta["xmax"])
    assert isinstance(meta["xip_list"], list)
    assert all(isinstance(x, str) and x.isdigit() for x in meta["xip_list"])
    assert isinstance(meta["database_lsn"], str) and meta["database_lsn"].isdigit()
    assert int(meta["database_lsn"]) > 0
    mark = meta["snapshot_mark"]
    assert isinstance(mark, int) and not isinstance(mark, bool) and 0 <= mark < 2**31
    for row in body["data"]:
        assert row["headers"] == {"operation": "insert", "relation": ["public", "items"],
                                  "snapshot_mark": mark}  # fmt: skip
        assert all(v is None or isinstance(v, str) for v in row["value"].values())
    return body


@pytest.mark.parametrize(
    "params_form",
    [
        pytest.param({"subset__params[1]": "15"}, id="bracket-params"),
        pytest.param({"subset__params": '{"1": "15"}'}, id="json-params"),
    ],
)
async def test_subset_get(engine: Engine, params_form: dict[str, str]) -> None:
    make_items(engine, 5)
    _, handle, offset = await engine.sync(table="items", log="changes_only")
    status, h, raw = await request(engine, params={
        "table": "items", "log": "changes_only", "handle": handle, "offset": offset,
        "subset__where": "n > $1", "subset__order_by": "n DESC", "subset__limit": "2",
        **params_form,
    })  # fmt: skip
    body = check_subset(status, h, raw, handle)
    assert [r["key"] for r in body["data"]] == [KEY(5), KEY(4)]
    assert body["data"][0]["value"] == {"id": "5", "title": "t5", "n": "50"}
    # no params, no limit: every row inside the subset where
    status, h, raw = await request(engine, params={
        "table": "items", "log": "changes_only", "offset": "-1", "subset__where": "id <= 2",
    })  # fmt: skip
    body = check_subset(status, h, raw, handle)
    assert sorted(r["key"] for r in body["data"]) == [KEY(1), KEY(2)]


async def test_subset_post(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and a subset's where (or order_by) of a few KB is parsed in a worker thread, with
    the same answers: a 63 KB one held the event loop 0.5-1.1 s, and 8-16 in flight stalled
    every client of the engine for seconds (attack)."""
    parsed_in: list[str] = []
    full_parse = clause.full_parse

    def recorded(sql: str, *args: Any, **kwargs: Any) -> Any:
        if len(sql) >= 2048:  # (`subset.PARSE_IN_THREAD`)
            parsed_in.append(threading.current_thread().name)
        return full_parse(sql, *args, **kwargs)

    monkeypatch.setattr(clause, "full_parse", recorded)
    monkeypatch.setattr(subset, "full_parse", recorded, raising=False)
    make_items(engine, 5)
    _, handle, offset = await engine.sync(table="items", log="changes_only")
    query = {"table": "items", "log": "changes_only", "handle": handle, "offset": offset}
    payload = {"where": "n > $1", "params": {"1": "15"}, "order_by": "n DESC", "limit": 2}
    status, h, raw = await request(engine, "POST", params=query, json=payload)
    body = check_subset(status, h, raw, handle)
    assert [r["key"] for r in body["data"]] == [KEY(5), KEY(4)]
    # in the body, `offset` is the row offset of the subset, not the log offset
    status, h, raw = await request(engine, "POST", params=query, json={**payload, "offset": 1})
    body = check_subset(status, h, raw, handle)
    assert [r["key"] for r in body["data"]] == [KEY(4), KEY(3)]
    # each subset gets its own mark
    status, h, raw = await request(engine, "POST", params=query, json={"where": "id = 1"})
    body2 = check_subset(status, h, raw, handle)
    assert [r["key"] for r in body2["data"]] == [KEY(1)]

    # a long clause: parsed off the event loop, answered alike
    long_where = " OR ".join(f"id = {i}" for i in range(1000, 1300)) + " OR id = 2"
    status, h, raw = await request(engine, "POST", params=query, json={"where": long_where})
    body = check_subset(status, h, raw, handle)
    assert [r["key"] for r in body["data"]] == [KEY(2)]
    where = long_where + " OR nope = 1"
    status, _, raw = await request(engine, "POST", params=query, json={"where": where})
    assert status == 400 and orjson.loads(raw)["errors"]["subset"]["where"] == [
        f"At location {where.index('nope')}: unknown reference nope"
    ], raw
    assert parsed_in and threading.main_thread().name not in parsed_in, parsed_in


async def test_post_without_subset_is_a_plain_read(engine: Engine) -> None:
    make_items(engine)
    status, h, raw = await request(engine, "POST", params={"table": "items", "offset": "-1"})
    assert status == 200
    assert h["cache-control"] == "no-cache"
    assert "electric-snapshot" not in h
    body = orjson.loads(raw)
    assert [m["key"] for m in body if "key" in m] == [KEY(1), KEY(2), KEY(3)]


@pytest.mark.parametrize(
    "order_by",
    ["lower(title)", "n + 1", "n::text", "(SELECT 1)", "$1", "CASE WHEN n > 1 THEN 1 END"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_subset_order_by_must_be_plain_columns(
    engine: Engine, order_by: str, method: str
) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    query = {"table": "items", "handle": handle, "offset": offset}
    if method == "GET":
        query |= {"subset__order_by": order_by, "subset__limit": "2"}
        status, h, raw = await request(engine, params=query)
    else:
        status, h, raw = await request(
            engine, "POST", params=query, json={"order_by": order_by, "limit": 2}
        )
    assert status == 400, raw
    assert h["cache-control"] == "no-store"
    body = orjson.loads(raw)
    assert "order_by" in body["errors"]["subset"], body
    # plain columns with directions are fine
    query = {"table": "items", "handle": handle, "offset": offset,
             "subset__order_by": "title DESC NULLS LAST, id", "subset__limit": "2"}  # fmt: skip
    status, h, raw = await request(engine, params=query)
    assert [r["key"] for r in check_subset(status, h, raw, handle)["data"]] == [KEY(3), KEY(2)]


async def test_subset_clauses_may_name_any_table_column(engine: Engine) -> None:
    """As Electric's `Shape.Subset.new`: a subset's where and order_by are checked against
    every column of the table, not only the shape's `columns`; the rows carry only those."""
    make_items(engine)  # n = 10, 20, 30
    cols = '"id","title"'
    _, handle, offset = await engine.sync(table="items", columns=cols)
    base = {"table": "items", "columns": cols, "handle": handle, "offset": offset}
    status, h, raw = await request(engine, params={**base, "subset__where": "n > 15"})
    body = check_subset(status, h, raw, handle)
    values = sorted((row["value"] for row in body["data"]), key=lambda v: v["id"])
    assert values == [{"id": "2", "title": "t2"}, {"id": "3", "title": "t3"}], body
    status, h, raw = await request(engine, "POST", params=base, json={"where": "n > 25"})
    body = check_subset(status, h, raw, handle)
    assert [row["value"] for row in body["data"]] == [{"id": "3", "title": "t3"}], body
    status, h, raw = await request(engine, params={**base, "subset__order_by": "n DESC",
                                                   "subset__limit": "1"})  # fmt: skip
    body = check_subset(status, h, raw, handle)
    assert [row["value"] for row in body["data"]] == [{"id": "3", "title": "t3"}], body
    # a column the table does not have is a 400, never cached
    status, h, raw = await request(engine, params={**base, "subset__where": "nope > 1"})
    assert status == 400, raw
    assert h["cache-control"] == "no-store"
    assert "nope" in orjson.loads(raw)["errors"]["subset"]["where"][0], raw


async def test_subset_with_stale_handle_is_409(engine: Engine) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    params = {"table": "items", "handle": "stale", "offset": offset, "subset__where": "id = 1"}
    status, h, raw = await request(engine, params=params)
    assert status == 409, raw
    assert h["electric-handle"] == handle


# -- DELETE -----------------------------------------------------------------------------------


async def test_delete_by_definition(engine: Engine) -> None:
    make_items(engine)
    defn = {"table": "items", "where": "n > $1", "params[1]": "5"}
    _, handle, offset = await engine.sync(**defn)
    parked = asyncio.create_task(engine.get(**defn, offset=offset, handle=handle, live="true"))
    await engine.until_parked()
    status, h, raw = await request(engine, "DELETE", params=defn)
    assert status == 202, raw
    status, _, body = await parked
    assert status == 409
    status, h, body = await engine.get(**defn, offset=offset, handle=handle)
    assert status == 409
    assert body == [{"headers": {"control": "must-refetch"}}]
    assert h["electric-handle"] != handle
    rows, new_handle, _ = await engine.sync(**defn)
    assert new_handle != handle and len(rows) == 3
    # deleting it again finds the new shape; a different definition has none
    status, _, _ = await request(engine, "DELETE", params={**defn, "params[1]": "99"})
    assert status == 404


async def test_delete_by_handle(engine: Engine) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    status, _, _ = await request(engine, "DELETE", params={"handle": handle})
    assert status == 202
    status, h, _ = await engine.get(table="items", offset=offset, handle=handle)
    assert status == 409 and h["electric-handle"] != handle
    status, _, raw = await request(engine, "DELETE", params={"handle": handle})
    assert status == 404, raw


async def test_delete_unknown_is_404(engine: Engine) -> None:
    make_items(engine)
    for params in ({"handle": "no-such-handle"}, {"table": "items"},
                   {"table": "items", "where": "id = 1"}):  # fmt: skip
        status, _, raw = await request(engine, "DELETE", params=params)
        assert status == 404, (params, raw)
        assert isinstance(orjson.loads(raw)["message"], str)
    assert len(engine.source.registry) == 0


async def test_delete_with_mismatched_handle_is_400(engine: Engine) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    status, _, raw = await request(engine, "DELETE", params={"table": "items", "handle": "other"})
    assert status == 400, raw
    # (Electric's `Response.shape_definition_mismatch`: a message naming the handle, no errors)
    assert "handle" in orjson.loads(raw)["message"], raw
    status, _, _ = await engine.get(table="items", offset=offset, handle=handle)
    assert status == 200  # untouched


async def test_delete_errors_are_not_cacheable(engine: Engine) -> None:
    make_items(engine)
    for params in ({"handle": "no-such-handle"}, {"table": "items"}):
        status, h, _ = await request(engine, "DELETE", params=params)
        assert status == 404
        assert h.get("cache-control") == "no-store", h


# -- OPTIONS, health, CORS, HEAD --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/shape", "/v1/shape/"])
async def test_options_preflight(engine: Engine, path: str) -> None:
    status, h, raw = await request(engine, "OPTIONS", path, params={"table": "items"},
                                   headers={"origin": "https://app.example",
                                            "access-control-request-method": "GET",
                                            "access-control-request-headers":
                                                "if-none-match, content-type"})  # fmt: skip
    assert status == 204 and raw == b""
    assert h["access-control-allow-origin"] == "https://app.example"
    methods = {m.strip() for m in h["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "HEAD", "DELETE", "OPTIONS"}
    assert h["access-control-max-age"] == "86400"
    assert h["access-control-allow-headers"].lower() == "if-none-match"
    assert REQUIRED_EXPOSED <= exposed(h)
    status, h, _ = await request(engine, "OPTIONS", path)
    assert status == 204 and h["access-control-allow-origin"] == "*"


async def test_health(engine: Engine) -> None:
    status, h, raw = await request(engine, path="/v1/health")
    assert status == 200
    assert orjson.loads(raw) == {"status": "active"}
    assert h["cache-control"] == "no-cache, no-store, must-revalidate"
    status, _, raw = await request(engine, "HEAD", path="/v1/health")
    assert status == 200 and raw == b""


async def parked_metric(engine: Engine) -> float:
    """`sync_engine_parked_requests` from `/metrics`, read with Prometheus's own parser."""
    status, h, raw = await request(engine, path="/metrics")
    assert status == 200 and h["content-type"].startswith("text/plain")
    assert h["cache-control"] == "no-store"
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    family = families["sync_engine_parked_requests"]
    assert family.type == "gauge"
    [sample] = family.samples
    return sample.value


async def test_metrics_count_the_parked_live_requests(engine: Engine) -> None:
    """What an operator watches (and end-to-end tests wait on): held long-polls are counted
    while they wait, and no longer once they are answered."""
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    assert await parked_metric(engine) == 0
    live = {"table": "items", "offset": offset, "handle": handle, "live": "true"}
    polls = [asyncio.create_task(engine.get(**live)) for _ in range(3)]
    await wait_until_async(
        lambda: parked_metric(engine), message="/metrics counting a parked request"
    )
    await engine.until_parked(3)
    assert await parked_metric(engine) == 3
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")
    for status, _, body in await asyncio.gather(*polls):
        assert status == 200, body
    assert await parked_metric(engine) == 0


async def test_cors_expose_headers_on_every_200(engine: Engine) -> None:
    make_items(engine)
    origin = {"origin": "https://app.example"}
    status, h, _ = await request(engine, params={"table": "items", "offset": "-1"}, headers=origin)
    handle = h["electric-handle"]
    seen = [h]
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")  # (the live request has an answer)
    for params in (
        {"offset": "0_0", "handle": handle},
        {"offset": "now"},
        {"offset": "0_inf", "handle": handle, "live": "true"},
        {"offset": "0_0", "handle": handle, "subset__where": "id = 1"},
    ):
        status, h, raw = await request(engine, params={"table": "items", **params}, headers=origin)
        assert status == 200, (params, raw)
        seen.append(h)
    for h in seen:
        assert REQUIRED_EXPOSED <= exposed(h), h
        assert h["access-control-allow-origin"] == "https://app.example"
    live = seen[3]
    assert "electric-cursor" in live and "electric-up-to-date" in live


async def test_head_is_get_without_a_body(engine: Engine) -> None:
    make_items(engine)
    for params in ({"offset": "-1"}, {"offset": "now"}):
        g_status, g, g_raw = await request(engine, params={"table": "items", **params})
        h_status, h, h_raw = await request(engine, "HEAD", params={"table": "items", **params})
        assert g_status == h_status == 200
        assert g_raw and h_raw == b""
        for name in ("electric-handle", "electric-offset", "electric-schema", "cache-control",
                     "electric-has-data", "content-type"):  # fmt: skip
            assert h[name] == g[name], name
        if params["offset"] == "-1":
            assert h["etag"] == g["etag"]
            tag = g["etag"]
    handle = g["electric-handle"]
    status, h, raw = await request(
        engine, "HEAD", params={"table": "items", "offset": "0_0", "handle": handle}
    )
    assert status == 200 and raw == b"" and "electric-up-to-date" in h
    status, h, raw = await request(engine, "HEAD", params={"table": "items", "offset": "0_0",
                                                            "handle": "stale"})  # fmt: skip
    assert status == 409 and raw == b"" and h["electric-handle"] == handle
    status, h, raw = await request(engine, "HEAD", params={"table": "nope", "offset": "-1"})
    assert status == 400 and raw == b""
    # a conditional HEAD revalidates like a GET
    status, h, _ = await request(engine, "HEAD", params={"table": "items", "offset": "-1"},
                                 headers={"if-none-match": tag})  # fmt: skip
    assert status == 304

    # an SSE HEAD is answered at once, with the GET's head, and its connection goes on (the
    # proxy's answer): it held the stream, with nothing to send, for all of `sse_timeout`,
    # and a request pipelined after it waited as long
    status, g, _ = await request(engine, params={"table": "items", "offset": "-1"})
    query = f"table=items&offset={g['electric-offset']}&handle={handle}&live=true&live_sse=true"
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"HEAD /v1/shape?{query} HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    answers = asyncio.ensure_future(reader.read())
    try:
        await wait_until_async(lambda: answers.done() or engine.parked() > 0, timeout=20)
        assert answers.done() and engine.parked() == 0, "the SSE HEAD was held"
        head, _, health = answers.result().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head
        assert health.startswith(b"HTTP/1.1 200 "), health
    finally:
        answers.cancel()
        writer.close()


# -- robustness -------------------------------------------------------------------------------


async def test_client_disconnecting_mid_long_poll(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    make_items(engine)
    rows, handle, offset = await engine.sync(table="items")
    caplog.set_level(logging.WARNING)
    params = {"table": "items", "offset": offset, "handle": handle, "live": "true"}
    for _ in range(3):
        # (whether the server lets go of a request whose client left at once or only at the
        # long-poll timeout, none is parked before the next)
        await wait_until_async(lambda: engine.parked() == 0, message="no request parked")
        task = asyncio.create_task(engine.client.get("/v1/shape", params=params))
        await engine.until_parked()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # an SSE client that hangs up too
    sse = await open_sse(engine, {"live_sse": "true"}, **params)
    await sse.frame(2.0)
    sse.resp.close()
    # (the test server cancels the handler of a client that hung up: nothing is parked once
    # the hang-ups reached it)
    await wait_until_async(lambda: engine.parked() == 0, message="the hang-ups seen")
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")  # what the departed would have got
    # The stimulus, not a synchronisation: time passes beyond the departed requests'
    # long-poll timeout (2 s), and nothing of theirs may fire an error then.
    await asyncio.sleep(2.5)
    status, h, body = await engine.get(**params)
    assert status == 200
    assert [m["key"] for m in body if "key" in m] == [KEY(4)]
    apply(rows, body)
    live_get = asyncio.create_task(engine.get(**{**params, "offset": h["electric-offset"]}))
    await engine.until_parked()
    engine.sql("INSERT INTO items VALUES (5, 't5', 50)")
    status, h, body = await live_get
    assert status == 200 and [m["key"] for m in body if "key" in m] == [KEY(5)]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_many_long_polls_get_the_same_insert(engine: Engine) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    polls = [
        asyncio.create_task(engine.get(table="items", offset=offset, handle=handle, live="true"))
        for _ in range(30)
    ]
    await engine.until_parked(30)
    assert not any(t.done() for t in polls)
    engine.sql("INSERT INTO items VALUES (4, 't4', 40)")
    results = await asyncio.gather(*polls)
    offsets = set()
    for status, h, body in results:
        assert status == 200, body
        changes = [m for m in body if "key" in m]
        assert len(changes) == 1, body
        assert changes[0]["key"] == KEY(4) and changes[0]["headers"]["operation"] == "insert"
        assert body[-1]["headers"]["control"] == "up-to-date"
        offsets.add(h["electric-offset"])
    assert len(offsets) == 1
    assert offsets.pop() == f"{results[0][2][0]['headers']['lsn']}_0"

"""Malformed requests to `/v1/shape`: a clear 4xx with a JSON body naming the problem.

Never a 500, never a cached error (`cache-control: no-store`), and never a side effect: a
rejected request creates no shape and leaves the database alone, so a correct request
afterwards syncs exactly the rows that are there.

Each validation rule is tested case by case without Postgres (`test_params.py` for the
request's form, `tests/sync_engine/shapes/test_definition.py` for the catalog checks); here a
few cases of each go through the real engine, to prove the status, body and lack of effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from sync_engine.app import SOURCES, build_app
from tests.support.engine_process import EngineProcess
from tests.support.fuzz_inputs import loud_log_lines
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import SETTINGS, Engine

ITEMS_KEYS = ['"public"."items"/"1"', '"public"."items"/"2"', '"public"."items"/"3"']
SECRET = "s3cr3t-Value-that-must-never-leak-9f2c"
SECRET_SETTINGS = replace(SETTINGS, secret=SECRET)


def make_items(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    engine.sql("INSERT INTO items VALUES (1, 't1', 10), (2, 't2', 20), (3, 't3', 30)")


async def request(
    engine: Engine,
    method: str = "GET",
    path: str = "/v1/shape",
    params: Any = None,
    **kw: Any,
) -> tuple[int, dict[str, str], bytes]:
    resp = await engine.client.request(method, path, params=params, **kw)
    raw = await resp.read()
    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw


def assert_client_error(
    status: int, headers: dict[str, str], raw: bytes, expected: int = 400, *, names: str = ""
) -> Any:
    """A 4xx the client can act on: JSON, never cached, and naming what is wrong."""
    assert status == expected, raw
    assert headers["cache-control"] == "no-store", headers
    assert headers["content-type"].startswith("application/json"), headers
    body = orjson.loads(raw)
    assert isinstance(body, dict), body
    assert isinstance(body.get("message", body.get("error")), str), body
    if names:
        assert names.lower() in " ".join(texts(body)).lower(), (names, body)
    return body


def texts(value: Any) -> list[str]:
    """Every key and string inside a decoded JSON value."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (str(k), *texts(v))]
    if isinstance(value, list):
        return [t for v in value for t in texts(v)]
    return [value] if isinstance(value, str) else []


async def assert_untouched(engine: Engine) -> None:
    """No shape was created by the bad requests, the table is intact, and a good sync works."""
    assert len(engine.source.registry) == 0
    assert engine.sql("SELECT id, title, n FROM items ORDER BY id") == [
        (1, "t1", 10), (2, "t2", 20), (3, "t3", 30),
    ]  # fmt: skip
    rows, _, _ = await engine.sync(table="items")
    assert sorted(rows) == ITEMS_KEYS
    assert rows['"public"."items"/"2"'] == {"id": "2", "title": "t2", "n": "20"}


async def bad(engine: Engine, params: Any, expected: int = 400, **kw: Any) -> Any:
    status, headers, raw = await request(engine, params=params)
    return assert_client_error(status, headers, raw, expected, **kw)


# -- offset, handle, live ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"table": "items"}, id="missing"),
    ],
)
async def test_offset_is_required(engine: Engine, params: dict[str, str]) -> None:
    make_items(engine)
    body = await bad(engine, params)
    assert body == {"message": "Invalid request", "errors": {"offset": ["can't be blank"]}}
    await assert_untouched(engine)


@pytest.mark.parametrize(
    "offset",
    ["abc", "9" * 5000, "0_\u0663", "\u0967_0",  # (non-ASCII digits: attack)
     # (halves of 4,300+ digits, which Python's int() refuses: were 500s)
     "1" + "0" * 5000 + "_0", "0_" + "1" + "0" * 5000, "1_" + "9" * 5000,
     "1" + "0" * 20 + "_0"],
    ids=lambda o: o if len(o) < 20 else f"long-{len(o)}",
)  # fmt: skip
async def test_invalid_offset_format(engine: Engine, offset: str) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", "offset": offset, "handle": "1-2"})
    assert body == {"message": "Invalid request", "errors": {"offset": ["has invalid format"]}}
    await assert_untouched(engine)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("table=items&offset=-1&where=title%3D%27%ff%fe%27", "where"),
        ("table=items&offset=-1&where=title%3D%241&params%5B1%5D=%ff", "params[1]"),
        ("table=it%ffems&offset=-1", "table"),
        ("table=items&offset=-1&subset__where=title%3D%27%c3%28%27", "subset__where"),
        ("table=items&offset=-1&x%ff=1", "query"),  # (the name itself)
        ("offset=-1&table=it+ems%ff", "table"),  # (before the other checks)
    ],
    ids=["where", "params", "table", "subset", "unknown-name", "first"],
)
async def test_a_query_that_is_not_utf8_is_refused(engine: Engine, query: str, field: str) -> None:
    """Not decoded with U+FFFD in place of the bad bytes and served (a where clause other
    than the one sent, U+FFFD bound as a parameter: attack): a 400 naming the parameter,
    as Plug refuses it (Electric's), in the proxy's words (`check_query_utf8`, both call
    it). Percent-encoded as the client sent it (yarl keeps `%ff` as it is)."""
    make_items(engine)
    resp = await engine.client.get(f"/v1/shape?{query}")
    raw = await resp.read()
    headers = {k.lower(): v for k, v in resp.headers.items()}
    body = assert_client_error(resp.status, headers, raw)
    assert body == {"message": "Invalid request", "errors": {field: ["is not valid UTF-8"]}}
    await assert_untouched(engine)


@pytest.mark.parametrize("offset", ["26800584_4"])
@pytest.mark.parametrize("handle", [None], ids=["missing"])
async def test_real_offset_needs_a_handle(engine: Engine, offset: str, handle: str | None) -> None:
    make_items(engine)
    params = {"table": "items", "offset": offset}
    if handle is not None:
        params["handle"] = handle
    body = await bad(engine, params)
    assert body["errors"] == {"handle": ["can't be blank when offset != -1"]}
    await assert_untouched(engine)


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"offset": "-1", "live": "true"}, "live", "can't be true when offset == -1"),
        ({"offset": "0_0", "handle": "h", "live_sse": "true"}, "live_sse",
         "can't be true unless live is also true"),
    ],
    ids=["live-with-minus-1", "sse-without-live"],
)  # fmt: skip
async def test_live_flag_conflicts(
    engine: Engine, params: dict[str, str], field: str, message: str
) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", **params})
    assert body == {"message": "Invalid request", "errors": {field: [message]}}
    await assert_untouched(engine)


# -- table --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        pytest.param(None, "can't be blank", id="missing"),
        pytest.param("nope", 'Table "public"."nope" does not exist', id="unknown"),
        pytest.param("items_view", 'Table "public"."items_view" does not exist', id="view"),
        pytest.param("Mixed", 'Table "public"."mixed" does not exist', id="unquoted-downcased"),
        pytest.param('"items"x', "", id="junk-after-quote"),
    ],
)
async def test_bad_table(engine: Engine, table: str | None, fragment: str) -> None:
    make_items(engine)
    engine.sql("CREATE VIEW items_view AS SELECT * FROM items")
    engine.sql('CREATE TABLE "Mixed" (id int PRIMARY KEY)')
    params = {"offset": "-1"} if table is None else {"offset": "-1", "table": table}
    body = await bad(engine, params, names=fragment)
    assert list(body["errors"]) == ["table"], body
    assert body["errors"]["table"][0], body
    await assert_untouched(engine)


async def test_quoted_identifiers_keep_their_case(engine: Engine) -> None:
    """The positive side of the identifier rules, so the rejections above mean something."""
    make_items(engine)
    engine.sql('CREATE TABLE "Mixed" (id int PRIMARY KEY)')
    engine.sql('INSERT INTO "Mixed" VALUES (1)')
    for table in ('"Mixed"', 'public."Mixed"', '"public"."Mixed"'):
        rows, _, _ = await engine.sync(table=table)
        assert list(rows) == ['"public"."Mixed"/"1"']
    for table in ("ITEMS", "public.items", '"public".items', "PUBLIC.Items"):
        rows, _, _ = await engine.sync(table=table)
        assert sorted(rows) == ITEMS_KEYS


async def test_a_repeated_parameter_takes_its_last_value(engine: Engine) -> None:
    """As Electric (Plug's query decoding): `table=items&table=other` is the shape of `other`,
    the same shape (handle) as `table=other`; a repeated `params[1]` and `handle` likewise."""
    make_items(engine)
    engine.sql("CREATE TABLE other (id int PRIMARY KEY)")
    engine.sql("INSERT INTO other VALUES (7)")
    status, headers, raw = await request(
        engine, params=[("table", "items"), ("table", "other"), ("offset", "-1")]
    )
    assert status == 200, raw
    assert [m["key"] for m in orjson.loads(raw) if "key" in m] == ['"public"."other"/"7"']
    _, handle, offset = await engine.sync(table="other")
    assert headers["electric-handle"] == handle
    status, headers, raw = await request(
        engine,
        params=[
            ("table", "items"),
            ("where", "n = $1"),
            ("params[1]", "10"),
            ("params[1]", "20"),
            ("offset", "-1"),
        ],
    )
    assert status == 200, raw
    assert [m["key"] for m in orjson.loads(raw) if "key" in m] == ['"public"."items"/"2"']
    status, _, raw = await request(
        engine,
        params=[("table", "other"), ("offset", offset), ("handle", "nope"), ("handle", handle)],
    )
    assert status == 200, raw


@pytest.mark.parametrize(
    "params", [{"replica": "FULL"}], ids=["replica=FULL"],
)  # fmt: skip
async def test_bad_enum_params(engine: Engine, params: dict[str, str]) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", "offset": "-1", **params})
    assert body["errors"] == {next(iter(params)): ["is invalid"]}
    await assert_untouched(engine)


# -- columns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        pytest.param("id,nope", "not found on the table: nope", id="unknown"),
        pytest.param("title", "must include all primary key columns, missing: id", id="no-pk"),
        pytest.param("id; DROP TABLE items", "", id="injection"),
    ],
)
async def test_bad_columns(engine: Engine, columns: str, fragment: str) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", "offset": "-1", "columns": columns}, names=fragment)
    assert list(body["errors"]) == ["columns"], body
    await assert_untouched(engine)


# -- where and params -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        pytest.param("nope = 1", "unknown reference nope", id="unknown-column"),
        pytest.param("n + 1", "must return a boolean", id="non-boolean"),
        pytest.param("n = 'abc'", "", id="bad-int-literal"),
        pytest.param("pg_read_file('/etc/passwd') = ''", "", id="file-read-function"),
        pytest.param("n = 1; DROP TABLE items", "", id="statement-injection"),
        pytest.param("n = 1 -- comment", "", id="trailing-comment-ok-or-not"),
        pytest.param("id IN (SELECT id FROM items)", "", id="in-subquery"),
        # (a year past C long was OverflowError, past 4,300 digits int()'s ValueError: 500s)
        *(pytest.param(f"n::text::date > '{y}-01-01'", "years 1-9999", id=f"year-{len(y)}")
          for y in ("1" + "0" * 30, "9" * 5000)),
    ],
)  # fmt: skip
async def test_bad_where(engine: Engine, where: str, fragment: str) -> None:
    make_items(engine)
    status, headers, raw = await request(
        engine, params={"table": "items", "offset": "-1", "where": where}
    )
    if where == "n = 1 -- comment" and status == 200:
        # A trailing comment is harmless SQL; accepting it is fine, as long as it filters.
        rows = [m for m in orjson.loads(raw) if "key" in m]
        assert [m["key"] for m in rows] == []
        return
    body = assert_client_error(status, headers, raw, names=fragment)
    assert list(body["errors"]) == ["where"], body
    assert isinstance(body["errors"]["where"][0], str) and body["errors"]["where"][0]
    await assert_untouched(engine)


@pytest.mark.parametrize(
    ("where", "params", "field", "fragment"),
    [
        pytest.param("n > $1 AND n < $2", {"params[1]": "1"}, "where", "$2", id="missing-$2"),
        pytest.param("n > $1", {"params[1]": "1", "params[3]": "3"}, "params", "sequentially",
                     id="gap"),
        pytest.param("n > $1", {"params[1]": "1 OR 1=1"}, "where", "", id="bad-int-param"),
    ],
)  # fmt: skip
async def test_bad_params(
    engine: Engine, where: str, params: dict[str, str], field: str, fragment: str
) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", "offset": "-1", "where": where, **params},
                     names=fragment)  # fmt: skip
    assert list(body["errors"]) == [field], body
    await assert_untouched(engine)


@pytest.mark.parametrize(
    "value",
    [
        "x'; DROP TABLE items; --",
        "t1' OR '1'='1",
        't1" OR 1=1 --',
        "'); DELETE FROM items; --",
        "$1",
        "\\'; TRUNCATE items; --",
    ],
)
async def test_injection_in_params_value_is_just_a_value(engine: Engine, value: str) -> None:
    make_items(engine)
    rows, _, _ = await engine.sync(table="items", where="title = $1", **{"params[1]": value})
    assert rows == {}
    assert engine.sql("SELECT count(*) FROM items") == [(3,)]
    # the same text spliced into the where clause itself is the user's own SQL: it may be
    # rejected or even match rows, but it never runs a second statement
    status, headers, raw = await request(
        engine, params={"table": "items", "offset": "-1", "where": f"title = '{value}'"}
    )
    assert status < 500, raw
    if status >= 400:
        assert_client_error(status, headers, raw, names="where")
    assert engine.sql("SELECT count(*) FROM items") == [(3,)]
    # and the matching value still matches: params are typed literals, not ignored
    rows, _, _ = await engine.sync(table="items", where="title = $1", **{"params[1]": "t2"})
    assert list(rows) == ['"public"."items"/"2"']


# -- POST bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b"{not json", "JSON", id="invalid-json"),
        pytest.param(b'{"where": "n > 1"', "JSON", id="truncated-json"),
        pytest.param(b"\xff\xfe", "JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "object", id="array"),
        pytest.param(b'"a string"', "object", id="string"),
        pytest.param(b"42", "object", id="number"),
        pytest.param(b"null", "object", id="null"),
    ],
)
async def test_post_bad_json(engine: Engine, body: bytes, fragment: str) -> None:
    make_items(engine)
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, data=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    out = assert_client_error(status, headers, raw, names=fragment)
    assert set(out) <= {"error", "details"}, out  # Electric's shape for body errors
    await assert_untouched(engine)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"{not json", {"error": "Invalid JSON in request body"}, id="invalid-json"),
        pytest.param(b"\xff\xfe", {"error": "Invalid JSON in request body"}, id="not-utf8"),
        pytest.param(b"[1, 2]", {"error": "Request body must be a JSON object"}, id="array"),
        pytest.param(b"null", {"error": "Request body must be a JSON object"}, id="null"),
    ],
)
async def test_post_body_errors_say_what_electric_says(
    engine: Engine, body: bytes, expected: dict[str, str]
) -> None:
    """Electric's ServeShapePlug.parse_body answers a POST body that is not JSON with
    `{"error": "Invalid JSON in request body", "details": <the decoder's message>}` and one that
    is JSON but not an object with `{"error": "Request body must be a JSON object"}` (its
    `error` key, not the `message` of its parameter errors): the same words here, so a client
    or proxy reading Electric's bodies reads the engine's."""
    make_items(engine)
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, data=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    out = assert_client_error(status, headers, raw)
    if "Invalid JSON" in expected["error"]:
        assert isinstance(out.pop("details"), str), out
    assert out == expected
    # A subset the body gets wrong is a parameter error, Electric's nested form.
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, json={"where": "nope = 1"}
    )
    out = assert_client_error(status, headers, raw)
    assert out["message"] == "Invalid request" and set(out["errors"]) == {"subset"}, out
    assert set(out["errors"]["subset"]) == {"where"}, out
    await assert_untouched(engine)


async def test_post_body_too_large_is_413(engine: Engine) -> None:
    make_items(engine)
    body = b'{"where": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, data=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    out = assert_client_error(status, headers, raw, 413)
    assert out == {"error": "Request body too large"}
    await assert_untouched(engine)


async def test_post_with_bad_subset_fields(engine: Engine) -> None:
    make_items(engine)
    for body, field in [
        ({"where": 1}, "where"),
        ({"params": "nope"}, "params"),
        ({"limit": "ten", "order_by": "id"}, "limit"),
        ({"limit": 0, "order_by": "id"}, "limit"),
        ({"offset": -1, "order_by": "id"}, "offset"),
        ({"limit": 1}, "order_by"),
        ({"where": "nope = 1"}, "where"),
        ({"where": "id IN (SELECT id FROM items)"}, "where"),
    ]:
        status, headers, raw = await request(
            engine, "POST", params={"table": "items", "offset": "-1"}, json=body
        )
        out = assert_client_error(status, headers, raw, names=field)
        assert "subset" in out["errors"], out
    rows, _, _ = await engine.sync(table="items")
    assert sorted(rows) == ITEMS_KEYS


async def test_subset_limit_and_offset_must_be_integers(engine: Engine) -> None:
    """Electric casts `limit`/`offset` with Ecto's :integer: a JSON integer or a string of ASCII
    digits. Python's `int()` took more (1.5 -> 1, 1e3, " 2 ", "1_0", Arabic-Indic digits)."""
    make_items(engine)
    _, handle, _ = await engine.sync(table="items")
    shape = {"table": "items", "offset": "-1", "handle": handle}
    for field, bad in [
        ("limit", 1.5), ("limit", 1e3), ("limit", 2.0), ("offset", -0.0), ("limit", " 2 "),
        ("limit", "1_0"), ("limit", "\u0663"), ("limit", "2.0"), ("offset", "0x1"),
    ]:  # fmt: skip
        body = {"order_by": "id", field: bad}
        status, headers, raw = await request(engine, "POST", params=shape, json=body)
        out = assert_client_error(status, headers, raw, names=field)
        assert "subset" in out["errors"], (bad, out)
        if isinstance(bad, str):
            q = {**shape, "subset__order_by": "id", f"subset__{field}": bad}
            status, headers, raw = await request(engine, "GET", params=q)
            assert_client_error(status, headers, raw, names=field)
    # Integers of 4,300+ digits (Python's int() refuses them: were 500s), in their words.
    huge = "1" + "0" * 5000
    for field, value, words in [
        ("limit", huge, "must be less than or equal to 9223372036854775807"),
        ("offset", "+" + huge, "must be less than or equal to 9223372036854775807"),
        ("limit", "-" + huge, "must be greater than 0"),
        ("offset", "-" + huge, "must be greater than or equal to 0"),
        ("limit", "0" * 5000 + "7", None),
    ]:
        q = {**shape, "subset__order_by": "id", f"subset__{field}": value}
        forms: list[tuple[str, dict[str, Any]]] = [
            ("GET", {"params": q}),
            ("POST", {"params": shape, "json": {"order_by": "id", field: value}}),
        ]
        for method, kw in forms:
            status, headers, raw = await request(engine, method, **kw)
            if words is None:
                assert status == 200, raw
                continue
            out = assert_client_error(status, headers, raw)
            assert out["errors"] == {"subset": {field: [words]}}, out
    # What Electric takes: integers, and digit strings with a sign.
    for field, good in [("limit", 2), ("limit", "2"), ("limit", "+2"), ("offset", "0")]:
        body = {"order_by": "id", field: good}
        status, _, raw = await request(engine, "POST", params=shape, json=body)
        assert status == 200, (good, raw)


# -- handles and offsets that do not exist ----------------------------------------------------


async def test_unknown_handle_is_409_not_an_error_body(engine: Engine) -> None:
    make_items(engine)
    status, h, body = await engine.get(table="items", offset="0_0", handle="no-such-handle")
    assert status == 409
    assert body == [{"headers": {"control": "must-refetch"}}]
    assert h["cache-control"] == "public, max-age=60, must-revalidate"
    # the handle it names is the shape to switch to, and it works
    rows, handle, _ = await engine.sync(table="items")
    assert handle == h["electric-handle"] and sorted(rows) == ITEMS_KEYS


@pytest.mark.parametrize("live", [False, True], ids=["catch-up", "live"])
async def test_out_of_bounds_offset_is_400(engine: Engine, live: bool) -> None:
    """(past the WAL's end: at once, `test_offset_bounds.py`)"""
    make_items(engine)
    _, handle, _ = await engine.sync(table="items")
    params = {"table": "items", "offset": f"{10**18}_0", "handle": handle}
    if live:
        params["live"] = "true"
    body = await bad(engine, params)
    assert body["errors"] == {"offset": ["out of bounds for this shape"]}
    rows, handle2, _ = await engine.sync(table="items")
    assert handle2 == handle and sorted(rows) == ITEMS_KEYS


# -- routes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/nope", 404),
        ("GET", "/v2/shape", 404),
        ("GET", "/v1/shapes", 404),
        ("POST", "/v1/health", 405),
        ("PUT", "/v1/shape", 405),
        ("PATCH", "/v1/shape", 405),
    ],
)
async def test_unknown_routes_and_methods(
    engine: Engine, method: str, path: str, expected: int
) -> None:
    make_items(engine)
    status, headers, raw = await request(
        engine, method, path, params={"table": "items", "offset": "-1"}
    )
    assert status == expected, raw
    assert status < 500
    assert headers["cache-control"] == "no-store"
    await assert_untouched(engine)


async def test_trailing_slash_path_works(engine: Engine) -> None:
    make_items(engine)
    status, h, raw = await request(
        engine, path="/v1/shape/", params={"table": "items", "offset": "-1"}
    )
    assert status == 200, raw
    assert [m["key"] for m in orjson.loads(raw) if "key" in m] == ITEMS_KEYS
    status, h2, raw = await request(
        engine, path="/v1/shape/",
        params={"table": "items", "offset": "0_0", "handle": h["electric-handle"]},
    )  # fmt: skip
    assert status == 200 and "electric-up-to-date" in h2
    status, headers, raw = await request(engine, path="/v1/shape/", params={"offset": "-1"})
    assert_client_error(status, headers, raw, names="table")


# -- anything goes, nothing breaks ------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"table": "items", "offset": "-1", "cursor": "not-a-number"},
        {"table": "items", "offset": "-1", "cursor": "9" * 400},
        {"table": "items", "offset": "-1", "where": "\x00"},
        {"table": "items\x00", "offset": "-1"},
        {"table": "items", "offset": "-1", "columns": "id\x00"},
        {"table": "items", "offset": "-1", "where": "(" * 2000 + "true" + ")" * 2000},
        {"table": "items", "offset": "-1", "where": "n IN (" + ",".join(["1"] * 1500) + ")"},
        {"table": "items", "offset": "-1", "subset__limit": "abc"},
        {"table": "items", "offset": "-1", "subset__params": "{not json"},
        {"table": "items", "offset": "-1", "subset__order_by": "id; DROP TABLE items"},
        {"table": "☃", "offset": "-1"},
        {"table": '"☃"', "offset": "-1"},
        {"table": "items", "offset": "-1", "handle": "x" * 6000},
    ],
    ids=["cursor-nan", "cursor-huge", "where-nul", "table-nul", "columns-nul", "deep-parens",
         "long-in-list", "subset-limit-nan", "subset-params-bad", "subset-order-injection",
         "table-unicode", "table-unicode-quoted", "huge-handle"],
)  # fmt: skip
async def test_odd_input_never_500(engine: Engine, params: dict[str, str]) -> None:
    make_items(engine)
    status, headers, raw = await request(engine, params=params)
    assert status < 500, raw
    if status >= 400:
        assert_client_error(status, headers, raw)
    assert engine.sql("SELECT count(*) FROM items") == [(3,)]
    rows, _, _ = await engine.sync(table="items")
    assert sorted(rows) == ITEMS_KEYS


def quiet(caplog: Any) -> None:
    """Nothing at WARNING or above, and no traceback at any level."""
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.getMessage()) for r in loud]


async def raw_exchange(engine: Engine, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would, read the answer (the server closes after it)."""
    server = engine.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "params",
    [{"where": "n > 1 AND " * 2000 + "true"}, {"handle": "x" * 20000, "offset": "0_0"}],
    ids=["where", "handle"],
)
async def test_over_long_url_is_414_without_the_url(
    engine: Engine, params: dict[str, str], caplog: Any
) -> None:
    """Refused by the HTTP parser with a JSON 414 naming the limit; quoting none of the URL
    (it can carry a proxy's enforced filter), logged as one INFO line without traceback."""
    make_items(engine)
    caplog.set_level(logging.INFO)
    status, headers, raw = await request(
        engine, params={"table": "items", "offset": "-1", **params}
    )
    body = assert_client_error(status, headers, raw, 414, names="10000 bytes")
    assert set(body) == {"message"}, body
    assert "items" not in raw.decode() and "xxxx" not in raw.decode(), body
    quiet(caplog)
    assert any("414" in r.getMessage() for r in caplog.records)
    await assert_untouched(engine)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({"x-big": "y" * 10_000}, "10000 bytes"),
     ({f"x-h{i}": "1" for i in range(200)}, "limit is 50")],
    ids=["one-header-too-big", "too-many-headers"],
)  # fmt: skip
async def test_over_large_headers_are_431(
    engine: Engine, headers: dict[str, str], fragment: str, caplog: Any
) -> None:
    make_items(engine)
    status, h, raw = await request(
        engine, params={"table": "items", "offset": "-1"}, headers=headers
    )
    body = assert_client_error(status, h, raw, 431, names=fragment)
    assert "yyyy" not in raw.decode(), body
    quiet(caplog)
    await assert_untouched(engine)


@pytest.mark.parametrize(
    "data",
    [b"GARBAGE\r\n\r\n", b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
     b"GET /v1/shape?table=\x00items HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET /v1/shape?where=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
     b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
     b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
     b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\n{}{}"],
    ids=["not-http", "header-without-colon", "nul-in-target", "non-utf8-target",
         "length-and-chunked", "bad-chunk-size", "not-gzip"],
)  # fmt: skip
async def test_malformed_http_is_a_json_400(engine: Engine, data: bytes, caplog: Any) -> None:
    make_items(engine)
    status, headers, raw = await raw_exchange(engine, data)
    assert 400 <= status < 500, raw
    if status != 404:
        assert headers["content-type"].startswith("application/json"), headers
        assert isinstance(orjson.loads(raw)["message"], str)
    quiet(caplog)
    await assert_untouched(engine)


async def test_too_big_where_in_post_body(engine: Engine) -> None:
    make_items(engine)
    where = " OR ".join(f"n = {i}" for i in range(10000))  # ~100 kB
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, json={"where": where}
    )
    assert_client_error(status, headers, raw, names="maximum size")
    rows, _, _ = await engine.sync(table="items")
    assert sorted(rows) == ITEMS_KEYS


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_rejected_subset_creates_no_shape(engine: Engine, method: str) -> None:
    make_items(engine)
    if method == "GET":
        params = {"table": "items", "offset": "-1", "subset__where": "nope = 1"}
        status, headers, raw = await request(engine, params=params)
    else:
        status, headers, raw = await request(
            engine, "POST", params={"table": "items", "offset": "-1"}, json={"where": "nope = 1"}
        )
    assert_client_error(status, headers, raw, names="nope")
    await assert_untouched(engine)


async def test_nul_byte_in_params_value(engine: Engine) -> None:
    make_items(engine)
    params = {"table": "items", "offset": "-1", "where": "title = $1", "params[1]": "a\x00b"}
    status, headers, raw = await request(engine, params=params)
    assert_client_error(status, headers, raw)
    await assert_untouched(engine)


@pytest.mark.parametrize(
    "params",
    [
        {"where": "title = 'a\x00b'"},
        {"subset__where": "title = $1", "subset__params[1]": "a\x00b"},
        {"subset__where": "title = 'a\x00b'"},
    ],
    ids=["nul-in-where-literal", "nul-in-subset-param", "nul-in-subset-literal"],
)
async def test_nul_byte_elsewhere_is_a_400(engine: Engine, params: dict[str, str]) -> None:
    make_items(engine)
    status, headers, raw = await request(
        engine, params={"table": "items", "offset": "-1", **params}
    )
    assert_client_error(status, headers, raw)
    rows, _, _ = await engine.sync(table="items")
    assert sorted(rows) == ITEMS_KEYS


# -- secret -----------------------------------------------------------------------------------


@pytest.fixture
async def secured(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = replace(SECRET_SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


@pytest.mark.parametrize(
    "auth",
    [{}, {"secret": ""}, {"secret": "wrong"}, {"secret": SECRET[:-1]}, {"secret": SECRET + "x"},
     {"secret": SECRET.upper()}, {"api_secret": "wrong"},
     {"secret": "wrong", "api_secret": SECRET}],
    ids=["missing", "blank", "wrong", "prefix", "longer", "upper", "api_secret-wrong",
         "secret-wins-over-api_secret"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_secret_required(secured: Engine, auth: dict[str, str], method: str) -> None:
    make_items(secured)
    status, headers, raw = await request(
        secured, method, params={"table": "items", "offset": "-1", **auth}
    )
    assert status == 401, raw
    body = orjson.loads(raw)
    assert set(body) == {"message"} and isinstance(body["message"], str) and body["message"]
    assert SECRET not in raw.decode()
    assert all(SECRET not in v for v in headers.values())
    assert headers["cache-control"] == "no-store"
    assert "electric-handle" not in headers
    assert len(secured.source.registry) == 0


async def test_secret_checked_before_validation(secured: Engine) -> None:
    """A bad request without the secret learns nothing about the tables: it is a 401."""
    make_items(secured)
    for params in ({"offset": "-1"}, {"table": "nope", "offset": "-1"},
                   {"table": "items", "offset": "bad"}):  # fmt: skip
        status, _, raw = await request(secured, params=params)
        assert status == 401, raw
        assert "nope" not in raw.decode()


async def test_a_post_without_the_secret_is_a_401_whatever_its_body(secured: Engine) -> None:
    """The body of a POST is read only once its credentials are right: without them, a
    malformed, oversized or compressed-garbage body gets the same 401 as a GET (it got the
    body's 400 or 413, and the engine read and parsed it for an unknown caller)."""
    make_items(secured)
    json_type = {"Content-Type": "application/json"}
    bodies = [
        (b"{nope", json_type),
        (b"[1, 2]", json_type),
        (b'{"where": "' + b" " * (9 * 1024 * 1024) + b'"}', json_type),
        (b"\x1f\x8b\x08\x00", {**json_type, "Content-Encoding": "gzip"}),
        (b'{"where": "id > 1"}', {"Content-Type": "text/plain"}),
    ]
    for auth in ({}, {"secret": "wrong"}):
        for data, headers in bodies:
            status, _, raw = await request(
                secured, "POST", params={"table": "items", "offset": "-1", **auth},
                data=data, headers=headers,
            )  # fmt: skip
            assert status == 401, (auth, data[:20], raw)
            assert set(orjson.loads(raw)) == {"message"}
    # With the secret, the same bodies are read and refused for what they are.
    status, _, raw = await request(
        secured, "POST", params={"table": "items", "offset": "-1", "secret": SECRET},
        data=b"{nope", headers=json_type,
    )  # fmt: skip
    assert status == 400, raw


async def test_right_secret_is_accepted(secured: Engine) -> None:
    make_items(secured)
    for key in ("secret", "api_secret"):
        status, headers, raw = await request(
            secured, params={"table": "items", "offset": "-1", key: SECRET}
        )
        assert status == 200, raw
        assert [m["key"] for m in orjson.loads(raw) if "key" in m] == ITEMS_KEYS
        assert SECRET not in raw.decode()
        assert all(SECRET not in v for v in headers.values())
    # validation still applies once authenticated
    status, headers, raw = await request(secured, params={"offset": "-1", "secret": SECRET})
    assert_client_error(status, headers, raw, names="table")
    # health and preflight need no secret
    status, _, raw = await request(secured, path="/v1/health")
    assert status == 200 and orjson.loads(raw) == {"status": "active"}
    status, _, _ = await request(secured, "OPTIONS", params={"table": "items"})
    assert status == 204
    # /metrics is behind the secret, like the shapes (a CDN tier forwards it)
    for params in ({}, {"secret": "wrong"}):
        status, _, raw = await request(secured, path="/metrics", params=params)
        assert status == 401 and b"sync_engine" not in raw
    status, _, raw = await request(secured, path="/metrics", params={"secret": SECRET})
    assert status == 200
    assert re.search(rb"\nsync_engine_parked_requests 0(\.0)?\n", raw), raw


# -- where clauses that only fail when Postgres runs them ----------------------------------------


def shape_dirs(engine: Engine) -> list[str]:
    root = engine.data_dir / "sources" / "default" / "shapes"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def assert_discarded(engine: Engine) -> None:
    """The failed shape left nothing: no handle, no router entry, no directory."""
    source = engine.source
    assert len(source.registry) == 0 and not source.registry.by_definition
    assert not source.router.tables()
    await wait_until_async(lambda: shape_dirs(engine) == [], message="no shape directory left")


RUNTIME_ERRORS = [
    pytest.param("id / 0 = 1", "22012", id="division-by-zero"),
    pytest.param("title::int4 = 1", "22P02", id="bad-cast-of-a-row-value"),
    pytest.param("n * 2147483647 * 2 > 1", "22003", id="integer-overflow"),
    # Of a column: a constant one is refused when the shape is parsed (b958782), this one
    # only when Postgres builds it for a row.
    pytest.param("ARRAY[[[[[[[n]]]]]]] IS NOT NULL", "54000", id="seven-dimensions"),
]


@pytest.mark.parametrize(("where", "sqlstate"), RUNTIME_ERRORS)
async def test_query_failing_in_postgres_is_a_400_not_retried(
    engine: Engine, where: str, sqlstate: str
) -> None:
    """Not a 503 the client retries forever: a 400 naming the SQLSTATE, quoting no row value
    (Postgres's own 22P02 message quotes the title), and the shape is gone."""
    make_items(engine)
    for _ in range(2):  # asked again, the same answer (and again nothing left behind)
        status, headers, raw = await request(
            engine, params={"table": "items", "offset": "-1", "where": where}
        )
        body = assert_client_error(status, headers, raw, names=sqlstate)
        assert list(body["errors"]) == ["where"], body
        assert "retry-after" not in headers and "electric-handle" not in headers
        assert not any(t in raw.decode() for t in ("t1", "t2", "t3")), body
        await assert_discarded(engine)
    await assert_untouched(engine)


@pytest.mark.parametrize(("where", "sqlstate"), RUNTIME_ERRORS[:2])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_subset_failing_in_postgres_is_a_400(
    engine: Engine, where: str, sqlstate: str, method: str
) -> None:
    make_items(engine)
    _, handle, offset = await engine.sync(table="items")
    query = {"table": "items", "offset": offset, "handle": handle}
    if method == "GET":
        status, headers, raw = await request(engine, params={**query, "subset__where": where})
    else:
        status, headers, raw = await request(engine, "POST", params=query, json={"where": where})
    body = assert_client_error(status, headers, raw, names=sqlstate)
    assert list(body["errors"]["subset"]) == ["where"], body
    assert "retry-after" not in headers
    assert not any(t in raw.decode() for t in ("t1", "t2", "t3")), body
    rows, handle2, _ = await engine.sync(table="items")
    assert handle2 == handle and sorted(rows) == ITEMS_KEYS


async def test_dropped_table_new_shape_is_a_400_at_once(engine: Engine, caplog: Any) -> None:
    """Right after DROP TABLE, a new shape whose catalog entry is still cached fails its
    snapshot (42P01): the table's 400, not a 503, and the table's other shapes go too."""
    make_items(engine)
    engine.sql("CREATE TABLE gone (id int PRIMARY KEY, n int)")
    engine.sql("INSERT INTO gone VALUES (1, 1)")
    _, handle, offset = await engine.sync(table="gone")
    await engine.sync(table="gone", where="n > 0")  # the catalog entry is now fresh
    engine.sql("DROP TABLE gone")
    for params in ({"where": "n > 1"}, {}, {"where": "n > 0"}):
        status, headers, raw = await request(
            engine, params={"table": "gone", "offset": "-1", **params}
        )
        body = assert_client_error(status, headers, raw, names="does not exist")
        assert list(body["errors"]) == ["table"], body
    status, _, _ = await engine.get(table="gone", offset=offset, handle=handle)
    assert status in (400, 409)
    await assert_discarded(engine)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    await assert_untouched(engine)


@pytest.fixture
async def unchecked(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine whose periodic schema check does not run during a test."""
    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", schema_check_interval=3600
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    yield Engine(client, db_url, tmp_path / "data")


async def test_dropped_table_existing_shape_is_a_400_within_a_second(unchecked: Engine) -> None:
    """New clients of an existing shape: its table's existence is checked (trusted for 1 s),
    so after DROP TABLE they get the 400 within a second, never a 503, and not for the 10 s
    of the periodic schema check; a table created again under the name is a new shape."""
    engine = unchecked  # the periodic schema check is not what is tested here
    make_items(engine)
    engine.sql("CREATE TABLE gone (id int PRIMARY KEY, n int)")
    engine.sql("INSERT INTO gone VALUES (1, 1)")
    _, handle, _ = await engine.sync(table="gone")
    engine.sql("DROP TABLE gone")
    dropped = time.monotonic()
    seen: list[int] = []
    while not seen or seen[-1] != 400:
        status, headers, raw = await request(engine, params={"table": "gone", "offset": "-1"})
        seen.append(status)
        assert time.monotonic() - dropped < 30, seen
    assert set(seen) <= {200, 400}, seen
    assert_client_error(status, headers, raw, names="does not exist")
    engine.sql("CREATE TABLE gone (id int PRIMARY KEY, n int)")
    engine.sql("INSERT INTO gone VALUES (2, 2)")
    rows, handle2, _ = await engine.sync(table="gone")
    assert handle2 != handle and list(rows) == ['"public"."gone"/"2"']


@pytest.fixture
def engine_proc(db_url: str, tmp_path: Path) -> Iterator[EngineProcess]:
    """The engine as its CLI runs it (aiohttp's own server, no test-server cancellation)."""
    engine = EngineProcess(db_url, tmp_path / "data", "--log-level", "debug", "--no-fsync")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


async def test_clients_going_away_are_quiet(engine_proc: EngineProcess) -> None:
    """Browser tabs closed mid-stream (SSE) or mid-long-poll are everyday life: a DEBUG line
    each, no ERROR, no traceback; and the engine keeps serving."""
    engine_proc_sql(engine_proc, "CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    engine_proc_sql(engine_proc, "INSERT INTO items VALUES (1, 't1', 10)")
    base = engine_proc.url + "/v1/shape"
    async with aiohttp.ClientSession() as session:
        async with session.get(base, params={"table": "items", "offset": "-1"}) as resp:
            handle, offset = resp.headers["electric-handle"], resp.headers["electric-offset"]
        async with session.get(
            base, params={"table": "items", "offset": offset, "handle": handle}
        ) as resp:
            offset = resp.headers["electric-offset"]
        live = {"table": "items", "offset": offset, "handle": handle, "live": "true"}
        for _ in range(2):
            resp = await session.get(
                base, params={**live, "live_sse": "true"}, headers={"accept": "text/event-stream"}
            )
            assert resp.status == 200
            resp.close()  # drops the connection
        with contextlib.suppress(TimeoutError):  # a long-poll given up on
            await asyncio.wait_for(session.get(base, params=live), 0.5)
        engine_proc_sql(engine_proc, "INSERT INTO items VALUES (2, 't2', 20)")  # data to write
        await wait_until_async(
            lambda: engine_proc.log.read_text().count("went away") >= 2,
            timeout=30,
            message="two 'went away' lines in the engine's log",
        )
        async with session.get(base, params={"table": "items", "offset": "-1"}) as resp:
            assert resp.status == 200
    assert not loud_log_lines(engine_proc.log.read_text()), engine_proc.log.read_text()[-3000:]


def engine_proc_sql(engine: EngineProcess, query: str) -> None:
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        conn.execute(query)


# -- limits on size and shape, each a 400 naming the limit ---------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        pytest.param({"table": "a" * 2000}, "table", "limit is 1024 characters", id="long-table"),
        pytest.param({"offset": "0_0", "handle": "h" * 300}, "handle", "limit is 256",
                     id="long-handle"),
        pytest.param({"where": "id = $1", "params[²]": "1"}, "params", "numbers", id="unicode-digit"),
        # (a number, as Electric's Integer.parse reads it: out of sequence)
        pytest.param({"where": "id = $1", "params[1234567890123]": "1"}, "params",
                     "sequentially", id="huge-param-number"),
        pytest.param({"subset__limit": "9" * 30, "subset__order_by": "id"}, "subset",
                     "less than or equal to 9223372036854775807", id="subset-limit-beyond-bigint"),
        pytest.param({"subset__offset": str(2**63), "subset__order_by": "id"}, "subset",
                     "less than or equal", id="subset-offset-beyond-bigint"),
        pytest.param({f"x{i}": "1" for i in range(1001)}, "query", "limit is 1000",
                     id="too-many-parameters"),
    ],
)  # fmt: skip
async def test_parameter_limits(
    engine: Engine, params: dict[str, str], field: str, fragment: str
) -> None:
    make_items(engine)
    body = await bad(engine, {"table": "items", "offset": "-1", **params}, names=fragment)
    assert list(body["errors"]) == [field], body
    await assert_untouched(engine)


def nested(depth: int) -> bytes:
    return b'{"where":"true","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(nested(65), "limit is 64 levels", id="65-levels"),
        pytest.param(nested(5000), "limit is 64 levels", id="5000-levels"),
        pytest.param(orjson.dumps({f"k{i}": 1 for i in range(101)}), "limit is 100",
                     id="too-many-keys"),
        pytest.param(orjson.dumps({"where": "id = $1",
                                   "params": {str(i): "1" for i in range(1, 1002)}}),
                     "limit is 1000", id="too-many-params"),
        pytest.param(orjson.dumps({"where": "id = $1", "params": {"1": {"a": 1}}}),
                     "strings, numbers or booleans", id="object-param"),
        pytest.param(orjson.dumps({"where": "true", "order_by": "id " * 30000}), "maximum size",
                     id="huge-order-by"),
        pytest.param(orjson.dumps({"table": "t" * 2000}), "limit is 1024", id="long-table-in-body"),
    ],
)  # fmt: skip
async def test_post_body_limits(engine: Engine, body: bytes, fragment: str) -> None:
    make_items(engine)
    status, headers, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, data=body,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_client_error(status, headers, raw, names=fragment)
    await assert_untouched(engine)


async def test_deep_but_allowed_body_is_fine(engine: Engine) -> None:
    """64 levels are allowed: the limit is not a reason to refuse what the client sends."""
    make_items(engine)
    status, _, raw = await request(
        engine, "POST", params={"table": "items", "offset": "-1"}, data=nested(64),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert status == 200, raw


@pytest.mark.parametrize("zeros", [5000, 20])
async def test_a_content_length_of_many_leading_zeros_is_read(
    engine_proc: EngineProcess, zeros: int
) -> None:
    """llhttp takes `Content-Length: 000...02`, any number of zeros; `int()` of 4,300+
    characters raised in the connection's `data_received`: no answer at all, and an ERROR
    traceback in the log. Now it is the 2 it says."""
    engine_proc_sql(engine_proc, "CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    engine_proc_sql(engine_proc, "INSERT INTO items VALUES (1, 't1', 10)")
    reader, writer = await asyncio.open_connection("127.0.0.1", engine_proc.port)
    length = "0" * zeros + "2"
    writer.write(
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + length.encode() + b"\r\n\r\n{}"
    )
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 "), engine_proc.log.read_text()[-3000:]
    assert b'"title":"t1"' in raw
    log = engine_proc.log.read_text(errors="replace")
    assert not loud_log_lines(log), loud_log_lines(log)[:5]

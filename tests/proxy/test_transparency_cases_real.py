"""Odd-but-legal and malformed requests, each sent straight to the engine (with its secret) and
through the proxy under the open policy (config/examples/open.yaml, the secret injected by
the proxy): the status, the JSON error body (less the proxy's `code`), the rows, and every
protocol header a client reads must be the same. Hand-picked where the seeded fuzz
(test_transparency_fuzz_real.py, no secret) does not go: SSE streams, live requests with data,
If-None-Match on GET and HEAD, request targets near the engine's length limit, quoted
`schema.name` forms, the secret's own parameter names, the routes beside the shape's.

Found so far: a bare `&live` (or `live=`), which the engine reads as true, was dropped (the
engine got a catch-up request); an unknown parameter name over 128 characters was a 400;
a POST body's subset value did not keep the proxy from refusing the URL's `subset__*` value
it replaces (the engine never reads it); a repeated `subset__params[n]` was read as its first
value (the engine reads the last: other rows); the proxy's `GET /` said `Cache-Control: no-store` where the engine's root has
none; a DELETE by handle alone was answered `private, no-cache` with `Vary: Authorization`
under a policy where no caller differs (a DELETE naming its table kept the engine's headers). Probed and the same both ways (so not all kept here): HTTP/1.0 requests, a snapshot
followed chunk by chunk (3 KB chunks), absolute-form targets, `;` separators, invalid UTF-8
in each parameter, `Expect: 100-continue`.

Real path: proxy -> `sync-engine` -> PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from yarl import URL

from proxy.config.loader import build_config
from sync_engine.http.parser_refusals import MAX_HEADER_LINE, MAX_HEADERS, MAX_REQUEST_LINE
from tests.proxy.engines import engine_on_a_new_database
from tests.proxy.real_proxies import open_config
from tests.proxy.test_transparency_fuzz_real import _comparable
from tests.support.engine_process import EngineProcess, parked_requests
from tests.support.waiting import wait_until_async
from tests.sync_engine.http.test_server_pipelining import responses

#: The protocol headers compared (with those of `_comparable`: cache-control, etag, vary,
#: content-type, every electric-* and access-control-* header).
PROTOCOL = (
    "electric-handle",
    "electric-offset",
    "electric-schema",
    "electric-cursor",
    "electric-up-to-date",
    "cache-control",
    "etag",
    "vary",
    "content-type",
)


_SETUP = (
    'CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, "Mixed" int)',
    "INSERT INTO items VALUES (1, 'org-a', 'a1', 1), (2, 'org-b', 'b1', 2)",
    'CREATE SCHEMA "Odd.Schema"',
    'CREATE TABLE "Odd.Schema"."we""ird" (id int PRIMARY KEY, v text)',
    """INSERT INTO "Odd.Schema"."we""ird" VALUES (1, 'x')""",
)
_ARGS = ("--long-poll-timeout", "1", "--sse-timeout", "2", "--allow-delete")


@pytest.fixture(scope="module")
def engine_secret() -> str:
    """One secret for the module (the shared engine's; the conftest's is per test)."""
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def engine(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[EngineProcess]:
    """The engine the module's tests share (each started its own: ~2 s apiece, 50 of them):
    what they write adds rows of their own (live cases) or retires a shape they made (DELETE
    cases); every comparison reads the engine and the proxy at the same moment."""
    with engine_on_a_new_database(
        pg_server_url, tmp_path_factory.mktemp("cases") / "data", engine_secret, *_SETUP,
        args=_ARGS,
    ) as shared:  # fmt: skip
        yield shared


@pytest.fixture
def own_engine(start_engine: Any, request: pytest.FixtureRequest) -> EngineProcess:
    """An engine of the test's own, for what changes the table for everyone (a TRUNCATE, a
    large insert) or needs other flags (extra arguments by indirect parametrization)."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    return start_engine(*_SETUP, args=(*_ARGS, *extra))


async def _open_proxy(engine: EngineProcess, engine_secret: str, make_proxy: Any) -> str:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    return str(proxy.client.make_url("")).rstrip("/")


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
) -> tuple[int, Any, bytes]:
    async with session.request(
        method,
        URL(url, encoded=True),
        headers=headers,
        data=body,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        allow_redirects=False,
    ) as resp:
        raw = await asyncio.wait_for(resp.read(), 30)
        return resp.status, resp.headers, raw


def _sse_rows(raw: bytes) -> bytes:
    """An SSE body as its data events (rows and controls), keep-alives dropped."""
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    return json.dumps(events, sort_keys=True).encode()


def _direct(engine: EngineProcess, secret: str, target: str) -> str:
    joiner = "&" if "?" in target else "?"
    return f"{engine.url}{target}{joiner}secret={secret}"


Case = tuple[str, str, dict[str, str], bytes | None]


def _cases(
    handle: str, offset: str, etag: str, catch_up_etag: str = '"x"', now_etag: str = '"x"'
) -> list[Case]:
    shape = f"/v1/shape?table=items&handle={handle}"
    catch_up = f"{shape}&offset=0_0"
    long_where = "id%20IN%20(" + ",".join(str(i) for i in range(1500)) + ")"
    # Values past 8,192 characters that still fit in the request line: the engine reads them
    # (attack 22:42: the proxy's own cap refused them, even under the open passthrough policy).
    # (nothing in it is percent-encoded, so it fits in the engine's request line once the
    # proxy adds its secret)
    longer_where = "(id)in(" + ",".join(str(i) for i in range(1, 2000)) + ")"
    assert 8192 < len(longer_where) < 9000
    return [
        ("GET", f"/v1/shape?table=items&offset=-1&where={longer_where}", {}, None),
        ("GET", f"/v1/shape?table=items&offset=-1&cursor={'7' * 9000}", {}, None),
        ("GET", f"/v1/shape?table=items&offset=-1&columns={'c' * 9000}", {}, None),
        # repeated, empty and unknown parameters
        ("GET", "/v1/shape?table=items&offset=-1&offset=-1", {}, None),
        ("GET", "/v1/shape?table=items&table=items&offset=-1", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&where=", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&columns=", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&replica=", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&handle=", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&live=", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&foo=&bar", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&=x", {}, None),
        ("GET", "/v1/shape?table=&offset=-1", {}, None),
        ("GET", "/v1/shape?table=items&offset=", {}, None),
        # table names, percent-encoded and quoted
        ("GET", "/v1/shape?table=%69tems&offset=-1", {}, None),
        ("GET", "/v1/shape?table=public.items&offset=-1", {}, None),
        ("GET", "/v1/shape?table=%22public%22.%22items%22&offset=-1", {}, None),
        ("GET", "/v1/shape?table=public.%22items%22&offset=-1", {}, None),
        ("GET", "/v1/shape?table=%22public.items%22&offset=-1", {}, None),
        ("GET", "/v1/shape?table=%22Odd.Schema%22.%22we%22%22ird%22&offset=-1", {}, None),
        ("GET", '/v1/shape?table="Odd.Schema"."we""ird"&offset=-1', {}, None),
        ("GET", "/v1/shape?table=Odd.Schema.we%22ird&offset=-1", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&columns=%22id%22,%22Mixed%22", {}, None),
        ("GET", '/v1/shape?table=items&offset=-1&columns="id","title"', {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&columns=id,%22Mi%22%22xed%22", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&columns=ID,title", {}, None),
        # offsets and modes
        ("GET", "/v1/shape?table=items&offset=now", {}, None),
        ("GET", f"{shape}&offset=now", {}, None),
        ("GET", f"{shape}&offset=now&live=true", {}, None),
        ("GET", f"{shape}&offset={offset}", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&cursor=123", {}, None),
        ("GET", f"{shape}&offset=0_inf", {}, None),
        ("GET", f"{shape}&offset=-1&live=true", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&live_sse=true", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&experimental_live_sse=true", {}, None),
        ("GET", f"{shape}&offset=-1&live=true&live_sse=true", {}, None),
        ("GET", f"{shape}&offset={offset}&live_sse=true", {}, None),
        ("GET", f"{shape}&offset=now&live=true&live_sse=true", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&live_sse=false", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&live_sse=1", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&replica=full", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&replica=FULL", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&log=changes_only", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&experimental_compaction=true", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&expired_handle=abc", {}, None),
        # subsets
        ("GET", "/v1/shape?table=items&offset=-1&subset__where=id%3E1", {}, None),
        ("GET", f"{shape}&offset={offset}&subset__where=id%3E1", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&subset__limit=1&subset__order_by=id", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&subset__order_by=%22Mixed%22", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&subset__where_expr=x", {}, None),
        ("POST", "/v1/shape?table=items&offset=-1", {}, b'{"where": "id > 1"}'),
        (
            "POST",
            "/v1/shape?table=items&offset=-1",
            {"Content-Type": "application/json"},
            b'{"order_by": "id", "limit": 1, "offset": 1}',
        ),
        ("POST", "/v1/shape?table=items&offset=-1", {}, b"{}"),
        ("POST", "/v1/shape?table=items&offset=-1", {}, None),
        ("POST", f"{shape}&offset={offset}", {}, b'{"where": "id > 1"}'),
        ("POST", "/v1/shape?table=items&offset=-1", {"Content-Type": "text/plain"}, b"{}"),
        # what Electric's client sends besides: its last handle as `expired_handle` after a
        # 409, a cursor on every request after the first, `offset=now` with a handle
        ("GET", f"/v1/shape?table=items&offset=-1&expired_handle={handle}", {}, None),
        ("GET", f"{shape}&offset=-1&expired_handle={handle}", {}, None),
        ("GET", f"{catch_up}&cursor=123", {}, None),
        ("GET", f"{catch_up}&cursor=", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&cursor=99999999999", {}, None),
        ("GET", f"{shape}&offset={offset}&live=true&cursor=abc", {}, None),
        ("GET", f"{shape}&offset=now&live=true&cursor=5", {}, None),
        ("GET", "/v1/shape?table=items&offset=now&handle=nosuch", {}, None),
        ("GET", "/v1/shape?table=items&offset=now&live=true", {}, None),
        # `now` revalidated (the engine's ETag `H:now:<offset>`: a 304 while the tip stays)
        ("GET", "/v1/shape?table=items&offset=now", {"If-None-Match": now_etag}, None),
        ("HEAD", "/v1/shape?table=items&offset=now", {"If-None-Match": now_etag}, None),
        ("GET", f"{shape}&offset=now", {"If-None-Match": now_etag}, None),
        ("GET", "/v1/shape?table=items&offset=now", {"If-None-Match": f"W/{now_etag}"}, None),
        # revalidating a catch-up (a browser's cache, a CDN): 304 with the engine's headers
        ("GET", catch_up, {"If-None-Match": catch_up_etag}, None),
        ("HEAD", catch_up, {"If-None-Match": catch_up_etag}, None),
        ("GET", catch_up, {"If-None-Match": f"W/{catch_up_etag}"}, None),
        ("GET", catch_up, {"If-None-Match": catch_up_etag, "Origin": "https://a.example"}, None),
        ("GET", f"{shape}&offset={offset}", {"If-None-Match": catch_up_etag}, None),
        # conditional requests, HEAD, OPTIONS
        ("GET", "/v1/shape?table=items&offset=-1", {"If-None-Match": etag}, None),
        ("HEAD", "/v1/shape?table=items&offset=-1", {"If-None-Match": etag}, None),
        ("GET", "/v1/shape?table=items&offset=-1", {"If-None-Match": f"W/{etag}"}, None),
        ("GET", "/v1/shape?table=items&offset=-1", {"If-None-Match": f'"x", {etag}'}, None),
        ("GET", "/v1/shape?table=items&offset=-1", {"If-None-Match": "*"}, None),
        ("HEAD", "/v1/shape?table=items&offset=-1", {}, None),
        ("HEAD", f"{shape}&offset={offset}&live=true", {}, None),
        ("HEAD", "/v1/shape?table=nosuch&offset=-1", {}, None),
        ("OPTIONS", "/v1/shape?table=items&offset=-1", {}, None),
        (
            "OPTIONS",
            "/v1/shape",
            {
                "Origin": "https://a.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "if-none-match",
            },
            None,
        ),
        (
            "OPTIONS",
            "/v1/shape?table=items",
            {"Origin": "https://a.example", "Access-Control-Request-Method": "DELETE"},
            None,
        ),
        ("GET", "/v1/shape?table=items&offset=-1", {"Origin": "https://a.example"}, None),
        # long request targets: under, at and over the engine's limit
        ("GET", f"/v1/shape?table=items&offset=-1&where={long_where}", {}, None),
        (
            "GET",
            "/v1/shape?table=items&offset=-1&where=" + "(" * 2000 + "id" + ")" * 2000,
            {},
            None,
        ),
        ("GET", "/v1/shape?table=items&offset=-1&where=id%3E0" + "%20OR%20id%3E0" * 560, {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&where=id%3E1&pad=" + "x" * 7900, {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&pad=" + "x" * 9000, {}, None),
        # a flag with no value is true to the engine (the proxy dropped it: a long-poll was
        # sent as a catch-up request); an unknown name over 128 characters, which the engine
        # ignores (the proxy refused it); a POST whose body replaces a URL subset value the
        # engine then never reads (the proxy refused the URL's)
        ("GET", f"{shape}&offset={offset}&live", {}, None),
        ("GET", f"{shape}&offset={offset}&live=&cursor=7", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&" + "x" * 129 + "=1", {}, None),
        (  # a repeated subset param: the engine reads the last (the proxy sent the first)
            "GET",
            "/v1/shape?table=items&offset=-1&subset__where=id%3D%241"
            "&subset__params[1]=1&subset__params%5B1%5D=2",
            {},
            None,
        ),
        ("GET", "/v1/shape?table=items&offset=-1&" + "y" * 300, {}, None),
        (
            "POST",
            "/v1/shape?table=items&offset=-1&subset__limit=abc&subset__where=%27",
            {"Content-Type": "application/json"},
            b'{"order_by": "id", "limit": 1, "where": "id > 0"}',
        ),
        (
            "POST",
            "/v1/shape?table=items&offset=-1&subset__params=nojson&subset__where=id%3E%241",
            {"Content-Type": "application/json"},
            b'{"params": {"1": "0"}}',
        ),
        # the credentials' own names, sent by a client
        ("GET", "/v1/shape?table=items&offset=-1&source_id=x", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&api_secret=x", {}, None),
        # routes and methods (the root: an empty 200 without Cache-Control, as the engine's;
        # the proxy's said `no-store`)
        ("GET", "/", {}, None),
        ("HEAD", "/", {}, None),
        ("GET", "/", {"Origin": "https://a.example"}, None),
        ("GET", "/v1/health", {}, None),
        ("HEAD", "/v1/health", {}, None),
        ("GET", "/v1/nosuch", {}, None),
        ("GET", "/v1/shape", {}, None),
        ("GET", "/v1/shape/?table=items&offset=-1", {}, None),
        ("PATCH", "/v1/shape?table=items&offset=-1", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1", {"Accept": "text/event-stream"}, None),
        # live modes with other methods and conditions
        ("HEAD", f"{shape}&offset={offset}&live=true&live_sse=true", {}, None),
        ("HEAD", f"{shape}&offset={offset}&live=true&experimental_live_sse=true", {}, None),
        ("POST", f"{shape}&offset={offset}&live=true", {}, b'{"where": "id > 1"}'),
        ("POST", f"{shape}&offset={offset}&live=true&live_sse=true", {}, b"{}"),
        ("GET", f"{shape}&offset={offset}&live=true", {"If-None-Match": etag}, None),
        ("GET", f"{shape}&offset={offset}&live=true&live_sse=true", {"If-None-Match": "*"}, None),
        ("GET", catch_up, {"Range": "bytes=0-10"}, None),
        ("GET", catch_up, {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, None),
        ("GET", f"{shape}&offset=-1&log=changes_only", {}, None),
        ("GET", f"{shape}&offset=now&log=changes_only", {}, None),
        ("GET", f"{shape}&offset={offset}&log=changes_only&live=true", {}, None),
        ("GET", "/v1/shape?table=items&offset=-1&log=changes_only&subset__where=id%3E1", {}, None),
        (
            "OPTIONS",
            f"{shape}&offset={offset}&live=true&live_sse=true",
            {"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
            None,
        ),
        ("DELETE", "/v1/shape?table=items&handle=nosuch&secret=x", {}, None),
        # a DELETE's parameters, checked by the engine's own check (`table` and `handle`, an
        # empty one absent, then the definition; offset, live, live_sse never read), each
        # refused before the engine deletes anything
        ("DELETE", "/v1/shape?table=", {}, None),
        ("DELETE", "/v1/shape?live=1&table=&offset=-1", {}, None),
        ("DELETE", "/v1/shape?table=&handle=&live_sse=x", {}, None),
        ("DELETE", "/v1/shape?table=it%C3%A9ms&live_sse=", {}, None),
        ("DELETE", "/v1/shape?table=nosuch&offset=-1%00", {}, None),
        ("DELETE", "/v1/shape?handle=&offset=x", {}, None),
    ]


async def _until_in_log(
    session: aiohttp.ClientSession, base: str, handle: str, query: str = "table=items"
) -> None:
    """Wait until the shape `handle` (of `query`) has a transaction in its log."""
    target = f"{base}/v1/shape?{query}&handle={handle}&offset=0_inf"

    async def in_log() -> bool:
        status, _, raw = await _send(session, "GET", target, {}, None)
        assert status == 200, raw
        return any("key" in m for m in json.loads(raw))

    await wait_until_async(in_log, timeout=30, message="the write in the shape's log")


#: Hand-picked cases compared at once: fewer than the engine's 32 initial syncs at a time.
_AT_ONCE = 12


async def test_hand_picked_requests_are_answered_as_the_engine_answers(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    base = await _open_proxy(engine, engine_secret, make_proxy)
    differences = []
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await _send(
            session, "GET", base + "/v1/shape?table=items&offset=-1", {}, None
        )
        assert status == 200
        handle = headers["electric-handle"]
        etag = headers["etag"]
        status, headers, _ = await _send(
            session, "GET", f"{base}/v1/shape?table=items&offset=0_0&handle={handle}", {}, None
        )
        assert status == 200
        offset, catch_up_etag = headers["electric-offset"], headers["etag"]
        room = asyncio.Semaphore(_AT_ONCE)

        async def compare(method: str, target: str, req_headers: dict[str, str], body: Any) -> None:
            """One case: straight to the engine and through the proxy at once (a DELETE: one
            after the other; the first changes what the second finds)."""
            urls = (_direct(engine, engine_secret, target), base + target)
            async with room:
                if method == "DELETE":
                    sent = [await _send(session, method, url, req_headers, body) for url in urls]
                else:  # (a live case's two holds side by side: the engine's 1 s, once)
                    sent = await asyncio.gather(
                        *(_send(session, method, url, req_headers, body) for url in urls)
                    )
                answers = []
                for status, headers, raw in sent:
                    if headers.get("content-type", "").startswith("text/event-stream"):
                        raw = _sse_rows(raw)
                    answers.append(_comparable(status, headers, raw, method))
            expected, got = answers
            if got != expected:
                differences.append((method, target[:200], req_headers, expected, got))

        # Cases side by side (most of the time was live ones waiting out the engine's hold,
        # one after another); nothing in them writes, and the DELETE goes last, alone.
        status, headers, _ = await _send(
            session, "GET", _direct(engine, engine_secret, "/v1/shape?table=items&offset=now"),
            {}, None,
        )  # fmt: skip
        assert status == 200
        cases = _cases(handle, offset, etag, catch_up_etag, headers["etag"])
        await asyncio.gather(*(compare(*case) for case in cases if case[0] != "DELETE"))
        for case in cases:
            if case[0] == "DELETE":
                await compare(*case)
    for method, target, req_headers, expected, got in differences:
        print("DIFFERENCE", method, target, req_headers)
        print("  engine:", str(expected)[:600])
        print("  proxy: ", str(got)[:600])
    assert differences == []


async def _send_live(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> tuple[int, Any, bytes]:
    """A live request's answer; an SSE stream read up to the up-to-date that follows its
    first row (what the commit sends), not to the stream's end (the engine's 2 s, then the
    proxy's next stream: 4 s a case, the same events after the commit's)."""
    async with session.request(
        method, URL(url, encoded=True), headers=headers,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    ) as resp:  # fmt: skip
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            return resp.status, resp.headers, await asyncio.wait_for(resp.read(), 30)
        raw, row = b"", False
        while True:
            line = await asyncio.wait_for(resp.content.readline(), 30)
            raw += line
            if not line:
                return resp.status, resp.headers, raw
            if line.startswith(b"data: "):
                row = row or b'"key"' in line
                if row and b'"up-to-date"' in line:
                    return resp.status, resp.headers, raw


LIVE_CASES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "live=true", {}),
    ("GET", "live=true&cursor=5", {}),
    ("GET", "live=true&live_sse=true", {}),
    ("GET", "live=true&experimental_live_sse=true", {}),
    ("HEAD", "live=true", {}),
    ("GET", "live=true&replica=full", {}),
    ("GET", "live=true&where=id%3E2&live_sse=true", {}),
]


@pytest.mark.parametrize("case", LIVE_CASES, ids=[c[1] + str(c[2]) for c in LIVE_CASES])
async def test_live_answers_with_data_are_the_engines(
    engine: EngineProcess,
    engine_secret: str,
    make_proxy: Any,
    case: tuple[str, str, dict[str, str]],
) -> None:
    """A live request parked at the tip, straight and through the proxy, answered by the same
    commit: the same status, headers and messages."""
    method, extra, req_headers = case
    base = await _open_proxy(engine, engine_secret, make_proxy)
    defining = [p for p in extra.split("&") if p.split("=")[0] in ("replica", "columns", "where")]
    query = "&".join(["table=items", *defining])
    async with aiohttp.ClientSession() as session:
        offset, handle = "-1", ""
        while True:  # to the tip, straight
            target = f"/v1/shape?{query}&offset={offset}" + (f"&handle={handle}" if handle else "")
            _, headers, _ = await _send(
                session, "GET", _direct(engine, engine_secret, target), {}, None
            )
            handle, offset = headers["electric-handle"], headers["electric-offset"]
            if "electric-up-to-date" in headers:
                break
        before = await parked_requests(engine.url, engine_secret)
        target = f"/v1/shape?table=items&handle={handle}&offset={offset}&{extra}"
        waiting = [
            asyncio.ensure_future(_send_live(session, method, url, req_headers))
            for url in (_direct(engine, engine_secret, target), base + target)
        ]

        async def both_parked() -> bool:
            return await parked_requests(engine.url, engine_secret) >= before + 2

        await wait_until_async(both_parked, timeout=20, message="both parked in the engine")
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            row = 10 + LIVE_CASES.index(case)  # (each case a row of its own: one engine)
            conn.execute("INSERT INTO items VALUES (%s, 'org-a', 'ten', 10)", (row,))
        answers = []
        for task in waiting:
            status, headers, raw = await task
            assert method == "HEAD" or b'"ten"' in raw, raw  # the commit's row
            if headers.get("content-type", "").startswith("text/event-stream"):
                raw = _sse_rows(raw)
            answers.append(_comparable(status, headers, raw, method))
    assert answers[1] == answers[0]
    assert answers[0][0] == 200


DELETES = [
    "/v1/shape?handle=HANDLE",
    "/v1/shape?handle=HANDLE&offset=-1",
    "/v1/shape?table=items&handle=HANDLE",
    "/v1/shape?table=items",
    # (what the engine never reads on a DELETE: the proxy refused these two)
    "/v1/shape?table=items&live=true&offset=nonsense&live_sse=x&cursor=y",
    "/v1/shape?table=&handle=HANDLE&live=1",
    "/v1/shape?handle=nosuch",
    "/v1/shape",
]


@pytest.mark.parametrize("target", DELETES)
async def test_deletes_are_answered_as_the_engine_answers(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, target: str
) -> None:
    """Each DELETE straight and through the proxy, on a shape made for it each time."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    answers = []
    async with aiohttp.ClientSession() as session:
        for url in (lambda t: _direct(engine, engine_secret, t), lambda t: base + t):
            status, headers, _ = await _send(
                session, "GET", base + "/v1/shape?table=items&offset=-1", {}, None
            )
            assert status == 200
            deleting = target.replace("HANDLE", headers["electric-handle"])
            status, headers, raw = await _send(session, "DELETE", url(deleting), {}, None)
            answers.append(_comparable(status, headers, raw, "DELETE"))
    assert answers[1] == answers[0]
    assert answers[0][0] == (400 if target == "/v1/shape" else 404 if "nosuch" in target else 202)


_SHAPE_REQUEST = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
#: What follows two valid requests in one packet (ids: what it is).
PIPELINED_TAILS = {
    "bad-header": b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "no-host": b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    "long-target": b"GET /" + b"a" * 11000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "http-2.0": b"GET /v1/shape?table=items&offset=-1 HTTP/2.0\r\nHost: x\r\n\r\n",
    "bad-chunk": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    # (a GET is answered at its head when its body is still to come, not when what follows
    # it in the same read is a malformed body: the 400 alone, as the engine answers)
    "get-bad-chunk": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "closing": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    # answered as plain HTTP, then the connection closes: what follows is not read
    "upgrade": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "upgrade-h2c": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings"
    b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    "http-1.0": b"GET /v1/health HTTP/1.0\r\n\r\nGET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    # Two Authorization headers (the proxy's own 400, on purpose) on a head the engine refuses
    # for something else: the engine's answer, as the engine checks in its order (the proxy's
    # 400 came first: HTTP/2.0 was its 400, not the engine's 505)
    "http-2.0-two-authorization": b"GET /v1/shape?table=items&offset=-1 HTTP/2.0\r\nHost: x\r\n"
    b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    "bad-target-two-authorization": b"GET *x HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    "http-1.0-chunked-two-authorization": b"POST /v1/shape?table=items&offset=-1 HTTP/1.0\r\n"
    b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "bad-expect-two-authorization": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Expect: 200-ok\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    # A head the engine refuses once it dispatches it, followed in the same read by a malformed
    # chunk: the engine's parser reads the whole read first, so its answer is the 400 of the
    # malformed body; the proxy answered the head's refusal (505, 501, its own 400)
    "http-2.0-bad-chunk": b"POST /v1/shape?table=items&offset=-1 HTTP/2.0\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "http-1.0-chunked-bad-chunk": b"POST /v1/shape?table=items&offset=-1 HTTP/1.0\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "unknown-coding-bad-chunk": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\nzz\r\n",
    "two-authorization-bad-chunk": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n",
}


async def _raw_exchange(base: str, data: bytes) -> list[Any]:
    """`data` in one write to the server at `base`; each answer until it closes, as status,
    JSON body less the proxy's `code` (rows for a shape's), content-type and connection."""
    front = URL(base)
    reader, writer = await asyncio.open_connection(front.host, front.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    answers = []
    for status, headers, body in responses(raw):
        answer = json.loads(body) if body else None
        if isinstance(answer, dict):
            answer.pop("code", None)
        elif isinstance(answer, list):
            answer = sorted(m["key"] for m in answer if "key" in m)
        answers.append(
            (status, answer, headers.get("content-type"), headers.get("connection", "keep-alive"))
        )
    return answers


async def _refused_exchange(base: str, data: bytes) -> list[Any]:
    """`_raw_exchange` of a head refused before all of it is read: both servers close at
    once after the answer (as Electric's does), so bytes still arriving then make the kernel
    reset the connection, and a reset that overtakes the answer loses it (CI, 2026-12-06:
    the engine's 431 to `header-endless` under load). Such a race is the network's, not an
    answer: asked again, at most twice more."""
    for attempt in range(3):
        try:
            return await _raw_exchange(base, data)
        except ConnectionResetError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("tail", list(PIPELINED_TAILS))
async def test_pipelined_requests_are_answered_alike(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, tail: str
) -> None:
    """Two valid requests and what follows them in one packet, raw, straight to the engine and
    through the proxy: the same answers in the same order. The engine answered a valid
    request followed in the same packet by a malformed one with the 400 alone (aiohttp's
    parser; sync_engine/http/parser_refusals.py), the proxy both."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    target = b"/v1/shape?table=items&offset=-1"
    direct = target + b"&secret=" + engine_secret.encode()
    answers = [
        await _raw_exchange(engine.url, (_SHAPE_REQUEST % direct) * 2 + PIPELINED_TAILS[tail]),
        await _raw_exchange(base, (_SHAPE_REQUEST % target) * 2 + PIPELINED_TAILS[tail]),
    ]
    assert answers[1] == answers[0]
    assert [a[0] for a in answers[0][:2]] == [200, 200]
    assert len(answers[0]) == 3


#: Requests whose declared body has not come (yet): the engine answers each at once, as
#: Electric's server does (its routes never read a GET's body; a bad Expect is refused before
#: the body); the proxy waited for the body, and sent nothing until its read timeout (408).
BODY_NOT_COME = {
    "get-content-length": b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\n\r\n",
    "head-content-length": b"HEAD /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\n\r\n",
    "get-chunked": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    "get-upgrade-chunked": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    "options-chunked": b"OPTIONS /v1/shape HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
    b"Access-Control-Request-Method: GET\r\nTransfer-Encoding: chunked\r\n\r\n",
    "post-bad-expect": b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    b"Expect: 200-ok\r\nContent-Length: 10\r\n\r\n",
}


async def _first_answer(base: str, data: bytes, *, head: bool) -> tuple[Any, ...]:
    """`data` sent to the server at `base`, the connection left open: the first answer's
    status, JSON body (less the proxy's `code`; rows for a shape's) and content-type, read
    within 5 s (("no answer",) by then: the server is waiting for more)."""
    front = URL(base)
    reader, writer = await asyncio.open_connection(front.host, front.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if x)}
        length = 0 if head else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    except TimeoutError:
        return ("no answer",)
    finally:
        writer.close()
    answer = json.loads(body) if body else None
    if isinstance(answer, dict):
        answer.pop("code", None)
    elif isinstance(answer, list):
        answer = sorted(m["key"] for m in answer if "key" in m)
    return int(lines[0].split(" ")[1]), answer, headers.get("content-type")


async def test_requests_whose_body_has_not_come_are_answered_alike(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """Each head of `BODY_NOT_COME`, its body never sent, straight and through the proxy: the
    same first answer, at once (attack 22:40, faults2 22:23: Bandit does so too)."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    secret = b"&secret=" + engine_secret.encode()
    differences = []
    for name, data in BODY_NOT_COME.items():
        direct = data.replace(b"offset=-1 ", b"offset=-1" + secret + b" ")
        head = data.startswith(b"HEAD")
        answers = [
            await _first_answer(engine.url, direct, head=head),
            await _first_answer(base, data, head=head),
        ]
        if answers[1] != answers[0]:
            differences.append((name, *answers))
    assert differences == []


async def _to_the_tip(session: aiohttp.ClientSession, url: Any, query: str) -> tuple[str, str]:
    """Follow the shape of `query` (straight to the engine: `url(target)`) to up-to-date."""
    offset, handle = "-1", ""
    while True:
        target = f"/v1/shape?{query}&offset={offset}" + (f"&handle={handle}" if handle else "")
        status, headers, _ = await _send(session, "GET", url(target), {}, None)
        assert status == 200
        handle, offset = headers["electric-handle"], headers["electric-offset"]
        if "electric-up-to-date" in headers:
            return handle, offset


@pytest.mark.parametrize("live", ["live=true", "live=true&live_sse=true"], ids=["poll", "sse"])
async def test_a_rotation_is_answered_alike(
    own_engine: EngineProcess, engine_secret: str, make_proxy: Any, live: str
) -> None:
    """Live requests parked at the tip, straight and through the proxy, when the shape
    rotates (TRUNCATE): the same 409 must-refetch for a long-poll, the same clean end for an
    SSE stream; then what the client does next, the same answers: its old handle again
    (409), the new shape with `expired_handle`, and the new shape's catch-up."""
    engine = own_engine  # (its own: see the fixture)
    base = await _open_proxy(engine, engine_secret, make_proxy)

    def direct(target: str) -> str:
        return _direct(engine, engine_secret, target)

    async with aiohttp.ClientSession() as session:
        handle, offset = await _to_the_tip(session, direct, "table=items")
        before = await parked_requests(engine.url, engine_secret)
        target = f"/v1/shape?table=items&handle={handle}&offset={offset}&{live}&cursor=7"
        waiting = [
            asyncio.ensure_future(_send(session, "GET", url, {}, None))
            for url in (direct(target), base + target)
        ]

        async def both_parked() -> bool:
            return await parked_requests(engine.url, engine_secret) >= before + 2

        await wait_until_async(both_parked, timeout=20, message="both parked in the engine")
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE items")
        answers = []
        for task in waiting:
            status, headers, raw = await task
            if headers.get("content-type", "").startswith("text/event-stream"):
                raw = _sse_rows(raw)
            answers.append(_comparable(status, headers, raw, "GET"))
        assert answers[1] == answers[0]
        assert answers[0][:2] == ((200, ([], [])) if "sse" in live else (409, answers[0][1]))
        new_handle = ""
        cases = [
            f"/v1/shape?table=items&handle={handle}&offset={offset}",
            f"/v1/shape?table=items&handle={handle}&offset={offset}&{live}",
            f"/v1/shape?table=items&handle={handle}&offset=-1",
            f"/v1/shape?table=items&offset=-1&expired_handle={handle}",
        ]
        differences = []
        for target in cases:
            seen = []
            for url in (direct(target), base + target):
                status, headers, raw = await _send(session, "GET", url, {}, None)
                seen.append(_comparable(status, headers, raw, "GET"))
                if status == 409:
                    new_handle = headers.get("electric-handle", new_handle)
            if seen[1] != seen[0]:
                differences.append((target, *seen))
            if len(cases) == 4 and target == cases[-1]:
                assert new_handle, seen  # (a 409 names the shape to refetch)
                cases += [
                    f"/v1/shape?table=items&handle={new_handle}&offset=-1&expired_handle={handle}",
                    f"/v1/shape?table=items&handle={new_handle}&offset=0_0",
                ]
    assert differences == []


@pytest.mark.parametrize("own_engine", [("--max-shapes", "1")], indirect=True, ids=["max-shapes"])
async def test_a_503_is_answered_alike(
    own_engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """The engine's 503 (its shape limit reached while its one shape is in use: a long-poll
    held on it): status, JSON body, Retry-After and cache headers, straight and through the
    proxy, for GET and HEAD."""
    engine = own_engine  # (its own: see the fixture)
    base = await _open_proxy(engine, engine_secret, make_proxy)
    async with aiohttp.ClientSession() as session:
        target = "/v1/shape?table=items&offset=-1"
        for _ in range(100):  # (to its tip)
            status, headers, _ = await _send(
                session, "GET", _direct(engine, engine_secret, target), {}, None
            )
            assert status == 200
            target = (
                f"/v1/shape?table=items&handle={headers['electric-handle']}"
                f"&offset={headers['electric-offset']}"
            )
            if "electric-up-to-date" in headers:
                break
        held = asyncio.create_task(
            _send(session, "GET", _direct(engine, engine_secret, target + "&live=true"), {}, None)
        )
        for _ in range(200):
            if await engine.parked_requests() >= 1:
                break
            await asyncio.sleep(0.05)
        differences = []
        for method, target in [
            ("GET", "/v1/shape?table=items&offset=-1&where=id%3E0"),
            ("HEAD", "/v1/shape?table=items&offset=-1&where=id%3E0"),
            ("GET", "/v1/shape?table=items&offset=-1&columns=id"),
            ("GET", "/v1/shape?table=items&offset=-1&where=id%3E0&Origin=x"),
        ]:
            seen = []
            for url in (_direct(engine, engine_secret, target), base + target):
                status, headers, raw = await _send(
                    session, method, url, {"Origin": "https://a.example"}, None
                )
                seen.append(_comparable(status, headers, raw, method))
            assert seen[0][0] == 503, seen[0]
            if seen[1] != seen[0]:
                differences.append((method, target, *seen))
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    assert differences == []


async def _leave_mid_body(url: str, after: int) -> None:
    """Ask for `url` raw and close the connection once `after` bytes of the answer came."""
    parsed = URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    try:
        writer.write(f"GET {parsed.raw_path_qs} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        got = 0
        while got < after:
            piece = await asyncio.wait_for(reader.read(65536), 30)
            assert piece, "closed before the body"
            got += len(piece)
    finally:
        writer.transport.abort()  # (a reset, as a closed tab's)


async def test_a_client_leaving_mid_body_changes_nobody_elses_answer(
    own_engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """A large initial sync whose client leaves after its first 64 KB, alone and while a
    second client's identical request shares its engine request: the second client, and
    the next one, get the whole answer, as straight from the engine (nothing cut short,
    cached or shared half-written)."""
    engine = own_engine  # (its own: see the fixture)
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO items SELECT i, 'org-a', repeat('x', 400), i "
            "FROM generate_series(100, 8100) i"
        )
    base = await _open_proxy(engine, engine_secret, make_proxy)
    target = "/v1/shape?table=items&offset=-1"
    async with aiohttp.ClientSession() as session:
        for where in ("", "&where=id%3E0", "&where=id%3E1"):
            direct = _direct(engine, engine_secret, target + where)
            expected = _comparable(*await _send(session, "GET", direct, {}, None), "GET")
            assert expected[0] == 200 and len(expected[1][0]) > 1000  # (a chunk of ~1 MB)
            for url in (direct, base + target + where):
                # (each case a URL nobody asked before: `cache-buster`, which the engine
                # ignores, as Electric does)
                # together: one leaves while the other's identical request is under way
                other = asyncio.ensure_future(
                    _send(session, "GET", url + "&cache-buster=t", {}, None)
                )
                await _leave_mid_body(url + "&cache-buster=t", 65536)
                together = _comparable(*await other, "GET")
                # alone: it leaves, then the next client asks
                await _leave_mid_body(url + "&cache-buster=a", 65536)
                alone = _comparable(
                    *await _send(session, "GET", url + "&cache-buster=a", {}, None), "GET"
                )
                assert together == expected
                assert alone == expected


#: Odd and hostile framings of one request (`T`: a shape's target), each sent raw.
FRAMINGS = {
    "cl-and-te": b"POST T HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST T HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}x",
    "te-chunked-twice": b"POST T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n",
    "obs-fold": b"GET T HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
    "lf-only": b"GET T HTTP/1.1\nHost: x\nConnection: close\n\n",
    "bare-cr": b"GET T HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
    "absolute-form": b"GET http://xT HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "get-star": b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "connect-origin-form": b"CONNECT T HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "trace": b"TRACE T HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "lowercase-method": b"get T HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "two-hosts": b"GET T HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n",
    "space-in-target": b"GET /v1/shape?table=items &offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "http-1.2": b"GET T HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n",
    "chunk-extension": b"POST T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n2;a=b\r\n{}\r\n0\r\n\r\n",
    "chunk-trailer": b"POST T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n",
    "negative-length": b"POST T HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "plus-length": b"POST T HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\nConnection: close\r\n\r\n{}",
    "get-with-body": b"GET T HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    "head-http-1.0": b"HEAD T HTTP/1.0\r\n\r\n",
    "header-without-colon": b"GET T HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    "empty-header-name": b"GET T HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
    "expect-unknown": b"POST T HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}",
    # a coding with no final chunked: the engine's parser refuses the head (400), not a 501
    "te-identity": b"GET T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
    b"Connection: close\r\n\r\n",
    "te-gzip-http-1.0": b"GET T HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te-empty-then-chunked": b"POST T HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\n"
    b"Connection: close\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_odd_framings_are_answered_alike(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, framing: str
) -> None:
    """Raw, straight to the engine and through the proxy: the same answers (status, JSON body
    less the proxy's `code`, rows, content-type, connection), in the same number."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    target = b"/v1/shape?table=items&offset=-1"
    direct = target + b"&secret=" + engine_secret.encode()
    data = FRAMINGS[framing]
    answers = [
        await _raw_exchange(engine.url, data.replace(b" T ", b" " + direct + b" ").replace(
            b"http://xT", b"http://x" + direct)),
        await _raw_exchange(base, data.replace(b" T ", b" " + target + b" ").replace(
            b"http://xT", b"http://x" + target)),
    ]  # fmt: skip
    assert answers[1] == answers[0]
    assert answers[0]


#: `OPTIONS *` (RFC 9110, 9.3.7: about the server, not a resource) in the forms a client or a
#: probe sends it; and `*` with a query, which is no target form at all (RFC 9112, 3.2.4).
ASTERISK_REQUESTS = {
    "plain": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "origin": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n"
    b"Connection: close\r\n\r\n",
    "preflight": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n"
    b"Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: if-none-match\r\n"
    b"Connection: close\r\n\r\n",
    "http-1.0": b"OPTIONS * HTTP/1.0\r\n\r\n",
    "with-a-query": b"OPTIONS *?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("form", list(ASTERISK_REQUESTS))
async def test_options_asterisk_is_answered_alike_headers_and_all(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, form: str
) -> None:
    """attack's 12:10 report (engine 400 "Malformed HTTP request", proxy 404 with CORS) came
    from its harness adding `?secret=` to the engine's target: `OPTIONS *?secret=...` is no
    target form (a 400 at both, the last case). The same `OPTIONS *` to both: the same status,
    body and headers (CORS, electric-server, cache-control; not Date or the request id),
    compared raw, as no client library sends it."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    data = ASTERISK_REQUESTS[form]
    answers = []
    for url in (engine.url, base):
        u = URL(url)
        reader, writer = await asyncio.open_connection(u.host, u.port)
        try:
            writer.write(data)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 30)  # (to its end: both close)
        finally:
            writer.close()
        answers.append(
            [
                (
                    status,
                    {k: v for k, v in headers.items() if k not in ("date", "x-request-id")},
                    body,
                )
                for status, headers, body in responses(raw)
            ]
        )
    assert answers[1] == answers[0]
    assert len(answers[0]) == 1
    assert answers[0][0][0] == (400 if form == "with-a-query" else 404)


async def test_an_offset_a_shape_never_handed_out_is_the_engines_to_judge_over_sse(
    own_engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """An SSE client at a real offset below the shape's first transaction (`1_0`: never
    handed out for this shape; Electric's client 1.5.28 sends one after a requestSnapshot
    409), while the shape's shared stream, opened at its empty log's tip, has that
    transaction: straight and through the proxy, the same answer (the engine's 409
    must-refetch, faults2's 6db23da), never the stream's changes from there. Also the other
    modes at such offsets, and `offset=now` asked through the proxy before the
    write (kept by its cache) then after it, plain and with the old ETag (c8f8092)."""
    engine = own_engine  # (its own: on the shared one, after the others, its shape was once
    # rotated under it, a 409 at its own tip: not understood, see the report of 12-05)
    base = await _open_proxy(engine, engine_secret, make_proxy)
    query = "table=items&where=id%3C%3E-7"  # (a shape of this test's own: its log is empty)
    async with aiohttp.ClientSession() as session:
        handle, offset = await _to_the_tip(session, lambda t: base + t, query)
        shape = f"/v1/shape?{query}&handle={handle}"
        before = await parked_requests(engine.url, engine_secret)
        first = asyncio.ensure_future(
            _send(
                session, "GET", f"{base}{shape}&offset={offset}&live=true&live_sse=true", {}, None
            )
        )

        async def parked() -> bool:
            return await parked_requests(engine.url, engine_secret) >= before + 1

        await wait_until_async(parked, timeout=20, message="the shared stream in the engine")
        # (`now` before the write, through the proxy: its answer may be kept, and must be
        # revalidated once the tip moved)
        now = f"/v1/shape?{query}&offset=now"
        status, headers, _ = await _send(session, "GET", base + now, {}, None)
        assert status == 200
        now_etag = headers["etag"]
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (70, 'org-a', 'seventy', 70)")
        await _until_in_log(session, base, handle, query)
        differences = []
        for method, target, req_headers in [
            ("GET", f"{shape}&offset=1_0&live=true&live_sse=true", {}),  # (the shared stream's)
            ("GET", f"{shape}&offset=1_0", {}),
            ("HEAD", f"{shape}&offset=1_0", {}),
            ("GET", f"{shape}&offset=1_inf", {}),
            ("GET", now, {}),
            ("GET", now, {"If-None-Match": now_etag}),
        ]:
            answers = []
            for url in (_direct(engine, engine_secret, target), base + target):
                status, headers, raw = await _send(session, method, url, req_headers, None)
                if headers.get("content-type", "").startswith("text/event-stream"):
                    raw = _sse_rows(raw)
                answers.append(_comparable(status, headers, raw, method))
            if answers[1] != answers[0]:
                differences.append((method, target, *answers))
        await first
    assert differences == []


def _head_limit_case(case: str, target: bytes) -> bytes:
    """A request at or past one of Electric's (Bandit's) request-head limits, for `target`
    (the engine's has its secret: the request line is padded to the same length either way)."""
    line = MAX_REQUEST_LINE
    close = b"Connection: close\r\n"

    def request_line(length: int) -> bytes:  # `length` bytes, CRLF included
        start = b"GET " + target + b"&pad="
        return start + b"x" * (length - len(start) - len(b" HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"

    def header(length: int) -> bytes:  # one header line of `length` bytes, CRLF included
        return b"X-Big: " + b"v" * (length - len(b"X-Big: \r\n")) + b"\r\n"

    def headers(count: int) -> bytes:  # `count` header lines, Host and Connection among them
        return b"Host: x\r\n" + close + b"".join(b"X-%d: 1\r\n" % i for i in range(count - 2))

    return {
        "line-at-limit": request_line(line) + headers(2) + b"\r\n",
        "line-over-limit": request_line(line + 1) + headers(2) + b"\r\n",
        "line-endless": request_line(3 * line)[: 2 * line],  # (refused before its end)
        "header-at-limit": request_line(100) + headers(2) + header(MAX_HEADER_LINE) + b"\r\n",
        "header-over-limit": request_line(100) + headers(2) + header(MAX_HEADER_LINE + 1)
        + b"\r\n",
        "header-endless": request_line(100) + headers(2) + header(5 * MAX_HEADER_LINE)[:-2000],
        "headers-at-limit": request_line(100) + headers(MAX_HEADERS) + b"\r\n",
        "headers-over-limit": request_line(100) + headers(MAX_HEADERS + 1) + b"\r\n",
        # (an unfinished flood: 125 headers of 8,000 bytes held ~1 MB per connection; the
        # 51st is refused, and nothing much sent after it, or the close may reset the answer)
        "headers-flood": request_line(100) + headers(2) + header(8000) * 49,
        "head-line-over-limit": b"HEAD" + request_line(line + 1)[3:] + headers(2) + b"\r\n",
        "line-after-a-request": request_line(100) + b"Host: x\r\n\r\n" + request_line(line + 1)
        + headers(2) + b"\r\n",
        # (the limit's answer before the parser's: attack 17:15, item 12)
        "header-over-limit-bad-method": b"get" + request_line(100)[3:] + headers(2)
        + header(MAX_HEADER_LINE + 1) + b"\r\n",
        # (after a body of known length in the same packet: the next head is measured too)
        "header-over-limit-after-a-body": b"POST" + request_line(100)[3:]
        + b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        + request_line(100) + headers(2) + header(MAX_HEADER_LINE + 1) + b"\r\n",
    }[case]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "line-at-limit",
        "line-over-limit",
        "line-endless",
        "header-at-limit",
        "header-over-limit",
        "header-endless",
        "headers-at-limit",
        "headers-over-limit",
        "headers-flood",
        "head-line-over-limit",
        "line-after-a-request",
        "header-over-limit-after-a-body",
        "header-over-limit-bad-method",
    ],
)
async def test_request_head_limits_are_the_engines(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, case: str
) -> None:
    """Electric's server (Bandit) refuses a request line over 10,000 bytes (414), a header
    line over 10,000 bytes or a 51st header (431), each line counted whole with its CRLF, and
    so does the engine: the proxy answers each the same (status, JSON body less `code`,
    Connection), served at the limit, refused one byte past it, and refuses an unfinished
    line or header flood as soon as it is over (it held up to ~1 MB of an unfinished head
    for 30 s, then a 408; its limits were 8190 bytes of target, 8192 of name or value, 128
    headers)."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    target = b"/v1/shape?table=items&offset=-1"
    direct = target + b"&secret=" + engine_secret.encode()
    answers = [
        await _refused_exchange(engine.url, _head_limit_case(case, direct)),
        await _refused_exchange(base, _head_limit_case(case, target)),
    ]
    assert answers[1] == answers[0]
    expected = {"at-limit": 200, "line": 414, "head-line": 414}
    status = next((s for k, s in expected.items() if k in case), 431)
    assert answers[0][-1][0] == status, answers[0]
    assert answers[0][-1][3] == "close"  # (refused; served: asked with Connection: close)


#: Long clauses as curl users and hand-built URLs write them: operators, quotes, brackets
#: and `=` raw (each a character the engine's parser reads as it is), `+` for a space.
RAW_CLAUSES = {
    "raw <>": ("id<>0", "+AND+id<>{}"),
    "raw =": ("id<>0", "+OR+id={}"),
    "raw quotes and parens": ("id<>0", "+AND+(title<>'x{}')"),
    "raw brackets and braces": ("id<>0", "+AND+title<>'[{{{}}}]|^`\\'"),
    "params raw": ("id<>0", "+AND+title<>$1", "&params[1]=a=b<c>"),
}


@pytest.mark.parametrize("case", list(RAW_CLAUSES))
async def test_a_long_raw_clause_is_served_as_the_engine_serves_it(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, case: str
) -> None:
    """A `where` with raw `<`, `>`, `=`... at the engine's request-line limit (the secret
    the proxy adds counted) is served straight and through the proxy alike, and one byte
    longer is the 414 both ways. The proxy re-encoded every such character (`%3C`: 3 bytes
    for 1) and refused from ~8 KB a clause the engine serves (transparency 17:16)."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    start, unit, *tail = RAW_CLAUSES[case]
    suffix = "".join(tail)
    secret = f"&secret={engine_secret}"
    limit = MAX_REQUEST_LINE - len("GET ") - len(" HTTP/1.1\r\n") - len(secret)

    def target(length: int) -> bytes:
        where, k = start, 1
        prefix = "/v1/shape?table=items&offset=-1&where="
        room = length - len(prefix) - len(suffix) - len("&cache-buster=")
        while len(where) + len(unit.format(k)) <= room:
            where += unit.format(k)
            k += 1
        text = prefix + where + suffix
        text += "&cache-buster=" + "x" * (length - len(text) - len("&cache-buster="))
        assert len(text) == length
        return text.encode()

    for length, status in ((limit, 200), (limit + 1, 414)):
        request = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        direct = await _raw_exchange(engine.url, request % (target(length) + secret.encode()))
        proxied = await _raw_exchange(base, request % target(length))
        assert proxied == direct, length
        assert direct[0][0] == status, direct


async def test_a_body_over_the_limit_is_answered_as_the_engine_answers_it(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """A POST whose body (9 MB) is over the limit (open.yaml's is the engine's, 8 MiB), then
    a request on the same connection: a 413 and that request's answer, both ways. The proxy
    answered the 413 with Connection: close and closed with the body unread, so a client
    still sending it got a reset instead (attack 16:25), and the next request was lost."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    target = b"/v1/shape?table=items&offset=-1"

    def data(target: bytes) -> bytes:
        body = b'{"where": "' + b"x" * 9_000_000 + b'"}'
        return (
            b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
            + b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )  # fmt: skip

    answers = [
        await _raw_exchange(engine.url, data(target + b"&secret=" + engine_secret.encode())),
        await _raw_exchange(base, data(target)),
    ]
    assert answers[1] == answers[0]
    assert [a[0] for a in answers[0]] == [413, 200]


#: Requests the open proxy answers itself, before (and without) asking the engine: routes,
#: methods and the parameters it checks. Sent to a proxy that has not forwarded anything yet.
PROXY_MADE = [
    ("GET", "/v1/nosuch", {}, None),
    ("HEAD", "/v1/nosuch", {}, None),
    ("GET", "/v1/nosuch", {"Origin": "https://a.example"}, None),
    ("PATCH", "/v1/shape?table=items&offset=-1", {}, None),
    ("PATCH", "/v1/shape?table=items&offset=-1", {"Origin": "https://a.example"}, None),
    ("POST", "/v1/health", {}, b""),
    ("GET", "/v1/shape?offset=-1", {}, None),
    ("GET", "/v1/shape?offset=-1", {"Origin": "https://a.example"}, None),
    ("GET", "/v1/shape?table=items", {}, None),
    ("GET", "/v1/shape?table=items&offset=abc", {}, None),
    ("POST", "/v1/shape?table=items&offset=-1", {"Content-Type": "application/json"}, b"{"),
    # (a body coding the proxy does not read: the engine's 415 had no no-store, e0de1ce)
    ("POST", "/v1/shape?table=items&offset=-1", {"Content-Encoding": "br"}, b"{}"),
    ("DELETE", "/v1/shape?table=", {}, None),
    (
        "OPTIONS",
        "/v1/shape",
        {"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
        None,
    ),
    ("GET", "/", {}, None),
]
#: Not compared: what differs by nature (per answer) or follows from the body compared.
_BY_NATURE = {"date", "x-request-id", "content-length"}


def _every_header(headers: Any) -> dict[str, list[str]]:
    """All of an answer's headers by lower-cased name (values in order), less `_BY_NATURE`."""
    seen: dict[str, list[str]] = {}
    for name, value in headers.items():
        if name.lower() not in _BY_NATURE:
            seen.setdefault(name.lower(), []).append(value)
    return seen


def _proxys(case: tuple[str, str, dict[str, str], bytes | None], headers: Any) -> Any:
    """`_every_header` of the proxy's answer to `case`, less its one documented difference
    there (docs/proxy-transparency.md): a preflight from an Origin reflects the header
    names asked for, so it says `Vary: Origin, Access-Control-Request-Headers`."""
    seen = _every_header(headers)
    if case[0] == "OPTIONS" and seen.get("vary") == ["Origin, Access-Control-Request-Headers"]:
        del seen["vary"]
    return seen


async def test_the_proxys_own_answers_are_the_engines_header_by_header(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """What the proxy answers itself, before the engine has answered it anything (a proxy
    just started): every header and the body, as the engine answers the same request. The
    proxy's answers lacked `electric-server` until the engine had answered it once (a 404, a
    405, a 400 of a parameter it checks, right after a restart)."""
    base = await _open_proxy(engine, engine_secret, make_proxy)
    async with aiohttp.ClientSession() as session:
        through = [await _send(session, m, base + t, h, b) for m, t, h, b in PROXY_MADE]
        straight = [
            await _send(session, m, _direct(engine, engine_secret, t), h, b)
            for m, t, h, b in PROXY_MADE
        ]
    differences = [
        (case[:2], (s[0], _every_header(s[1]), s[2]), (p[0], _proxys(case, p[1]), p[2]))
        for case, s, p in zip(PROXY_MADE, straight, through, strict=True)
        if (s[0], _every_header(s[1]), s[2]) != (p[0], _proxys(case, p[1]), p[2])
    ]
    for case, expected, got in differences:
        print("DIFFERENCE", case, "\n  engine:", expected, "\n  proxy: ", got)
    assert differences == []
    assert all(s[1].get("electric-server") for s in straight)


async def test_the_proxys_policy_errors_carry_the_engines_error_headers(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any,
    engine_secret: str,
) -> None:  # fmt: skip
    """Where the proxy must answer otherwise than the engine (no token, a bad one, a table or
    a mode the policy forbids, too many new shapes, the engine unreachable), its answer has
    the headers the engine puts on its own errors (no-store, JSON, `electric-server`, CORS
    with the methods, no `Vary`) and the engine's body form (compact JSON, `message`, the
    parameter under `errors`), plus its `code`. They lacked `electric-server` (until the
    engine had answered once), `Access-Control-Allow-Methods` (where the config lists its
    origins) and were written with spaces, unlike every engine answer."""
    from tests.proxy.proxy_fakes import ORIGIN, base_config

    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    del config["upstream"]["source_id"]
    config["limits"] = {"new_shape_rate": 0.001, "new_shape_burst": 1}
    proxy = await make_proxy(build_config(config, environ))
    dead = dict(config, upstream={**config["upstream"], "url": "http://127.0.0.1:9"})
    unreachable = await make_proxy(build_config(dead, environ))
    member = proxy.tokens.make(org_id="org-a")
    asked = {"Origin": ORIGIN}
    cases = [
        (proxy, "/v1/shape?table=items&offset=-1", None, 401),
        (proxy, "/v1/shape?table=items&offset=-1", "not-a-token", 401),
        (proxy, "/v1/shape?table=nosuch&offset=-1", member, 403),
        (proxy, "/v1/shape?table=items&offset=-1&replica=full", member, 403),
        (proxy, "/v1/shape?table=items&offset=-1&where=title%3D%271%27", member, 200),
        (proxy, "/v1/shape?table=items&offset=-1&where=title%3D%272%27", member, 429),
        (unreachable, "/v1/shape?table=items&offset=-1", member, 502),
    ]
    answers = [
        await who.request("GET", target, token=token, headers=asked)
        for who, target, token, _ in cases
    ]
    async with aiohttp.ClientSession() as session:
        url = _direct(engine, engine_secret, "/v1/shape?table=nosuch&offset=-1")
        status, engine_headers, raw = await _send(session, "GET", url, asked, None)
    assert status == 400, raw
    same = (
        "cache-control",
        "surrogate-control",
        "content-type",
        "electric-server",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "vary",
    )
    expected = {name: engine_headers.getall(name, []) for name in same}
    exposed = {v.strip() for v in engine_headers["access-control-expose-headers"].split(",")}
    for (_, target, _, status), reply in zip(cases, answers, strict=True):
        assert reply.status == status, (target, reply.status, reply.body)
        if status == 200:
            continue
        got = {name: reply.headers.getall(name, []) for name in same}
        assert got == expected, (status, target)
        readable = {v.strip() for v in reply.headers["access-control-expose-headers"].split(",")}
        assert exposed <= readable, status  # (a browser reads every engine header there)
        body = reply.json()
        assert orjson.dumps(body) == reply.body, reply.body  # (compact, as the engine's)
        assert isinstance(body["message"], str) and isinstance(body["code"], str)
        assert all(isinstance(v, list) for v in body.get("errors", {}).values()), body
        if status in (429, 502):
            assert reply.headers["retry-after"].isdigit()


async def test_a_body_that_does_not_come_in_time_is_refused_with_the_engines_headers(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, monkeypatch: Any
) -> None:
    """A POST whose body stalls past the request deadline: the proxy's 408 (the engine's
    bytes) with the headers of any answer to that request, as the engine's middleware gives
    its own (request id, CORS for the Origin, `electric-server`). They were missing: a
    browser could not read the proxy's 408. (The deadline is shortened here; the engine's is
    30 s, so its answer is not waited for: its headers are those of its other errors.)"""
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    base = await _open_proxy(engine, engine_secret, make_proxy)
    origin = {"Origin": "https://a.example"}
    async with aiohttp.ClientSession() as session:
        url = _direct(engine, engine_secret, "/v1/shape?offset=-1")
        status, reference, _ = await _send(session, "GET", url, origin, None)
    assert status == 400
    front = URL(base)
    reader, writer = await asyncio.open_connection(front.host, front.port)
    try:
        writer.write(
            b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
            b"Origin: https://a.example\r\nContent-Length: 10\r\n\r\n{"
        )
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    [(status, headers, body)] = responses(raw)
    assert status == 408
    assert (
        body
        == b'{"message":"Request timeout: the request did not arrive in time","code":"request_timeout"}'
    )
    assert len(headers.get("x-request-id", "")) == 32
    for name in ("electric-server", "cache-control", "content-type", *(
        n for n in reference if n.lower().startswith("access-control-")
    )):  # fmt: skip
        assert headers.get(name.lower()) == reference.get(name), name

"""The fast lane (`proxy.http.fastlane`) against the real engine: byte for byte what the
general path answers, and a client going away mid long-poll still lets go of the engine.

Two proxies in front of one `sync-engine`, both with collapsing and the response cache off
(where the fast lane applies): one with the fast lane, one without. Each request is sent
twice to each (the first authorises it through the general path, the repeat can take the
fast lane), and every answer is compared raw: status line, headers in order, body. Only
`Date` may differ (it ticks), and `electric-cursor` (the engine's clock-based live cursor,
also the last part of a live answer's ETag).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

import proxy.http.fastlane as fastlane
import proxy.upstream.client as upstream_client
from proxy.config.loader import build_config
from proxy.upstream.forward import FAST_DEADLINE_DELAY
from tests.proxy.engines import engine_on_a_new_database
from tests.proxy.proxy_fakes import ORIGIN, base_config
from tests.proxy.test_upstream_client import OK, RawServer, read_request
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async


@pytest.fixture(scope="module")
def engine_secret() -> str:
    """One secret for the module's one engine (the conftest's is per test)."""
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def real_engine(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[EngineProcess]:
    """One engine for the module's tests (each started its own: ~2 s apiece in CI). What they
    write is their own: rows only another user's token reads (`org-live`)."""
    with engine_on_a_new_database(
        pg_server_url,
        tmp_path_factory.mktemp("fastlane") / "data",
        engine_secret,
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items SELECT i, 'org-' || (i % 2), 't' || i FROM generate_series(1, 40) i",
        "CREATE TABLE posts (id int PRIMARY KEY, body text)",
        "INSERT INTO posts VALUES (1, 'hello'), (2, 'world')",
        "CREATE TABLE blob (id int PRIMARY KEY, payload text)",
        "INSERT INTO blob SELECT i, repeat(md5(i::text), 5) FROM generate_series(1, 3000) i",
        args=("--long-poll-timeout", "3", "--no-fsync"),
    ) as engine:
        yield engine


@pytest.fixture
def lean_heads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The header lines of each head read without its per-header callbacks (`_Lean`)."""
    import proxy.http.protocol as protocol

    heads: list[bytes] = []

    class Spy(protocol._Lean):
        __slots__ = ()

        def __init__(self, connection: Any) -> None:
            super().__init__(connection)
            complete = self.on_headers_complete

            def on_headers_complete() -> None:
                heads.append(connection._memo[0])
                complete()

            self.on_headers_complete = on_headers_complete

    monkeypatch.setattr(protocol, "_Lean", Spy)
    return heads


async def _pair(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    **cache: Any,
) -> tuple[Any, Any]:
    config = base_config(real_engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    config["collapse"] = False
    config["cache"] = {"max_bytes": 0, **cache}
    for table in ("posts", "blob"):
        config["tables"][table] = {"allow": [{"name": "public", "anonymous": True,
                                              "all_rows": True}]}  # fmt: skip
    loaded = build_config(config, environ)
    fast = await make_proxy(loaded)
    general = await make_proxy(loaded, fast_lane=False)
    return fast, general


async def _ask(proxy: Any, head: bytes) -> bytes:
    """One request on its own connection; the whole answer as sent (Content-Length framed)."""
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        raw = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
        if length is not None:
            raw += await reader.readexactly(int(length.group(1)))
        return raw
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _raw_engine(
    serve: Any, idp_server: Any, environ: dict[str, str], *, straight: bool = True
) -> AsyncIterator[tuple[RawServer, Any]]:
    """A scripted engine (`serve` answers each connection) and a proxy config pointing at it:
    `straight`, with collapsing and the response cache off so that every request reaches
    `serve` (where the fast lane applies); else the defaults (both on)."""
    async with RawServer(serve) as server:
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        config = base_config(f"http://127.0.0.1:{port}", str(idp_server.make_url("/jwks.json")))
        if straight:
            config["collapse"] = False
            config["cache"] = {"max_bytes": 0}
        yield server, build_config(config, environ)


def _normal(raw: bytes) -> bytes:
    raw = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", raw)
    raw = re.sub(rb"\r\nelectric-cursor: [^\r]*", b"\r\nelectric-cursor: -", raw)
    return re.sub(rb'(\r\netag: "[^:"]*:[^:"]*:[^:"]*):\d+"', rb'\1:-"', raw)  # (live: + cursor)


def _request(target: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", "Host: proxy.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_the_fast_lane_answers_byte_for_byte_as_the_general_path(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    rows, handle, offset = await sync_through(general, alice)
    assert len(rows) == 20
    etag_reply = await general.get("/v1/shape?table=items&offset=-1", token=alice)
    etag = etag_reply.headers["ETag"]
    auth = f"Authorization: Bearer {alice}"
    rid = "X-Request-Id: fast-lane-test-id-0001"
    shape = "/v1/shape?table=items"
    cases = {
        "initial": _request(f"{shape}&offset=-1", auth, rid),
        "catch-up": _request(f"{shape}&offset=-1&handle={handle}", auth, rid),
        "behind the tip, live": _request(
            f"{shape}&offset=0_0&handle={handle}&live=true", auth, rid
        ),
        "cors": _request(f"{shape}&offset=-1", auth, rid, f"Origin: {ORIGIN}"),
        "http/1.0 keep-alive": _request(
            f"{shape}&offset=-1", auth, rid, "Connection: keep-alive", version="1.0"
        ),
        "http/1.0": _request(f"{shape}&offset=-1", auth, rid, version="1.0"),
        "connection close": _request(f"{shape}&offset=-1", auth, rid, "Connection: close"),
        "no request id": _request(f"{shape}&offset=-1", auth, "Accept: application/json"),
        "304": _request(f"{shape}&offset=-1", auth, rid, f"If-None-Match: {etag}"),
        "gone handle (409)": _request(f"{shape}&offset=0_0&handle=1-2", auth, rid),
        "anonymous, shared": _request("/v1/shape?table=posts&offset=-1", rid),
        # ~600 KB from the engine in many reads: written as it came (writev, no join).
        "large body": _request("/v1/shape?table=blob&offset=-1", rid),
        # A header that is not UTF-8 goes on as the bytes it was (it once made a 500).
        "not utf-8": _request(f"{shape}&offset=-1", auth, rid).replace(
            b"\r\n\r\n", b"\r\nUser-Agent: caf\xe9 \xff\r\n\r\n"
        ),
    }
    answers: dict[str, list[tuple[bytes, bytes]]] = {}

    async def both(head: bytes) -> tuple[bytes, bytes]:
        """`head` to each proxy at once."""
        fast_raw, general_raw = await asyncio.gather(_ask(fast, head), _ask(general, head))
        return fast_raw, general_raw

    async def twice(name: str, head: bytes) -> None:
        """Once, then again: authorised before, so on the fast lane."""
        path = head.split(b" ")[1].decode()
        first = await both(head)
        taken = fast_lane_taken.count(path)
        answers[name] = [first, await both(head)]
        assert fast_lane_taken.count(path) == taken + 1, name

    # The long-poll (answered at the engine's 3 s hold, twice in turn) meanwhile the others
    # in turn (each path the fast lane took is counted: the long-poll's is its own).
    live = "behind the tip, live"
    holding = asyncio.ensure_future(twice(live, cases[live]))
    for name, head in cases.items():
        if name != live:
            await twice(name, head)
    await holding
    # Each made-up id (the repeat's on the fast lane) is 32 random hex digits: no shared
    # prefix, no counter (a client could count other users' requests between two of its own).
    made_up = [
        re.search(rb"X-Request-Id: (\w+)", raw, re.IGNORECASE)
        for pair in answers["no request id"]
        for raw in pair
    ]
    ids = [m.group(1).decode() if m else "" for m in made_up]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len({i[:16] for i in ids}) == len(ids), ids
    for name, pairs in answers.items():
        for attempt, (fast_raw, general_raw) in enumerate(pairs):
            if name == "no request id":  # (each proxy makes up its own)
                fast_raw = re.sub(rb"X-Request-Id: \w+", b"X-Request-Id: -", fast_raw)
                general_raw = re.sub(rb"X-Request-Id: \w+", b"X-Request-Id: -", general_raw)
            assert _normal(fast_raw) == _normal(general_raw), (name, attempt)
    assert answers["not utf-8"][1][0].startswith(b"HTTP/1.1 200 ")
    assert len(answers["large body"][1][0]) > 500_000
    secret = real_engine.secret
    assert secret is not None
    for name, pairs in answers.items():
        assert all(secret.encode() not in raw for pair in pairs for raw in pair), name


async def _ask_in_turn(proxy: Any, heads: list[bytes]) -> list[bytes]:
    """The requests one after the other on one kept-alive connection; the answers as sent."""
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    answers = []
    try:
        for head in heads:
            writer.write(head)
            raw = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
            assert length is not None
            answers.append(raw + await reader.readexactly(int(length.group(1))))
        return answers
    finally:
        writer.close()


async def test_two_users_taking_turns_on_one_connection_each_get_their_own_rows(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """The fast lane remembers the connection's last token: another token on the same
    connection must be looked up as itself, never answered with the previous user's rows."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    tokens = {
        "org-1": fast.tokens.make(sub="alice", org_id="org-1"),
        "org-0": fast.tokens.make(sub="bob", org_id="org-0"),
    }
    rid = "X-Request-Id: fast-lane-test-id-0002"
    turns = ["org-1", "org-0", "org-1", "org-0", "org-0", "org-1"]
    heads = [
        _request("/v1/shape?table=items&offset=-1", f"Authorization: Bearer {tokens[org]}", rid)
        for org in turns
    ]
    fast_answers = await _ask_in_turn(fast, heads)
    assert len(fast_lane_taken) == len(turns) - 2  # (each user's first goes the general way)
    general_answers = await _ask_in_turn(general, heads)
    for org, fast_raw, general_raw in zip(turns, fast_answers, general_answers, strict=True):
        assert _normal(fast_raw) == _normal(general_raw), org
        body = json.loads(fast_raw.split(b"\r\n\r\n", 1)[1])
        orgs = {item["value"]["org_id"] for item in body if "value" in item}
        assert orgs == {org}


async def test_a_client_repeating_its_header_lines_gets_what_each_request_asks_for(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    lean_heads: list[bytes],
) -> None:
    """A head whose header lines are byte for byte the last request's on the connection is
    read without its per-header callbacks and gets the last request's headers
    (`protocol._Lean`), and the fast lane keeps what it made of them (`fast_memo`): other
    targets with the same lines, one changed header (a token of the same length, an
    Origin added, then another), and a repeated Authorization must each be answered as
    the general path answers them, on one kept-alive connection."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    carol = fast.tokens.make(sub="carol", org_id="org-0")
    assert len(alice) == len(carol)  # (the lines differ in bytes only, not in length)
    rid = "X-Request-Id: fast-lane-test-id-0005"
    items, posts = "/v1/shape?table=items&offset=-1", "/v1/shape?table=posts&offset=-1"
    a, c = f"Authorization: Bearer {alice}", f"Authorization: Bearer {carol}"
    origin = f"Origin: {ORIGIN}"
    turns = [
        ("org-1", _request(items, a, rid)),
        ("org-1", _request(items, a, rid)),
        (None, _request(posts, a, rid)),
        ("org-1", _request(items + "&columns=id,org_id", a, rid)),
        ("org-0", _request(items, c, rid)),
        ("org-0", _request(items, c, rid)),
        ("org-0", _request(items, c, rid)),
        ("org-1", _request(items, a, rid)),
        ("org-1", _request(items, a, rid, origin)),
        ("org-1", _request(items, a, rid, origin)),
        (None, _request(items, a, rid, "Origin: https://not-allowed.test")),  # (a 403)
        ("org-1", _request(items, a, rid)),
        (None, _request(items, a, rid, a)),  # (two Authorization headers: a 400)
    ]
    heads = [head for _, head in turns]
    fast_answers = await _ask_in_turn(fast, heads)
    lean, taken = len(lean_heads), len(fast_lane_taken)
    general_answers = await _ask_in_turn(general, heads)
    for (org, head), fast_raw, general_raw in zip(
        turns, fast_answers, general_answers, strict=True
    ):
        assert _normal(fast_raw) == _normal(general_raw), head
        if org is not None:
            assert fast_raw.startswith(b"HTTP/1.1 200 "), head
            body = json.loads(fast_raw.split(b"\r\n\r\n", 1)[1])
            assert {item["value"]["org_id"] for item in body if "value" in item} == {org}
    assert fast_answers[-3].startswith(b"HTTP/1.1 403 ")
    assert fast_answers[-1].startswith(b"HTTP/1.1 400 ")
    # (a repeat after a fast-lane answer is read lean; one answered by a task lets go of
    # what it learnt of the headers, as of its parser)
    assert lean == 3
    assert taken >= 6


async def _ask_in_turn_with_heads(proxy: Any, heads: list[bytes]) -> list[bytes]:
    """`_ask_in_turn`, a HEAD's answer read without a body; the last answer read to the
    connection's end (an HTTP/1.0 request's)."""
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    answers = []
    try:
        for i, head in enumerate(heads):
            writer.write(head)
            if i == len(heads) - 1:
                answers.append(await asyncio.wait_for(reader.read(), 10))
                break
            raw = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
            assert length is not None
            if not head.startswith(b"HEAD "):
                raw += await reader.readexactly(int(length.group(1)))
            answers.append(raw)
        return answers
    finally:
        writer.close()


async def test_a_repeated_head_that_is_not_a_plain_get_is_read_the_full_way(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    lean_heads: list[bytes],
) -> None:
    """A head with the last request's header lines is read lean (`protocol._Lean`), and
    only a GET of an origin-form target over HTTP/1.1 is made into its request there
    (`Connection._lean_head`); a HEAD, a target with a fragment, an HTTP/1.0 request with
    the same lines go the way every request went before, and each is answered as the
    general path answers it, on one kept-alive connection."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    a, rid = f"Authorization: Bearer {alice}", "X-Request-Id: fast-lane-test-id-0007"
    items = "/v1/shape?table=items&offset=-1"
    get = _request(items, a, rid)
    heads = [
        get,
        get,
        get,
        get.replace(b"GET ", b"HEAD ", 1),
        get,
        get,
        _request(items + "#part", a, rid),
        get,
        get,
        _request(items + "&columns=id,org_id", a, rid, version="1.0"),
    ]
    fast_answers = await _ask_in_turn_with_heads(fast, heads)
    lean, taken = len(lean_heads), len(fast_lane_taken)
    general_answers = await _ask_in_turn_with_heads(general, heads)
    for head, fast_raw, general_raw in zip(heads, fast_answers, general_answers, strict=True):
        assert _normal(fast_raw) == _normal(general_raw), head
        if not head.startswith(b"HEAD "):
            assert fast_raw.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")), head
            body = json.loads(fast_raw.split(b"\r\n\r\n", 1)[1])
            assert {item["value"]["org_id"] for item in body if "value" in item} == {"org-1"}
    assert fast_answers[3].startswith(b"HTTP/1.1 200 ") and fast_answers[3].endswith(b"\r\n\r\n")
    assert fast_answers[-1].startswith(b"HTTP/1.0 200 ")
    assert "Connection: keep-alive" not in fast_answers[-1].decode()
    # (read lean: each head after a fast-lane answer, the HEAD, the fragment's and the
    # HTTP/1.0 one among them)
    assert lean >= 6, lean
    assert taken >= 4


async def test_pipelined_requests_with_the_same_header_lines_each_get_their_own_answer(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    lean_heads: list[bytes],
) -> None:
    """Requests sent in one write with the same header lines (the later ones read lean
    once one went by the fast lane) are answered in order, each as the general path."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    a, rid = f"Authorization: Bearer {alice}", "X-Request-Id: fast-lane-test-id-0006"
    targets = [
        "/v1/shape?table=items&offset=-1",
        "/v1/shape?table=items&offset=-1&columns=id,org_id",
        "/v1/shape?table=posts&offset=-1",
    ]
    heads = [_request(t, a, rid) for t in targets]
    for proxy in (fast, general):  # (each authorised once: the fast lane takes the repeats)
        await _ask_in_turn(proxy, heads)
    answers = []
    for proxy in (fast, general):
        server = proxy.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(b"".join(heads + heads))
            got = []
            for _ in range(2 * len(heads)):
                raw = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
                assert length is not None
                got.append(raw + await reader.readexactly(int(length.group(1))))
            answers.append(got)
        finally:
            writer.close()
    assert len(fast_lane_taken) >= 2 * len(heads)
    assert len(lean_heads) >= len(heads)
    for fast_raw, general_raw in zip(*answers, strict=True):
        assert _normal(fast_raw) == _normal(general_raw)
        assert fast_raw.startswith(b"HTTP/1.1 200 ")
    bodies = [json.loads(raw.split(b"\r\n\r\n", 1)[1]) for raw in answers[0]]
    assert next(sorted(item["value"]) for item in bodies[1] if "value" in item) == ["id", "org_id"]


async def test_origins_in_turn_get_the_general_paths_cors_answer(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """The fast lane remembers each Origin's CORS answer per config: an allowed origin, one
    that is not and none at all, in turn, answer as the general path does (a refused origin
    never takes the fast lane)."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    shape = "/v1/shape?table=items&offset=-1"
    auth = f"Authorization: Bearer {alice}"
    rid = "X-Request-Id: fast-lane-test-id-0003"
    origins = [f"Origin: {ORIGIN}", "Origin: https://not-allowed.test", None]
    for _ in range(3):
        for origin in origins:
            head = _request(shape, auth, rid, *([origin] if origin else []))
            taken = len(fast_lane_taken)
            fast_raw = await _ask(fast, head)
            took = len(fast_lane_taken) > taken
            general_raw = await _ask(general, head)
            assert _normal(fast_raw) == _normal(general_raw), origin
            if origin is not None and "not-allowed" in origin:
                assert not took
                assert not fast_raw.startswith(b"HTTP/1.1 200 ")
    assert len(fast_lane_taken) >= 4  # (the allowed and the absent origin, after the first)


async def test_an_answer_without_origin_varies_with_origin_under_listed_origins(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """Attack 07:51: with listed `allow_origins`, a public answer asked for without Origin
    had no CORS headers and no `Vary: Origin`; an edge cache in front of the proxy stored it
    and handed it to a listed origin's browser, which could not read it for an hour (one
    request without Origin did it). Now it says `Vary: Origin` (the fast lane as the general
    path), and a listed origin's answer still names it."""
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    rid = "X-Request-Id: fast-lane-test-id-0009"
    for origin in (None, f"Origin: {ORIGIN}"):
        head = _request("/v1/shape?table=posts&offset=-1", rid, *([origin] if origin else []))
        taken = len(fast_lane_taken)
        for _ in range(3):
            fast_raw = await _ask(fast, head)
            general_raw = await _ask(general, head)
            assert _normal(fast_raw) == _normal(general_raw), origin
            head_lines = fast_raw.split(b"\r\n\r\n", 1)[0].lower()
            assert b"cache-control: public" in head_lines
            vary = re.search(rb"\r\nvary: ([^\r]*)", head_lines)
            assert vary is not None and b"origin" in vary.group(1), (origin, head_lines)
            allow_origin = b"access-control-allow-origin: " + ORIGIN.encode()
            assert (allow_origin in head_lines) == (origin is not None)
        assert len(fast_lane_taken) > taken


async def test_two_configs_in_one_process_each_get_their_own_cache_control(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    """The fast lane remembers a plain answer's Cache-Control and Vary lines by the engine's
    Cache-Control and the decision, for one config only (a reload makes a new one): two apps
    capping `max-age` differently, asked in turn, each answer as their own general path."""
    capped = await _pair(real_engine, idp_server, environ, make_proxy, max_age_cap=7)
    # (no cap in effect: the engine's max-age is far below it; `None`, which said so before,
    # is a load error since w-proxycfg 679450e6)
    uncapped = await _pair(real_engine, idp_server, environ, make_proxy, max_age_cap=10**9)
    alice = capped[0].tokens.make(sub="alice", org_id="org-1")
    _, handle, _ = await sync_through(capped[1], alice)
    head = _request(
        f"/v1/shape?table=items&offset=-1&handle={handle}",
        f"Authorization: Bearer {alice}",
        "X-Request-Id: fast-lane-test-id-0005",
    )
    seen = set()
    for _ in range(3):
        for fast, general in (capped, uncapped):
            taken = len(fast_lane_taken)
            fast_raw = await _ask(fast, head)
            general_raw = await _ask(general, head)
            assert _normal(fast_raw) == _normal(general_raw)
            line = re.search(rb"\r\nCache-Control: ([^\r]*)", fast_raw)
            assert line is not None
            seen.add(line.group(1))
            if len(fast_lane_taken) > taken:
                assert fast_raw.startswith(b"HTTP/1.1 200 ")
    assert len(fast_lane_taken) >= 4  # (each app's repeats)
    assert len(seen) == 2  # (the two caps differ: the test compares two different answers)
    assert any(b"max-age=7" in value for value in seen)


async def test_a_kept_alive_connection_on_the_fast_lane_closes_only_once_idle_for_the_timeout(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keep-alive timer runs on across fast-lane requests: it must neither close a
    connection that was busy since it was armed nor leave an idle one open."""
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "KEEPALIVE_TIMEOUT", 0.6)
    fast, _ = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    head = _request("/v1/shape?table=items&offset=-1", f"Authorization: Bearer {alice}")
    server = fast.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        for _ in range(5):  # idle 0.4 s between requests: 2 s in all, never 0.6 s in a row
            writer.write(head)
            raw = await reader.readuntil(b"\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200 ")
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
            await asyncio.sleep(0.4)  # the stimulus: idle for less than the timeout
        assert len(fast_lane_taken) >= 4
        # Then idle: the proxy closes it (a hang fails the wait; it does not pass late).
        assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        writer.close()


async def test_a_client_gone_from_a_fast_lane_long_poll_lets_go_of_the_engine(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy.access")
    fast, _ = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="carol", org_id="org-live")  # (her rows: this test's own)
    _, handle, offset = await sync_through(fast, alice)
    live = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true"
    head = _request(live, f"Authorization: Bearer {alice}")
    # The first long-poll authorises the request (general path) and ends with the engine's
    # hold (3 s, nothing changes); the second is held by the fast lane.
    first = await _ask(fast, head)
    assert first.startswith(b"HTTP/1.1 200 ")
    server = fast.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head)
    await writer.drain()
    await real_engine.until_parked(1)
    assert fast_lane_taken == [live]
    # Held: once the sweep registered it, its connection keeps no parser (bar 2: memory per
    # held long-poll), though a keep-alive connection keeps one between quick answers.
    from proxy.http.protocol import Connection

    def held_connections() -> list[Connection]:
        return [o for o in gc.get_objects() if isinstance(o, Connection) and o._fast is not None]

    await asyncio.sleep(FAST_DEADLINE_DELAY + 0.5)
    holding = held_connections()
    assert len(holding) == 1 and holding[0]._parser is None
    writer.close()  # the client goes away: the engine request must go too

    async def let_go() -> bool:
        return await real_engine.parked_requests() == 0

    await wait_until_async(let_go, timeout=10, message="the engine let go of the long-poll")
    # Its access line says why it ended (it said `outcome=ok` with its 499)
    records: list[Any] = caplog.records  # (the access fields come as the records' extras)
    gone = [r for r in records if r.name == "proxy.access" and r.status == 499]
    assert [(r.outcome, r.reason) for r in gone] == [("client_gone", "client_disconnected")]
    # And the proxy still serves: a change reaches the next long-poll (on a new engine
    # connection: the dropped one was the only one kept).
    task = asyncio.create_task(_ask(fast, head))
    await real_engine.until_parked(1)
    with psycopg.connect(real_engine.db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (1001, 'org-live', 'live row')")
    answer = await asyncio.wait_for(task, 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"live row" in answer


async def _answer_once_then_drop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    """A scripted engine (`RawServer`) that answers the first request on each connection and
    drops the connection unanswered when the next one arrives on it (the race with its idle
    timeout)."""
    await read_request(reader)
    writer.write(OK)
    await writer.drain()
    await read_request(reader)  # the next request on this connection: dropped unanswered


async def test_a_kept_alive_engine_connection_found_closed_is_retried(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, fast_lane_taken: list[str]
) -> None:
    """An engine that drops a kept-alive connection as the next request arrives (the race
    with its idle timeout; the real engine cannot be made to lose it on purpose): a request
    on the fast lane that gets nothing back starts again on a new connection, as the general
    path retries."""
    async with _raw_engine(_answer_once_then_drop, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(3):
            reply = await proxy.get("/v1/shape?table=items&offset=-1", token=alice)
            assert (reply.status, reply.body) == (200, b"ok")
        assert len(fast_lane_taken) == 2  # the repeats; each found its connection dropped
        assert server.connections == 3


async def test_a_subset_post_on_a_kept_alive_engine_connection_found_closed_is_retried(
    idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """The same race for a subset snapshot sent as a POST (a read, as a GET subset is): it
    got the engine's 502 `upstream_error`; it now starts again on a new connection."""
    async with _raw_engine(_answer_once_then_drop, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        body = json.dumps({"where": "id > 1"}).encode()
        for _ in range(3):
            reply = await proxy.request(
                "POST", "/v1/shape?table=items&offset=-1", token=alice, data=body,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            assert (reply.status, reply.body) == (200, b"ok"), reply.body.decode()
        assert server.connections == 3  # each repeat found its connection dropped: one retry


async def test_a_bug_of_ours_on_the_fast_lane_is_a_logged_500_not_the_engines_502(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception out of the fast lane's own handling of an engine answer (it runs inside
    the engine connection's parser callbacks) was swallowed as the engine's broken answer:
    a 502 `upstream_error` and nothing logged. Now it is logged with its traceback and the
    client gets the 500 `internal_error` the general path answers for a bug."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nx-fast-lane-bug: 1\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    def bug(_: Any) -> Any:
        raise KeyError("a bug")

    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        first = await proxy.get("/v1/shape?table=items&offset=-1", token=alice)
        assert (first.status, first.body) == (200, b"ok")  # (the general path: authorised)
        monkeypatch.setattr(fastlane, "_plan", bug)  # (its one header sequence is new)
        reply = await proxy.get("/v1/shape?table=items&offset=-1", token=alice)
    assert len(fast_lane_taken) == 1
    assert reply.status == 500, reply.body
    assert json.loads(reply.body)["code"] == "internal_error"
    assert any(
        r.levelno == logging.ERROR and r.exc_info and isinstance(r.exc_info[1], KeyError)
        for r in caplog.records
    )


async def test_answers_without_electric_server_or_with_no_store_match_the_general_path(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, fast_lane_taken: list[str]
) -> None:
    """The general path adds the engine's `electric-server` (learnt from an earlier answer) to
    an answer that lacks it and gives a `no-store` answer no `Vary`; the fast lane builds its
    answers itself, so it must do the same (the real engine always names itself and sends
    `no-store` only on errors, so a scripted engine shows it)."""
    answers = {
        b"handle=named": b"electric-server: engine/9\r\nCache-Control: public, max-age=60\r\n",
        b"handle=unnamed": b"Cache-Control: public, max-age=60\r\n",
        b"handle=unstored": b"Cache-Control: no-store\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_request(reader)
            extra = next(v for k, v in answers.items() if k in head.split(b"\r\n", 1)[0])
            writer.write(b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()

    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        fast = await make_proxy(loaded)
        general = await make_proxy(loaded, fast_lane=False)
        alice = fast.tokens.make(sub="alice", org_id="org-1")
        seen = []
        for handle in ("named", "unnamed", "unstored"):
            head = _request(
                f"/v1/shape?table=items&offset=0_0&handle={handle}",
                f"Authorization: Bearer {alice}",
                "X-Request-Id: fast-lane-test-id-0006",
            )
            for _ in range(2):
                fast_raw, general_raw = await _ask(fast, head), await _ask(general, head)
                assert _normal(fast_raw) == _normal(general_raw), handle
                seen.append(fast_raw)
        # (after the first: each handle's is the same decision, `proxy.http.positions`)
        assert len(fast_lane_taken) == 5
        assert all(b"\r\nelectric-server: engine/9\r\n" in raw for raw in seen)
        assert b"\r\nVary:" in seen[3] and b"\r\nVary:" not in seen[5]


async def test_an_answer_to_stream_is_handed_over_to_a_task(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, fast_lane_taken: list[str]
) -> None:
    """A chunked answer leaves the fast lane for the general path's streaming relay once its
    headers are in, and so does a long one when it cannot be spliced (an engine that streams
    answers on purpose: a fake)."""
    big = b"x" * (3 * 1024 * 1024)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_request(reader)
            if b"offset=-1" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
            await writer.drain()

    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(2):
            reply = await proxy.get("/v1/shape?table=items&offset=-1", token=alice)
            assert (reply.status, reply.body) == (200, b"hello world")
            assert reply.headers["Transfer-Encoding"] == "chunked"
            reply = await proxy.get("/v1/shape?table=items&offset=0_0&handle=h-1", token=alice)
            assert (reply.status, len(reply.body)) == (200, len(big))
            assert reply.body == big
        assert len(fast_lane_taken) == 2  # the repeats took it, then went on in a task
        assert server.connections <= 2  # (and the engine connections were kept alive)


def _fds(kind: str) -> int:
    """This process's open descriptors of `kind` ("pipe", "socket")."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(kind + ":")
        except OSError:
            pass
    return count


async def test_a_long_answer_is_spliced_byte_for_byte_and_ends_cleanly_however_it_ends(
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long plain answer on the fast lane is spliced from the engine's socket to the
    client's (`upstream.client.Splice`): the client gets the same bytes (checked against an
    answer the general path reads into Python); both connections stay usable after it; a
    client that leaves mid-body gets the engine connection closed (never reused with the rest
    of that body in it) and leaves no descriptor open; an engine that closes mid-body gets
    the client's connection closed on a short body, as the streaming relay does; a client
    that reads slowly gets every byte. A scripted engine: each handle's first request (the
    general path, which authorises it) gets the whole answer, the repeats behave as named."""
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    head = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: %d\r\n\r\n"
    head %= len(body)
    seen: dict[str, int] = {}
    dropped: list[str] = []  # handles whose engine connection the proxy closed mid-body

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader)
            handle = re.search(rb"handle=(\w+)", request)
            name = handle.group(1).decode() if handle else "-"
            seen[name] = seen.get(name, 0) + 1
            if seen[name] == 1 or name == "whole":
                writer.write(head + body)
                await writer.drain()
            elif name == "cut":  # the engine fails mid-body
                writer.write(head + body[:700_000])
                await writer.drain()
                return
            else:  # "left": the client goes away mid-body
                writer.write(head + body[:300_000])
                await writer.drain()
                if await reader.read() == b"":
                    dropped.append(name)
                return

    spliced: list[int] = []
    splice = upstream_client.Splice

    def spy(*args: Any) -> Any:
        spliced.append(args[4])  # (the bytes still to come when it began)
        return splice(*args)

    pipes, sockets = _fds("pipe") - 2 * len(upstream_client._pipes), _fds("socket")
    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        auth = f"Authorization: Bearer {alice}"
        # (each its own kind of position, so its own prepared decision: `proxy.http.positions`)
        targets = {
            "whole": "/v1/shape?table=items&offset=0_0&handle=whole",
            "cut": "/v1/shape?table=items&offset=0_0&cursor=&handle=cut",
            "left": "/v1/shape?table=items&offset=-1&handle=left",
        }
        for name in ("whole", "cut", "left"):  # (each authorised once: the general path)
            reply = await proxy.get(targets[name], token=alice)
            assert (reply.status, reply.body) == (200, body)
        general = reply.headers
        assert fast_lane_taken == []
        monkeypatch.setattr(upstream_client, "Splice", spy)
        host, port_ = proxy.client.server.host, proxy.client.server.port
        # Spliced, twice on one client connection, the second read slowly.
        reader, writer = await asyncio.open_connection(host, port_)
        writer.write(_request(targets["whole"], auth) * 2)
        for slowly in (False, True):
            raw = await reader.readuntil(b"\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nContent-Length: %d\r\n" % len(body) in raw
            assert b"\r\nVary: " in raw and general["Vary"].encode() in raw
            got = bytearray()
            while len(got) < len(body):
                got += await reader.read(min(4096 if slowly else 1 << 20, len(body) - len(got)))
                if slowly and len(got) < 64 * 1024:
                    await asyncio.sleep(0.01)
            assert got == body
        writer.close()
        assert fast_lane_taken == [targets["whole"]] * 2
        assert len(spliced) == 2 and all(0 < rest <= len(body) for rest in spliced)
        # The engine fails mid-body: a short body, then the client connection closes.
        reader, writer = await asyncio.open_connection(host, port_)
        writer.write(_request(targets["cut"], auth))
        raw = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.split(b"\r\n\r\n", 1)[1] == body[:700_000]
        # (the general path, as the engine connection was closed: a new one, kept alive)
        reply = await proxy.get(targets["whole"], token=alice)
        assert (reply.status, reply.body) == (200, body)
        # The client goes away mid-body: the engine connection is closed, not kept.
        before = len(spliced)
        reader, writer = await asyncio.open_connection(host, port_)
        writer.write(_request(targets["left"], auth))
        await reader.readexactly(200_000)
        writer.close()
        await wait_until_async(lambda: dropped == ["left"], timeout=10,
                               message="the proxy closed the engine connection")  # fmt: skip
        assert len(spliced) == before + 1
        # Still serving, on a kept-alive or a new engine connection.
        reply = await proxy.get(targets["whole"], token=alice)
        assert (reply.status, reply.body) == (200, body)
        assert seen == {"whole": 5, "cut": 2, "left": 2}
        await proxy.client.close()
    # Nothing left open: the splices' pipes are kept for reuse (empty), nothing else.
    await wait_until_async(lambda: _fds("socket") <= sockets, timeout=10, message="sockets closed")
    assert _fds("pipe") - 2 * len(upstream_client._pipes) == pipes


async def test_the_general_paths_relay_splices_a_long_answer_and_ends_cleanly(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Forwarder.relay` (a request new to the proxy, or any with the fast lane off: every
    request of a first sync) splices a long answer passed on unchanged, as the fast lane
    does: exact bytes on a kept-alive connection, a HEAD still answered without a body, an
    engine that fails mid-body closes the client's connection on a short body, a client that
    leaves closes the engine connection; nothing left open."""
    body = bytes(range(251)) * (2 * 1024 * 1024 // 251)
    head = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: %d\r\n\r\n"
    head %= len(body)
    dropped: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader)
            if request.startswith(b"HEAD "):
                writer.write(head)  # (no body: the connection is then closed by the proxy)
            elif b"handle=cut" in request:
                writer.write(head + body[:500_000])
                await writer.drain()
                return
            elif b"handle=left" in request:
                writer.write(head + body[:300_000])
                await writer.drain()
                dropped.append(await reader.read())
                return
            else:
                writer.write(head + body)
            await writer.drain()

    spliced: list[int] = []
    splice = upstream_client.Splice

    def spy(*args: Any) -> Any:
        spliced.append(args[4])
        return splice(*args)

    monkeypatch.setattr(upstream_client, "Splice", spy)
    pipes, sockets = _fds("pipe") - 2 * len(upstream_client._pipes), _fds("socket")
    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded, fast_lane=False)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        auth = f"Authorization: Bearer {alice}"
        target = "/v1/shape?table=items&offset=0_0&handle="
        host, port_ = proxy.client.server.host, proxy.client.server.port
        reader, writer = await asyncio.open_connection(host, port_)
        heads = [_request(target + "whole", auth), _request(target + "whole", auth)]
        heads.append(_request(target + "whole", auth).replace(b"GET ", b"HEAD ", 1))
        writer.write(b"".join(heads))
        for n in range(3):
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nContent-Length: %d\r\n" % len(body) in raw
            if n < 2:
                assert await reader.readexactly(len(body)) == body
        writer.close()
        assert len(spliced) == 2  # (not the HEAD)
        reader, writer = await asyncio.open_connection(host, port_)
        writer.write(_request(target + "cut", auth))
        raw = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert raw.split(b"\r\n\r\n", 1)[1] == body[:500_000]
        reader, writer = await asyncio.open_connection(host, port_)
        writer.write(_request(target + "left", auth))
        await reader.readexactly(200_000)
        writer.close()
        await wait_until_async(lambda: dropped == [b""], timeout=10, message="engine closed")
        assert len(spliced) == 4
        reply = await proxy.get(target + "whole", token=alice)
        assert (reply.status, reply.body) == (200, body)
        await proxy.client.close()
    await wait_until_async(lambda: _fds("socket") <= sockets, timeout=10, message="sockets closed")
    assert _fds("pipe") - 2 * len(upstream_client._pipes) == pipes


async def test_a_long_cache_hit_is_written_whole_and_exact(
    idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """A cached answer over `JOIN_BELOW` goes out as its head then its body (one writev, no
    copy of the body): the hit's bytes are the miss's (but for Date, Age, the request id)."""
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: %d\r\n\r\n"

    asked: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            asked.append(await read_request(reader))
            writer.write(answer % len(body) + body)
            await writer.drain()

    async with RawServer(serve) as server:
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        config = base_config(f"http://127.0.0.1:{port}", str(idp_server.make_url("/jwks.json")))
        config["cache"] = {"max_bytes": 64 * 1024 * 1024, "max_entry_bytes": 16 * 1024 * 1024}
        proxy = await make_proxy(build_config(config, environ))
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        head = _request(
            "/v1/shape?table=items&offset=0_0&handle=h-1",
            f"Authorization: Bearer {alice}",
            "X-Request-Id: cache-hit-test-0001",
        )
        miss, hit = await _ask(proxy, head), await _ask(proxy, head)
        assert len(asked) == 1 and miss.endswith(body)  # (the repeat: from the cache)
        hit = re.sub(rb"\r\nAge: \d+", b"", hit)
        hit, miss = (re.sub(rb"X-Request-Id: \w+", b"X-Request-Id: -", raw) for raw in (hit, miss))
        assert _normal(hit) == _normal(miss)


async def test_out_of_descriptors_for_a_splice_the_answer_is_read_as_before(
    idp_server: Any, environ: dict[str, str], make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No descriptor for the splice's pipe (EMFILE): the fast lane and the relay read the
    answer through Python as before, and the client gets the same bytes (the relay's head
    was already out: an error there was a second answer after it)."""
    body = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    answer = b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: %d\r\n\r\n"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer % len(body) + body)
            await writer.drain()

    def no_pipe() -> tuple[int, int]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(upstream_client, "_pipes", [])
    monkeypatch.setattr(upstream_client, "_pipe", no_pipe)
    async with _raw_engine(serve, idp_server, environ) as (server, loaded):
        proxy = await make_proxy(loaded)
        alice = proxy.tokens.make(sub="alice", org_id="org-1")
        for _ in range(2):  # the general path's relay, then the fast lane
            reply = await proxy.get("/v1/shape?table=items&offset=0_0&handle=h-1", token=alice)
            assert (reply.status, reply.body) == (200, body)

"""Per-principal limits and bounded engine requests on the real path.

Client -> proxy -> `sync-engine` (its CLI, a subprocess) -> real PostgreSQL. One user holding
more live long-polls than its cap (distinct `cache-buster` values, so none collapse) gets
429s with `Retry-After` and a JSON body, while another user's initial sync goes through at
once; a request whose engine URL would be too long is a 414 (or, for a subset, a POST).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from aiohttp import web

import proxy.limits.upstream as upstream_limits
from proxy.config.loader import build_config
from proxy.upstream.url import encode_query
from sync_engine.http.parser_refusals import MAX_REQUEST_TARGET as CLIENT_MAX_TARGET
from tests.proxy.proxy_fakes import base_config
from tests.support.databases import create_database, drop_database
from tests.support.engine_process import EngineProcess, apply_messages, sync_through

HOLD = 4  # the engine's long-poll hold, seconds


@pytest.fixture(scope="module")
def engine_secret() -> str:
    """One engine secret for the module: its tests share one engine (`real_engine`)."""
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def db_url(pg_server_url: str) -> Iterator[str]:
    """One database for the module's engine: 30 items, the even ones org-a's. (A test may
    add rows of org-a; none removes any.)"""
    dbname, url = create_database(pg_server_url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)"
            )
            conn.execute(
                "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-a' ELSE 'org-b' END, "
                "'item ' || i FROM generate_series(1, 30) i"
            )
        yield url
    finally:
        drop_database(pg_server_url, dbname)


@pytest.fixture(scope="module")
def real_engine(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[str]:
    """One engine for the module's tests (each has its own proxy, so its own limits): an
    engine start is most of a test's time."""
    engine = EngineProcess(
        db_url, tmp_path_factory.mktemp("limits-engine") / "data",
        "--secret", engine_secret, "--long-poll-timeout", str(HOLD), "--no-fsync",
    )  # fmt: skip
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()


def _config(engine_url: str, idp: Any, **limits: Any) -> dict[str, Any]:
    config = base_config(engine_url, str(idp.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=HOLD + 10)
    config["limits"] = limits
    return config


def _assert_429(reply: Any) -> None:
    assert reply.status == 429, reply.body
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Cache-Control"] == "no-store"
    assert "message" in reply.json()


async def test_one_user_over_its_long_poll_cap_gets_429s_and_another_user_syncs_at_once(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    proxy = await make_proxy(
        build_config(_config(real_engine, idp_server, max_concurrent=4), environ)
    )
    mallory = proxy.tokens.make(sub="mallory", org_id="org-a")
    alice = proxy.tokens.make(sub="alice", org_id="org-b")
    _, handle, offset = await sync_through(proxy, mallory)
    live = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor="

    # Four distinct long-polls are held by the engine ...
    held = [
        asyncio.create_task(proxy.get(f"{live}&cache-buster=m{i}", token=mallory)) for i in range(4)
    ]
    await _until(lambda: proxy.app[_admission()].active(_principal(mallory)) == 4)
    # ... the next distinct ones are refused at once, not queued behind them.
    started = time.monotonic()
    extra = await asyncio.gather(
        *(proxy.get(f"{live}&cache-buster=x{i}", token=mallory) for i in range(6))
    )
    for reply in extra:
        _assert_429(reply)
    assert "limit 4" in extra[0].json()["message"]
    assert time.monotonic() - started < HOLD / 2
    # The same long-poll again joins the engine request in flight: not charged, not refused.
    joined = asyncio.create_task(proxy.get(f"{live}&cache-buster=m0", token=mallory))

    # Another user's initial sync is not held up by mallory's polls.
    started = time.monotonic()
    rows, _, _ = await sync_through(proxy, alice, extra="&cache-buster=fresh")
    assert time.monotonic() - started < HOLD / 2
    assert sorted(int(r["id"]) for r in rows.values()) == list(range(1, 31, 2))

    replies = await asyncio.gather(*held, joined)
    assert [r.status for r in replies] == [200] * 5
    assert replies[-1].headers.get("electric-cursor") == replies[0].headers.get("electric-cursor")
    # The cap is free again once the polls returned.
    assert proxy.app[_admission()].active(_principal(mallory)) == 0
    reply = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=again", token=mallory)
    assert reply.status == 200


async def test_rate_limit_counts_engine_requests_not_cache_hits(
    real_engine: str, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    proxy = await make_proxy(
        build_config(_config(real_engine, idp_server, rate=0.5, burst=3), environ)
    )
    bob = proxy.tokens.make(sub="bob", org_id="org-a")
    first = await proxy.get("/v1/shape?table=items&offset=-1", token=bob)  # 1st engine request
    assert first.status == 200
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (100, 'org-a', 'new')")
    live = (
        f"/v1/shape?table=items&offset={first.headers['electric-offset']}"
        f"&handle={first.headers['electric-handle']}&live=true&cursor="
    )
    change = await proxy.get(live, token=bob)  # 2nd: answered when the insert arrives
    assert change.status == 200 and b"new" in change.body
    # The same live request again is answered from the proxy's cache (live answers are kept
    # for their max-age, 5 s): free, however often.
    for _ in range(10):
        again = await proxy.get(live, token=bob)
        assert again.status == 200 and again.body == change.body
    # Distinct cache-busters are distinct engine requests: one more fits the burst of 3.
    reply = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=0", token=bob)
    assert reply.status == 200, reply.body
    refused = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=1", token=bob)
    _assert_429(refused)
    assert refused.headers["Retry-After"] == "2"  # one token every 2 s
    # Someone else has their own bucket.
    other = proxy.tokens.make(sub="carol", org_id="org-a")
    reply = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=1", token=other)
    assert reply.status == 200


async def test_rule_limits_override_the_global_ones(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = _config(real_engine, idp_server, rate=0.5, burst=1)
    admin_rule = config["tables"]["items"]["allow"][0]
    assert admin_rule["name"] == "admin"
    admin_rule["limits"] = {"rate": 1000, "burst": 1000}
    proxy = await make_proxy(build_config(config, environ))
    admin = proxy.tokens.make(sub="root", role="admin")
    member = proxy.tokens.make(sub="m", org_id="org-a")
    for i in range(5):
        reply = await proxy.get(f"/v1/shape?table=items&offset=-1&cache-buster={i}", token=admin)
        assert reply.status == 200
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=member)).status == 200
    reply = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=1", token=member)
    _assert_429(reply)


async def test_pool_wait_is_bounded_then_503_with_retry_after(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = _config(real_engine, idp_server, pool_wait=0.3, retry_after=3)
    config["upstream"]["pool_size"] = 2
    proxy = await make_proxy(build_config(config, environ))
    users = [proxy.tokens.make(sub=f"u{i}", org_id="org-a") for i in range(3)]
    _, handle, offset = await sync_through(proxy, users[0])
    live = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor="
    held = [
        asyncio.create_task(proxy.get(f"{live}&cache-buster={i}", token=users[i])) for i in range(2)
    ]
    await _until(lambda: proxy.app[_admission()].in_use == 2)
    started = time.monotonic()
    reply = await proxy.get("/v1/shape?table=items&offset=-1&cache-buster=z", token=users[2])
    waited = time.monotonic() - started
    assert reply.status == 503, reply.body
    assert 3 <= int(reply.headers["Retry-After"]) <= 6
    assert "message" in reply.json()
    assert 0.25 < waited < HOLD / 2
    # (not waited for: the held polls would take the engine's whole hold to return)
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_engine_url_over_the_engine_limit_is_a_414_and_long_subsets_go_as_post(
    real_engine: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    proxy = await make_proxy(build_config(_config(real_engine, idp_server), environ))
    admin = proxy.tokens.make(sub="root", role="admin")
    # 1,400 `é` in a literal: 8.4 KB encoded, past aiohttp's 8,190-byte line but within
    # the engine's (Electric's) 10,000: served (the proxy's old bound made it a 414).
    reply = await proxy.get(_long_where(1400), token=admin)
    assert reply.status == 200, reply.body
    # The longest the proxy's own HTTP parser still reads is over the engine's limit once the
    # proxy adds its source id and secret, as it is with them sent straight to the engine: a
    # 414 in the engine's words (not the engine's answer: it never gets the request).
    reply = await proxy.get(_long_where(_longest(_long_where)), token=admin)
    assert reply.status == 414, reply.body
    assert reply.json()["message"] == "Request line too long: the limit is 10000 bytes"
    assert "%C3%A9%C3%A9" not in reply.body.decode() and "/v1/shape" not in reply.body.decode()
    assert reply.headers["Cache-Control"] == "no-store"
    # One the engine would read with them, made too long by the member rule's filter: a 414
    # naming the limit and what to shorten.
    credentials = len(f"&source_id=src-1&secret={engine_secret}")
    limit = upstream_limits.target_limit("GET")
    n = max(n for n in range(1000, 1700) if len(_long_where(n)) + credentials <= limit)
    member = proxy.tokens.make(sub="alice", org_id="org-a")
    reply = await proxy.get(_long_where(n), token=member)
    assert reply.status == 414, reply.body
    body = reply.json()
    assert f"{limit:,}-byte limit; shorten the where clause" in body["message"]
    assert "%C3%A9%C3%A9" not in reply.body.decode() and "/v1/shape" not in reply.body.decode()
    assert (await proxy.get(_long_where(n), token=admin)).status == 200

    # A subset clause as long goes in a POST body to the engine instead (else this is a 414).
    _, handle, _ = await sync_through(proxy, admin)

    def subset(n: int) -> tuple[str, str]:
        clause = f"title <> '{'é' * n}' AND id <= 3"
        query = (
            f"table=items&offset=-1&handle={handle}&log=changes_only"
            f"&subset__where={quote(clause)}&subset__order_by=id"
        )
        return clause, query

    # The longest that the proxy's own HTTP parser still reads ...
    clause, query = subset(_longest(lambda n: f"/v1/shape?{subset(n)[1]}"))
    # ... is over the engine's limit once rebuilt with the proxy's source id and secret.
    as_get = "/v1/shape?" + encode_query(
        [("table", "items"), ("offset", "-1"), ("handle", handle), ("log", "changes_only"),
         ("subset__where", clause), ("subset__order_by", "id"), ("source_id", "src-1"),
         ("secret", engine_secret)]
    )  # fmt: skip
    assert len(as_get) > upstream_limits.target_limit("GET")
    reply = await proxy.get(f"/v1/shape?{query}", token=admin)
    assert reply.status == 200, reply.body
    rows: dict[str, Any] = {}
    data = reply.json()
    apply_messages(rows, data if isinstance(data, list) else data["data"])
    assert sorted(int(r["id"]) for r in rows.values()) == [1, 2, 3]


async def test_a_client_holding_unread_subsets_is_refused_more_and_others_are_not(
    real_engine: str, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`max_subsets` (`proxy.limits.subsets`): a subset answer the engine has spooled stays in
    its subset budget until handed over, and the proxy relays one over 1 MiB at its client's
    pace. Mallory asks for a subset larger than the kernel can buffer toward her and reads
    nothing of it: her next subset waits for her place (`subset_wait`, 1 s here) and, as she
    never reads, is a 429 `too_many_subsets` (she cannot pile up unread
    answers in the engine's budget, which would get everyone else's large subsets 503s), while
    Alice's subset is served; once Mallory's connection closes, her place is free again.

    The answer must not fit in the proxy's socket send buffer (autotuned up to tcp_wmem's max,
    4 MiB here, of which ~2.8-3 MB of payload): one that fits has left the proxy and the
    engine's budget, so its slot is released, as it should be. The old ~2.9 MB answer sat on
    that edge and was a 200 now and then under load (CI, two xdist workers)."""
    need = _kernel_send_buffer_max() + (2 << 20)
    repeat = -(-need // (2000 * 32))  # md5 strings of 32 characters, 2000 rows
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS big (id int PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat(md5(g::text), %s) FROM generate_series(1, 2000) g"
            " ON CONFLICT DO NOTHING",
            (repeat,),
        )
    config = _config(real_engine, idp_server, max_subsets=1, subset_wait=1)
    config["tables"]["big"] = {"allow": [{"when": {"role": "admin"}, "all_rows": True}]}
    proxy = await make_proxy(build_config(config, environ))
    mallory = proxy.tokens.make(sub="mallory", role="admin")
    alice = proxy.tokens.make(sub="alice", role="admin")
    subset = "/v1/shape?table=big&offset=-1&log=changes_only&subset__where=id%3E0"
    server = proxy.client.server
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        reader.connect((server.host, server.port))
        reader.sendall(
            f"GET {subset} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mallory}\r\n\r\n"
            .encode()
        )  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:  # (the head may come in more than one read)
            got = await asyncio.to_thread(reader.recv, 1024)
            assert got, head
            head += got
        assert head.startswith(b"HTTP/1.1 200"), head
        assert int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0]) > need
        reply = await proxy.get(f"{subset}&cache-buster=2", token=mallory)
        _assert_429(reply)
        assert reply.json()["code"] == "too_many_subsets"
        reply = await proxy.get(subset, token=alice)
        assert reply.status == 200, reply.body
        assert len(reply.json()["data"]) == 2000
    finally:
        reader.close()
    await _until(lambda: len(proxy.app.subsets) == 0)
    reply = await proxy.get(f"{subset}&cache-buster=3", token=mallory)
    assert reply.status == 200, reply.body


async def test_engine_error_bodies_reach_clients_without_the_url_or_secret(
    real_engine: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the proxy's bound lifted, the engine itself refuses the long request line; its
    answer (which quotes the start of the URL) reaches the client cleaned."""
    monkeypatch.setattr(upstream_limits, "MAX_REQUEST_TARGET", 1_000_000)
    proxy = await make_proxy(build_config(_config(real_engine, idp_server), environ))
    admin = proxy.tokens.make(sub="root", role="admin")
    reply = await proxy.get(_long_where(_longest(_long_where)), token=admin)
    assert 400 <= reply.status < 500, reply.body
    text = reply.body.decode()
    assert "/v1/shape" not in text and "%C3%A9%C3%A9" not in text and engine_secret not in text


async def test_a_secret_echoing_engine_error_is_cleaned(
    aiohttp_server: Any,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    """An engine that echoes its whole request URL (secret included) in 4xx bodies, JSON or
    text: the client sees neither the URL nor the secret, and the rest of the body."""
    kinds = iter(["json", "text", "json409"])

    async def echo(request: web.Request) -> web.Response:
        kind = next(kinds)
        url = str(request.url)
        assert engine_secret in url
        if kind == "text":
            return web.Response(status=400, text=f"Bad request line: {url}")
        status = 409 if kind == "json409" else 400
        body = {"message": "Invalid request", "errors": {"url": [url], "raw": [request.path_qs]}}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/v1/shape", echo)
    engine = await aiohttp_server(app)
    config = _config(str(engine.make_url("")), idp_server)
    proxy = await make_proxy(build_config(config, environ))
    admin = proxy.tokens.make(sub="root", role="admin")
    for expected in (400, 400, 409):
        reply = await proxy.get("/v1/shape?table=items&offset=-1&where=id%3D1", token=admin)
        assert reply.status == expected
        text = reply.body.decode()
        assert engine_secret not in text and "/v1/shape" not in text and "src-1" not in text
        if expected != 400 or reply.headers["Content-Type"].startswith("application/json"):
            assert json.loads(text)["message"] == "Invalid request"


# --- helpers ---------------------------------------------------------------------------------


def _long_where(n: int) -> str:
    """A shape request whose where holds `n` `é` (6 bytes each, encoded by the client and the
    proxy alike: a `<`, which the proxy sends raw, makes the engine URL shorter)."""
    where = "title <> '" + "é" * n + "'"
    return f"/v1/shape?table=items&offset=-1&where={quote(where)}"


def _longest(target: Any) -> int:
    """The largest n for which `target(n)` is a request target the proxy's own HTTP parser
    reads (the engine's limit, Electric's); the proxy's engine URL adds ~70 bytes to it."""
    return max(n for n in range(1000, 1700) if len(target(n)) <= CLIENT_MAX_TARGET)


def _kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to by itself (Linux's autotuning cap, the
    third field of net.ipv4.tcp_wmem; the proxy sets no SO_SNDBUF): an answer larger than
    this cannot all be handed to the kernel while its client reads nothing."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as file:
        return int(file.read().split()[2])


def _admission() -> Any:
    from proxy.http.handlers import ADMISSION

    return ADMISSION


def _principal(token: str) -> str:
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    from proxy.runtime import principal_of

    return principal_of(claims)


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)

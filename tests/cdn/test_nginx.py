"""The shipped nginx cache tier (config/nginx/) in front of a real engine on a real Postgres.

    test client / npm client -> nginx (real, Debian package) -> counting pass-through -> engine

The pass-through in the middle is a few lines of aiohttp that forwards every request to the
engine unchanged and records it, so the tests can say how many requests really reached the
engine. It can also answer for the engine with a chosen error status (marked `public` on
purpose) to show that the tier never caches errors even from a misbehaving origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import psycopg
import pytest
from aiohttp import web

from tests.support.engine_process import until_parked
from tests.support.ports import free_port
from tests.support.waiting import wait_until_async

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "config" / "nginx" / "render.py"
NODE_SCRIPT = Path(__file__).with_name("sync_through_cdn.mjs")
SECRET = "cdn-test-engine-secret-4f1d2c"
HOLD = 10  # engine long-poll hold (s): longer than nginx's 5 s lock default on purpose

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


@dataclass
class CountingPassThrough:
    """Forwards to the engine and records `(path_qs, status)` of every request it forwarded."""

    engine: str
    seen: list[tuple[str, int]] = field(default_factory=list)
    #: `path_qs` of every request as it arrives (before the engine answers it).
    arrived: list[str] = field(default_factory=list)
    credentials: list[tuple[str | None, str | None]] = field(default_factory=list)
    fake: tuple[int, str] | None = None  # (status, cache-control): answer instead of engine
    session: aiohttp.ClientSession | None = None

    def count(self, **params: str) -> int:
        """Requests that reached the engine whose query contains all of `params`."""
        from yarl import URL

        n = 0
        for path_qs, _ in self.seen:
            q = URL(path_qs).query
            if all(q.get(k) == v for k, v in params.items()):
                n += 1
        return n

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrived.append(request.path_qs)
        self.credentials.append(
            (request.headers.get("Authorization"), request.headers.get("Cookie"))
        )
        if self.fake is not None:
            status, cc = self.fake
            self.seen.append((request.path_qs, status))
            return web.json_response({"message": "injected"}, status=status,
                                     headers={"cache-control": cc})  # fmt: skip
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.session.request(
            request.method, self.engine + request.path_qs, headers=headers,
            data=await request.read() if request.can_read_body else None,
        ) as up:  # fmt: skip
            self.seen.append((request.path_qs, up.status))
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp


@dataclass
class Stack:
    nginx: str  # base URL of nginx
    counter: CountingPassThrough
    db_url: str
    nginx_log: Path
    engine_log: Path
    handle: str = ""
    offset: str = ""
    nginx_dir: Path | None = None  # render.py's directory: nginx.conf, cache/

    def url(self, **params: str) -> str:
        q = {"table": "items", **params, "secret": SECRET}
        return f"{self.nginx}/v1/shape?{urlencode(q)}"

    def sql(self, statement: str) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute(statement)


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


def _tail(log: Path) -> str:
    return _read(log)[-3000:]


def _inserts(body: bytes) -> list[dict[str, Any]]:
    return [m["value"] for m in json.loads(body) if m.get("headers", {}).get("operation")]


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, server: str = "") -> None:
    """Until `url` answers 200 from a server whose `Server` header starts with `server`: a
    health check answered by anything else on the port (a process that got the same port)
    must not count as this one being up."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, _tail(log)
            try:
                async with s.get(url) as r:
                    if r.status == 200 and r.headers.get("Server", "").startswith(server):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered 200 (Server: {server}...):\n" + _tail(log))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_engine(
    db_url: str, port: int, data_dir: Path, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g")
    return subprocess.Popen(
        [sys.executable, "-m", "sync_engine", "--database-url", db_url, "--port", str(port),
         "--data-dir", str(data_dir), "--secret", SECRET, "--long-poll-timeout", str(HOLD),
         "--no-fsync"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _start_nginx(scratch: Path, port: int, upstream: int, log: Path) -> subprocess.Popen[bytes]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        # Like scripts/dev-postgres: install the Debian package when we may.
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=False,
                           capture_output=True)  # fmt: skip
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    return subprocess.Popen(
        [sys.executable, str(RENDER), "--dir", str(scratch / "nginx"),
         "--listen", f"127.0.0.1:{port}", "--engine", f"127.0.0.1:{upstream}", "--run"],
        # Append mode: nginx reopens /dev/stdout (the access log) with O_APPEND, and error
        # lines written through a shared non-append offset would overwrite access-log lines.
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _scratch_dir() -> Path:
    # Not under tmp_path: pytest's base dir is 0700, and nginx workers started by root run
    # as an unprivileged account (render.py's `shapegate-nginx`).
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-nginx-"))
    scratch.chmod(0o755)
    return scratch


@asynccontextmanager
async def _stack(db_url: str, tmp_path: Path, engine_env: dict[str, str]) -> AsyncIterator[Stack]:
    engine_port, pass_port, nginx_port = free_port(), free_port(), free_port()
    engine_log, nginx_log = tmp_path / "engine.log", tmp_path / "nginx.log"
    engine = _start_engine(db_url, engine_port, tmp_path / "data", engine_log, engine_env)
    counter = CountingPassThrough(f"http://127.0.0.1:{engine_port}")
    counter.session = aiohttp.ClientSession(auto_decompress=False)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counter.handle)
    # handler_cancellation: a client (nginx) that leaves ends its engine request too, as a
    # proxy should; otherwise an SSE stream kept cleanup waiting ~20 s for a keep-alive.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", pass_port).start()
    scratch = _scratch_dir()
    nginx = _start_nginx(scratch, nginx_port, pass_port, nginx_log)
    try:
        await _wait_http(f"http://127.0.0.1:{engine_port}/v1/health", engine, engine_log)
        await _wait_http(
            f"http://127.0.0.1:{nginx_port}/v1/health", nginx, nginx_log, server="nginx"
        )
        yield Stack(
            f"http://127.0.0.1:{nginx_port}", counter, db_url, nginx_log, engine_log,
            nginx_dir=scratch / "nginx",
        )  # fmt: skip
    finally:
        _stop(nginx)
        await runner.cleanup()
        await counter.session.close()
        _stop(engine)
        shutil.rmtree(scratch, ignore_errors=True)
        # Whatever happened, the engine secret (which is in every upstream URL) never reaches
        # nginx's logs.
        assert SECRET not in _read(nginx_log)


@pytest.fixture
async def stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(db_url, tmp_path, {}) as s:
        yield s


@pytest.fixture
async def electric_test_stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The stack with the catch-up lifetimes Electric's own cache test runs with, set the way
    an Electric deployment sets them (max-age 1 s, stale-while-revalidate 3 s)."""
    env = {"ELECTRIC_CACHE_MAX_AGE": "1", "ELECTRIC_CACHE_STALE_AGE": "3"}
    async with _stack(db_url, tmp_path, env) as s:
        yield s


async def _get(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with s.get(url, headers=headers or {}) as r:
        return r.status, r.headers, await r.read()


async def _catch_up(stack: Stack, s: aiohttp.ClientSession) -> dict[str, Any]:
    """Follow the shape from -1 to up-to-date through nginx; returns rows by id."""
    rows: dict[str, Any] = {}
    params = {"offset": "-1"}
    for _ in range(20):
        status, headers, body = await _get(s, stack.url(**params))
        assert status == 200, body
        for m in json.loads(body):
            if m.get("headers", {}).get("operation") == "insert":
                rows[m["value"]["id"]] = m["value"]
        stack.handle, stack.offset = headers["electric-handle"], headers["electric-offset"]
        if "electric-up-to-date" in headers:
            return rows
        params = {"offset": stack.offset, "handle": stack.handle}
    raise AssertionError("never up to date")


async def test_second_client_of_initial_chunk_is_a_cache_hit(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        first = await _get(s, stack.url(offset="-1"))
        second = await _get(s, stack.url(offset="-1"))
        assert first[0] == second[0] == 200
        assert first[1]["X-Cache-Status"] == "MISS"
        assert second[1]["X-Cache-Status"] == "HIT"
        assert second[2] == first[2]
        assert len(_inserts(second[2])) == 5
        # The protocol headers survive the cache untouched.
        for name in ("electric-handle", "electric-offset", "electric-schema", "etag"):
            assert second[1][name] == first[1][name]
        assert second[1]["cache-control"].startswith("public, max-age=604800")
        assert stack.counter.count(offset="-1") == 1

        # A conditional request with the cached ETag is answered 304 by nginx itself.
        status, headers, body = await _get(
            s, stack.url(offset="-1"), {"If-None-Match": first[1]["etag"]}
        )
        assert (status, body) == (304, b"")
        assert headers["electric-handle"] == first[1]["electric-handle"]
        assert stack.counter.count(offset="-1") == 1

        # The secret is part of the key: the same shape with a wrong secret is not served
        # from the cache, and the engine's 401 is not cached either.
        wrong = stack.url(offset="-1").replace(SECRET, "wrong")
        for _ in range(2):
            status, headers, body = await _get(s, wrong)
            assert status == 401 and b"item" not in body
            assert headers["X-Cache-Status"] == "MISS"
        assert stack.counter.count(offset="-1") == 3

        # Neither Authorization nor Cookie reaches the engine through the shared tier.
        await _get(
            s, stack.url(offset="-1", x="auth"),
            {"Authorization": "Bearer user-token", "Cookie": "session=abc"},
        )  # fmt: skip
    assert stack.counter.count(x="auth") == 1
    assert stack.counter.credentials[-1] == (None, None)


async def test_one_origin_or_request_id_is_never_served_to_another(stack: Stack) -> None:
    """The engine echoes a request's Origin in access-control-allow-origin (as Electric does)
    and a client's X-Request-Id. Stored by the tier for everyone, one request from
    https://evil.example made every shape answer unreadable to https://app.example's browsers
    for the entry's lifetime (an hour, plus the stale window), and one client's request id was
    replayed to all the others."""
    evil, app = "https://evil.example", "https://app.example"
    url = stack.url(offset="-1")
    async with aiohttp.ClientSession() as s:
        first = await _get(s, url, {"Origin": evil, "X-Request-Id": "first-client-id-0001"})
        assert first[0] == 200
        assert first[1]["access-control-allow-origin"] == evil
        assert first[1]["x-request-id"] == "first-client-id-0001"

        second = await _get(s, url, {"Origin": app, "X-Request-Id": "second-client-id-0002"})
        assert second[0] == 200 and second[2] == first[2]
        assert second[1]["access-control-allow-origin"] == app
        assert second[1]["x-request-id"] == "second-client-id-0002"
        # (the engine says so, once; nginx keeps a copy per Origin)
        assert first[1].getall("vary") == second[1].getall("vary") == ["Origin"]
        # The same origin again is served from the cache, under its own request id.
        third = await _get(s, url, {"Origin": app})
        assert third[1]["X-Cache-Status"] == "HIT"
        assert third[1]["access-control-allow-origin"] == app
        assert len(third[1].getall("x-request-id")) == 1
        assert third[1]["x-request-id"] not in ("first-client-id-0001", "second-client-id-0002")
        # No Origin (curl, a server): `*`, as the engine answers it.
        bare = await _get(s, url)
        assert bare[1]["access-control-allow-origin"] == "*"
        assert bare[1]["x-request-id"] not in (
            "first-client-id-0001",
            "second-client-id-0002",
            third[1]["x-request-id"],
        )


async def test_a_client_request_id_is_kept_only_as_electric_keeps_it(stack: Stack) -> None:
    """Electric (Plug.RequestId) keeps a client's X-Request-Id only when it is 20 to 200 bytes
    long and answers any other with a fresh id; the tier answered every non-empty one with
    itself ("abc", or a 300-byte id)."""
    url = stack.url(offset="-1")
    async with aiohttp.ClientSession() as s:
        for given, kept in [
            ("a" * 19, False),
            ("a" * 20, True),
            ("request-" + "x" * 192, True),  # 200 bytes
            ("a" * 201, False),
            ("abc", False),
        ]:
            status, headers, _ = await _get(s, url, {"X-Request-Id": given})
            assert status == 200
            assert len(headers.getall("x-request-id")) == 1
            answered = headers["x-request-id"]
            if kept:
                assert answered == given
            else:
                assert answered != given and len(answered) == 32, answered


async def test_stale_while_revalidate_follows_the_engines_window(
    electric_test_stack: Stack,
) -> None:
    """Past max-age but inside the engine's stale-while-revalidate, the stale copy is served
    at once and one background request refreshes it; past that window the cache asks first
    (If-None-Match) and the engine's 304 revalidates it. Electric's cache test checks this
    (STALE, then REVALIDATED) under its own header name, X-Proxy-Cache."""
    stack = electric_test_stack
    async with aiohttp.ClientSession() as s:
        await _catch_up(stack, s)
        tip = {"offset": stack.offset, "handle": stack.handle}  # the catch-up at the tip
        status, headers, _ = await _get(s, stack.url(**tip))
        assert (status, headers["X-Proxy-Cache"]) == (200, "MISS")
        status, headers, _ = await _get(s, stack.url(**tip))
        assert status == 200
        assert headers["cache-control"] == "public, max-age=1, stale-while-revalidate=3"
        assert headers["X-Proxy-Cache"] == headers["X-Cache-Status"] == "HIT"
        assert stack.counter.count(**tip) == 1

        await asyncio.sleep(2)  # the stimulus: past max-age (1 s), inside max-age + 3 s
        status, headers, body = await _get(s, stack.url(**tip))
        assert (status, headers["X-Proxy-Cache"]) == (200, "STALE")
        assert json.loads(body)[-1]["headers"]["control"] == "up-to-date"
        # ... and the refresh went to the engine in the background: a 304, nothing changed.
        await wait_until_async(lambda: stack.counter.count(**tip) == 2, message="refresh")
        assert stack.counter.seen[-1][1] == 304

        await asyncio.sleep(5)  # the stimulus: past the refreshed copy's 1 + 3 s
        status, headers, body = await _get(s, stack.url(**tip))
        assert (status, headers["X-Proxy-Cache"]) == (200, "REVALIDATED")
        assert json.loads(body)[-1]["headers"]["control"] == "up-to-date"
        assert stack.counter.count(**tip) == 3
        assert stack.counter.seen[-1][1] == 304


async def test_a_stale_live_answer_is_refreshed_before_answering(
    electric_test_stack: Stack,
) -> None:
    """Live answers are never refreshed in the background: nginx would hold the client's
    connection until the refresh (a long-poll, up to the hold) ends, delaying the client's
    next request on it. An expired live answer is fetched again first (not STALE)."""
    stack = electric_test_stack
    async with aiohttp.ClientSession() as s:
        await _catch_up(stack, s)
        stack.sql("INSERT INTO items VALUES (6, 'six')")
        live = {"offset": stack.offset, "handle": stack.handle, "live": "true", "cursor": "1"}
        status, headers, body = await _get(s, stack.url(**live))
        assert (status, headers["X-Proxy-Cache"]) == (200, "MISS")
        assert headers["cache-control"] == "public, max-age=5, stale-while-revalidate=5"
        assert [r["id"] for r in _inserts(body)] == ["6"]

        await asyncio.sleep(6)  # the stimulus: past max-age (5 s), inside max-age + 5 s
        status, headers, body = await _get(s, stack.url(**live))
        assert status == 200
        assert headers["X-Proxy-Cache"] in ("EXPIRED", "REVALIDATED")
        assert stack.counter.count(**live) == 2


async def test_concurrent_live_long_polls_collapse_into_one_engine_request(stack: Stack) -> None:
    n = 20
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await _catch_up(stack, s)
        live = stack.url(offset=stack.offset, handle=stack.handle, live="true", cursor="0")
        started = time.monotonic()
        polls = [asyncio.create_task(_get(s, live)) for _ in range(n)]
        # Past nginx's 5 s default lock timeout/age, and still inside the engine's hold.
        await asyncio.sleep(6.5)
        assert not any(p.done() for p in polls)
        await until_parked(stack.counter.engine, SECRET)  # (nginx's one engine request)
        stack.sql("INSERT INTO items VALUES (100, 'inserted while 20 clients wait')")
        replies = await asyncio.wait_for(asyncio.gather(*polls), HOLD + 10)
        elapsed = time.monotonic() - started

    assert elapsed < HOLD, "the clients got the insert, not the end of the hold"
    bodies = set()
    for status, headers, body in replies:
        assert status == 200
        assert _inserts(body) == [{"id": "100", "title": "inserted while 20 clients wait"}]
        assert "electric-cursor" in headers
        bodies.add(body)
    assert len(bodies) == 1
    assert sorted(h["X-Cache-Status"] for _, h, _ in replies) == ["HIT"] * (n - 1) + ["MISS"]
    assert stack.counter.count(live="true") == 1


async def test_a_long_poll_whose_client_left_is_stored_for_the_next_asker(stack: Stack) -> None:
    """nginx keeps fetching a cacheable request whose client has gone (it ignores the client's
    abort for anything it may store) and holds the cache lock meanwhile; the client re-asking
    that URL waits behind it. It used to throw that answer away when it came (sending it to the
    gone client failed), so the waiter went to the engine itself afterwards: one more engine
    request, a MISS, and with no change a second full hold. With `proxy_ignore_client_abort on`
    the answer is stored and the waiter gets it from the cache."""
    async with aiohttp.ClientSession() as s:
        await _catch_up(stack, s)
        live = {"offset": stack.offset, "handle": stack.handle, "live": "true", "cursor": "7"}
        gone = asyncio.create_task(_get(s, stack.url(**live)))
        await until_parked(stack.counter.engine, SECRET)  # its request is held in the engine
        gone.cancel()  # the client leaves
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        async with aiohttp.ClientSession() as again:  # the client asks the same URL again
            asking = asyncio.create_task(_get(again, stack.url(**live)))
            stack.sql("INSERT INTO items VALUES (101, 'while the first asker was gone')")
            status, headers, body = await asyncio.wait_for(asking, HOLD + 10)
    assert status == 200
    assert _inserts(body) == [{"id": "101", "title": "while the first asker was gone"}]
    assert headers["X-Cache-Status"] == "HIT"
    assert stack.counter.count(**live) == 1


async def test_a_slow_initial_request_whose_client_left_is_stored_for_the_next_asker(
    stack: Stack,
) -> None:
    """The same for a slow `offset=-1` (a big table's snapshot; here the table is locked): its
    client leaving must not throw the answer away. Without `proxy_ignore_client_abort on` the
    next asker of that URL waited behind the lock for the whole snapshot, then went to the
    engine itself (a MISS and a second engine request)."""
    url = stack.url(offset="-1")
    locker = await psycopg.AsyncConnection.connect(stack.db_url)
    try:
        await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        async with aiohttp.ClientSession() as s:
            gone = asyncio.create_task(_get(s, url))

            # Once nginx has forwarded it, the engine cannot answer it while the lock is held:
            # its first shape's publish waits the lock out without queueing ahead of the app
            # (so no Lock wait shows in pg_stat_activity), for up to 10 s before a 503.
            await wait_until_async(lambda: len(stack.counter.arrived) > 0, timeout=30,
                                   interval=0.05, message="the request at the engine")  # fmt: skip
            await asyncio.sleep(0.3)
            gone.cancel()  # the client leaves
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            async with aiohttp.ClientSession() as again:  # another client asks the same URL
                asking = asyncio.create_task(_get(again, url))
                await locker.commit()  # the snapshot can go on
                status, headers, body = await asyncio.wait_for(asking, 30)
    finally:
        await locker.close()
    assert status == 200
    assert len(_inserts(body)) == 5
    assert headers["X-Cache-Status"] == "HIT"
    assert stack.counter.count(offset="-1") == 1


async def test_409_is_cached_as_the_engine_says_and_errors_are_not(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        await _catch_up(stack, s)
        # An unknown handle: 409 must-refetch naming the current shape, public for 60 s.
        gone = stack.url(offset="0_0", handle="1-1")
        first = await _get(s, gone)
        second = await _get(s, gone)
        assert first[0] == second[0] == 409
        assert first[1]["cache-control"] == "public, max-age=60, must-revalidate"
        assert second[1]["electric-handle"] == stack.handle
        assert json.loads(second[2]) == [{"headers": {"control": "must-refetch"}}]
        assert [first[1]["X-Cache-Status"], second[1]["X-Cache-Status"]] == ["MISS", "HIT"]
        assert stack.counter.count(handle="1-1") == 1

        # The engine's own errors (no-store): a bad `where` (400) reaches the engine every time.
        bad = stack.url(offset="-1", where="no_such_column = 1")
        for _ in range(2):
            status, headers, _ = await _get(s, bad)
            assert status == 400
            assert headers["X-Cache-Status"] == "MISS"
        assert stack.counter.count(where="no_such_column = 1") == 2

        # A 409's lifetime is the engine's, not longer: max-age=1 is gone after a second.
        stack.counter.fake = (409, "public, max-age=1, must-revalidate")
        short = stack.url(offset="0_0", handle="2-2")
        assert (await _get(s, short))[1]["X-Cache-Status"] == "MISS"
        assert (await _get(s, short))[1]["X-Cache-Status"] == "HIT"
        await asyncio.sleep(2.2)
        assert (await _get(s, short))[1]["X-Cache-Status"] in ("EXPIRED", "MISS")
        assert stack.counter.count(handle="2-2") == 2

        # An origin that (wrongly) marks errors public still does not get them cached.
        for status in (400, 404, 500, 503):
            stack.counter.fake = (status, "public, max-age=600")
            url = stack.url(offset="-1", probe=str(status))
            for _ in range(2):
                got, headers, _ = await _get(s, url)
                assert got == status
                assert headers["X-Cache-Status"] == "MISS"
            assert stack.counter.count(probe=str(status)) == 2
        stack.counter.fake = None

        # Engine unreachable: nginx's 502 is not cached; the next request is served normally.
        url = stack.url(offset="-1", probe="down")
        engine = stack.counter.engine
        stack.counter.engine = "http://127.0.0.1:1"
        try:
            got, _, _ = await _get(s, url)
        finally:
            stack.counter.engine = engine
        assert got >= 500
        got, headers, body = await _get(s, url)
        assert got == 200 and len(_inserts(body)) == 5


async def test_sse_is_streamed_unbuffered_and_never_waits_on_the_cache_lock(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        await _catch_up(stack, s)
        url = stack.url(
            offset=stack.offset, handle=stack.handle, live="true", live_sse="true", cursor="0"
        )
        async with s.get(url) as a, s.get(url) as b:
            # Both streams are open at once: the second one did not wait behind a cache lock.
            assert a.status == b.status == 200
            assert a.headers["content-type"].startswith("text/event-stream")
            assert stack.counter.count(live_sse="true") == 2
            stack.sql("INSERT INTO items VALUES (200, 'over sse')")
            for resp in (a, b):
                got = b""
                # The event arrives while the stream stays open (the engine keeps SSE
                # streams open 60 s): nginx is not holding it back in a buffer.
                while b"over sse" not in got:
                    got += await asyncio.wait_for(resp.content.readany(), 5)
                assert not resp.content.at_eof()


async def test_npm_client_syncs_through_nginx(stack: Stack) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "tests/node/node_modules/@electric-sql/client").is_dir():
        pytest.fail("needs node and `make node-deps` (cd tests/node && npm ci)")

    async def run_client(wait_for: int, insert: str) -> tuple[list[Any], list[Any]]:
        proc = await asyncio.create_subprocess_exec(
            node, str(NODE_SCRIPT), f"{stack.nginx}/v1/shape", SECRET, str(wait_for),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 40)
            assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
            initial = json.loads(line)
            assert initial["phase"] == "initial"
            await until_parked(stack.counter.engine, SECRET)  # its live request is held
            stack.sql(insert)
            line = await asyncio.wait_for(proc.stdout.readline(), 40)
            assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
            live = json.loads(line)
            assert live["phase"] == "live"
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            return initial["rows"], live["rows"]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    expected = [{"id": i, "title": f"item {i}"} for i in range(1, 6)]
    initial, live = await run_client(300, "INSERT INTO items VALUES (300, 'live one')")
    assert initial == expected
    assert live == [*expected, {"id": 300, "title": "live one"}]
    first_requests = stack.counter.count(offset="-1")
    assert first_requests == 1

    # A second client of the same shape gets the initial chunk from the cache. Its first
    # up-to-date may be the cached catch-up from before row 300 (public, max-age=60, as with
    # Electric behind a CDN); its live requests then bring it to the present.
    initial, live = await run_client(301, "INSERT INTO items VALUES (301, 'second')")
    assert initial in (expected, [*expected, {"id": 300, "title": "live one"}])
    assert live == [*expected, {"id": 300, "title": "live one"}, {"id": 301, "title": "second"}]
    assert stack.counter.count(offset="-1") == first_requests

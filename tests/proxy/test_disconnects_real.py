"""Clients leaving live requests mid-wait (long-poll, `live_sse`, `experimental_live_sse`),
alone or while sharing one engine request with others (collapsed), through the proxy under
the open policy: the engine's parked requests go back to what they were (no upstream
connection left behind), those who stay still get the change, and the next client asking the
same live request gets the answer the engine gives it straight (no group left stuck on a
gone request). And the engine SIGKILLed under collapsed long-polls: each client answered at
once, and after the restart the proxy answers as the engine does.

Real path: proxy -> `sync-engine` (20 s long-polls, so nothing ends on its own during the
test) -> PostgreSQL. Clients leave as a closed tab does: the connection reset.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import psycopg
import pytest
from yarl import URL

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import open_config
from tests.proxy.test_transparency_fuzz_real import _comparable
from tests.support.engine_process import EngineProcess, parked_requests
from tests.support.waiting import wait_until_async

MODES = {
    "long-poll": "",
    "sse": "&live_sse=true",
    "experimental-sse": "&experimental_live_sse=true",
}


_SETUP = (
    "CREATE TABLE items (id int PRIMARY KEY, title text)",
    "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
)
_ARGS = ("--long-poll-timeout", "20", "--sse-timeout", "20")


# One engine for the leaving cases (each started its own: ~2 s apiece); each case writes a row of
# its own and counts parked requests from where it found them.
engine_secret, engine = shared_engine_fixtures("leaving", *_SETUP, args=_ARGS)


@pytest.fixture
def own_engine(start_engine: Any) -> EngineProcess:
    """An engine of the test's own (the one that is killed)."""
    return start_engine(*_SETUP, args=_ARGS)


async def _open_proxy(engine: EngineProcess, engine_secret: str, make_proxy: Any) -> str:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    return str(proxy.client.make_url("")).rstrip("/")


class RawClient:
    """A live request on a raw connection, left by resetting it (`leave`) or read to its end
    or its first data event (`answer`)."""

    def __init__(self, base: str, target: str) -> None:
        self.url = URL(base)
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.url.host, self.url.port)
        self.writer.write(f"GET {self.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await self.writer.drain()
        return self

    def leave(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()

    async def rows(self) -> bytes:
        """What it got until a row came (SSE) or the answer ended (long-poll)."""
        assert self.reader is not None and self.writer is not None
        got = b""
        try:
            while b'"key"' not in got or (b"event-stream" not in got and b"]" not in got):
                piece = await asyncio.wait_for(self.reader.read(65536), 30)
                if not piece:
                    break
                got += piece
        finally:
            self.writer.transport.abort()
        return got


def _keys(raw: bytes) -> list[str]:
    """The ids of the rows in an answer (a long-poll's JSON or an event stream)."""
    return sorted({m.decode() for m in re.findall(rb'"id":"(\d+)"', raw)})


async def _tip(session: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    offset, handle = "-1", ""
    while True:
        url = f"{base}/v1/shape?table=items&offset={offset}" + (
            f"&handle={handle}" if handle else ""
        )
        async with session.get(url) as resp:
            assert resp.status == 200
            await resp.read()
            handle, offset = resp.headers["electric-handle"], resp.headers["electric-offset"]
            if "electric-up-to-date" in resp.headers:
                return handle, offset


CASES = [("long-poll", 1), ("long-poll", 3), ("sse", 3), ("experimental-sse", 1)]


@pytest.mark.parametrize(("mode", "together"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
async def test_clients_leaving_live_requests_leave_nothing_behind(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, mode: str, together: int
) -> None:
    row = 10 + CASES.index((mode, together))  # (a row of the case's own: one engine)
    base = await _open_proxy(engine, engine_secret, make_proxy)
    secret = f"&secret={engine_secret}"
    async with aiohttp.ClientSession() as session:
        handle, offset = await _tip(session, base)
        target = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true{MODES[mode]}"
        before = await parked_requests(engine.url, engine_secret)

        async def parked_above(n: int) -> bool:
            return await parked_requests(engine.url, engine_secret) > before + n - 1

        async def back_to_before() -> bool:
            return await parked_requests(engine.url, engine_secret) == before

        # Everyone leaves: the engine request goes.
        clients = [await RawClient(base, target).start() for _ in range(together)]
        await wait_until_async(lambda: parked_above(1), timeout=20, message="parked")
        for client in clients:
            client.leave()
        await wait_until_async(back_to_before, timeout=10, message="the engine lets go")

        # Some leave, one stays: it still gets the change; then nothing is left behind.
        clients = [await RawClient(base, target).start() for _ in range(together)]
        await wait_until_async(lambda: parked_above(1), timeout=20, message="parked again")
        for client in clients[1:]:
            client.leave()
        await asyncio.sleep(0.2)
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (%s, 'c')", (row,))
        assert _keys(await clients[0].rows()) == [str(row)]
        await wait_until_async(back_to_before, timeout=10, message="nothing left behind")

        # The next client asking the same live request: the engine's answer (the change).
        answers = []
        for url in (engine.url + target + secret, base + target):
            if MODES[mode]:
                answers.append(_keys(await (await RawClient(URL(url).origin().human_repr(),
                                                            URL(url).raw_path_qs).start()).rows()))  # fmt: skip
                continue
            async with session.get(URL(url, encoded=True)) as resp:
                answers.append(_comparable(resp.status, resp.headers, await resp.read(), "GET"))
        assert answers[1] == answers[0]
        await wait_until_async(back_to_before, timeout=10, message="nothing left at the end")


async def _status(client: RawClient) -> int:
    """The status of the answer a raw client got (0: the connection closed without one)."""
    assert client.reader is not None and client.writer is not None
    try:
        line = await asyncio.wait_for(client.reader.readline(), 30)
    finally:
        client.writer.transport.abort()
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0


async def test_engine_killed_under_collapsed_long_polls(
    own_engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """Three clients share one parked engine long-poll through the proxy; the engine is
    SIGKILLed: each gets an answer at once (the proxy's 502, as for an engine that is down),
    nothing stays parked or grouped, and once the engine is back the same live request
    gets through the proxy what it gets straight (the change made while it was down)."""
    engine = own_engine
    base = await _open_proxy(engine, engine_secret, make_proxy)
    async with aiohttp.ClientSession() as session:
        handle, offset = await _tip(session, base)
        target = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true"
        clients = [await RawClient(base, target).start() for _ in range(3)]
        await engine.until_parked(1)
        engine.kill()
        assert [await _status(c) for c in clients] == [502, 502, 502]
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (4, 'd')")
        engine.start()
        answers = []
        for url in (engine.url + target + f"&secret={engine_secret}", base + target):
            async with session.get(URL(url, encoded=True)) as resp:
                answers.append(_comparable(resp.status, resp.headers, await resp.read(), "GET"))
        assert answers[1] == answers[0]
        assert answers[0][0] in (200, 409), answers[0]

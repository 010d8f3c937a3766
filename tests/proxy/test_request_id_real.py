"""An incoming X-Request-Id comes back as the engine (and Electric) gives it back.

Electric keeps a client's `x-request-id` when it is 20 to 200 bytes long, whatever the bytes
(`Plug.RequestId` in its router), and makes one up otherwise; the engine echoes it. The proxy
kept only ids of 8 to 64 letters, digits, `.`, `_` and `-`: an id of 20-200 bytes with any
other character (`:`, a space, a UUID in braces, non-ASCII) or longer than 64 bytes came back
through the proxy as a different id than straight from the engine (found comparing the two
header by header). Outside 20-200 bytes the proxy makes its own, as Electric does.

Real path: proxy (config/examples/open.yaml) -> `sync-engine` -> Postgres.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import aiohttp
import pytest

from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"

#: Kept by Electric (20 to 200 bytes), so by the engine and the proxy alike.
KEPT = [
    "a" * 20,
    "trace:0af7651916cd43dd8448eb211c80319c",
    "{0af76519-16cd-43dd-8448-eb211c80319c}",
    "a request id with spaces, and more",
    "é" * 10,  # 20 bytes of UTF-8
    "b" * 65,
    "c" * 200,
]
#: Not kept by Electric: it makes its own id.
REPLACED = ["abc", "d" * 19, "e" * 201]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "INSERT INTO items VALUES (1, 'a')",
    )


async def test_an_incoming_request_id_comes_back_as_the_engine_gives_it_back(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    direct = f"{engine.url}{SHAPE}&secret={engine_secret}"
    through = str(proxy.client.make_url(SHAPE))

    async def request_id(session: aiohttp.ClientSession, url: str, given: str) -> str:
        async with session.get(url, headers={"X-Request-Id": given}) as resp:  # (UTF-8)
            assert resp.status == 200, await resp.text()
            raw = {name.lower(): value for name, value in resp.raw_headers}
            return raw[b"x-request-id"].decode()

    async with aiohttp.ClientSession() as session:
        for given in KEPT:
            assert await request_id(session, direct, given) == given
            assert await request_id(session, through, given) == given, given
        for given in REPLACED:
            # (Electric's rule; the engine still echoes these: /work/bugs-for-faults.md)
            got = await request_id(session, through, given)
            assert got != given and 20 <= len(got) <= 200, (given, got)


async def test_the_proxy_s_own_request_ids_are_not_a_counter(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    """A request without an id gets the proxy's: 32 random hex digits. It was this process's
    prefix and a counter (the last 16 digits went up by one per proxied request of any user),
    so a client could count everyone else's requests between two of its own."""
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    through = str(proxy.client.make_url(SHAPE))
    ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # (the repeats may take the fast lane: both paths' ids)
            async with session.get(through) as resp:
                assert resp.status == 200, await resp.text()
                ids.append(resp.headers["x-request-id"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len({i[:16] for i in ids}) == len(ids), ids  # (was one prefix for all)
    steps = {int(b, 16) - int(a, 16) for a, b in itertools.pairwise(ids)}
    assert 1 not in steps, ids

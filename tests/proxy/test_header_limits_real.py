"""A request header is refused (431) where the engine refuses it, and served where it serves it.

Electric's server (Bandit) and the engine bound a header LINE at 10,000 bytes, its name, colon,
value and CRLF together (`MAX_HEADER_LINE`). The proxy once bounded name and value together
at 8192, then each apart (the engine's aiohttp limits then): either way a client sending a
large token or cookie could tell them apart at the limits.

Real path: proxy (config/examples/open.yaml) -> `sync-engine` -> Postgres; raw sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from yarl import URL

from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

#: (name, value length): each the same answer straight and through the proxy (`name: value`
#: CRLF is 10,000 bytes at `X-Big` and 9991).
HEADERS = [
    (b"X-Big", 8193),  # (over the old 8192)
    (b"X-Big", 9990),
    (b"X-Big", 9991),  # the limit
    (b"X-Big", 9992),  # over it: 431 both ways
    (b"Authorization-Extra", 8190),
    (b"X-" + b"n" * 4998, 4996),  # (name and value together at the limit)
    (b"X-" + b"n" * 4998, 4997),
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "INSERT INTO items VALUES (1, 'a')",
    )


async def _status(base: str, target: str, name: bytes, length: int) -> int:
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            + name + b": " + b"v" * length + b"\r\nConnection: close\r\n\r\n"
        )  # fmt: skip
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_a_large_header_is_refused_where_the_engine_refuses_it(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    through = str(proxy.client.make_url(""))
    seen = []
    for name, length in HEADERS:
        direct = await _status(
            engine.url, f"/v1/shape?table=items&offset=-1&secret={engine_secret}", name, length
        )
        proxied = await _status(through, "/v1/shape?table=items&offset=-1", name, length)
        seen.append((len(name), length, direct, proxied))
    assert all(direct == proxied for _, _, direct, proxied in seen), seen
    assert [direct for *_, direct, _ in seen] == [200, 200, 200, 431, 200, 200, 431], seen

"""A request target that is neither the origin form (`/path?query`), the absolute form
(`http://host/path`) nor the bare asterisk of `OPTIONS *` is a 400 "Malformed HTTP request"
at the proxy, as at the engine (and Electric: Bandit's "Unsupported request target"), and the
connection closes.

The proxy routed such a target (`GET *?`, `OPTIONS *?x=1`, `GET *x`) as a path and answered
404 with CORS headers, keeping an HTTP/1.0 keep-alive connection open (attack's rawdiff,
19:36): a client could tell the two apart. Real path: proxy -> `sync-engine` -> PostgreSQL,
raw sockets (no client library sends these).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from proxy.config.loader import build_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]

REQUESTS = [
    b"GET *? HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n\r\n",
    b"OPTIONS *?x=1 HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n\r\n",
    b"GET *x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET v1/shape?table=items HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD *? HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine("CREATE TABLE items (id int PRIMARY KEY, title text)")


async def _answer(base: str, data: bytes) -> tuple[int, bool, bytes]:
    """(status, whether the server closed the connection after it, its body)."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.split(b"\r\n")
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])
        }
        length = 0 if data.startswith(b"HEAD") else int(fields.get(b"content-length", b"0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        try:
            closed = await asyncio.wait_for(reader.read(1), 2) == b""
        except TimeoutError:
            closed = False
        return int(lines[0][9:12]), closed, body
    finally:
        writer.close()


async def test_a_target_of_no_known_form_is_the_engines_400(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    config = yaml.safe_load((ROOT / "config/examples/open.yaml").read_text())
    config["upstream"]["url"] = engine.url
    config["upstream"]["secret_env"] = "ENGINE_SECRET"
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": engine_secret}))
    base = str(proxy.client.make_url("")).rstrip("/")
    for data in REQUESTS:
        at_engine = await _answer(engine.url, data)
        at_proxy = await _answer(base, data)
        assert at_engine[:2] == (400, True), (data, at_engine)
        assert at_proxy == at_engine, data

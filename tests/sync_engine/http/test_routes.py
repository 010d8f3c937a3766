"""Which route a path picks, and what a HEAD answers: as Electric's router does.

Electric's router (Plug.Router on Bandit) splits the path on `/`, drops the empty segments
and percent-decodes each segment before it matches (sync_engine/http/routes.py): `/v1//shape`,
`//v1/shape`, `/v1/%73hape` and `/v1/health/` are its shape and health routes, authenticated
and given CORS by the route matched; `/v1/shape%2F`, `/v1%2Fshape` and `/v1/./shape` are
404s. The engine answered 404 to the first kind (the differential tester's finding). And
`Plug.Head` answers a HEAD with its GET's headers: `HEAD /` had no `Content-Length` where
`GET /` has 0.

Real path: the engine's server on a socket, raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync_engine.app import SOURCES, build_app
from sync_engine.http.headers import ALLOW_METHODS_SHAPE
from tests.sync_engine.engine_harness import SETTINGS, Engine
from tests.sync_engine.http.test_server_heads import raw

SECRET = "s3cret-for-routes"
#: Headers whose values differ between two answers to the same request.
VOLATILE = {"date", "x-request-id", "electric-cursor", "etag"}


@pytest.fixture
async def engine(aiohttp_client: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """An engine that needs `secret`, long-polls of 1 s."""
    settings = replace(
        SETTINGS,
        database_url=db_url,
        data_dir=tmp_path / "data",
        secret=SECRET,
        long_poll_timeout=1.0,
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1'), (2, 't2')")
    yield engine


async def get(
    engine: Engine, target: str, method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    data = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n"
        "Connection: close\r\n\r\n"
    )
    return await raw(engine, data.encode())


async def test_a_path_picks_its_route_as_in_electrics_router(engine: Engine) -> None:
    query = f"?table=items&offset=-1&secret={SECRET}"
    status, headers, body = await get(engine, "/v1/shape" + query)
    assert status == "HTTP/1.1 200 OK", body
    handle = headers["electric-handle"]
    for path in ("/v1//shape", "//v1/shape", "/v1/shape/", "/v1/%73hape", "/%76%31/sh%61pe/"):
        status, headers, body = await get(engine, path + query)
        assert status == "HTTP/1.1 200 OK", (path, status, body)
        assert headers["electric-handle"] == handle, path  # the same shape, served as ever
        assert headers["access-control-allow-methods"] == ALLOW_METHODS_SHAPE, path
        assert [m["value"]["id"] for m in orjson.loads(body) if "key" in m] == ["1", "2"]
        # and its secret is asked for, as on `/v1/shape`
        status, _, body = await get(engine, path + "?table=items&offset=-1")
        assert status == "HTTP/1.1 401 Unauthorized", (path, body)
    for path in ("/v1//health", "/v1/health/", "/v1/%68ealth"):
        status, headers, body = await get(engine, path)
        assert status == "HTTP/1.1 200 OK", (path, status)
        assert orjson.loads(body) == {"status": "active"}
        assert headers["access-control-allow-methods"] == "GET, HEAD", path
    status, _, _ = await get(engine, "//")
    assert status == "HTTP/1.1 200 OK"
    # A decoded segment is matched whole: `shape/`, `v1/shape`, `.` are no route's.
    for path in ("/v1/shape%2F", "/v1%2Fshape", "/v1/./shape", "/v1/x/../shape", "/v1/sh%zzape"):
        status, headers, _ = await get(engine, path + query)
        assert status == "HTTP/1.1 404 Not Found", (path, status)
        assert headers["access-control-allow-methods"] == "GET, HEAD", path


async def _same_head(engine: Engine, target: str, extra: str = "") -> dict[str, str]:
    """GET and HEAD of `target`: the same status and headers (volatile values aside), and
    no body to the HEAD. Returns the GET's headers."""
    data = "{} " + target + " HTTP/1.1\r\nHost: x\r\n" + extra + "Connection: close\r\n\r\n"
    g_status, g_headers, g_body = await raw(engine, data.format("GET").encode())
    h_status, h_headers, h_body = await raw(engine, data.format("HEAD").encode())
    assert h_status == g_status, target
    assert h_body == b"", target
    assert g_headers.keys() == h_headers.keys(), (target, g_headers.keys() ^ h_headers.keys())
    for name, value in g_headers.items():
        if name not in VOLATILE:
            assert h_headers[name] == value, (target, name)
    return g_headers


async def test_a_head_answers_its_gets_headers(engine: Engine) -> None:
    got = await _same_head(engine, "/")
    assert got["content-length"] == "0"
    assert (await _same_head(engine, "/v1/health"))["content-length"] == "19"
    shape = f"/v1/shape?table=items&secret={SECRET}"
    first = await _same_head(engine, shape + "&offset=-1")
    handle = first["electric-handle"]
    catch_up = await _same_head(engine, f"{shape}&offset=0_0&handle={handle}")
    assert "content-length" in catch_up and "electric-up-to-date" in catch_up
    offset = catch_up["electric-offset"]
    await _same_head(
        engine, f"{shape}&offset=0_0&handle={handle}", f"If-None-Match: {catch_up['etag']}\r\n"
    )
    await _same_head(engine, f"{shape}&offset=now")
    await _same_head(engine, f"{shape}&offset={offset}&handle={handle}&live=true")
    await _same_head(engine, f"{shape}&offset=0_0&handle=no-such-handle")  # a 409
    await _same_head(engine, "/v1/shape?table=items&offset=-1")  # a 401
    await _same_head(engine, "/nowhere")

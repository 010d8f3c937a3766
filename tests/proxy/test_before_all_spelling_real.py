"""`offset=-1_0` is the engine's (and Electric's) other spelling of `offset=-1`: through the
proxy's cache it is revalidated as `-1` is (real engine, real Postgres, open.yaml).

Found by twin's differential tester (engine vs proxy, same requests): the proxy classed only the
literal `-1` (and `now`) as an initial request; a `-1_0` answer (the engine's `offset=-1` answer,
`s-maxage=3600`) was kept as a plain entry and served without asking the engine. After the shape
was retired (TRUNCATE), the engine answered `-1_0` with the new shape and its rows, the proxy with
the retired handle and the rows from before the TRUNCATE, for up to an hour.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import psycopg

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

engine_secret, engine = shared_engine_fixtures(
    "before_all_spelling",
    "CREATE TABLE items (id int PRIMARY KEY, title text)",
    "INSERT INTO items VALUES (1, 'before')",
)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None, bytes]:
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("electric-handle"), await resp.read()


async def test_a_minus_1_0_answer_is_not_served_from_a_retired_shape(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    through = str(proxy.client.make_url("/v1/shape")) + "?table=items&offset=-1_0"
    direct = f"{engine.url}/v1/shape?table=items&offset=-1_0&secret={engine_secret}"
    async with aiohttp.ClientSession() as session:
        status, old, body = await _get(session, through)
        assert status == 200 and b"before" in body
        with psycopg.connect(engine.db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE items")
            conn.execute("INSERT INTO items VALUES (2, 'after')")
        for _ in range(1200):  # (the engine sees the TRUNCATE through replication: wait for it)
            status, new, body = await _get(session, direct)
            if new != old and b"after" in body:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the engine never retired the shape: {status} {new} {body!r}")
        status, handle, body = await _get(session, through)
    assert status == 200
    assert handle == new, (handle, new, old)
    assert b"after" in body and b"before" not in body

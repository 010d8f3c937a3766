"""An `offset=-1` answer the proxy's cache revalidated with the engine is as fresh as the
engine's own (real engine, real Postgres, `config/examples/open.yaml`).

Found by twin's differential tester (engine vs proxy, same requests): the proxy revalidates
a cached `offset=-1` answer with the engine (`If-None-Match` -> 304) before serving it, but
served it with `Age` counted from when it was first stored. The engine sends no `Age`; after
a revalidation RFC 9111 4.3.4 makes the stored answer fresh again. The stale `Age` grew by
the second up to the entry's life (an hour, its s-maxage): a CDN in front took the answer as
`Age` seconds old (stale at once past its s-maxage), and under a token rule (`private,
max-age=<cap>`) a browser's copy was stale on arrival once `Age` passed the cap.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

engine_secret, engine = shared_engine_fixtures(
    "revalidated_age",
    "CREATE TABLE items (id int PRIMARY KEY, title text)",
    "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
)


async def test_a_revalidated_initial_answer_carries_no_age_from_before(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    url = str(proxy.client.make_url("/v1/shape")) + "?table=items&offset=-1"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as first:
            assert first.status == 200
            body = await first.read()
        stored = time.monotonic()
        await asyncio.sleep(2.2)  # (Age is written in whole seconds, from 1 s on)
        sent = time.monotonic()
        async with session.get(url) as again:
            assert again.status == 200
            assert await again.read() == body
            age = again.headers.get("Age")
        took = time.monotonic() - sent
    # The second answer was confirmed by the engine while this request was in flight: no
    # older than the request itself (and certainly not as old as the first fetch).
    assert age is None or int(age) <= took, (age, took, time.monotonic() - stored)

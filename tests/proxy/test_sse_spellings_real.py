"""An SSE stream asked in any spelling Electric reads keeps the engine's `X-Accel-Buffering: no`
through the nginx tier (twin 07:55, MEDIUM).

    client -> shape-proxy (real, open policy) -> nginx (config/nginx, real) -> engine

The proxy forwarded the client's spelling of the flags as sent (`experimental_live_sse=true`,
`live_sse=1`, `live=1`, a bare `live&live_sse`); the engine, as Electric, reads all of them as
SSE, but the tier routes SSE on `live=true&live_sse=true` only: the others went to its cached
locations, where nginx swallows `X-Accel-Buffering`, so a user's own nginx in front of the
proxy buffered those streams. The proxy now sends the flags in one spelling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cdn.test_nginx import SECRET, Stack, _stack
from tests.proxy.real_proxies import open_config

SPELLINGS = [
    "live=true&live_sse=true",
    "live=true&experimental_live_sse=true",
    "live=true&live_sse=1",
    "live=1&live_sse=true",
    "live&live_sse",
    "live=yes&experimental_live_sse=",
]


@pytest.fixture
async def stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(db_url, tmp_path, {}) as s:
        yield s


async def test_every_sse_spelling_keeps_x_accel_buffering_through_the_tier(
    stack: Stack, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(stack.nginx, SECRET))
    async with aiohttp.ClientSession() as s:
        async with s.get(proxy.client.make_url("/v1/shape?table=items&offset=-1")) as r:
            assert r.status == 200, await r.text()
            handle, offset = r.headers["electric-handle"], r.headers["electric-offset"]
        seen = {}
        for spelling in SPELLINGS:
            path = f"/v1/shape?table=items&handle={handle}&offset={offset}&{spelling}"
            async with s.get(proxy.client.make_url(path)) as r:
                seen[spelling] = (
                    r.status,
                    r.headers.get("Content-Type", ""),
                    r.headers.get("X-Accel-Buffering"),
                )
    for spelling, (status, ctype, accel) in seen.items():
        assert status == 200 and ctype.startswith("text/event-stream"), (spelling, seen)
        assert accel == "no", (spelling, seen)

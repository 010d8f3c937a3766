"""The nginx tier's cache state never reaches a client of the proxy (attack 08:18, LOW).

    client -> shape-proxy (real, token policy) -> nginx (config/nginx, real) -> engine

The tier adds `X-Cache-Status` and `X-Proxy-Cache` (HIT, MISS...) to every answer, for its
operator; the proxy passed them on, so a user asking for a filter learnt from a HIT whether
another user with the same rights had asked for exactly that within the hour. The proxy drops
them (the engine sends neither); on the general path and the fast lane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from proxy.config.loader import build_config
from tests.cdn.test_nginx import SECRET, Stack, _stack
from tests.proxy.proxy_fakes import base_config


@pytest.fixture
async def stack(db_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with _stack(db_url, tmp_path, {}) as s:
        yield s


@pytest.mark.parametrize("collapse", [True, False])
async def test_the_tiers_cache_status_is_dropped(
    stack: Stack, idp_server: Any, make_proxy: Any, collapse: bool
) -> None:
    config = base_config(stack.nginx, str(idp_server.make_url("/jwks.json")))
    config["tables"] = {
        "items": {
            "allow": [{"all_rows": True, "client_where": "validated", "when": {"role": "member"}}]
        }
    }
    if not collapse:  # (the general path, then the fast lane)
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": SECRET}))
    path = "/v1/shape?table=items&offset=-1&where=" + quote("title = 'merger plans'")
    seen = []
    for user in ("colleague", "alice", "alice"):
        reply = await proxy.get(path, token=proxy.tokens.make(sub=user))
        assert reply.status == 200, reply.body
        seen.append({k.lower() for k in reply.headers})
    for headers in seen:
        assert "x-cache-status" not in headers and "x-proxy-cache" not in headers, headers
    # (one engine request: the repeats came from a cache, whose state is what is hidden)
    assert stack.counter.count(where="title = 'merger plans'") == 1

"""Pieces of the fake engines the SSE fan-out tests put behind a real proxy.

Each test's engine decides when and what it sends (that is the test); what it sends is
built here, as the real engine builds it: one transaction's change events and its
up-to-date, the headers of an SSE answer, and the proxy in front of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config


def sse_batch(lsn: int, *ids: int) -> bytes:
    """One transaction's SSE events (ops 0, 2, ...) and its up-to-date, as the engine sends."""
    events = [
        b"data: "
        + orjson.dumps(
            {
                "key": f'"public"."items"/"{id_}"',
                "value": {"id": str(id_), "org_id": "org-a", "title": "t"},
                "headers": {"operation": "insert", "lsn": str(lsn), "op_position": 2 * i},
            }
        )
        + b"\n\n"
        for i, id_ in enumerate(ids)
    ]
    up_to_date = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"".join(events) + b"data: " + orjson.dumps(up_to_date) + b"\n\n"


def sse_headers(
    offset: str, extra: dict[str, str] | None = None, log_end: str | None = None
) -> dict[str, str]:
    """The headers of the engine's SSE answer for shape `h-1` from `offset`, and `extra`; its
    ETag names where the log ended when it opened (`log_end`, by default `offset`)."""
    return {
        "content-type": "text/event-stream",
        "cache-control": "public, max-age=59",
        "electric-handle": "h-1",
        "electric-offset": offset,
        "electric-cursor": "123",
        "etag": f'"h-1:{offset}:{log_end or offset}:1"',
        **(extra or {}),
    }


async def proxy_in_front(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    aiohttp_server: Any,
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    limits: dict[str, Any] | None = None,
) -> tuple[Any, str]:
    """A fake engine answering `/v1/shape` with `handler`, a proxy in front of it (with the
    `limits:` section `limits`, if any), and a token that proxy accepts."""
    app = web.Application()
    app.router.add_get("/v1/shape", handler)
    server = await aiohttp_server(app, access_log=None)
    config = base_config(str(server.make_url("")), str(idp_server.make_url("/jwks.json")))
    if limits:
        config["limits"] = limits
    proxy = await make_proxy(build_config(config, environ))
    return proxy, proxy.tokens.make()

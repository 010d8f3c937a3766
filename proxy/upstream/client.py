"""The proxy's HTTP client towards the engine: one pooled session, timeouts, error translation.

One `ClientSession` per app (`make_session`, `auto_decompress=False`) carries every request,
so a body's bytes and its `Content-Encoding` pass through untouched. `send` is the only place
that calls the engine; it turns aiohttp's failures into `UpstreamError` / `UpstreamTimeout`
without ever formatting them (aiohttp's messages include the URL, and so the secret).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Timeouts and header policy for forwarded requests (one per loaded config)."""

    connect_timeout: float
    first_byte_timeout: float
    retry_after: int
    max_age_cap: int | None
    collapse: bool = True
    cache: bool = True  # the response cache's size is fixed at start; this can turn it off
    live_max_age: float = 5.0
    timeout: aiohttp.ClientTimeout = field(init=False)

    def __post_init__(self) -> None:
        # aiohttp's sock_read bounds the wait for the response headers (the first byte) and
        # then every silence between chunks; one timer per request instead of two.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.first_byte_timeout
        )
        object.__setattr__(self, "timeout", timeout)


def make_session(pool_size: int) -> aiohttp.ClientSession:
    """The app's one upstream session: raw bodies, a large pool, short keep-alive.

    The keep-alive (15 s) stays below the engine's idle timeout so a pooled connection is not
    reused just as the engine closes it. `limit` is raised from aiohttp's default 100 because
    every held long-poll occupies a connection.
    """
    connector = aiohttp.TCPConnector(
        limit=pool_size, limit_per_host=pool_size, keepalive_timeout=15
    )
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
    )


def connection_failed(options: UpstreamOptions) -> UpstreamError:
    """The 502 a client gets when the engine connection breaks before its answer is whole."""
    return UpstreamError(
        "upstream_error", "the sync engine connection failed", retry_after=options.retry_after
    )


async def send(
    session: aiohttp.ClientSession,
    metrics: Metrics,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    body: bytes | None,
    options: UpstreamOptions,
) -> aiohttp.ClientResponse:
    """Send one request to the engine and return once its headers arrived.

    Raises `UpstreamTimeout` (504) when nothing arrives within the first-byte timeout and
    `UpstreamError` (502) when the engine cannot be reached or drops the connection.
    """
    started = time.monotonic()
    metrics.upstream_sent()
    try:
        upstream = await session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=options.timeout,
        )
    except TimeoutError:
        # aiohttp's own timeout errors include the URL (and so the secret): never str() them.
        raise UpstreamTimeout(
            "upstream_timeout",
            "the sync engine did not answer in time",
            retry_after=options.retry_after,
        ) from None
    except aiohttp.ClientConnectorError:
        raise UpstreamError(
            "upstream_unreachable",
            "the sync engine is unreachable",
            retry_after=options.retry_after,
        ) from None
    except aiohttp.ClientError:
        raise connection_failed(options) from None
    metrics.upstream_answered(upstream.status, time.monotonic() - started)
    return upstream

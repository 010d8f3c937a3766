"""Send the request to the engine and stream its answer back, unbuffered.

One pooled `ClientSession` (created by the app, `auto_decompress=False`) carries every
request, so the body's bytes and their `Content-Encoding` pass through untouched. Headers
come back once the engine answers (bounded by the first-byte timeout, which must exceed the
engine's 20 s long-poll hold). A length-delimited body (complete upstream, up to 1 MiB) is
read and sent with its headers in one write; any other body (SSE, chunked) is written chunk by
chunk as it arrives, never held back. If the client goes away, the handler is cancelled (the
server runs with
`handler_cancellation=True`) or its write fails, and either way the upstream response is closed,
which closes the engine connection instead of returning a half-read one to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.http.context import RequestContext
from proxy.http.headers import (
    private_cache_control,
    upstream_request_headers,
    upstream_response_headers,
)
from proxy.metrics import Metrics

logger = logging.getLogger(__name__)

#: Length-delimited upstream bodies up to this size are read whole and sent in one write.
WHOLE_BODY_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Timeouts and header policy for one forwarded request."""

    connect_timeout: float
    first_byte_timeout: float
    retry_after: int
    max_age_cap: int | None


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


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: URL,
    *,
    body: bytes | None,
    options: UpstreamOptions,
    context: RequestContext,
    metrics: Metrics,
    add_headers: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Forward to `url` (already built from scratch) and stream the response back.

    Raises `UpstreamTimeout` (504) or `UpstreamError` (502) if no response headers arrive;
    once streaming has begun, an upstream failure closes the client connection so the client
    sees a truncated response, never a well-formed one with missing data.
    """
    method = "POST" if body is not None else "GET"
    request_headers = upstream_request_headers(request.headers, context.request_id)
    # aiohttp's sock_read bounds the wait for the response headers (the first byte) and then
    # every silence between chunks; one timer per request instead of two.
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=options.connect_timeout, sock_read=options.first_byte_timeout
    )
    started = time.monotonic()
    try:
        upstream = await session.request(
            method, url, headers=request_headers, data=body, allow_redirects=False, timeout=timeout
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
        raise UpstreamError(
            "upstream_error", "the sync engine connection failed", retry_after=options.retry_after
        ) from None
    metrics.upstream_first_byte.observe(time.monotonic() - started)
    metrics.upstream_responses.labels(status=str(upstream.status)).inc()
    context.upstream_status = upstream.status
    complete = False
    try:
        headers = upstream_response_headers(upstream.headers.items())
        cache_control = private_cache_control(
            upstream.headers.getall("Cache-Control", []), options.max_age_cap
        )
        context.vary = (*upstream.headers.getall("Vary", []), "Authorization")
        length = upstream.content_length
        if length is not None and length <= WHOLE_BODY_LIMIT:
            # A length-delimited body is complete upstream and arrives right behind its
            # headers: read it and answer in one write (headers + body), which saves a
            # syscall per request. Anything else (SSE, chunked) is streamed chunk by chunk.
            try:
                raw = await upstream.content.readexactly(length) if length else b""
            except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError):
                raise UpstreamError(
                    "upstream_error",
                    "the sync engine connection failed",
                    retry_after=options.retry_after,
                ) from None
            response: web.StreamResponse = web.Response(
                status=upstream.status, reason=upstream.reason, body=raw
            )
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        else:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in headers:
            response.headers.add(name, value)
        response.headers["Cache-Control"] = cache_control
        if add_headers is not None:
            add_headers(response)
        if isinstance(response, web.Response):
            complete = True
            return response
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                if upstream.content.is_eof():
                    await response.write_eof(chunk)  # last chunk and terminator together
                    break
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            context.outcome, context.reason = "error", "upstream_broken_stream"
            logger.warning(
                "upstream stream broke (%s); closing client connection", type(exc).__name__
            )
            if request.transport is not None:
                request.transport.close()
            return response
        except ConnectionError:
            context.outcome, context.reason = "client_gone", "client_disconnected"
            return response
        await response.write_eof()
        complete = True
        return response
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()

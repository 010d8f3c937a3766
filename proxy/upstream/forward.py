"""Send requests to the engine and stream the answers back: cached, collapsed, or direct.

One pooled `ClientSession` (created by the app, `auto_decompress=False`) carries every
request, so the body's bytes and their `Content-Encoding` pass through untouched. Headers
come back once the engine answers (bounded by the first-byte timeout, which must exceed the
engine's 20 s long-poll hold).

Three ways through, chosen per request by `Forwarder.forward`:

- **cache hit**: a complete answer the engine marked shareable, served from memory
  (`upstream.cache`); the engine is not asked.
- **collapsed** (GET, not SSE, `collapse: true`): requests with the same upstream key share
  one `Flight`. The flight is a task of its own, not tied to any client: it sends the request
  once, keeps the answer's chunks as they arrive, and every waiting client writes them out at
  its own pace (a small complete body in one write, a large one chunk by chunk). A client that
  goes away leaves; the last one to leave cancels the flight, which closes the engine
  connection. An engine failure before the headers becomes each waiter's own 502/504; a
  failure mid-body truncates each streaming client's response. Response headers come from the
  engine, which never sees who asked; per-client headers (CORS, request id, Vary) are added
  per response by the app's `on_response_prepare` signal.
- **direct** (SSE, POST subsets, or `collapse: false`): one engine request per client,
  streamed unbuffered.

A length-delimited body up to `WHOLE_BODY_LIMIT` is read whole and sent with its headers in
one write, which saves a syscall per request. If the client goes away, the handler is
cancelled (the server runs with `handler_cancellation=True`) or its write fails, and the
engine response is closed instead of returning a half-read connection to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from cachetools import LRUCache
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from proxy.http.context import RequestContext
from proxy.http.headers import (
    client_response_headers,
    private_cache_control,
    upstream_request_headers,
    upstream_response_headers,
)
from proxy.metrics import Metrics
from proxy.upstream.cache import CachedResponse, CacheKey, ResponseCache, shared_ttl

logger = logging.getLogger(__name__)

#: Length-delimited upstream bodies up to this size are read whole and sent in one write.
WHOLE_BODY_LIMIT = 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class Head:
    """An engine response's status and headers, already made safe for clients."""

    status: int
    reason: str | None
    headers: tuple[tuple[str, str], ...]  # without Content-Length (set per response)
    content_length: int | None
    cache_control: str  # client-facing (private)
    vary: tuple[str, ...]
    ttl: float  # how long a shared cache may keep it; 0: not at all
    #: `headers` plus `Cache-Control`, built once: a flight's waiters each copy it in one C
    #: call instead of adding a dozen headers one by one.
    response_headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        headers = client_response_headers(self.headers, self.cache_control)
        object.__setattr__(self, "response_headers", headers)


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


def _copy(exc: ProxyError) -> ProxyError:
    """A fresh exception per waiter: one instance raised in many tasks would share tracebacks."""
    return type(exc)(exc.reason, exc.message, retry_after=exc.retry_after)


#: (engine cache-control values, max-age cap, live request, live max-age)
_MemoKey = tuple[tuple[str, ...], int | None, bool, float]


class Flight:
    """One engine request shared by every client waiting for the same answer."""

    __slots__ = (
        "_body",
        "_changed",
        "broken",
        "chunks",
        "complete",
        "failure",
        "finished",
        "head",
        "key",
        "task",
        "waiters",
    )

    def __init__(self, key: CacheKey) -> None:
        self.key = key
        self.head: Head | None = None
        self.chunks: list[bytes] = []
        self.complete = False  # the whole body arrived
        self.finished = False  # nothing more will happen (complete, failed or broken)
        self.broken = False  # the body stream failed after the headers
        self.failure: ProxyError | None = None  # failed before the headers
        self.waiters = 0
        self.task: asyncio.Task[None] | None = None
        self._body: bytes | None = None
        # An Event rather than a shared Future: each waiter waits on its own future, so a
        # waiter being cancelled never cancels the others' wait.
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed.clear()

    async def changed(self) -> None:
        await self._changed.wait()

    def body(self) -> bytes:
        if self._body is None:
            self._body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return self._body


class Forwarder:
    """The app's engine access: the session, the in-flight requests and the response cache.

    Owned by one app (no module state); used from its event loop only.
    """

    def __init__(
        self, session: aiohttp.ClientSession, cache: ResponseCache, metrics: Metrics
    ) -> None:
        self.session = session
        self.cache = cache
        self.metrics = metrics
        self._flights: dict[CacheKey, Flight] = {}
        # Engine cache-control values repeat (a handful of shapes); rewrite each once.
        self._cache_control: LRUCache[_MemoKey, tuple[str, float]] = LRUCache(maxsize=256)

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def close(self) -> None:
        """Cancel shared requests still running (app shutdown)."""
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        self._flights.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def forward(
        self,
        request: web.Request,
        url: URL,
        url_text: str,
        *,
        body: bytes | None,
        live: bool,
        sse: bool,
        options: UpstreamOptions,
        context: RequestContext,
    ) -> web.StreamResponse:
        """Answer `request` with the engine's answer to `url` (already built from scratch).

        Raises `UpstreamTimeout` (504) or `UpstreamError` (502) if no response headers arrive;
        once streaming has begun, an upstream failure closes the client connection so the
        client sees a truncated response, never a well-formed one with missing data.
        """
        shareable = body is None and not sse
        if shareable:
            headers = request.headers
            key: CacheKey = (
                "GET",
                url_text,
                headers.get("Accept-Encoding", ""),
                headers.get("Accept", ""),
                headers.get("If-None-Match", ""),
            )
            if options.cache and self.cache.enabled:
                entry = self.cache.get(key)
                if entry is not None:
                    self.metrics.cache_hit()
                    return self._from_cache(entry, context)
                self.metrics.cache_miss()
            if options.collapse:
                return await self._collapsed(request, url, key, options, context, live)
            return await self._direct(request, url, None, options, context, live, key)
        return await self._direct(request, url, body, options, context, live, None)

    # --- engine requests ---------------------------------------------------------------

    async def _send(
        self,
        request: web.Request,
        url: URL,
        body: bytes | None,
        options: UpstreamOptions,
        request_id: str,
    ) -> aiohttp.ClientResponse:
        method = "POST" if body is not None else "GET"
        request_headers = upstream_request_headers(request.headers, request_id)
        started = time.monotonic()
        self.metrics.upstream_sent()
        try:
            upstream = await self.session.request(
                method,
                url,
                headers=request_headers,
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
            raise UpstreamError(
                "upstream_error",
                "the sync engine connection failed",
                retry_after=options.retry_after,
            ) from None
        self.metrics.upstream_answered(upstream.status, time.monotonic() - started)
        return upstream

    def _head(
        self,
        upstream: aiohttp.ClientResponse,
        options: UpstreamOptions,
        live: bool,
        cacheable: bool,
    ) -> Head:
        raw: CIMultiDictProxy[str] = upstream.headers
        values = tuple(raw.getall("Cache-Control", ()))
        memo_key = (values, options.max_age_cap, live, options.live_max_age)
        rewritten = self._cache_control.get(memo_key)
        if rewritten is None:
            ttl = shared_ttl(values, live=live, live_max_age=options.live_max_age)
            rewritten = (private_cache_control(values, options.max_age_cap), ttl)
            self._cache_control[memo_key] = rewritten
        cache_control, ttl = rewritten
        if not (cacheable and options.cache) or upstream.status != 200:
            ttl = 0.0  # errors, 409 must-refetch, 304 (per client) and POSTs are never kept
        headers = tuple(upstream_response_headers(raw.items()))
        return Head(
            status=upstream.status,
            reason=upstream.reason,
            headers=headers,
            content_length=upstream.content_length,
            cache_control=cache_control,
            vary=tuple(raw.getall("Vary", ())),
            ttl=ttl,
        )

    # --- building client responses -----------------------------------------------------

    @staticmethod
    def _apply_head(response: web.StreamResponse, head: Head, context: RequestContext) -> None:
        response.headers.extend(head.response_headers)
        context.upstream_status = head.status
        context.vary = head.vary

    @staticmethod
    def _complete(head: Head, body: bytes, context: RequestContext) -> web.Response:
        # aiohttp copies a headers proxy into the response's own CIMultiDict.
        context.upstream_status = head.status
        context.vary = head.vary
        return web.Response(
            status=head.status, reason=head.reason, body=body, headers=head.response_headers
        )

    def _from_cache(self, entry: CachedResponse, context: RequestContext) -> web.Response:
        response = web.Response(
            status=entry.status,
            reason=entry.reason,
            body=entry.body,
            headers=entry.response_headers,
        )
        headers = response.headers
        age = int(self.cache.now() - entry.stored_at)
        if age > 0:
            headers["Age"] = str(age)
        context.upstream_status = entry.status
        context.vary = entry.vary
        context.cache = "hit"
        return response

    def _store(self, key: CacheKey, head: Head, body: bytes) -> None:
        if head.ttl <= 0 or not self.cache.enabled:
            return  # (a cache turned off by a reload keeps no new entries: see _head)
        now = self.cache.now()
        entry = CachedResponse(
            status=head.status,
            reason=head.reason,
            headers=head.headers,
            cache_control=head.cache_control,
            vary=head.vary,
            body=body,
            stored_at=now,
            expires_at=now + head.ttl,
        )
        if self.cache.put(key, entry):
            self.metrics.cache_stored(self.cache.bytes_used)

    # --- direct: one engine request per client -----------------------------------------

    async def _direct(
        self,
        request: web.Request,
        url: URL,
        body: bytes | None,
        options: UpstreamOptions,
        context: RequestContext,
        live: bool,
        key: CacheKey | None,
    ) -> web.StreamResponse:
        upstream = await self._send(request, url, body, options, context.request_id)
        complete = False
        try:
            head = self._head(upstream, options, live, cacheable=key is not None)
            length = head.content_length
            whole_limit = WHOLE_BODY_LIMIT
            if head.ttl > 0 and self.cache.enabled:
                whole_limit = max(whole_limit, self.cache.max_entry_bytes)
            if length is not None and length <= whole_limit:
                try:
                    raw = await upstream.content.readexactly(length) if length else b""
                except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError):
                    raise UpstreamError(
                        "upstream_error",
                        "the sync engine connection failed",
                        retry_after=options.retry_after,
                    ) from None
                complete = True
                if key is not None:
                    self._store(key, head, raw)
                return self._complete(head, raw, context)
            response = web.StreamResponse(status=head.status, reason=head.reason)
            self._apply_head(response, head, context)
            if length is not None:
                response.content_length = length
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

    # --- collapsed: one engine request per distinct key in flight ----------------------

    async def _collapsed(
        self,
        request: web.Request,
        url: URL,
        key: CacheKey,
        options: UpstreamOptions,
        context: RequestContext,
        live: bool,
    ) -> web.StreamResponse:
        flight = self._flights.get(key)
        if flight is None:
            flight = Flight(key)
            self._flights[key] = flight
            flight.task = asyncio.get_running_loop().create_task(
                self._fly(flight, request, url, options, context.request_id, live)
            )
        else:
            self.metrics.collapsed_request()
            context.cache = "collapsed"
        flight.waiters += 1
        try:
            return await self._wait(flight, request, options, context)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.finished:
                # The last client left: nobody needs the answer any more.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                if flight.task is not None:
                    flight.task.cancel()

    async def _fly(
        self,
        flight: Flight,
        request: web.Request,
        url: URL,
        options: UpstreamOptions,
        request_id: str,
        live: bool,
    ) -> None:
        """The shared engine request: headers, then every body chunk, told to all waiters."""
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                upstream = await self._send(request, url, None, options, request_id)
            except ProxyError as exc:
                flight.failure = exc
                return
            flight.head = self._head(upstream, options, live, cacheable=True)
            flight.notify()
            try:
                async for chunk in upstream.content.iter_any():
                    flight.chunks.append(chunk)
                    flight.notify()
            except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
                logger.warning("upstream stream broke (%s)", type(exc).__name__)
                flight.broken = True
                return
            flight.complete = True
            upstream.release()
            upstream = None
        finally:
            if upstream is not None:
                upstream.close()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            flight.finished = True
            flight.notify()
        if flight.head is not None:
            self._store(flight.key, flight.head, flight.body())

    async def _wait(
        self,
        flight: Flight,
        request: web.Request,
        options: UpstreamOptions,
        context: RequestContext,
    ) -> web.StreamResponse:
        """One client's side of a flight: its own response, written at its own pace."""
        while flight.head is None and not flight.finished:
            await flight.changed()
        head = flight.head
        if head is None:
            failure = flight.failure or UpstreamError(
                "upstream_error",
                "the sync engine connection failed",
                retry_after=options.retry_after,
            )
            raise _copy(failure)
        length = head.content_length
        if flight.complete or (length is not None and length <= WHOLE_BODY_LIMIT):
            while not flight.finished:
                await flight.changed()
            if not flight.complete:
                context.upstream_status = head.status
                raise UpstreamError(
                    "upstream_error",
                    "the sync engine connection failed",
                    retry_after=options.retry_after,
                )
            return self._complete(head, flight.body(), context)
        response = web.StreamResponse(status=head.status, reason=head.reason)
        self._apply_head(response, head, context)
        if length is not None:
            response.content_length = length
        try:
            await response.prepare(request)
            sent = 0
            while True:
                while sent < len(flight.chunks):
                    await response.write(flight.chunks[sent])
                    sent += 1
                if flight.finished:
                    break
                await flight.changed()
            if flight.broken:
                context.outcome, context.reason = "error", "upstream_broken_stream"
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        except ConnectionError:
            context.outcome, context.reason = "client_gone", "client_disconnected"
        return response

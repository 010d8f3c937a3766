"""The proxy's HTTP client towards the engine: a keep-alive pool over httptools (llhttp).

Every engine request of an app goes through one `UpstreamPool` (`send` is the only caller).
Why not aiohttp's client: it was the largest share of the proxy's CPU per forwarded request
(benchmarks/s1_front.py). The pool does only what forwarding needs: one HTTP/1.1 request per
connection at a time, connections kept alive and reused (LIFO, closed after `KEEPALIVE`
seconds idle, below the engine's own idle timeout), parsing by llhttp through httptools
(status line, headers, chunked framing; nothing parsed by hand), bodies passed on raw so their
bytes and `Content-Encoding` reach the client untouched.

Behaviour the forwarder relies on:
- timeouts: `connect_timeout` for a new connection, `first_byte_timeout` for the response
  headers and for every silence between body bytes afterwards (time spent paused by our own
  backpressure does not count);
- backpressure: a body buffers at most `HIGH_WATER` bytes before the connection stops
  reading from the engine, and reads again once the consumer is below `LOW_WATER`;
- a GET or HEAD whose reused connection turns out closed by the engine (nothing received) is
  retried once on a new connection, and so is a POST to `/v1/shape` (a subset snapshot, or a
  GET subset too long for a URL: a read); a DELETE is not;
- failures become `UpstreamError` (502) / `UpstreamTimeout` (504) before the headers and
  `BodyError` after, never formatted with the URL (it holds the secret);
- an answer that is a redirect (a 3xx other than 304: never the engine's own, a hop's
  between) becomes `UpstreamError` (502 `upstream_redirect`), its connection dropped;
- `close()` drops the engine connection (a client that went away cancels the engine request).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics

logger = logging.getLogger(__name__)

#: Each status code's standard reason phrase (RFC 9110), sent in place of a hop's own.
_REASONS: dict[int, bytes] = {status.value: status.phrase.encode() for status in HTTPStatus}

#: Seconds an idle connection is kept for reuse (below the engine's keep-alive timeout, so a
#: pooled connection is not reused just as the engine closes it).
KEEPALIVE = 15.0
#: Body bytes buffered from the engine before reading pauses, and the level it resumes at.
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
#: Methods retried once when a reused connection was already closed by the engine.
_IDEMPOTENT = frozenset({"GET", "HEAD"})


def _retried_when_stale(method: str, url: URL) -> bool:
    """Whether a request may be sent again on a new connection when nothing at all came back
    on a kept-alive one the engine had closed. GET and HEAD; and a POST to `/v1/shape`: the
    proxy sends one for a subset snapshot (the client's POST, or its GET whose subset is too
    long for a URL), which only reads (`sync_engine.http.subset`; a shape it names is created
    idempotently, the same definition giving the same shape). Not retried, a subset POST got
    the engine's 502 where the same subset as a GET was answered. A DELETE is never retried
    (a second one would answer for a shape the first may have deleted)."""
    return method in _IDEMPOTENT or (method == "POST" and url.path.endswith("/v1/shape"))


#: A body passed on unchanged (its length known, no framing to rewrite) with at least this
#: many bytes still to come is moved from the engine's socket to the client's by splice(2)
#: through a pipe (`Splice`): the kernel moves page references, where reading it into
#: Python and writing it out again cost two kernel copies, two user-space copies and a
#: Python call per read (perf of S1's ~1 MB answer: ~40% of the proxy's CPU in copies).
SPLICE_FROM = 128 * 1024
#: The splice pipe's size (Linux's default `pipe-max-size`): bytes moved per splice call.
_PIPE_SIZE = 1024 * 1024
#: Empty pipes kept for the next splice (two descriptors each).
_PIPES_KEPT = 8
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_SPLICE_MORE = getattr(os, "SPLICE_F_MORE", 4)


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
    #: The engine secret in each form it can take in an echo of the engine URL
    #: (`proxy.limits.upstream.secret_forms`): no forwarded response header may hold one.
    secret_forms: tuple[str, ...] = field(default=(), repr=False)
    #: `secret_forms` encoded, for the fast lane's raw header lines.
    secret_bytes: tuple[bytes, ...] = field(default=(), repr=False)
    #: A part of the secret that each of its forms holds (`proxy.limits.upstream.secret_marker`):
    #: a header value without it holds no form (None: no secret).
    secret_marker: str | None = field(default=None, repr=False)
    #: `secret_marker` encoded (never None: b"" matches everything, as the forms are then
    #: looked for; the fast lane checks `secret_bytes` first).
    secret_marker_bytes: bytes = field(default=b"", repr=False)


class BodyError(Exception):
    """The engine's body stopped before its end. Its text never contains the URL."""


class BodyTimeout(BodyError):
    """Nothing arrived for `first_byte_timeout` seconds in the middle of a body."""


class BodyTruncated(BodyError):
    """The engine connection closed (or sent garbage) before the body was complete."""


class InternalError(Exception):
    """A bug of the proxy's while it handled an engine answer (an exception out of one of
    its own parser callbacks): the request's 500, not the engine's failure."""


class _Failed(Exception):
    """Internal: the request failed before its headers; `retry` when a retry may help."""

    def __init__(self, error: Exception, *, retry: bool = False) -> None:
        super().__init__()
        self.error = error
        self.retry = retry


def make_session(pool_size: int) -> aiohttp.ClientSession:
    """An aiohttp session for the proxy's other HTTP calls (JWKS fetches), not the engine's."""
    connector = aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=15)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


def connection_failed(options: UpstreamOptions) -> UpstreamError:
    """The 502 a client gets when the engine connection breaks before its answer is whole."""
    return UpstreamError(
        "upstream_error", "the sync engine connection failed", retry_after=options.retry_after
    )


def failure_error(error: Exception, options: UpstreamOptions) -> ProxyError:
    """The 504 or 502 for a request that failed before its headers (`Listener.on_failed`);
    the 500 the direct path answers for a bug of ours (`InternalError`)."""
    if isinstance(error, TimeoutError):
        return _timed_out(options)
    if isinstance(error, InternalError):
        return internal_error()
    return connection_failed(options)


def internal_error() -> ProxyError:
    """The 500 for a bug of ours (`InternalError`): what `ProxyApp.crashed` answers."""
    return ProxyError("internal_error", "internal error")


def _timed_out(options: UpstreamOptions) -> UpstreamTimeout:
    return UpstreamTimeout(
        "upstream_timeout",
        "the sync engine did not answer in time",
        retry_after=options.retry_after,
    )


def redirected(status: int, options: UpstreamOptions) -> UpstreamError:
    """The 502 for an engine URL answered with a redirect, logged for the operator.

    The engine never redirects; something between the proxy and the engine does (a load
    balancer's http->https rule, nginx's auto-redirect of a `location /v1/shape/`, a CDN
    rule). Its `Location` is the engine URL, the engine secret in it: never forwarded (the
    header filter of `upstream.headers` drops it) nor logged. Without it the client got a
    redirect with nowhere to go; a gateway error it retries says what happened."""
    logger.warning(
        "the sync engine's URL was answered with a %d redirect (by a hop between the proxy "
        "and the engine?): answered 502 upstream_redirect; its Location is not logged (it "
        "holds the engine secret); check upstream.url",
        status,
    )
    return UpstreamError(
        "upstream_redirect",
        "the sync engine's address answered with a redirect",
        retry_after=options.retry_after,
    )


def _unreachable(options: UpstreamOptions) -> UpstreamError:
    return UpstreamError(
        "upstream_unreachable", "the sync engine is unreachable", retry_after=options.retry_after
    )


class Listener(Protocol):
    """Told of one engine answer by callbacks (`_Connection.send_to`), in this order:
    `on_headers` once the headers arrived, then `on_complete` once the whole body did; or
    `on_failed` instead, at any point before `on_complete` (`retry`: nothing at all came
    back on a reused connection, so sending the request again on a new one is safe)."""

    def on_headers(self, head: RawHead) -> None: ...
    def on_complete(self) -> None: ...
    def on_failed(self, error: Exception, retry: bool) -> None: ...


class UpstreamBody:
    """A response body as it arrives, read by one consumer (`readexactly` or `iter_any`)."""

    __slots__ = ("_chunks", "_conn", "_eof", "_error", "_high", "_size", "_waiter")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        #: (a list, not a deque: an empty deque is 760 bytes, and chunks are mostly taken at once)
        self._chunks: list[bytes] = []
        self._size = 0
        self._high = HIGH_WATER
        self._eof = False
        self._error: BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- fed by the connection (`_Connection.on_body` appends to `_chunks`) --------------

    def expect_whole(self, length: int) -> None:
        """The consumer takes the body only once all `length` bytes are in (`take_all`):
        keep reading until then instead of pausing at the high-water mark."""
        self._high = max(HIGH_WATER, length)

    def take_all(self) -> bytes:
        """Everything received and not read yet, at once."""
        return self._take() if self._chunks else b""

    def take_chunks(self) -> list[bytes]:
        """Everything received and not read yet, as it arrived (no copy)."""
        chunks, self._chunks = self._chunks, []
        self._size = 0
        conn = self._conn
        if conn._paused:
            conn.resume()
        return chunks

    def splice_to(
        self,
        dst: asyncio.Transport,
        length: int,
        head: list[bytes],
        read_timeout: float,
        send_timeout: float,
    ) -> asyncio.Future[None]:
        """Send `head`, then this body (Content-Length `length`, none of it read yet) to
        `dst` by `Splice`; only once `can_splice` said so. The answer's listener is told
        nothing more: the returned future says how it ended."""
        conn = self._conn
        fds = _splice_fds(conn, dst)  # (raises OSError, out of descriptors: nothing changed)
        conn.unlisten()
        conn.pause()  # (no more reads into Python: the rest is spliced)
        chunks, self._chunks = self._chunks, []
        received = self._size
        self._size = 0
        return Splice(
            conn, dst, fds, [*head, *chunks], length - received, read_timeout, send_timeout
        ).done

    def finish(self) -> None:
        self._eof = True
        if self._waiter is not None:
            self._wake()

    def fail(self, error: BodyError) -> None:
        if not self._eof and self._error is None:  # the first cause is the one reported
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._raised()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._raised()

    def _raised(self) -> BodyError:
        """A fresh copy of the error to raise: the kept one, raised, would keep its
        traceback, whose frames keep this body and its buffered bytes (a cycle)."""
        error = self._error
        assert error is not None
        return type(error)(*error.args)

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume()
        return data

    # --- read by the forwarder ----------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet (at most about `HIGH_WATER`)."""
        return self._size

    @property
    def reading_paused(self) -> bool:
        """The engine connection stopped reading because this body is not being read."""
        return self._conn.paused

    def is_eof(self) -> bool:
        """The whole body arrived and was read."""
        return self._eof and not self._chunks

    async def read(self, limit: int) -> bytes:
        """The rest of the body, or its first `limit` bytes when it is longer."""
        while self._size < limit and not self._eof:
            self._conn.resume()  # the reader wants more than the high-water mark holds
            await self._wait()
        data = self._take()
        if len(data) > limit:
            self._chunks.append(data[limit:])
            self._size = len(data) - limit
            data = data[:limit]
        return data

    async def readexactly(self, n: int) -> bytes:
        """The next `n` bytes (the whole body of a response with that Content-Length)."""
        while self._size < n:
            if self._eof:
                raise BodyTruncated()
            self._conn.resume()  # the reader wants more than the high-water mark holds
            await self._wait()
        data = self._take()
        if len(data) > n:  # more than asked (never for a whole body): keep the rest
            self._chunks.append(data[n:])
            self._size = len(data) - n
            data = data[:n]
        return data

    async def read_any(self) -> bytes:
        """Whatever arrived since the last read (waiting for some); b"" at the end."""
        while not self._chunks:
            if self._eof:
                return b""
            await self._wait()
        return self._take()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Whatever arrived since the last step, until the end of the body."""
        while True:
            while not self._chunks:
                if self._eof:
                    return
                await self._wait()
            yield self._take()


class UpstreamResponse:
    """An engine response whose headers arrived; its body follows in `content`.

    The caller must end it with `release()` once the body was read whole (the connection
    goes back to the pool) or `close()` otherwise (the connection is dropped).
    """

    __slots__ = ("_conn", "content", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        conn: _Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: UpstreamBody,
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    def release(self) -> None:
        """Done with it: the connection is reused if its answer was whole, else dropped."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self.content._eof and self.content._error is None:
                conn.done()
            else:
                conn.close()

    def close(self) -> None:
        """Abandon the answer: the engine connection is closed (the engine sees it go)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def splice(
        self, dst: asyncio.Transport | None, read_timeout: float, send_timeout: float
    ) -> asyncio.Future[None] | None:
        """This answer's body sent to `dst` by `Splice`, when it can be: a Content-Length body
        of at least `SPLICE_FROM` bytes, none of it read yet, plain TCP both ways, nothing of
        an earlier write still in `dst`'s buffer; the caller has written the head, with this
        same length, and passes the body on unchanged. None: read it from `content` as
        before. Then `release()` once the future is done (the connection is reused only if
        the whole body went out), as after reading it."""
        conn = self._conn
        length = self.content_length
        if conn is None or dst is None or length is None or length < SPLICE_FROM:
            return None
        body = self.content
        if conn._head_only or body._eof or body._error is not None:
            return None
        if "Transfer-Encoding" in self.headers or not can_splice(conn, dst):
            return None
        try:
            return body.splice_to(dst, length, [], read_timeout, send_timeout)
        except OSError:  # (out of descriptors: read as before)
            return None

    def unlisten(self) -> None:
        """Stop telling the listener of `send_to`: the body is read from `content` instead."""
        if self._conn is not None:
            self._conn.unlisten()


#: The longest error body (a 4xx/5xx answer's) read to be scrubbed (`read_error_body`):
#: the engine's are JSON of a few hundred bytes, a hop's error page a few KiB.
ERROR_BODY_LIMIT = 1024 * 1024


async def read_error_body(
    upstream: UpstreamResponse, timeout: float, limit: int = ERROR_BODY_LIMIT
) -> bytes | None:
    """The whole body of an error answer (4xx/5xx), to be scrubbed before a client sees any
    of it: Content-Length, chunked or to the close alike, at most `limit` bytes, all of it
    within `timeout` seconds. None when it is longer, slower or broke (the caller answers
    the proxy's own 502): an error body is never streamed to a client as it comes, as the
    engine secret or its URL could be in it (a hop's echo of its request target: attack,
    LOW, a load balancer's chunked error page)."""
    length = upstream.content_length
    if length is not None and length > limit:
        data = None
    else:
        content = upstream.content
        try:
            async with asyncio.timeout(timeout):
                if length is not None:
                    return await content.readexactly(length) if length else b""
                data = await content.read(limit + 1)
        except (BodyError, TimeoutError):
            data = None
        if data is not None and len(data) <= limit and content.is_eof():
            return data
    logger.warning(
        "an upstream %d answer's body was longer than %d bytes, slower than %g s or broken "
        "(a hop between the proxy and the engine?): answered 502 upstream_error",
        upstream.status,
        limit,
        timeout,
    )
    return None


class RawHead:
    """An engine answer's status and headers as llhttp gave them (bytes, in order), and its
    body as it arrives: what a `Listener` gets, before any `UpstreamResponse` is made."""

    __slots__ = ("_conn", "body", "raw", "reason", "status")

    def __init__(
        self, conn: _Connection, status: int, reason: bytes, raw: list[bytes], body: UpstreamBody
    ) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        #: name, value, name, value... (llhttp refuses CR/LF inside names and values)
        self.raw = raw
        self.body = body

    def release(self) -> None:
        """`UpstreamResponse.release` for an answer read whole from its `body`: the
        connection back to the pool (`_Connection.done`, inline: once per fast-lane
        forward), or closed if the body broke or the connection cannot be reused."""
        body, conn = self.body, self._conn
        if (
            body._eof
            and body._error is None
            and not (conn.lost or conn._head_only or not conn._keep_alive)
        ):
            conn._body = None
            conn.pool.put_back(conn)
        else:
            conn.close()

    def response(self) -> UpstreamResponse:
        """The same answer as an `UpstreamResponse` (decoded headers in a `CIMultiDict`)."""
        raw = self.raw
        # One decode for the whole block.
        flat = b"\n".join(raw).decode("utf-8", "surrogateescape").split("\n") if raw else []
        headers = CIMultiDict(zip(flat[::2], flat[1::2], strict=True))
        return UpstreamResponse(
            self._conn,
            self.status,
            self.reason.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            self.body,
        )


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the engine, carrying one request at a time."""

    __slots__ = (
        "_body",
        "_head_only",
        "_headers_waiter",
        "_keep_alive",
        "_last_read",
        "_listener",
        "_loop",
        "_paused",
        "_raw_headers",
        "_received",
        "_timeout",
        "_timer",
        "_timer_at",
        "idle_since",
        "key",
        "lost",
        "on_header",
        "parser",
        "pool",
        "transport",
        "used",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        #: The answer's raw headers as llhttp gives them: name, value, name, value... One
        #: list for the connection's life, emptied for each request; each answer gets a copy
        #: (`on_headers_complete`).
        self._raw_headers: list[bytes] = []
        #: httptools' header callback (it looks it up once, when the parser is made): a
        #: function appending to `_raw_headers` by two C calls, not a method building a
        #: tuple: ~3.7K instructions less for the engine's 16 headers (~1.8% of a forward).
        append = self._raw_headers.append

        def on_header(name: bytes, value: bytes) -> None:
            append(name)
            append(value)

        self.on_header = on_header
        #: Dropped when the connection is lost: the parser keeps this protocol (its
        #: callbacks) and this protocol the parser, a cycle (see `_forget`).
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.lost = False
        self.used = False  # has carried a request before (a failure may be a stale close)
        self.idle_since = 0.0
        self._body: UpstreamBody | None = None
        self._headers_waiter: asyncio.Future[UpstreamResponse] | None = None
        #: Told of the answer by callbacks instead (`send_to`): no future, no task.
        self._listener: Listener | None = None
        self._head_only = False
        self._keep_alive = False
        self._received = False
        self._paused = False
        #: One timer per connection, left running between requests and moved only when a
        #: request needs it sooner (a timer made and cancelled per request cost more).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timeout = 0.0
        self._last_read = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        if self._headers_waiter is None and self._body is None and self._listener is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        parser = self.parser
        if parser is None:
            return
        self._received = True
        self._last_read = self._loop.time()
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # (httptools' own: what a callback of ours raised)
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                # A bug of ours, not bytes the engine got wrong: logged (it was silent, and
                # the client's answer a 502 blaming the engine), and the request's 500.
                logger.error("unexpected error handling an engine answer", exc_info=cause)
                self._broken(InternalError())
            else:
                self._broken()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:  # else `close` (or a failed connect) already freed the slot
            self.lost = True
            self.pool.forget(self)
        self._cancel_timer()
        body = self._body
        if self._headers_waiter is not None or (self._listener is not None and body is None):
            # Nothing at all received on a reused connection: the engine closed it while it
            # sat in the pool; a retry on a new connection is safe for idempotent methods.
            self._fail_headers(_Failed(Exception(), retry=self.used and not self._received))
        elif body is not None and not body._eof:
            if self._reads_until_close():
                self._message_done()
            else:
                self._fail_body(BodyTruncated())
        self._forget()

    def _forget(self) -> None:
        """Let go of what a lost connection held. The parser and this protocol, and the
        body and this protocol, refer to each other: cycles only the cyclic collector frees,
        which the real proxy runs rarely (`tune_gc`), so each engine connection closed in
        the middle of a big answer (a client that left it) kept its buffered bytes, ~1 MB
        per request (attack 11:20). The body keeps its own error for whoever reads it."""
        self.parser = None
        self._body = None
        self._listener = None
        self._headers_waiter = None
        self._raw_headers.clear()

    # --- httptools callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        waiter = self._headers_waiter
        listener = self._listener
        if waiter is None and (listener is None or self._body is not None):
            raise httptools.HttpParserError("unexpected response")
        parser = self.parser
        assert parser is not None  # (called from `feed_data` only)
        status = parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (we never send Expect): skip it
            self._raw_headers.clear()
            return
        # The standard phrase, never the hop's own words: a hop between the proxy and the
        # engine that echoes its request target there ("400 Bad /v1/shape?...&secret=...")
        # put the engine secret in the client's status line (attack 05:30, LOW). The engine
        # (aiohttp) sends the standard phrases: the client sees no difference from it. So
        # the phrase llhttp read is never asked for: no `on_status` callback (one Python call
        # per answer, ~0.5% of a fast-lane forward).
        reason = _REASONS.get(status, b"")
        raw = self._raw_headers.copy()  # (the list is the next answer's too)
        # (llhttp answers this only until the message is complete)
        self._keep_alive = parser.should_keep_alive()
        body = UpstreamBody(self)
        self._body = body
        if listener is not None:  # (a GET: never head-only)
            listener.on_headers(RawHead(self, status, reason, raw, body))
            return
        response = RawHead(self, status, reason, raw, body).response()
        # (cleared once the answer is made: if making it failed, `_broken` fails the waiter;
        # cleared before, nothing ever told the request, which waited for ever)
        self._headers_waiter = None
        if self._head_only:
            # llhttp cannot be told that a HEAD answer has no body: end it here and never
            # reuse the connection (see `done`).
            self._message_done()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        into = self._body  # (`UpstreamBody.feed`, inline: once or more per answer)
        if into is not None:
            into._chunks.append(body)
            into._size += len(body)
            if into._size > into._high:
                self.pause()
            if into._waiter is not None:
                into._wake()

    def on_message_complete(self) -> None:
        body = self._body  # (`_message_done`, inline: once per answer)
        if body is not None:
            body._eof = True
            if body._waiter is not None:
                body._wake()
            listener = self._listener
            if listener is not None:
                self._listener = None
                listener.on_complete()

    # --- the request --------------------------------------------------------------------

    def send(
        self, data: bytes, head_only: bool, timeout: float
    ) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self.used = True
        self._head_only = head_only
        self._received = False
        self._raw_headers.clear()
        self._body = None
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        self._headers_waiter = waiter
        self._timeout = timeout
        self._last_read = now = self._loop.time()
        self._arm(now + timeout)
        self.transport.write(data)
        return waiter

    def unlisten(self) -> None:
        self._listener = None

    def send_to(self, data: bytes, timeout: float, listener: Listener) -> None:
        """`send` for a GET whose answer is told to `listener` by callbacks (see `Listener`)."""
        assert self.transport is not None
        self.used = True
        self._head_only = False
        self._received = False
        self._raw_headers.clear()
        self._body = None
        self._listener = listener
        self._timeout = timeout
        self._last_read = now = self._loop.time()
        if self._timer is None or self._timer_at > now + timeout:  # (`_arm`'s own test)
            self._arm(now + timeout)
        self.transport.write(data)

    def _message_done(self) -> None:
        body = self._body
        if body is not None:
            body.finish()
            listener = self._listener
            if listener is not None:
                self._listener = None
                listener.on_complete()

    def _reads_until_close(self) -> bool:
        """A body without Content-Length or chunked framing ends when the connection does."""
        names = {n.lower() for n in self._raw_headers[::2]}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _arm(self, deadline: float) -> None:
        """Make sure `_check_timeout` runs by `deadline`."""
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # (it checks the deadline of the moment, and moves on if need be)
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._check_timeout)
        self._timer_at = deadline

    def _check_timeout(self) -> None:
        self._timer = None
        body = self._body
        if not self._awaiting_headers and (body is None or body._eof):
            return  # no request in progress: nothing to time
        now = self._loop.time()
        deadline = self._last_read + self._timeout
        if self._paused:  # our own backpressure, not the engine's silence: check again later
            self._arm(now + self._timeout)
            return
        if now < deadline:
            self._arm(deadline)
            return
        if self._awaiting_headers:
            self._fail_headers(_Failed(TimeoutError()))
        elif self._body is not None:
            self._fail_body(BodyTimeout())
        self.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def _awaiting_headers(self) -> bool:
        return self._headers_waiter is not None or (
            self._listener is not None and self._body is None
        )

    def _fail_headers(self, failure: _Failed) -> None:
        waiter, self._headers_waiter = self._headers_waiter, None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.on_failed(failure.error, failure.retry)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(failure)

    def _fail_body(self, error: BodyError, internal: InternalError | None = None) -> None:
        assert self._body is not None
        self._body.fail(error)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.on_failed(internal or error, False)

    def _broken(self, internal: InternalError | None = None) -> None:
        """The engine sent something llhttp refused (or, `internal`, a callback of ours
        failed): fail the request, drop the connection."""
        if self._awaiting_headers:
            self._fail_headers(_Failed(internal or Exception()))
        elif self._body is not None:
            self._fail_body(BodyTruncated(), internal)
        self.close()

    # --- flow control and lifetime ------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self._loop.time()
            self.transport.resume_reading()

    def done(self) -> None:
        """The answer was read whole: back to the pool, or closed if it cannot be reused."""
        if self.lost or self._head_only or not self._keep_alive:
            self.close()
            return
        self._body = None
        self.pool.put_back(self)

    def close(self) -> None:
        self._cancel_timer()
        if self._awaiting_headers:
            self._fail_headers(_Failed(Exception()))
        elif self._body is not None and not self._body._eof:
            self._fail_body(BodyTruncated())
        if self.transport is not None:
            self.transport.close()
        if not self.lost:
            self.lost = True
            self.pool.forget(self)


class UpstreamPool:
    """Keep-alive connections to the engine, at most `size` open at once.

    Owned by one app; used from its event loop only. Idle connections are reused most
    recent first and closed after `KEEPALIVE` seconds.
    """

    def __init__(self, size: int, *, keepalive: float = KEEPALIVE) -> None:
        self.size = size
        self.keepalive = keepalive
        self.loop = asyncio.get_running_loop()
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._all: set[_Connection] = set()  # open or opening, busy or idle

    @property
    def open_connections(self) -> int:
        """Connections open to the engine, busy or idle."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for their next request."""
        return sum(1 for idle in self._idle.values() for conn in idle if not conn.lost)

    async def request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | None,
        options: UpstreamOptions,
    ) -> UpstreamResponse:
        """Send one request; return once its headers arrived (raises `ProxyError`)."""
        data = _serialize(method, url, headers, body)
        key = key_of(url)
        head_only = method == "HEAD"
        conn = await self._acquire(key, options)
        try:
            return await conn.send(data, head_only, options.first_byte_timeout)
        except _Failed as failure:
            if not (failure.retry and _retried_when_stale(method, url)):
                raise self._translate(failure, options) from None
        except BaseException:
            conn.close()  # cancelled (the client went away): the engine sees the request go
            raise
        conn = await self._connect(key, options)  # the stale connection's one retry
        try:
            return await conn.send(data, head_only, options.first_byte_timeout)
        except _Failed as failure:
            raise self._translate(failure, options) from None
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _translate(failure: _Failed, options: UpstreamOptions) -> Exception:
        return failure_error(failure.error, options)

    def take_idle(self, key: tuple[str, int, bool]) -> _Connection | None:
        """An idle kept-alive connection to `key` (see `key_of`), if there is one now."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.lost:
                continue
            if conn.transport is None or conn.transport.is_closing():
                conn.close()  # (the engine's close is on its way)
                continue
            return conn
        return None

    async def _acquire(self, key: tuple[str, int, bool], options: UpstreamOptions) -> _Connection:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return await self._connect(key, options)

    async def _connect(self, key: tuple[str, int, bool], options: UpstreamOptions) -> _Connection:
        while self._open >= self.size:
            if self._close_one_idle():  # an idle connection (of another engine URL) makes room
                break
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if not conn.lost:
                    return conn
        self._open += 1
        host, port, tls = key
        conn = _Connection(self, key)
        self._all.add(conn)
        try:
            async with asyncio.timeout(options.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=self._ssl_context() if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            self._lost_one(conn)
            raise _timed_out(options) from None
        except (OSError, ssl.SSLError):
            self._lost_one(conn)
            raise _unreachable(options) from None
        except BaseException:
            self._lost_one(conn)
            raise
        return conn  # (asyncio and uvloop set TCP_NODELAY on TCP connections)

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if not conn.lost:
                    conn.close()
                    return True
        return False

    def _lost_one(self, conn: _Connection) -> None:
        self._all.discard(conn)
        conn.lost = True
        if conn.transport is not None:
            conn.transport.close()
        self._release_slot()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release_slot(self) -> None:
        self._open -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def put_back(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._waiters:  # someone waits for a slot: an idle connection serves as well
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive / 3, self._sweep)

    def forget(self, conn: _Connection) -> None:
        """`conn` is closed: free its slot (called once per connection)."""
        self._all.discard(conn)
        self._release_slot()

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive."""
        self._sweeper = None
        cutoff = self.loop.time() - self.keepalive
        remaining = 0
        for idle in self._idle.values():
            stale = [c for c in idle if c.idle_since < cutoff or c.lost]
            if stale:
                idle[:] = [c for c in idle if c.idle_since >= cutoff and not c.lost]
                for conn in stale:
                    conn.close()
            remaining += len(idle)
        if remaining and not self._closed:
            self._sweeper = self.loop.call_later(self.keepalive / 3, self._sweep)

    async def close(self) -> None:
        """Close every connection (app shutdown); requests still running fail as broken."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._all):
            conn.close()


#: Empty pipes left by finished splices, for the next one (read end, write end).
_pipes: list[tuple[int, int]] = []


def _pipe() -> tuple[int, int]:
    if _pipes:
        return _pipes.pop()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # (a smaller pipe only means more calls)
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    return read_end, write_end


def _socket_fd(transport: asyncio.BaseTransport) -> int | None:
    """The plain TCP socket under `transport`, if it has one (not TLS)."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    try:
        fd = int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return None
    return fd if fd >= 0 else None


def _splice_fds(conn: _Connection, dst: asyncio.Transport) -> tuple[int, int, tuple[int, int]]:
    """Duplicates of the engine's and the client's sockets, and a pipe (`Splice` owns them)."""
    assert conn.transport is not None
    src_fd, dst_fd = _socket_fd(conn.transport), _socket_fd(dst)
    assert src_fd is not None and dst_fd is not None  # (`can_splice`)
    src = os.dup(src_fd)
    try:
        dup = os.dup(dst_fd)
    except OSError:
        os.close(src)
        raise
    try:
        return src, dup, _pipe()
    except OSError:
        os.close(src)
        os.close(dup)
        raise


def can_splice(conn: _Connection, dst: asyncio.Transport) -> bool:
    """The rest of the answer on `conn` can be spliced to `dst` (`UpstreamBody.splice_to`):
    plain TCP both ways, and nothing of an earlier write still in `dst`'s buffer (it would
    go out after the spliced bytes)."""
    src = conn.transport
    if src is None or conn.lost or conn.key[2] or not hasattr(os, "splice"):
        return False
    if dst.is_closing() or dst.get_write_buffer_size():
        return False
    return _socket_fd(src) is not None and _socket_fd(dst) is not None


def _protocol_of(transport: object) -> object:
    """A transport's protocol (None for none: a test's stand-in)."""
    get = getattr(transport, "get_protocol", None)
    return get() if get is not None else None


class Splice:
    """The rest of an engine answer's body moved to the client's socket by splice(2).

    Why: the kernel moves page references from one socket to the other through a pipe;
    read into Python and written out again, each MB cost two kernel copies, two user-space
    copies (uvloop's read, llhttp's body slice) and a Python call per read. The bytes the
    client gets are the same: the body is passed on unchanged, its length is the engine's.

    The engine connection has stopped reading (uvloop must not read the bytes spliced), and
    both sockets are used through duplicated descriptors (uvloop refuses a reader on a
    transport's own one; the duplicates are closed when it ends). The loop watches one of
    them only while a call would block: the engine's while the pipe is empty, the client's
    while it is not. So a client that reads slowly holds at most one pipe of the body in the
    proxy; the engine's socket buffer and TCP hold back the rest, as before.

    `done` resolves once every byte went out (the engine connection is then reading again
    with a fresh parser, ready for its next request), or raises `BodyTimeout` (the engine
    sent nothing for `read_timeout`), `BodyTruncated` (the engine closed early) or
    `ConnectionResetError` (the client went away, or read nothing for `send_timeout`: its
    connection is aborted); on any failure the engine connection is closed, never reused.
    Cancelling `done` stops it the same way."""

    __slots__ = (
        "_closed",
        "_conn",
        "_dst",
        "_dst_transport",
        "_in_pipe",
        "_last_read",
        "_last_write",
        "_loop",
        "_pending",
        "_pipe",
        "_read_timeout",
        "_remaining",
        "_send_timeout",
        "_src",
        "_timer",
        "_waiting",
        "done",
    )

    def __init__(
        self,
        conn: _Connection,
        dst: asyncio.Transport,
        fds: tuple[int, int, tuple[int, int]],
        pending: list[bytes],
        remaining: int,
        read_timeout: float,
        send_timeout: float,
    ) -> None:
        self._loop = loop = conn._loop
        self._conn = conn
        self._dst_transport = dst
        protocol = _protocol_of(dst)
        if hasattr(protocol, "splicing"):  # (the client's `Connection`: `stalled_for`)
            protocol.splicing = self
        self.done: asyncio.Future[None] = loop.create_future()
        self._closed = False
        self._src, self._dst, self._pipe = fds  # (`_splice_fds`)
        self._pending: list[bytes | memoryview] = [p for p in pending if p]
        self._in_pipe = 0
        self._remaining = remaining
        self._read_timeout = read_timeout
        self._send_timeout = send_timeout
        self._last_read = self._last_write = loop.time()
        self._waiting = ""  # "r": on the engine's socket, "w": on the client's
        self._timer: asyncio.TimerHandle | None = None
        self.done.add_done_callback(self._on_done)
        self._pump()

    def _pump(self) -> None:
        """Move what can move now: to the client while it takes it, from the engine while
        the pipe has room (so the engine's socket keeps draining while the client's is
        full); then wait on the client's socket while the pipe holds bytes (the engine's is
        tried again after each write), else on the engine's."""
        now = self._loop.time()
        while not self._closed:
            moved = False
            if self._pending or self._in_pipe:
                try:
                    if self._pending:
                        n = os.writev(self._dst, self._pending)
                        self._written(n)
                    else:
                        flags = _SPLICE_FLAGS | (_SPLICE_MORE if self._remaining else 0)
                        n = os.splice(self._pipe[0], self._dst, self._in_pipe, flags=flags)
                        self._in_pipe -= n
                    self._last_write = now
                    moved = True
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._finish(ConnectionResetError("the client went away"))
                    return
            if self._remaining and self._in_pipe < _PIPE_SIZE:
                want = min(self._remaining, _PIPE_SIZE - self._in_pipe)
                try:
                    n = os.splice(self._src, self._pipe[1], want, flags=_SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    n = -1  # (nothing there yet, or the pipe is full)
                except OSError:
                    n = 0
                if not n:
                    self._finish(BodyTruncated())
                    return
                if n > 0:
                    self._last_read = now
                    self._remaining -= n
                    self._in_pipe += n
                    moved = True
            if not (self._pending or self._in_pipe or self._remaining):
                self._finish(None)
                return
            if not moved:
                self._wait("w" if self._pending or self._in_pipe else "r")
                return

    def _written(self, n: int) -> None:
        pending = self._pending
        while n:
            first = pending[0]
            if n < len(first):
                pending[0] = memoryview(first)[n:]
                return
            n -= len(first)
            del pending[0]

    def _wait(self, side: str) -> None:
        """Wait for the socket of `side` ("r": engine, "w": client) to be ready."""
        loop = self._loop
        if self._waiting != side:
            if self._waiting == "r":
                loop.remove_reader(self._src)
            elif self._waiting == "w":
                loop.remove_writer(self._dst)
            if side == "r":
                loop.add_reader(self._src, self._pump)
            else:
                loop.add_writer(self._dst, self._pump)
            self._waiting = side
        if self._timer is None:
            self._timer = loop.call_at(self._deadline(), self._check)

    def _deadline(self) -> float:
        if self._waiting == "w":
            return self._last_write + self._send_timeout
        return self._last_read + self._read_timeout

    def _check(self) -> None:
        """The one timer: the side waited on has been silent too long, or check again."""
        self._timer = None
        if self._closed:
            return
        deadline = self._deadline()
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check)
        elif self._waiting == "w":
            self._dst_transport.abort()
            self._finish(ConnectionResetError("the client stopped reading"))
        else:
            self._finish(BodyTimeout())

    def stalled_for(self, now: float) -> float:
        """Seconds the client has taken nothing while the pipe held bytes for it; 0 while it
        is not waited on (`proxy.http.protocol.Connection.stalled_for`: a spliced answer
        never fills the transport's buffer, so its client never pauses writing)."""
        return now - self._last_write if self._waiting == "w" and not self._closed else 0.0

    def _release(self, reuse_pipe: bool) -> None:
        self._closed = True
        protocol = _protocol_of(self._dst_transport)
        if getattr(protocol, "splicing", None) is self:
            protocol.splicing = None  # type: ignore[attr-defined]
        loop = self._loop
        if self._waiting == "r":
            loop.remove_reader(self._src)
        elif self._waiting == "w":
            loop.remove_writer(self._dst)
        self._waiting = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        os.close(self._src)
        os.close(self._dst)
        if reuse_pipe and len(_pipes) < _PIPES_KEPT:
            _pipes.append(self._pipe)
        else:
            os.close(self._pipe[0])
            os.close(self._pipe[1])

    def _finish(self, error: BaseException | None) -> None:
        if self._closed:
            return
        if self.done.cancelled():
            # Cancelled in this loop turn, `_on_done` not run yet (its callback is only
            # scheduled) and a due `_pump` came first: stop as a cancel does. Setting the
            # outcome on the cancelled `done` raised InvalidStateError (an ERROR traceback),
            # and a finished body would have handed back a connection its owner closed.
            self._on_done(self.done)
            return
        self._release(reuse_pipe=error is None)
        conn = self._conn
        if error is None:
            body = conn._body
            if body is not None:
                body._eof = True
            if not conn.lost:  # the spliced bytes never went through the parser: a new one
                conn.parser = httptools.HttpResponseParser(conn)
                conn.resume()
            self.done.set_result(None)
            return
        if isinstance(error, BodyError) and conn._body is not None:
            conn._body.fail(error)
        conn.close()
        self.done.set_exception(error)

    def _on_done(self, done: asyncio.Future[None]) -> None:
        if done.cancelled() and not self._closed:
            self._release(reuse_pipe=False)
            self._conn.close()


def key_of(url: URL) -> tuple[str, int, bool]:
    """The pool's key for an engine URL: host, port, TLS."""
    return (url.raw_host or "", url.port or 0, url.scheme == "https")


def request_line(method: str, url: URL) -> str:
    """The request line and `Host` header of a request to `url`."""
    host = url.raw_host or ""
    port = url.port
    if port is not None and port != (443 if url.scheme == "https" else 80):
        host = f"{host}:{port}"
    return f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {host}\r\n"


def header_lines(headers: Mapping[str, str]) -> list[str]:
    """`Name: value` lines (CRLF-terminated); header values with CR/LF are dropped."""
    lines = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            continue
        lines.append(f"{name}: {value}\r\n")
    return lines


def _serialize(method: str, url: URL, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """The request head (and body) as bytes. Header values with CR/LF are dropped."""
    lines = [request_line(method, url), *header_lines(headers)]
    # (a header the client sent as bytes that are not UTF-8 goes on as the same bytes: a
    # strict encode raised here, and the client got a 500)
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape") + body
    if method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


async def send(
    pool: UpstreamPool,
    metrics: Metrics,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    body: bytes | None,
    options: UpstreamOptions,
) -> UpstreamResponse:
    """Send one request to the engine and return once its headers arrived.

    Raises `UpstreamTimeout` (504) when nothing arrives within the first-byte timeout and
    `UpstreamError` (502) when the engine cannot be reached or drops the connection, or
    when its URL is answered with a redirect (`redirected`; the connection is dropped).
    """
    started = time.monotonic()
    metrics.upstream_sent()
    upstream = await pool.request(method, url, headers, body, options)
    status = upstream.status
    metrics.upstream_answered(status, time.monotonic() - started)
    if 300 <= status < 400 and status != 304:  # (the engine's one 3xx: 304, If-None-Match)
        upstream.close()
        raise redirected(status, options)
    return upstream

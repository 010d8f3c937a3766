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
  retried once on a new connection;
- failures become `UpstreamError` (502) / `UpstreamTimeout` (504) before the headers and
  `BodyError` after, never formatted with the URL (it holds the secret);
- `close()` drops the engine connection (a client that went away cancels the engine request).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from proxy.metrics import Metrics

#: Seconds an idle connection is kept for reuse (below the engine's keep-alive timeout, so a
#: pooled connection is not reused just as the engine closes it).
KEEPALIVE = 15.0
#: Body bytes buffered from the engine before reading pauses, and the level it resumes at.
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
#: Methods retried once when a reused connection was already closed by the engine.
_IDEMPOTENT = frozenset({"GET", "HEAD"})


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


class BodyError(Exception):
    """The engine's body stopped before its end. Its text never contains the URL."""


class BodyTimeout(BodyError):
    """Nothing arrived for `first_byte_timeout` seconds in the middle of a body."""


class BodyTruncated(BodyError):
    """The engine connection closed (or sent garbage) before the body was complete."""


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
    """The 504 or 502 for a request that failed before its headers (`Listener.on_failed`)."""
    if isinstance(error, TimeoutError):
        return _timed_out(options)
    return connection_failed(options)


def _timed_out(options: UpstreamOptions) -> UpstreamTimeout:
    return UpstreamTimeout(
        "upstream_timeout",
        "the sync engine did not answer in time",
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

    def unlisten(self) -> None:
        """Stop telling the listener of `send_to`: the body is read from `content` instead."""
        if self._conn is not None:
            self._conn.unlisten()


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
        """`UpstreamResponse.release` for an answer read whole from its `body`."""
        if self.body._eof and self.body._error is None:
            self._conn.done()
        else:
            self._conn.close()

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
        "_reason",
        "_received",
        "_timeout",
        "_timer",
        "_timer_at",
        "idle_since",
        "key",
        "lost",
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
        self._raw_headers: list[bytes] = []  # name, value, name, value...
        self._reason = b""
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
        except httptools.HttpParserError:
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
        self._raw_headers = []

    # --- httptools callbacks ------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers += (name, value)

    def on_headers_complete(self) -> None:
        waiter = self._headers_waiter
        listener = self._listener
        if waiter is None and (listener is None or self._body is not None):
            raise httptools.HttpParserError("unexpected response")
        parser = self.parser
        assert parser is not None  # (called from `feed_data` only)
        status = parser.get_status_code()
        raw = self._raw_headers
        if 100 <= status < 200:  # an interim answer (we never send Expect): skip it
            raw.clear()
            self._reason = b""
            return
        self._headers_waiter = None
        # (llhttp answers this only until the message is complete)
        self._keep_alive = parser.should_keep_alive()
        body = UpstreamBody(self)
        self._body = body
        if listener is not None:  # (a GET: never head-only)
            listener.on_headers(RawHead(self, status, self._reason, raw, body))
            return
        response = RawHead(self, status, self._reason, raw, body).response()
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
        self._reason = b""
        self._raw_headers = []
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
        self._reason = b""
        self._raw_headers = []
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

    def _fail_body(self, error: BodyError) -> None:
        assert self._body is not None
        self._body.fail(error)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.on_failed(error, False)

    def _broken(self) -> None:
        """The engine sent something llhttp refused: fail the request, drop the connection."""
        if self._awaiting_headers:
            self._fail_headers(_Failed(Exception()))
        elif self._body is not None:
            self._fail_body(BodyTruncated())
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
            if not (failure.retry and method in _IDEMPOTENT):
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
    `UpstreamError` (502) when the engine cannot be reached or drops the connection.
    """
    started = time.monotonic()
    metrics.upstream_sent()
    upstream = await pool.request(method, url, headers, body, options)
    metrics.upstream_answered(upstream.status, time.monotonic() - started)
    return upstream

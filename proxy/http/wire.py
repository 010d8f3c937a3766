"""The proxy's own HTTP/1.1 messages: the request a handler gets and the responses it returns.

Why not aiohttp's server: a bare aiohttp server answering a canned response cost 65-74 µs of
CPU per request here, about 1.2x nginx's whole forward, and its per-request objects (request,
payload writer, task and coroutine chain) were about 4 KB of a held long-poll's 12.8 KB.
These classes carry only what the proxy's handlers use; `proxy.http.protocol` parses the
request (llhttp through httptools) and writes the responses.

Responses follow the rules aiohttp's did, so clients see the same bytes: a whole `Response`
gets `Content-Length` (not for 204/304/1xx, nor a bodiless HEAD answer that names none),
`Content-Type: application/octet-stream` when a body has no type, a `Date`, and `Connection:
close` / `keep-alive` as the HTTP version needs; a `StreamResponse` without a length is sent
chunked to HTTP/1.1 clients and ends with the connection for HTTP/1.0 ones. A HEAD answer,
204, 304 and 1xx never carry a body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Generic, Protocol, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from proxy.http.context import RequestContext

T = TypeVar("T")

#: Statuses whose answers never have a body (RFC 9110 §6.4.1).
_EMPTY_BODY_STATUS = frozenset((204, 304, *range(100, 200)))
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class Owner(Protocol):
    """The application answering a request, as far as the wire needs it: the wire sits
    below the app (`proxy.app.ProxyApp` is the one implementation) and must not import it."""

    def on_prepare(self, request: Request, response: StreamResponse) -> None:
        """Run just before a response's headers go out."""


class Writer:
    """What a response needs from its connection: write, wait for the client to read."""

    __slots__ = ()

    @property
    def transport(self) -> asyncio.Transport | None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError


class StateKey(Generic[T]):
    """A typed name for something an app holds (`app[FORWARDER]`), for tests and tools."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Request:
    """One parsed request. Held while its answer is pending, so kept small (`__slots__`)."""

    __slots__ = (
        "_query",
        "app",
        "body",
        "body_too_large",
        "context",
        "headers",
        "keep_alive",
        "method",
        "query_string",
        "raw_path",
        "version",
        "writer",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        version: tuple[int, int],
        keep_alive: bool,
        writer: Writer,
        app: Owner | None,
    ) -> None:
        self.method = method
        #: The request target as sent (path, query and fragment; never normalised).
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.writer = writer
        #: The app answering it (None for a request the parser refused).
        self.app = app
        self.body: bytes = b""
        #: The body was over the app's limit: `read()` answers 413 (GET bodies are ignored).
        self.body_too_large = False
        #: What the handling learns on the way, for the access log (the id is set by the app).
        self.context = RequestContext("")
        self._query: MultiDictProxy[str] | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client connection (None once it is gone)."""
        return self.writer.transport

    @property
    def remote(self) -> str | None:
        """The client's address (the peer of the TCP connection; no proxy headers trusted)."""
        transport = self.writer.transport
        if transport is None:
            return None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)) and peer:
            return str(peer[0])
        return None if peer is None else str(peer)

    @property
    def query(self) -> MultiDictProxy[str]:
        """The decoded query (yarl's rules, as aiohttp's `rel_url.query`: `+` is a space)."""
        if self._query is None:
            self._query = URL.build(query_string=self.query_string, encoded=True).query
        return self._query

    async def read(self) -> bytes:
        """The whole body (already received before the handler ran)."""
        if self.body_too_large:
            raise HttpError(413, "Request Entity Too Large")
        return self.body


class HttpError(Exception):
    """An HTTP-level refusal the app renders in its JSON (413 body, 405 method, 417)."""

    def __init__(self, status: int, reason: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason or _REASONS.get(status, "Error")


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class _Clock:
    """`Date` values, formatted once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True)
        return self.value


_CLOCK = _Clock()


#: The one clock (`proxy.http.fastlane` reads its `value` while `second` is now's).
CLOCK = _CLOCK
#: Now, as a `Date` header value (formatted once per second); `_CLOCK.now` itself, one
#: call fewer per answer.
http_date: Callable[[], str] = _CLOCK.now


class StreamResponse:
    """A response whose body is written piece by piece after `prepare`."""

    __slots__ = (
        "_eof",
        "_request",
        "chunked",
        "content_length",
        "empty_body",
        "headers",
        "prepared",
        "reason",
        "status",
    )

    def __init__(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        self.content_length: int | None = None
        self.prepared = False
        self.chunked = False
        self.empty_body = False
        self._request: Request | None = None
        self._eof = False

    # --- headers -------------------------------------------------------------------------

    def _head(self, request: Request, body_length: int | None) -> bytes:
        """The status line and headers, finished as aiohttp finished them (module doc)."""
        headers = self.headers
        status = self.status
        empty = status in _EMPTY_BODY_STATUS or request.method == "HEAD"
        self.empty_body = empty
        keep_alive = request.keep_alive
        if body_length is None:  # streamed
            length = self.content_length
            if length is not None:
                headers["Content-Length"] = str(length)
            elif request.version >= (1, 1):
                if not empty:
                    self.chunked = True
                    headers["Transfer-Encoding"] = "chunked"
            elif not empty:
                keep_alive = False
        else:
            length = body_length
            if "Content-Length" not in headers and (
                body_length or (status != 304 and request.method != "HEAD")
            ):
                headers["Content-Length"] = str(body_length)
        if empty:
            if status in _EMPTY_BODY_STATUS:  # (a HEAD answer keeps the GET's length)
                headers.popall("Content-Length", None)
            headers.popall("Transfer-Encoding", None)
        elif length != 0:
            headers.setdefault("Content-Type", "application/octet-stream")
        if "Date" not in headers:
            headers["Date"] = _CLOCK.now()
        if "Connection" not in headers:
            if keep_alive:
                if request.version == (1, 0):
                    headers["Connection"] = "keep-alive"
            elif request.version >= (1, 1):
                headers["Connection"] = "close"
        elif headers["Connection"].lower() == "close":
            keep_alive = False
        request.keep_alive = keep_alive
        reason = self.reason or _REASONS.get(status, "Unknown")
        version = "1.1" if request.version >= (1, 1) else "1.0"
        # ("Name: value" lines joined in C: a third of a cache hit's time went to a
        # per-header f-string here)
        block = "\r\n".join(map(": ".join, headers.items()))
        return f"HTTP/{version} {status} {reason}\r\n{block}\r\n\r\n".encode(
            "utf-8", "surrogateescape"
        )

    def force_close(self) -> None:
        """Close the connection after this answer."""
        self.headers["Connection"] = "close"

    # --- streaming -----------------------------------------------------------------------

    async def prepare(self, request: Request) -> StreamResponse:
        """Send the status line and headers (the app's `on_prepare` hook runs first)."""
        if self.prepared:
            return self
        self.prepared = True
        self._request = request
        hook = _prepare_hook(request)
        if hook is not None:
            hook(request, self)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(self._head(request, None))
        self.headers.clear()  # sent: a held stream keeps none of them
        return self

    async def write(self, data: bytes) -> None:
        """One piece of the body; waits while the client is not reading."""
        if not data or self.empty_body:
            return
        request = self._request
        assert request is not None, "prepare() first"
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self.chunked:  # (three pieces in one writev: the body is not copied)
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            transport.write(data)
        await request.writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        """The last piece (if any) and the end of the body."""
        if self._eof:
            return
        self._eof = True
        request = self._request
        assert request is not None, "prepare() first"
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if self.empty_body:
            return
        if self.chunked:
            if data:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n"))
            else:
                transport.write(b"0\r\n\r\n")
        elif data:
            transport.write(data)
        await request.writer.drain()


class Response(StreamResponse):
    """A whole answer: status line, headers and body go out in one write."""

    __slots__ = ("body",)

    def __init__(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self.body = body
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    def serialize(self, request: Request) -> bytes:
        """The whole answer's bytes (the app's `on_prepare` hook runs first)."""
        head, body = self.parts(request)
        return head + body if body else head

    def parts(self, request: Request) -> tuple[bytes, bytes]:
        """`serialize` as the head and the body to write after it (b"" when none goes out):
        a long body (a cache hit of a 10 MiB chunk) is written as it is, not copied after
        its head first."""
        self.prepared = True
        self._request = request
        hook = _prepare_hook(request)
        if hook is not None:
            hook(request, self)
        head = self._head(request, len(self.body))
        if self.empty_body or not self.body:
            return head, b""
        return head, self.body


#: (request, response) -> None, run just before a response's headers go out.
PrepareHook = Callable[[Request, StreamResponse], None]


def _prepare_hook(request: Request) -> PrepareHook | None:
    return request.app.on_prepare if request.app is not None else None


def json_response(
    text: str, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer (`application/json; charset=utf-8`, as aiohttp's `text=` gave)."""
    return Response(
        status=status,
        body=text.encode(),
        headers=headers,
        content_type="application/json; charset=utf-8",
    )

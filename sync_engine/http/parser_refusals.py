"""Requests refused by aiohttp's HTTP parser, before any handler runs: JSON and one log line.

Shared by the engine (`sync_engine.http.server`) and the proxy (`proxy.http.server`).
aiohttp answers a request line or header over its limits (a huge bearer token, a URL with
its enforced filter), and any malformed message, on its own: a text body quoting the first
100 bytes of the offending line and a traceback at ERROR. It has no public hook for that
answer (aio-libs/aiohttp#3287), so each service makes its app with `RefusingApplication`
and its own `RefusingRequestHandler` subclass, whose `refused` renders the answer in the
service's JSON: 414 for a request target over `MAX_REQUEST_TARGET`, 431 for headers over
`MAX_HEADER_FIELD` or `MAX_HEADERS`, 400 for anything else malformed, nothing of the request
quoted, logged as one INFO line. A handler's own crash (a bug) still gets a bare 500.

The engine's app also refuses what the parser reads but a careful server does not serve
(`unserved`: HTTP/0.9 a 400, HTTP/2.0 a 505, a transfer coding other than chunked a 501,
`Transfer-Encoding` on HTTP/1.0 a 400, as the proxy does), answers in HTTP/1.1 status lines,
and hands a body to its handler class's `request_body` (the engine's decodes its
Content-Encoding: sync_engine/http/server.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import resource
import time
import warnings
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http import HttpRequestParser, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestHandler, RequestPayloadError, _ErrInfo

from .log_throttle import INTERVAL, ThrottledLog

logger = logging.getLogger(__name__)

#: One line per refused request, up to a few a minute per kind, then a count
#: (`log_throttle`): anyone who reaches the port can be refused as fast as they connect.
_MALFORMED = ThrottledLog(
    logger, f"refused %d more malformed requests in the last {INTERVAL:g} s (not each logged)"
)
_SLOW_HEADS = ThrottledLog(
    logger,
    f"refused %d more requests whose head did not arrive in time in the last {INTERVAL:g} s"
    " (not each logged)",
)
_DROPPED_HEADS = ThrottledLog(
    logger,
    f"refused %d more requests for the bytes of unfinished request heads in the last"
    f" {INTERVAL:g} s (not each logged)",
)

#: A request head's limits, Electric's server's (Bandit, lib/bandit/http1/socket.ex:
#: `max_request_line_length`, `max_header_length`, `max_header_count`), shared with the proxy
#: (proxy/http/protocol.py): a request line over `MAX_REQUEST_LINE` bytes with its line end is
#: a 414, a header line over `MAX_HEADER_LINE` bytes or more than `MAX_HEADERS` headers a
#: 431, each decided as soon as the bytes show it (`HeadScan`). The engine bounded only the
#: target (8190 bytes), each header's value (8192) and the count (128): a head of 125 headers
#: of 8,000 bytes (1 MB) was read whole, ~2.9 MB of engine memory per connection that never
#: ended its head (attack). Now a head is at most ~510 KB whatever it holds.
MAX_REQUEST_LINE = 10_000
MAX_HEADER_LINE = 10_000
MAX_HEADERS = 50
#: aiohttp's own limits (`HANDLER_ARGS`): only reached where `HeadScan` lost track of the
#: bytes (a request pipelined in the packet that ends a body), the lines' limits as near as
#: its checks of a target and of a header's name and value allow. The proxy's upstream bound
#: (proxy/limits/upstream.py) is computed from the engine's.
MAX_REQUEST_TARGET = MAX_REQUEST_LINE - len("GET ") - len(" HTTP/1.1\r\n")
MAX_HEADER_FIELD = MAX_HEADER_LINE - len(": \r\n")

HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_TARGET,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
    # A body's Content-Encoding is decoded by the handler class's `request_body` (aiohttp's
    # own decoder reads a gzip body cut short as a shorter body, and knows no `x-gzip`).
    "auto_decompress": False,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """What to answer a request the parser refused: status, stable reason, message."""

    status: int
    reason: str
    message: str


REQUEST_LINE_TOO_LONG = Refusal(
    414, "uri_too_long", f"Request line too long: the limit is {MAX_REQUEST_LINE} bytes"
)
HEADER_LINE_TOO_LONG = Refusal(
    431,
    "header_too_large",
    f"Request header line too long: the limit is {MAX_HEADER_LINE} bytes",
)
TOO_MANY_HEADERS = Refusal(
    431, "too_many_headers", f"Too many request headers: the limit is {MAX_HEADERS}"
)


class HeadOverLimit(BadHttpMessage):
    """A request head over a limit (`HeadScan`), raised as the parser's refusal."""

    def __init__(self, answer: Refusal) -> None:
        super().__init__(answer.message)
        self.answer = answer


def refusal(exc: BaseException | None) -> Refusal:
    """The answer for a request the parser refused; nothing of the request quoted."""
    if isinstance(exc, HeadOverLimit):
        return exc.answer
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] in ((MAX_HEADER_FIELD,), (str(MAX_HEADER_FIELD),)):
            return HEADER_LINE_TOO_LONG
        return REQUEST_LINE_TOO_LONG
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
        return TOO_MANY_HEADERS
    if isinstance(exc, BadHttpMethod):
        return Refusal(400, "bad_request", "Malformed HTTP request: invalid method")
    return Refusal(400, "bad_request", "Malformed HTTP request")


class HeadScan:
    """The lines of one request head as its bytes arrive, held to the head's limits (as
    Bandit reads them: each line with its line end, refused as soon as it is longer, even
    before its end arrives; the 51st header refused once whole). Empty lines before the
    request line count as part of it; the first empty line after it ends the head. The
    proxy's parser may feed it the same bytes (one per head: `feed` each piece as it
    arrives) to refuse exactly where the engine does."""

    __slots__ = ("done", "lead", "length", "lines", "size", "start")

    def __init__(self) -> None:
        self.size = 0  # bytes fed (`RefusingRequestHandler`'s count of unfinished heads)
        self.lines = 0  # lines complete: the request line, then the headers
        self.lead = 0  # bytes of empty lines before the request line
        self.length = 0  # bytes of the line being read
        self.start = b""  # its first bytes (up to 2: is it an empty line?)
        self.done = False  # the head's end was read: the rest is not the head's

    def feed(self, data: bytes) -> Refusal | None:
        """Read `data`, the next bytes of the head; the refusal if it is over a limit."""
        if self.done:
            return None
        begin, size = 0, len(data)
        self.size += size
        while begin < size:
            end = data.find(b"\n", begin)
            if end < 0:
                if self.length < 2:
                    self.start = (self.start + data[begin : begin + 2])[:2]
                self.length += size - begin
                if self.lines == 0:  # (its line end can only come past the limit)
                    if self.lead + self.length >= MAX_REQUEST_LINE:
                        return REQUEST_LINE_TOO_LONG
                elif self.length >= MAX_HEADER_LINE:
                    return HEADER_LINE_TOO_LONG
                return None
            length = self.length + end + 1 - begin
            empty = length <= 2 and (self.start + data[begin : end + 1]) in (b"\n", b"\r\n")
            begin = end + 1
            self.start, self.length = b"", 0
            if self.lines == 0:
                if empty:
                    self.lead += length
                    if self.lead >= MAX_REQUEST_LINE:
                        return REQUEST_LINE_TOO_LONG
                    continue
                if self.lead + length > MAX_REQUEST_LINE:
                    return REQUEST_LINE_TOO_LONG
                self.lines = 1
                continue
            if empty:
                self.done = True
                return None
            if length > MAX_HEADER_LINE:
                return HEADER_LINE_TOO_LONG
            self.lines += 1
            if self.lines - 1 > MAX_HEADERS:
                return TOO_MANY_HEADERS
        return None


def _content_length(message: Any) -> int | None:
    """The body length a parsed request (`RawRequestMessage`) announced; None if chunked."""
    if message.chunked:
        return None
    return announced_length(message.headers.get("Content-Length")) or 0


def announced_length(value: str | None) -> int | None:
    """A Content-Length header's number (None when absent or not digits). llhttp takes
    leading zeros, any number of them: `int()` of 4,300+ characters raised a ValueError in
    `data_received`, which ended the connection with no answer and an ERROR traceback."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    digits = value.lstrip("0")
    return int(digits) if len(digits) <= 20 else 1 << 64  # (llhttp allows at most 2**64-1)


class _Refusing:
    """Stands in for a connection's HTTP parser once a head is over a limit: each call
    raises the refusal (the parser refuses every call after its first refusal too)."""

    def __init__(self, exc: HeadOverLimit) -> None:
        self.exc = exc

    def feed_data(self, data: bytes) -> Any:
        raise self.exc

    def feed_eof(self) -> None:
        return None

    def message_consumed(self) -> None:
        return None

    def set_upgraded(self, val: bool) -> None:
        return None


#: Requests aiohttp's parser (llhttp) reads but a careful server refuses, answered as the proxy
#: answers them (proxy/http/protocol.py): an HTTP/0.9 request line (no version), which has no
#: request line as RFC 9112 defines it, and `HTTP/2.0` in HTTP/1 framing, a major version not
#: supported (RFC 9110, 15.6.6), were answered `HTTP/0.9 200` / `HTTP/2.0 200`.
HTTP_0_9 = Refusal(400, "bad_request", "Malformed HTTP request: HTTP/0.9 is not supported")
VERSION_NOT_SUPPORTED = Refusal(
    505,
    "http_version_not_supported",
    "HTTP version not supported: the server speaks HTTP/1.0 and HTTP/1.1",
)
#: A transfer coding other than `chunked` (`Transfer-Encoding: gzip, chunked`): llhttp
#: reads the body as plain chunked, which it is not (RFC 9112, 6.1: a 501).
UNKNOWN_TRANSFER_CODING = Refusal(
    501, "not_implemented", "Unsupported Transfer-Encoding: only chunked is implemented"
)
#: `Transfer-Encoding` on an HTTP/1.0 request: its framing is faulty (RFC 9112, 6.1).
TRANSFER_ENCODING_IN_HTTP_1_0 = Refusal(
    400, "bad_request", "Malformed HTTP request: Transfer-Encoding in an HTTP/1.0 request"
)


#: An `Expect` other than `100-continue` in HTTP/1.1 (RFC 9110, 10.1.1: a 417), in JSON (the
#: engine's was aiohttp's text, `Unknown Expect: ...`); the proxy's too.
EXPECTATION_FAILED = Refusal(417, "expectation_failed", "Only Expect: 100-continue is supported")
#: `CONNECT host:port` (a tunnel: neither service is a forward proxy), answered as the
#: proxy's parser answers it (the engine routed `host:port` as a path: a 404).
CONNECT_REFUSED = Refusal(400, "bad_request", "Malformed HTTP request")


def unserved(message: Any) -> Refusal | None:
    """The refusal of a parsed request (`RawRequestMessage`) whose version, framing or method
    the parser accepted but the server does not serve; None for one it serves. Called only
    for a request that is not plain HTTP/1.1, is chunked or asks to upgrade (CONNECT does)
    (`RefusingApplication._make_request`)."""
    if message.method == "CONNECT":
        return CONNECT_REFUSED
    version = message.version
    if version[0] != 1:
        return HTTP_0_9 if version[0] == 0 else VERSION_NOT_SUPPORTED
    if version[1] == 0 and "Transfer-Encoding" in message.headers:
        return TRANSFER_ENCODING_IN_HTTP_1_0
    if message.chunked:
        codings = message.headers.get("Transfer-Encoding", "").split(",")
        if [c.strip().lower() for c in codings] != ["chunked"]:
            return UNKNOWN_TRANSFER_CODING
    return None


#: File descriptors kept free of client connections beyond those open now (counted, see
#: `connection_cap`): what the engine may open next (a snapshot's chunk file, a chunk read
#: for a request, a Postgres connection for a new shape's snapshot, sources.db). The shape
#: logs' cache of open files (`sync_engine.log.fds`) gives its oldest back when a new one
#: finds no descriptor. The proxy keeps the same reserve (proxy/http/serve.py).
FD_RESERVE = 256
#: Seconds a count of the open descriptors is trusted (it is taken only when the listener is
#: more than half full: listing /proc/self/fd costs ~1 ms per 2,000 descriptors).
_RECOUNT = 1.0
#: The fewest connections a listener keeps, however low the file limit (the proxy's too).
MIN_CONNECTIONS = 32
#: Seconds a new connection may take to send its first request head before, at the cap, it
#: may be closed to make room (a client sends its head at once; a slowloris never does).
CONNECTION_GRACE = 1.0
#: A connection closed at the cap: the new one when every other is busy with a request
#: (the proxy answers the same).
_TOO_MANY_BODY = b'{"message":"Too many connections: try again in a moment, please."}'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


#: Connections refused at the cap kept open at once while their 503 gets out (each for
#: `CONNECTION_GRACE`, a descriptor apiece). Past this many a refused connection is closed at
#: once (the client sees a reset): a flood of new connections at the cap, each refused and
#: kept a second, took every descriptor (the shape logs then could not be written and
#: replication paused) though the cap was kept.
MAX_LINGERING_REFUSALS = 64


#: After a parser refusal (`RefusingRequestHandler.refuse`), what the client still sends is
#: read and dropped up to this many bytes, for up to this many seconds, before the connection
#: closes (the proxy's values, proxy/http/protocol.py).
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 2.0


class _Refusals:
    #: Connections refused at the cap waiting for their 503 to get out.
    lingering = 0
    #: Connections whose request was refused, reading and dropping what the client still
    #: sends before they close (`RefusingRequestHandler._linger_close`).
    lingering_refused = 0


def refuse_at_the_cap(transport: Any) -> None:
    """Answer a connection beyond the cap 503 without reading its request, end our side
    (FIN after the answer) and drop it a moment later: closed at once with its request
    unread, the kernel resets it and the client may never see the 503. At most
    `MAX_LINGERING_REFUSALS` wait so at once; beyond, the connection is dropped now. The
    proxy's listener refuses the same way (proxy/http/serve.py)."""
    transport.pause_reading()
    if _Refusals.lingering >= MAX_LINGERING_REFUSALS:
        transport.abort()
        return
    _Refusals.lingering += 1
    transport.write(TOO_MANY_CONNECTIONS)
    if transport.can_write_eof():
        transport.write_eof()

    def drop() -> None:
        _Refusals.lingering -= 1
        transport.abort()

    asyncio.get_running_loop().call_later(CONNECTION_GRACE, drop)


class _Descriptors:
    """What the process's descriptors hold besides client connections, counted now and then."""

    #: Client connections open now (the public listener's).
    clients = 0
    #: Connections open now of listeners with room of their own (`reserved_connections`:
    #: the admin listener's), counted apart: at most that room (attack 20:13: idle admin
    #: connections, which nothing made room among, filled the one shared cap, and every
    #: public client got 503). Out of `FD_RESERVE`: a recount leaves them out of `others`
    #: (they took as many of the public port's places, review 20:21), a send's room counts
    #: them.
    reserved = 0
    #: Descriptors held by responses being sent besides their connection's: a chunk file
    #: and a duplicate of the socket for `sendfile` (`sendfile.py`), counted as they are
    #: opened and closed.
    sends = 0
    #: Descriptors open at the last count that were neither client connections, the shape
    #: logs' cached files nor sends' (Postgres connections, listening sockets, sqlite, ...).
    others = -1
    counted_at = float("-inf")


def note_send_descriptors(delta: int) -> None:
    """A send opened (`delta` > 0) or closed descriptors besides its connection's."""
    _Descriptors.sends += delta


def room_for_send(needed: int = 2) -> bool:
    """Whether a send may open `needed` more descriptors: what is open (connections, the
    logs' cache, sends, the rest as last counted) leaves at least half of `FD_RESERVE`
    free after them, for what the engine itself must open (a shape log's next chunk, a
    Postgres connection, a snapshot's files). A connection counts as one descriptor at
    the cap, and one sending a chunk file holds three: connections let in while idle that
    all then ask a big chunk at once took the limit's last descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return True
    connection_cap()  # (counts the others if they never were)
    from ..log import fds

    d = _Descriptors
    held = d.clients + d.reserved + d.sends + fds.open_count() + max(d.others, 0)
    return held + needed <= soft - FD_RESERVE // 2


def _open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # (less the listing's own)
    except OSError:
        return None


def connections_in_use() -> int:
    """Client connections open now, the public listener's (what `connection_cap` bounds;
    the admin listener's are `_Descriptors.reserved`)."""
    return _Descriptors.clients


def connection_cap() -> int:
    """The most client connections the process keeps open: its file limit less what is open
    for anything else now (the shape logs' cached files and what sends hold, counted
    exactly; Postgres connections, sockets and files, counted at the first connection and
    again at most every `_RECOUNT` seconds once more than half the room is used) and
    `FD_RESERVE`. Without a cap, connections that never finish a request (no secret
    needed) took every descriptor: new clients were reset and shape logs could not be
    written, pausing replication. It once set aside the logs' whole cache (up to 4,096) and
    an eighth of the limit as well, whatever was open: 13,400 clients at a 20,000 limit."""
    from ..log import fds  # (the log package imports nothing of http's)

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    d = _Descriptors
    room = soft - FD_RESERVE - fds.open_count() - d.sends
    now = time.monotonic()
    if d.others < 0 or (d.clients > (room - d.others) // 2 and now - d.counted_at >= _RECOUNT):
        total = _open_descriptors()
        if total is None:  # (no /proc: as much as the logs' cache may ever hold)
            d.others = max(0, fds.MAX_OPEN - fds.open_count())
        else:
            # (the admin listener's connections are out of `FD_RESERVE`, not others: counted
            # there too, up to 32 idle ones took as many of the public port's places)
            d.others = max(0, total - d.clients - d.reserved - fds.open_count() - d.sends)
        d.counted_at = now
    return max(MIN_CONNECTIONS, room - d.others)


#: The end of a request's head: its first empty line (llhttp also reads bare-LF lines).
_HEAD_END = re.compile(rb"\r?\n\r?\n")

#: Seconds a request head may take to arrive whole from its first byte, and a new connection
#: may wait before its first request begins (the proxy's `REQUEST_READ_TIMEOUT`; nginx's
#: client_header_timeout is 60 s): a slowloris client sending a header byte every few
#: seconds held its connection and a descriptor for as long as it liked.
REQUEST_HEAD_TIMEOUT = 30.0
_TIMEOUT_BODY = (
    b'{"message":"Request timeout: the request did not arrive in time","code":"request_timeout"}'
)
_TIMEOUT_HEAD = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    % len(_TIMEOUT_BODY)
)


#: Bytes of unfinished request heads (not whole at the end of a packet) the process holds, all
#: connections together: past it, the connection whose head began first is answered
#: `TOO_MANY_UNFINISHED` and closed. aiohttp's parser keeps each header line twice (its bytes
#: and its text): 200 connections each holding an unfinished head of the largest size the
#: limits allow (~480 KB) took the engine from 70 to 349 MB, RSS not given back, and it takes
#: up to its descriptor limit of them (attack). A client's head comes whole in one packet or
#: a few, so none is refused until a flood of unfinished heads holds this much.
HEAD_BYTES = 32 << 20
#: The most of an unfinished head's bytes kept whole in `_pending` before it keeps only what
#: it needs of them (`RefusingRequestHandler.data_received`): the aiohttp parser's copies
#: are the head's cost, one more was 1x on top.
_PENDING_KEEP = 16 << 10
TOO_MANY_UNFINISHED = Refusal(
    503,
    "too_many_unfinished_requests",
    "Too many unfinished requests: try again in a moment, please.",
)
_UNFINISHED_BODY = b'{"message":"%s","code":"%s"}' % (
    TOO_MANY_UNFINISHED.message.encode(),
    TOO_MANY_UNFINISHED.reason.encode(),
)
_UNFINISHED_HEAD = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_UNFINISHED_BODY)
)


#: Unfinished heads held at once (bytes) after which, once most of them are gone, the
#: engine hands the memory they took back to the system (`_give_back_soon`).
TRIM_AFTER = 4 << 20
#: Seconds after the connections of such a flood are gone before that is done (the
#: closes of a flood's connections come together: one trim for all of them).
TRIM_DELAY = 1.0


class _Heads:
    """Every connection's unfinished request head (`HEAD_BYTES`): bytes fed so far, the
    oldest head first; `peak`: the most held at once since memory was last given back."""

    held: OrderedDict[RefusingRequestHandler, int] = OrderedDict()
    total = 0
    peak = 0
    #: The loop a trim is due on (`_give_back_soon`), None when none is.
    trim: asyncio.AbstractEventLoop | None = None


def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, None elsewhere (musl, macOS: nothing to do)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def _give_back_soon(loop: asyncio.AbstractEventLoop) -> None:
    """After a flood of unfinished heads (`TRIM_AFTER` held at once) is mostly gone, give
    the memory it took back to the system (glibc's `malloc_trim`, in a worker thread:
    a few ms, arena by arena). The heads' many small pieces, freed among objects that stay,
    left their pages in the heap: after 69 heads of ~480 KB closed (the `HEAD_BYTES` most),
    the engine kept ~70 MB it no longer used, for good (attack; 69 -> 141 MB, 73 MB with
    the trim). Clients whose heads come whole never count here: nothing changes for them."""
    if _TRIM is None or (_Heads.trim is loop and not loop.is_closed()):
        return  # (one is due; one due on a loop closed since never comes: replaced)
    if _Heads.peak < TRIM_AFTER or _Heads.total > _Heads.peak // 4:
        return

    def trim() -> None:
        _Heads.trim = None
        _Heads.peak = _Heads.total
        loop.run_in_executor(None, _TRIM, 0)

    _Heads.trim = loop
    loop.call_later(TRIM_DELAY, trim)


#: aiohttp's own slot for `RequestHandler._handler_waiter` (see the property of that name).
_HANDLER_WAITER: Any = RequestHandler.__dict__["_handler_waiter"]


class RefusingRequestHandler(RequestHandler):
    """A connection whose parser refusals (status < 500) are answered by `refused`.

    Its parser stops after each complete request and `data_received` feeds it on, one request
    at a time: llhttp parses every request of a packet in one call, and aiohttp's parser
    raised for a malformed one with the valid requests before it still inside it (never
    returned), so a valid request followed in the same packet by a malformed one got no
    answer, only the 400 for the second. Now each is queued before the next is parsed: the
    valid ones are answered in order, then the refusal (as the proxy does).

    It also keeps the bytes of the request being read (`_pending`, from its first byte; None
    inside a body, where it loses track until the next packet), so that a refused HEAD
    (`refused_method`) is answered without a body: the parser's error carries no method,
    and aiohttp answered it as a GET, JSON body and all, which a client reading a HEAD
    answer takes for the start of its next answer.
    """

    __slots__ = (
        "_answered",
        "_body",
        "_body_left",
        "_eof_seen",
        "_head_began",
        "_head_timer",
        "_linger_left",
        "_linger_timer",
        "_pending",
        "_refused",
        "_refusing",
        "_scan",
        "_seen_requests",
    )

    def __init__(self, manager: Any, *, loop: Any, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        # As aiohttp makes it (web_protocol.RequestHandler.__init__), but for the queue size
        # the parser pauses at: 1, so it returns one request per call.
        self._parser = HttpRequestParser(
            self,
            loop,
            self._read_bufsize,
            max_line_size=kwargs.get("max_line_size", 8190),
            max_field_size=kwargs.get("max_field_size", 8190),
            max_headers=kwargs.get("max_headers", 128),
            payload_exception=RequestPayloadError,
            auto_decompress=kwargs.get("auto_decompress", True),
            max_msg_queue_size=1,
        )
        self._pending: bytes | None = b""
        # The head being read, against its limits (None: inside a body, not tracked).
        self._scan: HeadScan | None = HeadScan()
        self._refused = False  # a request was refused: nothing after it is read
        self._body: StreamReader | None = None
        self._body_left = 0  # bytes still to come of a body of known length (`_track`)
        self._seen_requests = 0
        # When the request head being read began (None: none is), and the timer that holds
        # it to `REQUEST_HEAD_TIMEOUT` (armed at the connection's start, and when a head
        # does not arrive whole in one packet: nothing per request otherwise).
        self._head_began: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # The answer being sent is a refusal (`refuse`): the connection lingers after it.
        self._refusing = False
        # Bytes still read and dropped after a refusal before the close (`_linger_close`);
        # -1: not lingering. Its timer closes the connection when the time is up.
        self._linger_left = -1
        self._linger_timer: asyncio.TimerHandle | None = None
        # The client shut its sending side after complete requests (`eof_received`): they
        # are answered, then the connection closes.
        self._eof_seen = False
        self._answered = 0  # requests whose answer is done (`_request_count`: parsed)

    @property
    def _handler_waiter(self) -> asyncio.Future[None] | None:
        """aiohttp's stop waits on this future for the request in progress, at most its
        `shutdown_timeout`; the request's `finally` sets its result. When the timeout fires
        it cancels the future at once but clears it only when the stop's task runs again, and
        a request whose last step runs first (due in the same turn of the loop: a loaded
        machine's turns are long) set the cancelled future's result: `InvalidStateError`,
        logged as an unhandled exception, its connection force-closed (chaos seed 3402). A
        finished future reads as none, so the request's end no longer sets it twice."""
        waiter: asyncio.Future[None] | None = _HANDLER_WAITER.__get__(self)
        return None if waiter is None or waiter.done() else waiter

    @_handler_waiter.setter
    def _handler_waiter(self, waiter: asyncio.Future[None] | None) -> None:
        _HANDLER_WAITER.__set__(self, waiter)

    #: Connections this listener may open, counted apart from the public port's (out of
    #: `FD_RESERVE`; 0: it is the public port, bounded by `connection_cap`): the admin
    #: listener's, so that an operator reaches the API while the public port is full, and
    #: its idle connections never take the public port's room.
    reserved_connections = 0

    def connection_made(self, transport: Any) -> None:
        """Register the connection; past its listener's `connection_cap`, make room by closing
        the connection that has waited longest without a request in progress: idle between
        requests, or open `CONNECTION_GRACE` seconds without a whole request head (a
        slowloris). When every other one is busy (held long-polls) or just opened, this one
        is answered 503 and closed: over the cap, a clear refusal rather than a reset."""
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(REQUEST_HEAD_TIMEOUT, self._head_deadline)
        manager = self._manager
        if manager is None:
            return
        waiting: OrderedDict[RefusingRequestHandler, float] | None = getattr(
            manager, "_waiting_order", None
        )
        if waiting is None:
            waiting = OrderedDict()
            manager._waiting_order = waiting  # type: ignore[attr-defined]
        now = time.monotonic()
        waiting[self] = now
        if self.reserved_connections:
            _Descriptors.reserved += 1
            if _Descriptors.reserved <= self.reserved_connections:
                return
        else:
            _Descriptors.clients += 1
            if _Descriptors.clients <= connection_cap():
                return
        # Oldest first; one passed over goes to the back (keeping its time), so a round
        # looks at each at most once.
        for _ in range(len(waiting) - 1):
            victim, since = next(iter(waiting.items()))
            if victim is self:
                waiting.move_to_end(victim)
                continue
            # Idle as aiohttp's keep-alive check sees it: waiting for a whole request head
            # (a request being handled, or parsed and about to be, is not).
            waiter = victim._waiter
            idle = waiter is not None and not waiter.done() and not victim._messages
            fresh = victim._request_count == 0 and now - since < CONNECTION_GRACE
            if not idle or fresh:
                waiting.move_to_end(victim)
                continue
            del waiting[victim]
            victim._uncount()
            victim.force_close()
            if victim.transport is not None:
                victim.transport.abort()
            return
        del waiting[self]
        self._uncount()
        # (`_force_close` by hand: aiohttp's `force_close` closes the transport at once, before
        # the answer is out; set, the connection's task ends without reading a request)
        self._force_close = True
        refuse_at_the_cap(transport)

    def _head_deadline(self) -> None:
        """The head timer fired: a head still arriving after `REQUEST_HEAD_TIMEOUT` is
        answered 408 (as the proxy answers it) and its connection closed; a connection on
        which no request ever began is closed without an answer (nothing to answer)."""
        self._head_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            # A request is being answered (or parsed, about to be): a pipelined head
            # behind it gets its time from now.
            if self._head_began is not None:
                self._head_began = self._loop.time()
                self._head_timer = self._loop.call_later(REQUEST_HEAD_TIMEOUT, self._head_deadline)
            return
        began = self._head_began
        if began is None:
            if self._request_count == 0:  # open this long, and not one byte of a request
                logger.debug("closed a connection from %s: no request began", self._peer())
                self.force_close()
            return  # (idle between requests: aiohttp's keep-alive timer's business)
        left = began + REQUEST_HEAD_TIMEOUT - self._loop.time()
        if left > 0:
            self._head_timer = self._loop.call_later(left, self._head_deadline)
            return
        _SLOW_HEADS.log(
            logging.INFO,
            "refused a request from %s: its head did not arrive within %g s",
            self._peer(),
            REQUEST_HEAD_TIMEOUT,
        )
        head = self.refused_method() == "HEAD"
        transport.write(_TIMEOUT_HEAD if head else _TIMEOUT_HEAD + _TIMEOUT_BODY)
        self.force_close()  # (the transport closes once the answer is written)

    def _peer(self) -> str:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "?"

    async def _handle_request(self, request: Any, start_time: Any, request_handler: Any) -> Any:
        try:
            resp, reset = await super()._handle_request(request, start_time, request_handler)
        finally:
            self._answered += 1
        if self._refusing and not reset:
            self._linger_close()
        elif self._eof_seen and self._answered >= self._request_count:
            self.close()  # (the client sends nothing more: closed once this is out)
        return resp, reset

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client shut its sending side (FIN). After complete requests that are not
        live, it is half-closing (HTTP/1.1 allows it: curl with some options, some proxies):
        they are answered, in order, then the connection closes (True: the transport stays
        open for writing), if within `HALF_CLOSE_GRACE`. Otherwise it has left: the
        connection closes (None now, or `_after_eof` once the request taken is known to be
        live), and a live request (held until its shape changes) is let go, as an idle
        connection, an unfinished head or body (it can never be whole), or a refused one
        are. Taken for leaving in every case, a non-live request got no answer at all.

        A FIN does not tell a half-close from a client gone for good (its close sends the
        same): a request that takes long (a subset query, a new shape's snapshot) is still
        cut `HALF_CLOSE_GRACE` after it, as its Postgres work must be when the client left
        (tests/sync_engine/http/test_subset_client_gone.py)."""
        if self._force_close or self._close or self._refused or self._linger_left >= 0:
            return None
        if self._answered >= self._request_count:
            return None  # (idle: gone)
        if self._pending or (self._body is not None and not self._body.is_eof()):
            return None  # (a head or a body unfinished: never whole now)
        if self._leaves_at_eof():
            # (closed now, in this callback: a held request's slot under the connection cap
            # is free before the next connection is accepted, as before half-closes were
            # answered; tests/sync_engine/http/test_server_flood.py)
            return None
        self._eof_seen = True
        # (the request taken last may not have begun: its task runs before this)
        self._loop.call_soon(self._after_eof)
        return True

    def _leaves_at_eof(self) -> bool:
        """Whether a FIN means the client left: a request in progress or queued is live
        (or waits on its client) or its body is unfinished."""
        request = self._current_request
        if self.waits_on_client() or (
            request is not None and (_live(request) or not request.content.is_eof())
        ):
            return True
        for message, payload in self._messages:
            if not payload.is_eof() or (not isinstance(message, _ErrInfo) and _live(message)):
                return True
        return False

    def _after_eof(self) -> None:
        """A half-close (`eof_received`), once the request taken last has begun: close now
        if the client left after all (`_leaves_at_eof`), else answer within the grace."""
        if self.transport is None or self._force_close:
            return
        if self._leaves_at_eof():
            self.force_close()
        else:
            self._loop.call_later(HALF_CLOSE_GRACE, self._half_close_over)

    def waits_on_client(self) -> bool:
        """Whether a request on this connection waits for something for as long as its
        client stays (a change, a snapshot, a subset query): a FIN lets it go at once
        (`_after_eof`). None here; the engine's connection knows (`http.live`)."""
        return False

    def _half_close_over(self) -> None:
        """`HALF_CLOSE_GRACE` after a half-close: what is not answered yet is cut (the client
        taken for gone, as before)."""
        if self.transport is not None and not self._force_close:
            if self._answered < self._request_count:
                self.force_close()

    def _linger_close(self) -> None:
        """Close after a refusal, its answer written, as nginx's `lingering_close` does (and
        the proxy, proxy/http/protocol.py): FIN after the answer, then what the client still
        sends is read and dropped (up to `LINGER_BYTES`, for up to `LINGER_SECONDS`, until
        it closes its side) before the socket is closed. Closed at once with the rest of the
        refused request (a body, pipelined requests) unread in the kernel, the socket sent a
        reset, and a client still sending, or reading after its send, got "connection reset"
        instead of the JSON 4xx it had been sent (fuzz). At most `MAX_LINGERING_REFUSALS`
        linger at once; beyond, the connection closes at once, as before."""
        transport = self.transport
        if transport is None or self._force_close:
            return
        # (set by hand: the connection's task then ends without closing the transport, and
        # aiohttp reads no more of it: `data_received` drops what comes)
        self._force_close = True
        if (
            _Refusals.lingering_refused >= MAX_LINGERING_REFUSALS
            or not transport.can_write_eof()
            or self._eof_seen  # (nothing more to read: the client shut its side)
        ):
            transport.close()
            return
        _Refusals.lingering_refused += 1
        self._linger_left = LINGER_BYTES
        transport.write_eof()  # (once what is buffered, the answer, is sent)
        transport.resume_reading()
        self._linger_timer = self._loop.call_later(LINGER_SECONDS, transport.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._linger_left >= 0:
            self._linger_left = -1
            _Refusals.lingering_refused -= 1
        linger, self._linger_timer = self._linger_timer, None
        if linger is not None:
            linger.cancel()
        self._release_head()
        _give_back_soon(self._loop)
        timer, self._head_timer = self._head_timer, None
        if timer is not None:
            timer.cancel()
        manager = self._manager
        waiting = getattr(manager, "_waiting_order", None) if manager is not None else None
        if waiting is not None and waiting.pop(self, None) is not None:
            self._uncount()
        super().connection_lost(exc)

    def _uncount(self) -> None:
        """The connection no longer counts (`connection_made` counted it)."""
        if self.reserved_connections:
            _Descriptors.reserved -= 1
        else:
            _Descriptors.clients -= 1

    def refused_method(self) -> str:
        """The method of the request the parser refused, as far as its bytes tell: HEAD or
        GET (anything else is answered as a GET is, with its body)."""
        pending = self._pending
        if pending is not None and pending.lstrip(b"\r\n").startswith(b"HEAD "):
            return "HEAD"
        return "GET"

    def _track(self) -> None:
        """After the parser ran: drop a request it emitted from `_pending`, and its body if
        its length is known (`_body_left` counts what is still to come: the bytes after it
        begin the next request); inside a chunked body, lose track (None). A refused HEAD
        after a POST's body in the same packet was answered as a GET, with a body."""
        if self._request_count == self._seen_requests:
            return
        self._seen_requests = self._request_count
        message, payload = self._messages[-1] if self._messages else (None, None)
        pending = self._pending
        if isinstance(message, _ErrInfo) or pending is None:
            return
        end = _HEAD_END.search(pending)
        length = 0 if payload is EMPTY_PAYLOAD else _content_length(message)
        if end is None or length is None:  # (a chunked body: its end is the parser's)
            self._pending, self._body, self._scan = None, payload, None
            return
        rest = pending[end.end() :]
        if len(rest) >= length:  # (the next request begins after the body, if any)
            self._pending = rest[length:]
            self._begin_head(self._pending)
        else:
            self._pending, self._body, self._scan = None, payload, None
            self._body_left = length - len(rest)

    def _begin_head(self, data: bytes) -> None:
        """A request head begins with `data` (what of it arrived): its lines are held to
        the head's limits from here; one over them is refused by the parser's next call,
        after the requests before it (`_Refusing`)."""
        scan = self._scan = HeadScan()
        self._check_head(scan, data)

    def _check_head(self, scan: HeadScan, data: bytes) -> None:
        answer = scan.feed(data)
        if answer is not None and self._parser is not None:
            self._scan = None
            # (the parser's tail, the refused head's first bytes, goes with it)
            self._parser = _Refusing(HeadOverLimit(answer))  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._linger_left >= 0:  # (after a refusal: dropped, `_linger_close`)
            self._linger_left -= len(data)
            if self._linger_left < 0 and self.transport is not None:
                self._linger_left = 0  # (counted until the connection is lost)
                self.transport.close()
            return
        if self._refused:
            return
        messages = self._messages
        before = len(messages)
        if data and not (self._force_close or self._close):
            pending = self._pending
            left = self._body_left
            if pending is None and left:  # (a body of known length: the rest is a request)
                if len(data) < left:
                    self._body_left = left - len(data)
                else:
                    self._body_left = 0
                    self._pending, self._body = data[left:], None
                    self._begin_head(self._pending)
            elif pending:
                scan = self._scan
                if len(pending) > _PENDING_KEEP and scan is not None and not scan.done:
                    # What `refused_method` (its method) and `_track` (where it ends: in
                    # this packet, or up to 3 bytes before it) need of it; `\0` keeps a
                    # line end from being made of the two parts.
                    pending = pending.lstrip(b"\r\n")[:8] + b"\0" + pending[-3:]
                self._pending = pending + data
                if self._scan is not None:
                    self._check_head(self._scan, data)
            elif pending is not None or self._body is None or self._body.is_eof():
                # (inside a body until its payload is whole: then a packet begins a request)
                self._pending, self._body = data, None
                self._begin_head(data)
        body = self._body  # (a chunked body being read: its end is the parser's)
        body_open = body is not None and not body.is_eof()
        super().data_received(data)
        self._track()
        if body_open and body is not None and body.is_eof() and self._parser_may_go_on():
            # The body ended in this packet, after its request was answered (a GET's chunked
            # body late): the parser stopped at the end of that request, keeping the rest
            # (a pipelined request) as its tail, and no new request came out of this call
            # for the loop below to go on from; that request waited for the next packet.
            before = len(messages)
            super().data_received(b"")
            self._track()
        if self._pending:  # a head not whole yet: held to its deadline
            if self._head_began is None:
                self._head_began = self._loop.time()
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(
                    self._head_began + REQUEST_HEAD_TIMEOUT - self._loop.time(),
                    self._head_deadline,
                )
        else:
            self._head_began = None
        # The parser stopped after a request (the rest of the packet kept as its tail): on
        # with the next, until it has no whole request left, has refused one (it refuses
        # every call after), or the connection's queue is full (aiohttp pauses reading then
        # and calls this again, with no data, as the queue drains).
        while (
            before < len(messages)
            and not isinstance(messages[-1][0], _ErrInfo)
            and self._parser_may_go_on()
        ):
            before = len(messages)
            super().data_received(b"")
            self._track()
        if messages and isinstance(messages[-1][0], _ErrInfo):
            if body_open and body is not None and not body.is_eof() and len(messages) == 1:
                # The framing of the body being read broke in this packet (a chunked body's
                # bad chunk end): the parser's error was queued behind the request reading
                # that body, which waited for the rest until its deadline (a 408 after 30 s;
                # in one packet it is a 400 at once). The body fails now: its request is
                # answered 400, then the connection closes.
                err = messages.pop()[0]
                exc = getattr(err, "exc", None)
                if not isinstance(exc, BadHttpMessage):
                    exc = BadHttpMessage("malformed request body")
                body.set_exception(exc)
                self.close()  # (after its answer)
            self._stop_reading()
        elif self._pending and self._scan is not None:
            self._hold_head(self._scan.size)
        elif self in _Heads.held:
            self._release_head()

    def _parser_may_go_on(self) -> bool:
        """Whether the parser may be asked for the next request of this packet's tail
        (`super().data_received(b"")`): the connection's queue has room (else aiohttp pauses
        reading, and calls again as it drains), the parser is there, no body is being read
        by its payload parser, and the connection was not upgraded."""
        return (
            len(self._messages) < self._max_msg_queue_size
            and self._parser is not None
            and self._payload_parser is None
            and not self._upgraded
        )

    def _hold_head(self, size: int) -> None:
        """This connection's head is unfinished at `size` bytes: count it against
        `HEAD_BYTES`; past that, refuse the oldest unfinished heads (this one, maybe)."""
        held = _Heads.held
        _Heads.total += size - held.get(self, 0)
        held[self] = size  # (a head that goes on keeps its place: the oldest stays first)
        _Heads.peak = max(_Heads.peak, _Heads.total)
        while _Heads.total > HEAD_BYTES and held:
            oldest, size = held.popitem(last=False)
            _Heads.total -= size
            oldest._drop_head()

    def _release_head(self) -> None:
        size = _Heads.held.pop(self, None)
        if size is not None:
            _Heads.total -= size

    def _drop_head(self) -> None:
        """Refuse this connection's unfinished head for `HEAD_BYTES` and close it: its
        parser (the head's copies) is let go at once; the answer is `TOO_MANY_UNFINISHED`
        when no request is in progress on it, else it is cut."""
        _DROPPED_HEADS.log(
            logging.INFO,
            "refused a request from %s: its head was the oldest of more than %d bytes of"
            " unfinished request heads",
            self._peer(),
            HEAD_BYTES,
        )
        head = self.refused_method() == "HEAD"
        self._stop_reading()
        self._scan = None
        self._parser = _Refusing(HeadOverLimit(TOO_MANY_UNFINISHED))  # type: ignore[assignment]
        transport = self.transport
        if transport is None or self._force_close:
            return
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            self.force_close()  # (a request is being answered: no answer can go between)
            transport.abort()
            return
        self._force_close = True  # (as in `connection_made`: the answer, then closed)
        transport.write(_UNFINISHED_HEAD if head else _UNFINISHED_HEAD + _UNFINISHED_BODY)
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(CONNECTION_GRACE, transport.abort)

    def _stop_reading(self) -> None:
        """A request was refused (the requests before it are answered, then the refusal,
        then the connection closes): read nothing more. The rest of a refused head went on
        arriving into `_pending` until the answer was out: 300 connections refused 431 at
        the 51st of 125 headers of 8 KB took the engine from 69 to 1,278 MB."""
        self._refused = True
        self._release_head()
        pending = self._pending
        if pending is not None:  # (its method is all `refused_method` needs)
            self._pending = pending.lstrip(b"\r\n")[:8]
        transport = self.transport
        if transport is not None:
            transport.pause_reading()

    def refused(self, refusal: Refusal) -> web.StreamResponse:
        """The service's response for a refused request (it is closed after)."""
        raise NotImplementedError

    def request_body(self, message: Any, payload: StreamReader) -> StreamReader:
        """The body a handler reads, for a request that has one (aiohttp's parser does not
        decode its Content-Encoding here: `HANDLER_ARGS`); as received by default."""
        return payload

    def server_error(
        self, request: Any, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        """The response for a 5xx (a handler's crash, a timeout); aiohttp's by default."""
        return super().handle_error(request, status, exc, message)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return self.server_error(request, status, exc, message)
        # A scanner's first bytes are not worth a line above DEBUG (as aiohttp does).
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
        return self.refuse(request, refusal(exc), level)

    def refuse(
        self, request: Any, answer: Refusal, level: int = logging.INFO
    ) -> web.StreamResponse:
        """Answer `request` with `answer` (logged at `level`) and close the connection."""
        _MALFORMED.log(
            level,
            "refused a malformed request from %s: %s %s",
            request.remote,
            answer.status,
            answer.message,
        )
        if request.writer.output_size > 0:  # a response is half sent: the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        response = self.refused(answer)
        response.force_close()
        self._refusing = True
        return response


#: Seconds after a client's half-close (FIN after complete requests) within which its
#: requests are still answered; past it, they are cut as for a client that left.
HALF_CLOSE_GRACE = 2.0


def _live(request: Any) -> bool:
    """Whether a request (a `web.Request` or a parsed message) asks to be held until its
    shape changes (`live`, as Electric reads the flag: present and not `false`)."""
    live = request.url.query.get("live")
    return live is not None and live != "false"


_HANDLER_CLASS = web.AppKey("refusing_handler_class", type)
#: The message of a request the parser refused, answered in HTTP/1.1 (aiohttp's says
#: HTTP/1.0, so its refusals' status lines did, as the proxy's do not).
_ERROR_1_1 = ERROR._replace(version=HttpVersion11)
_ERROR_HEAD_1_1 = _ERROR_1_1._replace(method="HEAD")


class _Request(web.Request):
    """The engine's request: the head of its answer says what the proxy's would.

    After aiohttp has made the head (`StreamResponse._prepare_headers`) and before the app's
    `on_response_prepare` hooks: no `Server` header (aiohttp's named Python's and its own
    versions, where the proxy and nginx send none); `Connection` as the connection really
    is: an explicit `keep-alive` (Electric's on SSE answers and preflights) only where the
    client asked for it in HTTP/1.0 and gets it, and an HTTP/1.0 answer whose length is
    not known (an SSE stream) closes its connection, its body's only end (it said
    `keep-alive`, and to a client that asked for it kept the connection open after the
    stream: that client never saw its end). A request asking to upgrade (`Connection:
    Upgrade`, as `curl --http2` sends) is answered as plain HTTP and its connection closed
    after the answer, nothing after it read: the proxy's rule (proxy/http/protocol.py).
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.popall("Server", None)
        protocol = self._protocol
        if self._message.upgrade or (
            isinstance(protocol, RefusingRequestHandler)
            and protocol._eof_seen
            and protocol._answered + 1 >= protocol._request_count
        ):
            # (upgrade: see above; the last answer to a client that half-closed its socket)
            response.force_close()
            if self.version >= HttpVersion11:
                headers["Connection"] = "close"
        elif (
            self.version < HttpVersion11
            and "Content-Length" not in headers
            and response.status not in (204, 304)
            and self.method != "HEAD"
        ):
            response.force_close()
        connection = headers.get("Connection")
        if connection is not None and connection.lower() == "keep-alive":
            # (set by a handler; aiohttp's own is right: HTTP/1.0 asked and kept)
            if self.version < HttpVersion11:
                if not response.keep_alive:
                    del headers["Connection"]
            elif response.keep_alive:
                del headers["Connection"]
            else:
                headers["Connection"] = "close"
        await super()._prepare_hook(response)


class _RefusedRequest(_Request):
    """A request the server answers with `refusal` (`unserved`), no handler run."""

    ATTRS = web.Request.ATTRS | frozenset(["refusal"])
    refusal: Refusal


class _RefusingServer(web.Server):
    """A `web.Server` whose connections are its app's `RefusingRequestHandler`."""

    handler_class: type[RequestHandler]

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


with warnings.catch_warnings():
    # aiohttp discourages subclassing (its internals may change); the engine's
    # tests/sync_engine/http/test_bad_input.py and the proxy's fuzz tests fail if the override
    # stops being used (their over-long requests must get JSON).
    warnings.simplefilter("ignore", DeprecationWarning)

    class RefusingApplication(web.Application):
        """An app whose server answers malformed requests with `handler_class.refused`."""

        def __init__(self, handler_class: type[RefusingRequestHandler], **kwargs: Any) -> None:
            kwargs.setdefault("handler_args", HANDLER_ARGS)
            super().__init__(**kwargs)
            self[_HANDLER_CLASS] = handler_class

        def _make_handler(self, **kwargs: Any) -> web.Server:
            server = super()._make_handler(**kwargs)
            server.__class__ = _RefusingServer
            assert isinstance(server, _RefusingServer)
            server.handler_class = self[_HANDLER_CLASS]
            return server

        def _make_request(
            self,
            message: Any,
            payload: StreamReader,
            protocol: RequestHandler,
            writer: Any,
            task: Any,
            _cls: type[web.Request] = _Request,
        ) -> web.Request:
            # (three cheap checks for a plain HTTP/1.1 request without a body)
            if message.version is not HttpVersion11 or message.chunked or message.upgrade:
                if message is ERROR:
                    # (a refused HEAD is answered as a HEAD: no body)
                    assert isinstance(protocol, RefusingRequestHandler)
                    message = _ERROR_HEAD_1_1 if protocol.refused_method() == "HEAD" else _ERROR_1_1
                else:
                    answer = unserved(message)
                    if answer is not None:
                        message = message._replace(version=HttpVersion11)
                        request = super()._make_request(
                            message, payload, protocol, writer, task, _RefusedRequest
                        )
                        assert isinstance(request, _RefusedRequest)
                        request.refusal = answer
                        return request
            expect = message.headers.get("Expect")
            if (
                expect is not None
                and message.version >= HttpVersion11
                and expect.lower() != "100-continue"
            ):
                request = super()._make_request(
                    message, payload, protocol, writer, task, _RefusedRequest
                )
                assert isinstance(request, _RefusedRequest)
                request.refusal = EXPECTATION_FAILED
                return request
            if payload is not EMPTY_PAYLOAD:
                assert isinstance(protocol, RefusingRequestHandler)
                payload = protocol.request_body(message, payload)
            return super()._make_request(message, payload, protocol, writer, task, _cls)

        def _handle(self, request: web.Request) -> Coroutine[Any, Any, web.StreamResponse]:
            # (not a coroutine itself: no frame more per request)
            if type(request) is _RefusedRequest:
                return self._refuse(request)
            return super()._handle(request)

        async def _refuse(self, request: _RefusedRequest) -> web.StreamResponse:
            protocol = request.protocol
            assert isinstance(protocol, RefusingRequestHandler)
            return protocol.refuse(request, request.refusal)

"""One client connection of the proxy: llhttp (through httptools) parses, the app answers.

An `asyncio.Protocol` per connection, with no reader task: the parser's callbacks build a
`Request` as bytes arrive, and each complete request gets one task running the app's
`handle`. What a connection does, in the order a request meets it:

- limits, Electric's (Bandit's) as the engine's (`proxy.http.head_lines`): a request line
  over `MAX_REQUEST_LINE` bytes is a 414, a header line over `MAX_HEADER_LINE` bytes or more
  than `MAX_HEADERS` headers a 431, each line measured whole as its bytes arrive, and
  anything the parser refuses (or a repeated `Host`, `Content-Length`... header, a NUL in a
  value, a second `Authorization`) a 400:
  the shared answers of `sync_engine.http.parser_refusals`, in the proxy's JSON, nothing of
  the request quoted, one INFO line, then the connection closes;
- `Expect: 100-continue` is answered at once (the body is read before the handler runs),
  any other expectation is a 417 at once, before the body;
  a body over the app's limit is read and dropped, and `Request.read()` answers 413; so is
  the body of any method but POST (no route reads it), its request answered at once, as the
  engine and Electric answer it;
- keep-alive as the client asks (HTTP/1.1 by default, HTTP/1.0 with `Connection:
  keep-alive`); pipelined requests are answered one at a time, in order, and reading pauses
  while `PIPELINE_LIMIT` requests wait; an idle connection closes after `KEEPALIVE_TIMEOUT`;
- a request must arrive in full (head and body) within `REQUEST_READ_TIMEOUT` of its first
  byte, or it is answered 408 and the connection closed (a slow-loris client trickling a head
  or stalling a body would otherwise hold its socket for good, and enough of them exhaust the
  descriptors); a new connection on which no request begins within it is closed unanswered;
- HTTP/1.0 and HTTP/1.1 only: an HTTP/0.9 request line is a 400, an HTTP/2.0 one a 505, a
  transfer coding other than chunked a 501, `Transfer-Encoding` on HTTP/1.0 a 400;
- the client going away (reset, or its end of the connection closed) cancels the task of
  the request it was waiting for: a held long-poll lets go of its flight at once;
- backpressure: a response's `write` waits while the transport's buffer is over its high
  mark (`pause_writing` / `resume_writing`), for up to `SEND_TIMEOUT`, then the connection
  is dropped (a client that stops reading).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import httptools
from aiohttp.http_exceptions import BadHttpMethod
from multidict import CIMultiDict, CIMultiDictProxy, istr

from proxy.connection_terms import JOIN_BELOW, REPEATED_AUTHORIZATION, REQUEST_TIMEOUT, SEND_TIMEOUT
from proxy.http.head_lines import SHORT_HEAD as _SHORT_HEAD
from proxy.http.head_lines import HeadLines
from proxy.http.wire import Owner, Request, Response, StreamResponse, Writer
from sync_engine.http.parser_refusals import (
    CONNECT_REFUSED,
    EXPECTATION_FAILED,
    HEADER_LINE_TOO_LONG,
    HTTP_0_9,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    REQUEST_LINE_TOO_LONG,
    TOO_MANY_HEADERS,
    TRANSFER_ENCODING_IN_HTTP_1_0,
    UNKNOWN_TRANSFER_CODING,
    VERSION_NOT_SUPPORTED,
    Refusal,
    refusal,
)

logger = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open (aiohttp's default).
KEEPALIVE_TIMEOUT = 75.0
#: Seconds a request may take to arrive in full from its first byte (nginx's
#: client_header_timeout and client_body_timeout are 60 s each), and a new connection may
#: wait before its first request begins (it is closed then, without an answer). Checked by
#: the keep-alive timer, which is not moved per request (~1 us each on the fast lane): it
#: fires at least this often while the connection is idle, and a request that began since
#: is then given until its own deadline, so it is cut this long after its first byte, as the
#: engine cuts it (it was cut after up to `KEEPALIVE_TIMEOUT`: 75 s for a trickling request
#: pipelined behind another, 30 s on the engine: attack).
REQUEST_READ_TIMEOUT = 30.0
#: After a refusal, what the client still sends is read and dropped up to this many bytes, for
#: up to this many seconds, before the connection closes (`Connection._linger_close`).
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 2.0
#: Complete requests queued behind the one being answered before reading pauses.
PIPELINE_LIMIT = 8
#: Bytes of a head whose lines are not measured (one that began after a body in the same
#: read: `Connection._scanning`) read before the limits must have tripped: a guard against
#: one endless line, which the parser would otherwise buffer.
_MAX_HEAD_BYTES = MAX_REQUEST_LINE + MAX_HEADERS * MAX_HEADER_LINE + 2
#: The least a request line adds to its target: a 1-byte method, SP, SP, `HTTP/1.1` CRLF
#: (llhttp reads no other line end there).
_LINE_BESIDES_TARGET = len("G  HTTP/1.1\r\n")

#: The shared answers (`parser_refusals.refusal` takes aiohttp's exceptions as its input).
BAD_METHOD = refusal(BadHttpMethod(""))
MALFORMED = refusal(None)

#: Headers a request may carry once (as aiohttp's parser: a second one is a 400).
_SINGLETONS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class FastLane(Protocol):
    """A request being answered by callbacks (`proxy.http.fastlane.FastAnswer`), as far as
    its connection needs it."""

    def finished(self) -> asyncio.Future[None]: ...
    def cancel(self) -> None: ...


class App(Owner, Protocol):
    """What a connection needs of the app answering it (`proxy.app.ProxyApp` is the one
    implementation): the connection sits below the app and does not import it."""

    #: Request bodies over this many bytes are refused (413) where a route reads them.
    max_body: int

    async def handle(self, request: Request) -> StreamResponse: ...
    def answer_fast(self, request: Request, connection: Connection) -> FastLane | None: ...
    def refused(self, refusal: Refusal, request: Request | None = None) -> Response: ...
    def crashed(self) -> Response: ...


def origin_query(target: bytes) -> bytes | None:
    """The query of a request target in the origin form without a fragment (`/path?query`,
    as every client sends), or None for any other form (`httptools.parse_url` reads those).

    Why not `parse_url` for all: it builds a URL object of five fields (~0.7 µs a request on
    the fast lane) where only the query is used, and for such a target llhttp accepted
    (printable ASCII only) the query it finds is what follows the first `?`:
    tests/proxy/test_origin_query.py compares the two over every such target of up to
    two special characters.

    `0x23 not in target` (the byte `#` as an int), not `b"#" not in target`: `bytes in bytes`
    first tries its operand as an integer and formats the TypeError it gets (~2K
    instructions a request, 1% of a fast-lane forward, by callgrind) before it searches."""
    if target[:1] == b"/" and 0x23 not in target:
        return target.partition(b"?")[2]
    return None


class _Answered(Exception):
    """Raised in a parser callback: the request is answered without reading further."""


class _Refused(Exception):
    """Raised in a parser callback: the request is answered with `refusal`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class _UpgradeBody:
    """Parser callbacks for the body of a request that asked to upgrade: its pieces go to the
    connection as a body's would; the head it was fed and anything after the body do not."""

    __slots__ = ("_connection", "_done")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._done = False

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._connection.on_body(body)

    def on_message_complete(self) -> None:
        if not self._done:
            self._done = True
            self._connection.upgrade_body_read()


#: Header names as decoded, by their bytes: each request's held headers share one string per
#: name (a held long-poll keeps its headers: ~50 B a name otherwise). An `istr`, which
#: `CIMultiDict` keeps as it is (a plain `str` it copies into an `istr` of its own).
#: Bounded: the first `_NAMES_MAX` names of at most 64 bytes seen (a client's made-up names
#: fill it at worst).
_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 512
#: The same for short values (`Host`, `Accept`, `Connection`...; a token is longer): the first
#: `_VALUES_MAX` of at most 64 bytes, as read (checked: no NUL).
_VALUES: dict[bytes, str] = {}
_VALUES_MAX = 1024

#: A head's header lines are remembered (`Connection._memo`) up to this many bytes: clients
#: repeating their headers send ~0.5-2 KB; a bigger head kept per idle connection is memory
#: for little (review 14:24: 200 KB per idle connection with 90 KB heads).
_MEMO_MAX = 8192


class _Lean:
    """The connection's parser callbacks for a head whose header lines are byte for byte
    those of the connection's last request (`Connection._feed`). llhttp still reads and
    checks the whole head; the per-header callbacks (each one a Python call that decodes and
    checks one header, ~2.5K instructions, 2 to 15 a request) and the header table are
    skipped: `on_headers_complete` takes the last request's, which came from the same bytes.
    Such a head has no body (`_memo`), so its message ends with it: there is no
    `on_message_begin` or `on_message_complete` (the connection's `_lean_head` does their
    work), and `on_url` is the target list's own `append` (a C call: its length was measured
    with the head's lines). Two Python calls a request instead of four (`_lean_head`)."""

    __slots__ = ("on_headers_complete", "on_url")

    def __init__(self, connection: Connection) -> None:
        self.on_url = connection._url.append
        self.on_headers_complete = connection._lean_head


class Stalling(Protocol):
    """An answer written to a connection outside its transport (`upstream.client.Splice`)."""

    def stalled_for(self, now: float) -> float: ...


class Connection(asyncio.Protocol, Writer):
    """One client connection (see the module doc)."""

    __slots__ = (
        "_app",
        "_block",
        "_body",
        "_body_left",
        "_body_size",
        "_continue_owed",
        "_deferred",
        "_drain",
        "_early",
        "_fast",
        "_head_bytes",
        "_headers",
        "_idle",
        "_idle_since",
        "_in_head",
        "_in_message",
        "_lines",
        "_linger",
        "_loop",
        "_memo",
        "_message_began",
        "_on_close",
        "_on_open",
        "_parser",
        "_parser_idle",
        "_parser_lean",
        "_paused_at",
        "_paused_reading",
        "_queue",
        "_refused_head",
        "_request",
        "_reuse_parser",
        "_scanning",
        "_task",
        "_too_large",
        "_transport",
        "_upgrading",
        "_url",
        "_writing_paused",
        "closing",
        "fast_memo",
        "fast_token",
        "splicing",
    )

    def __init__(
        self,
        app: App,
        on_close: Callable[[Connection], None] | None = None,
        on_open: Callable[[Connection, asyncio.BaseTransport], bool] | None = None,
    ) -> None:
        self._app = app
        self._on_close = on_close
        #: Told of the connection's transport first; False: it was refused there (answered
        #: and closing: `proxy.http.serve.Server`'s cap per client address), nothing is read.
        self._on_open = on_open
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        #: Made when a request starts arriving. Kept for the next request after a keep-alive
        #: request (`_parser_idle`: llhttp reads one message after another; making one per
        #: request was ~2.5K instructions, 1% of a fast-lane forward), dropped once the
        #: connection holds a long-poll (`release_parser`) or after any other request: a
        #: connection that holds a long-poll keeps no parser (about 900 bytes, and a
        #: reference cycle).
        self._parser: httptools.HttpRequestParser | None = None
        #: `_parser` is kept between requests: none is being read (where the parser was
        #: dropped before, so a new request begins here as it did then).
        self._parser_idle = False
        #: `_parser` is a `_Lean` one (no `on_header`): the request it reads has the header
        #: lines of `_memo`.
        self._parser_lean = False
        #: The last request's header lines as bytes (from its request line's CRLF to its
        #: head's end) and what `on_headers_complete` made of them: (bytes, headers, their
        #: read-only view, the names lower-cased, two Authorization headers). A keep-alive
        #: client sends the same headers request after request: a head whose header lines
        #: are these bytes is read by a `_Lean` parser and gets these. Only for a head with
        #: neither Content-Length nor Transfer-Encoding: its message ends at the head, so
        #: the lean parser reads no body, trailer or next request. Dropped with the parser
        #: (`release_parser`): a connection holding a long-poll keeps none. Last: whether
        #: they need no check `_lean_head` would make again (`Host` there; no `Expect`, no
        #: `Upgrade`, one `Authorization` at most).
        self._memo: (
            tuple[bytes, CIMultiDict[str], CIMultiDictProxy[str], set[str], bool, bool] | None
        )
        self._memo = None
        #: The header lines of the head being read by a full parser, when it came whole in
        #: one piece (`_feed`): the next `_memo`'s bytes.
        self._block: bytes | None = None
        #: The request just read was keep-alive as llhttp reads it: its parser can be kept.
        self._reuse_parser = False
        self._in_message = False
        self._message_began = 0.0  # (loop time of the first byte of the request being read)
        #: The target's pieces as llhttp gives them (one, unless it came split over reads).
        #: Never rebound, only cleared: a `_Lean` parser appends to it directly.
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._in_head = False
        #: The head being read, measured line by line before the parser reads it
        #: (`HeadLines`), while its start is known: at a read's start between requests, or
        #: right after a head that had no body. A head that begins after a body in the same
        #: read is measured by the parser's callbacks instead (a bound from below: its
        #: whitespace is not seen), until the parser is between requests at a read's end.
        self._lines = HeadLines()
        self._scanning = True
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_left = 0  # bytes of a body of known length still to come (`data_received`)
        #: The body of the request being read is dropped as it arrives: the request was
        #: queued at its head (a body over the limit, or the body of a method no route reads).
        self._too_large = False
        #: The request being read is answered once this read is parsed (its body unread).
        self._early = False
        #: A refusal of the head just read that the engine makes once it dispatches the
        #: request (`_defer`), and whether that request is a HEAD: answered once this read
        #: is parsed, unless what follows in it is malformed (then the engine's 400 alone).
        self._deferred: tuple[Refusal, bool] | None = None
        self._request: Request | None = None  # being parsed
        #: A request asking to upgrade whose body is still to be read (`_UpgradeBody`), and
        #: that body's framing as a header line.
        self._upgrading: tuple[Request, bytes] | None = None
        self._queue: list[Request | Refusal] = []  # (a deque is 600 bytes even when empty)
        #: The request being refused is a HEAD: its answer has no body (`_send_refusal`).
        self._refused_head = False
        self._task: asyncio.Task[None] | None = None  # answering the oldest request
        #: Or answering it by callbacks, with no task (`proxy.http.fastlane`).
        self._fast: FastLane | None = None
        #: The keep-alive timer, and when the connection last became idle: the timer is left
        #: running across a request answered by the fast lane (made and cancelled per request
        #: it cost ~1 µs) and moved on when it fires early; a request answered by a task
        #: cancels it, so no timer is held under a held long-poll.
        self._idle: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._writing_paused = False
        #: When writing last paused (the client not reading: `stalled_for`).
        self._paused_at = 0.0
        #: The answer's body being spliced to this client (`upstream.client.Splice`), if any.
        self.splicing: Stalling | None = None
        self._paused_reading = False
        #: Bytes still read and dropped after a refusal before the close (`_linger_close`);
        #: -1: not lingering.
        self._linger = -1
        #: A request that asked for `100 Continue` while answers ahead of it were pending:
        #: it is written when its turn comes (`_next`), as the engine writes it.
        self._continue_owed: Request | None = None
        self._drain: asyncio.Future[None] | None = None
        #: Finish the request being answered, then close (server shutdown).
        self.closing = False
        #: (Authorization, its digest) of this connection's last fast-lane request: a client
        #: sends the same token on each, and hashing it was ~1 µs a request.
        self.fast_token: tuple[str, bytes] | None = None
        #: `proxy.http.fastlane`'s facts of this connection's last fast-lane request's
        #: headers, by the identity of its `Request.headers` (the same object while `_memo`
        #: holds: the same header lines).
        self.fast_memo: tuple[Any, ...] | None = None

    # --- Writer --------------------------------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    async def drain(self) -> None:
        if self._transport is None:
            raise ConnectionResetError("the client went away")
        if not self._writing_paused:
            return
        if self._drain is None:
            self._drain = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._drain), SEND_TIMEOUT)
        except TimeoutError:
            if self._transport is not None:
                logger.debug(
                    "dropped a connection from %s: it read nothing for %s s",
                    self._peer(),
                    SEND_TIMEOUT,
                )
                self._transport.abort()
            raise ConnectionResetError("the client stopped reading") from None
        if self._transport is None:
            raise ConnectionResetError("the client went away")

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._paused_at = self._loop.time()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._on_open is not None and not self._on_open(self, transport):
            return  # (refused: no transport, no timer, nothing read; `connection_lost` follows)
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's are not subclasses)
        self._idle_since = self._loop.time()
        self._idle = self._loop.call_later(REQUEST_READ_TIMEOUT, self._idle_close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._parser = None  # (it refers back to this protocol: no cycle left for the collector)
        self._memo = None
        self.fast_token = None
        self.fast_memo = None
        self._continue_owed = None
        self._cancel_idle()
        self._queue.clear()
        self._wake_drain()
        if self._task is not None:
            self._task.cancel()  # the client went away: its held request lets go at once
            self._task = None
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.cancel()
        if self._on_close is not None:
            self._on_close(self)

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: treated as gone (close, as aiohttp did)

    def data_received(self, data: bytes) -> None:
        memo = self._memo
        if (
            memo is not None
            and self._parser_idle
            and self._parser_lean
            and self._scanning
            and self._linger < 0
        ):
            # The usual keep-alive read: one whole head with the last request's header lines
            # (`_Lean`), its request line without LF and not begun by CR. `HeadLines` would
            # find it whole and every line within its limits (those lines passed them, this
            # is under the shortest limit), so it goes straight to the lean parser.
            block = memo[0]
            line = len(data) - len(block)  # (where the block's CRLF begins)
            if (
                line > 1
                and len(data) <= _SHORT_HEAD
                and data.endswith(block)
                and data.find(b"\n", 0, line + 2) == line + 1
                and data[0] != 13
            ):
                parser = self._parser
                if parser is None or self.closing or self._transport is None:
                    if self._feed(data, 0, None, 2) and self._in_message:
                        self._scanning = False  # a body follows
                else:  # (`_feed` of such a head, inline: once per keep-alive request)
                    self._block = None
                    self._parser_idle = False
                    try:
                        parser.feed_data(data)
                    except (httptools.HttpParserUpgrade, httptools.HttpParserError) as exc:
                        self._parse_failed(exc, data, 0)
                    else:
                        if self._in_message:
                            if not self.closing:
                                self._scanning = False  # a body follows
                        elif self._reuse_parser and self._task is None:
                            self._parser_idle = True
                        else:
                            self._parser = None
            else:
                self._received(data)
        else:
            self._received(data)
        if self._early:
            self._answer_early()
        if self._deferred is not None:
            self._refuse_deferred()

    def _refuse_deferred(self) -> None:
        """Answer the refusal `_defer` kept, now that the read its head came in is parsed
        and nothing in it was malformed (nothing, if the connection is closing for that)."""
        assert self._deferred is not None
        refusal, head = self._deferred
        self._deferred = None
        if not self.closing:
            self._refuse(refusal, head)

    def _answer_early(self) -> None:
        """Queue the request whose body no route reads (`on_headers_complete`), if its body
        is still to come and nothing in this read refused it."""
        self._early = False
        request = self._request
        if request is None or not self._in_message or self.closing:
            return  # (complete, and queued so; or refused, or the connection closing)
        self._request = None
        self._queue.append(request)
        if not self._busy:
            self._next()

    def _received(self, data: bytes) -> None:
        if self._linger >= 0:  # (after a refusal: dropped, `_linger_close`)
            self._linger -= len(data)
            if self._linger < 0 and self._transport is not None:
                self._transport.close()
            return
        at, size = 0, len(data)
        while True:
            if self._scanning:
                end, refused = self._lines.scan(data, at)
                if refused is not None:
                    # The limit's answer, whatever the lines before it hold (the engine
                    # measures lines before it parses them): they are parsed only to know
                    # whether it is a HEAD's (no body), its method being the parser's if it
                    # read the line's start, else the line is here.
                    if end > at:
                        self._feed_quietly(data[at:end])
                    if not self.closing:
                        head = self._reading_head() or data[end : end + 5] == b"HEAD "
                        self._refuse(refused, head)
                    return
                if end < 0:
                    break
                if not self._feed(data, at, end, 1):
                    return
                at = end
                if self._in_message:
                    self._scanning = False  # a body follows
            elif self._body_left and at < size:
                # A body of known length: the next request's head starts where it ends (the
                # engine follows it so too: a head pipelined after a POST's body is measured).
                end = min(size, at + self._body_left)
                self._body_left -= end - at
                if not self._feed(data, at, end):
                    return
                at = end
                if not self._in_message:
                    self._scanning = True
            else:
                break  # (inside a chunked body: where it ends is the parser's to find)
            if at == size:
                return
        if self._feed(data, at) and not self._in_message:
            self._scanning = True

    def _feed_quietly(self, piece: bytes) -> None:
        """Parse `piece` for what it tells of the request (its method), nothing refused."""
        parser = self._parser
        if parser is None or self._parser_lean:
            parser = self._parser = httptools.HttpRequestParser(self)
            self._parser_lean = False
        self._parser_idle = False
        self._block = None
        try:
            parser.feed_data(piece)
        except httptools.HttpParserError:
            pass

    def _feed(self, data: bytes, at: int = 0, end: int | None = None, head: int = 0) -> bool:
        """Parse `data[at:end]`; False when nothing after it is to be read (refused, closing,
        or the rest of `data` is the body of a request asking to upgrade). `head`: 1, the
        piece is one whole head, measured by `HeadLines`; 2, one whole head with the header
        lines of `_memo` (`data_received`)."""
        # (`end` at the read's end is the usual head: `data` itself, not a copy of it)
        piece = data if at == 0 and (end is None or end == len(data)) else data[at:end]
        parser = self._parser
        if parser is None or self._parser_idle:
            if self.closing or self._transport is None:
                return False  # no further request is read on this connection
            # A new request. Its header lines (after its request line's CRLF: a head that
            # begins with neither CR nor LF, whose first LF follows a CR) byte for byte
            # those of `_memo`: read by a `_Lean` parser (see `_Lean`).
            self._block = None
            lean = head == 2
            if head == 1:
                lf = piece.find(b"\n")
                if lf > 1 and piece[lf - 1] == 13 and piece[0] != 13:
                    memo = self._memo
                    if memo is not None and len(piece) - lf + 1 == len(memo[0]):
                        lean = piece.endswith(memo[0])
                    if not lean:
                        self._block = piece[lf - 1 :]
            if parser is None or lean != self._parser_lean:
                # (one parser at a time: a client whose headers change makes a new one)
                parser = self._parser = httptools.HttpRequestParser(_Lean(self) if lean else self)
                self._parser_lean = lean
            self._parser_idle = False
        if self._in_head:
            self._head_bytes += len(piece)
        try:
            parser.feed_data(piece)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError) as exc:
            self._parse_failed(exc, data, at)
            return False
        if self._in_head and not self._scanning and self._head_bytes > _MAX_HEAD_BYTES:
            self._refuse(HEADER_LINE_TOO_LONG)
            return False
        if not self._in_message:
            if self._reuse_parser and self._task is None:  # (a task's answer may be held)
                self._parser_idle = True
            else:
                self._parser = None
        return not self.closing

    def _parse_failed(self, exc: Exception, data: bytes, at: int) -> None:
        """What `feed_data` raised parsing `data` from `at` (`_feed`, `data_received`): the
        request is refused, or answered and nothing after it read."""
        if (
            self._parser_lean
            and not self._in_message
            and not isinstance(exc, httptools.HttpParserUpgrade)
        ):
            # A lean head refused by llhttp: as its message began (`_Lean` has no
            # `on_message_begin`; llhttp calls it at a head's first byte), so it is refused
            # as a full read refuses it: a HEAD's refusal without a body (`_reading_head`),
            # its deadline its own (hostile 23:41).
            self.on_message_begin()
        if isinstance(exc, httptools.HttpParserUpgrade):
            # A request asking to switch protocols is answered as plain HTTP; nothing after
            # it (and its body) on this connection is read.
            if self._deferred is not None:
                self._refuse_deferred()  # (refused at its head: nothing after it is read)
                return
            if self._upgrading is not None:
                self._scanning = False
                self._read_upgrade_body(data[at + exc.args[0] :])
                return
            self.closing = True
            self._pause_reading()
        elif isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, _Answered):
                self._in_head = False
                self.closing = True
                self._pause_reading()
                if not self._busy:
                    self._next()
                return
            if self._deferred is not None:
                self._refuse_deferred()  # (the first refusal in this read is answered)
                return
            self._refuse(cause.refusal if isinstance(cause, _Refused) else MALFORMED)
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._refuse(BAD_METHOD)
        else:
            self._refuse(MALFORMED)

    # --- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._reuse_parser = False
        self._message_began = self._loop.time()
        if self._url:
            self._url.clear()
        if self._headers:
            self._headers = []
        self._head_bytes = 0
        self._in_head = True
        self._body = []
        self._body_size = 0
        self._body_left = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        parts = self._url
        parts.append(url)
        # (a measured head's lines were measured whole: these bounds from below never trip
        # before `HeadLines`, they only bound a head that is not measured)
        length = len(url) if len(parts) == 1 else sum(map(len, parts))
        if length + _LINE_BESIDES_TARGET > MAX_REQUEST_LINE:
            raise _Refused(REQUEST_LINE_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        # (`Name:value` CRLF at least; see `on_url`)
        if len(name) + len(value) + 3 > MAX_HEADER_LINE:
            raise _Refused(HEADER_LINE_TOO_LONG)
        headers = self._headers
        if len(headers) >= MAX_HEADERS:
            raise _Refused(TOO_MANY_HEADERS)
        text = _VALUES.get(value)
        if text is None:
            text = value.decode("utf-8", "surrogateescape").rstrip(" \t")
            if "\x00" in text:
                raise _Refused(MALFORMED)
            if len(_VALUES) < _VALUES_MAX and len(value) <= 64:
                _VALUES[value] = text
        decoded = _NAMES.get(name)
        if decoded is None:
            decoded = istr(name.decode("utf-8", "surrogateescape"))
            if len(_NAMES) < _NAMES_MAX and len(name) <= 64:
                _NAMES[name] = decoded
        headers.append((decoded, text))

    def _defer(self, refusal: Refusal, method: bytes) -> None:
        """Refuse the head just read as the engine does once it dispatches it (`unserved`:
        HTTP/2.0's 505, a chunked HTTP/1.0 request, an unknown transfer coding; a bad Expect;
        two Authorization headers): after this read is parsed. aiohttp parses a read whole
        before it dispatches what it holds, so a malformed body (or request) later in the
        same read is the engine's 400 alone; the proxy answered the head's refusal. Its body
        is parsed and dropped; once it ends, the refusal is answered (`on_message_complete`)
        and nothing after it is read, as the engine answers a complete request refused so
        whatever follows it in the read."""
        self._deferred = (refusal, method == b"HEAD")
        self._request = None

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._parser_lean:  # (the header lines of `_memo`: what was made of them then)
            assert self._memo is not None
            _, headers, view, names, repeated_authorization, _ = self._memo
        else:
            pairs = self._headers
            headers = CIMultiDict(pairs)
            #: The names sent, lower-cased: whether one repeats, and whether the few a
            #: bodiless GET lacks are there at all (a set lookup, not a case-insensitive
            #: search).
            names = {name.lower() for name, _ in pairs}
            #: Two `Authorization` headers: refused (`REPEATED_AUTHORIZATION`) once every
            #: check the engine makes of the head has passed, so a head the engine refuses
            #: otherwise (HTTP/2.0's 505, a bad target, `Expect: 200-ok`'s 417...) gets the
            #: engine's answer, as the engine checks it; the proxy's 400 only where the
            #: engine would serve it.
            repeated_authorization = False
            if len(headers) != len(names):
                for name in _SINGLETONS:
                    if len(headers.getall(name, ())) > 1:
                        raise _Refused(MALFORMED)
                repeated_authorization = len(headers.getall("authorization", ())) > 1
            view = CIMultiDictProxy(headers)
            block, self._block = self._block, None
            if (
                block is not None  # (the head came whole: the next one may repeat its lines)
                and len(block) <= _MEMO_MAX
                and "transfer-encoding" not in names
                and "content-length" not in names
            ):
                # Only a head with no body: its message ends with the head, so a lean parser
                # never reads past it (a chunked body read lean had its trailers unchecked,
                # and the request pipelined after it read lean with these headers, another
                # user's token included: review 14:10).
                self._memo = (
                    block,
                    headers,
                    view,
                    names,
                    repeated_authorization,
                    # (`_lean_head`'s usual case: nothing in these lines to check again)
                    not repeated_authorization
                    and "host" in names
                    and "expect" not in names
                    and "upgrade" not in names,
                )
        parser = self._parser
        assert parser is not None
        target = b"".join(self._url)
        # Not kept while the request is answered: a held long-poll would keep the list of
        # header pairs and the target's bytes, which `Request` already has in its own form.
        self._url.clear()
        self._headers = []
        method = parser.get_method()
        # (`origin_query`, inline: once per request)
        query = target.partition(b"?")[2] if target[:1] == b"/" and 0x23 not in target else None
        if query is None:
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise _Refused(MALFORMED) from None  # (no target llhttp accepts was seen here)
            query = url.query or b""
            if target[:1] != b"/" and url.schema is not None:
                # The absolute form (`GET http://host/v1/shape?...`), which a server must
                # accept (RFC 9112, 3.2.2) and the engine does: served as its path and query.
                target = (url.path or b"/") + (b"?" + query if url.query is not None else b"")
        if method == b"CONNECT" or (target == b"*" and method != b"OPTIONS"):
            # A tunnel (neither service is a forward proxy), and the asterisk form of any
            # method but OPTIONS (RFC 9112, 3.2.4): the engine's 400, not a 405 or a 404.
            raise _Refused(CONNECT_REFUSED if method == b"CONNECT" else MALFORMED)
        if target[:1] != b"/" and target != b"*":
            # Neither the origin nor the absolute form (rewritten above), nor `OPTIONS *`:
            # `*?`, `*x`, a bare word. The engine's 400 (Electric's Bandit: "Unsupported
            # request target"), not a 404 for a path that no route has.
            raise _Refused(MALFORMED)
        # Request lines and framings llhttp reads but neither server serves are refused in
        # the engine's words (sync_engine/http/parser_refusals.py), so a client cannot tell
        # the two apart by them.
        coding = headers.get("Transfer-Encoding") if "transfer-encoding" in names else None
        codings = [c.strip() for c in coding.lower().split(",")] if coding is not None else None
        if codings is not None and codings[-1] != "chunked":
            # No final chunked (`identity`, `gzip`): no framing to read a body by. The engine's
            # llhttp refuses the head itself, before any check below, in its plain words (the
            # proxy's 501 and its HTTP/0.9 / HTTP/1.0 words told the two apart).
            raise _Refused(MALFORMED)
        version = parser.get_http_version()
        if version == "1.1":
            if "host" not in names:
                raise _Refused(MALFORMED)  # (RFC 9112, 3.2: a 400, as the engine answers it)
        elif version != "1.0":
            return self._defer(HTTP_0_9 if version == "0.9" else VERSION_NOT_SUPPORTED, method)
        if codings is not None:
            if version == "1.0":
                return self._defer(TRANSFER_ENCODING_IN_HTTP_1_0, method)
            if codings != ["chunked"]:  # (`gzip, chunked`, `, chunked`: RFC 9112, 6.1, a 501)
                return self._defer(UNKNOWN_TRANSFER_CODING, method)
        request = Request(  # (method, raw path, query, headers, version, keep-alive, writer, app)
            method.decode("ascii", "surrogateescape"),
            target.decode("utf-8", "surrogateescape"),
            query.decode("utf-8", "surrogateescape"),
            view,
            (1, 0) if version == "1.0" else (1, 1),
            parser.should_keep_alive(),
            self,
            self._app,
        )
        self._request = request
        length = headers.get("Content-Length") if "content-length" in names else None
        if self._scanning and coding is None and length is not None and length.isdigit():
            self._body_left = int(length)  # (a head measured: its body's end is known too)
        if length is not None and length.isdigit() and int(length) > self._app.max_body:
            if repeated_authorization:
                # (the engine's 413 where a POST's route reads the body; but the request would
                # reach a route with two tokens: refused here, before any route sees it)
                return self._defer(REPEATED_AUTHORIZATION, method)
            request.body_too_large = True  # (413 where a route reads bodies)
            self._request = None
            self._queue.append(request)
            if parser.should_upgrade() or "Expect" in headers:
                # Answered now and closed: a client waiting for 100 Continue sends nothing.
                request.keep_alive = False
                raise _Answered
            # Answered now, its body read and dropped as it arrives, and the connection goes
            # on after it, as the engine does: closed at once, the client still sending it
            # got a reset instead of the 413 (attack 16:25; a browser reports a network
            # error), and a keep-alive client lost its connection.
            self._too_large = True
            if not self._busy:
                self._next()
            return
        expect = headers.get("Expect") if "expect" in names else None
        if expect is not None and version == "1.1" and expect.lower() != "100-continue":
            # An expectation the server cannot meet: the engine's 417 at once, before the
            # body (the proxy waited for the body, and a client that sends it only once
            # told to go on got nothing until the read timeout).
            return self._defer(EXPECTATION_FAILED, method)
        if repeated_authorization:
            return self._defer(REPEATED_AUTHORIZATION, method)
        if (
            (coding is not None or (length is not None and length != "0"))
            and method != b"POST"
            and expect is None
            and not parser.should_upgrade()
        ):
            # A body no route reads (only a POST's is): the request is answered now, as the
            # engine (aiohttp) and Electric (Bandit) answer it, its body read and dropped as
            # it arrives before the next request is read; one that never comes closes the
            # connection at the request deadline, after the answer (`_idle_close`). The
            # proxy waited for it: a GET with a `Content-Length` and no body got nothing.
            # Queued once this read is parsed (`data_received`), as the engine dispatches:
            # what follows in the same read may be a malformed body, answered alone then.
            self._too_large = True  # (the body is dropped)
            self._early = True
            return
        if parser.should_upgrade():
            # A request asking to upgrade (`Connection: Upgrade`, as `curl --http2` sends) is
            # answered as plain HTTP and the connection closed after it: its answer says so
            # (it did not, and a client reusing the connection lost its next request).
            request.keep_alive = False
            if method == b"POST" and (coding is not None or (length is not None and length != "0")):
                # llhttp ends such a request at its head and leaves its body to the new
                # protocol: the body was dropped and a POST answered as bodiless (the whole
                # shape, not its subset). A server that does not upgrade must read it as
                # usual (RFC 9110, 7.8): `_read_upgrade_body`. (Another method's body no
                # route reads: it is answered at its head, as the engine answers it, and
                # the connection closes after it.)
                if coding is not None:
                    framing = b"Transfer-Encoding: chunked"
                else:
                    framing = b"Content-Length: " + str(length).encode()
                self._upgrading = (request, framing)
                self._request = None
        if expect is not None and version == "1.1" and self._transport is not None:
            # (100-continue: any other was refused above)
            if self._busy or self._queue:
                # Its turn comes after the answers ahead (`_next`): written now, the client
                # took it for the first request's interim answer (the engine writes it
                # after them); never, if the connection closes after them.
                self._continue_owed = None if self.closing else request
            elif not self._too_large:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _lean_head(self) -> None:
        """`_Lean`'s `on_headers_complete`, for a head with the header lines of `_memo` (no
        body: its message ends here). The usual one, a GET of an origin-form target without
        a fragment over HTTP/1.1 whose lines need no check (`_memo`'s last item), becomes its
        `Request` and is queued here, as `on_message_begin`, `on_headers_complete` and
        `on_message_complete` would make and queue it (no state of theirs is left otherwise
        between requests); any other goes their way, in their order."""
        parser = self._parser
        memo = self._memo
        assert parser is not None and memo is not None
        url = self._url
        if len(url) == 1 and memo[5]:
            target = url[0]
            if (
                target[:1] == b"/"
                and 0x23 not in target  # (see `origin_query`)
                and parser.get_method() == b"GET"
                and parser.get_http_version() == "1.1"
            ):
                url.clear()
                keep_alive = parser.should_keep_alive()
                request = Request(  # (as `on_headers_complete` makes it)
                    "GET",
                    target.decode("utf-8", "surrogateescape"),
                    target.partition(b"?")[2].decode("utf-8", "surrogateescape"),
                    memo[2],
                    (1, 1),
                    keep_alive,
                    self,
                    self._app,
                )
                self._reuse_parser = keep_alive  # (`on_message_complete`, inline)
                queue = self._queue
                if self._task is None and self._fast is None:
                    if not queue and self._transport is not None:
                        # (`_next` with nothing queued before it, inline: the usual case)
                        fast = self._fast = self._app.answer_fast(request, self)
                        if fast is None:
                            self._cancel_idle()
                            self.release_parser()  # (a task's answer may be held)
                            self._task = self._loop.create_task(self._answer(request))
                        return
                    queue.append(request)
                    self._next()
                else:
                    queue.append(request)
                    if len(queue) >= PIPELINE_LIMIT:
                        self._pause_reading()
                return
        pieces = url[:]
        self.on_message_begin()
        url.extend(pieces)
        self.on_headers_complete()
        self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self._app.max_body:
            self._too_large = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._deferred is not None:  # (answered now; the parser stops here: `_feed`)
            raise _Refused(self._deferred[0])
        self._in_message = False
        self._early = False  # (its body came with its head: queued as any request)
        request = self._request
        if request is None:
            return
        self._reuse_parser = request.keep_alive
        self._request = None
        request.body = b"".join(self._body)
        request.body_too_large = self._too_large
        self._body = []
        self._queue.append(request)
        if self._task is None and self._fast is None:  # (not `_busy`: one call fewer)
            self._next()
        elif len(self._queue) >= PIPELINE_LIMIT:
            self._pause_reading()

    def _read_upgrade_body(self, rest: bytes) -> None:
        """Read the body of a request that asked to upgrade (llhttp stopped at its head) with
        a parser of its own, fed a head with the same framing; nothing after it is read."""
        assert self._upgrading is not None
        request, framing = self._upgrading
        self._upgrading = None
        self._request = request
        self._in_message = True
        self.closing = True
        parser = self._parser = httptools.HttpRequestParser(_UpgradeBody(self))
        self._parser_lean = False
        parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
        self.data_received(rest)

    def upgrade_body_read(self) -> None:
        """The body of a request that asked to upgrade is in (`_UpgradeBody`)."""
        self._parser = None  # (nothing after the body is read: `closing` is set)
        self._pause_reading()
        self.on_message_complete()

    # --- answering -----------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the oldest queued request, or wait for one."""
        transport = self._transport
        if transport is None:
            return
        if not self._queue:
            if self.closing:
                transport.close()
                return
            if self._paused_reading:
                self._resume_reading()
            if self._continue_owed is not None:  # (the request still being read: its turn)
                self._continue_owed = None
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._idle_since = now = self._loop.time()
            if self._idle is None:
                # (at most `REQUEST_READ_TIMEOUT` away: a request that begins meantime, or
                # began while the one before it was answered, is cut at its own deadline)
                delay = min(KEEPALIVE_TIMEOUT, REQUEST_READ_TIMEOUT)
                if self._in_message:
                    delay = max(0.0, self._message_began + REQUEST_READ_TIMEOUT - now)
                self._idle = self._loop.call_later(delay, self._idle_close)
            return
        item = self._queue.pop(0)
        if item is self._continue_owed:  # (its turn: `on_headers_complete`)
            self._continue_owed = None
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if isinstance(item, Request):
            self._fast = self._app.answer_fast(item, self)
            if self._fast is None:
                self._cancel_idle()
                self.release_parser()  # (a task's answer may be held)
                self._task = self._loop.create_task(self._answer(item))
        else:
            self._send_refusal(item)

    def release_parser(self) -> None:
        """Let go of a parser kept between requests (`_parser_idle`) and of what the last
        request's headers were found to be (`_memo`, `fast_memo`): the connection holds a
        long-poll, or has been idle, and a new request makes them again."""
        self._memo = None
        self.fast_memo = None
        if self._parser_idle:
            self._parser = None
            self._parser_idle = False

    @property
    def _busy(self) -> bool:
        return self._task is not None or self._fast is not None

    # --- answered by callbacks (`proxy.http.fastlane`) -----------------------------------

    def fast_answered(self, request: Request, response: Response) -> None:
        """The fast answer of the oldest request is ready: write it, go on to the next one."""
        self._fast = None
        transport = self._transport
        if transport is None:
            return
        try:
            data = response.serialize(request)
        except Exception:
            logger.exception("unhandled error answering a request")
            response = self._app.crashed()
            response.force_close()
            data = response.serialize(request)
        transport.write(data)
        self._finished(request)

    def fast_written(self, request: Request, head: bytes, body: list[bytes]) -> None:
        """The fast answer of the oldest request, as bytes: write it, go on to the next."""
        self._fast = None
        transport = self._transport
        if transport is None:
            return
        if len(body) == 1 and len(body[0]) < JOIN_BELOW:
            transport.write(head + body[0])
        elif body:
            transport.writelines((head, *body))
        else:
            transport.write(head)
        if not request.keep_alive:  # (`_finished`, inline: once per fast answer)
            self.closing = True
            self._queue.clear()
        elif not (
            self._queue
            or self.closing
            or self._paused_reading
            or self._continue_owed is not None
            or self._idle is None
        ):
            # (`_next` with nothing queued and the keep-alive timer running, inline: the
            # usual case, once per fast answer)
            self._idle_since = self._loop.time()
            return
        self._next()

    def fast_handover(
        self,
        request: Request,
        answering: Callable[[], Awaitable[StreamResponse]],
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        """The fast answer needs a task after all: `answering()` makes the response, and
        `cleanup` runs when that task is over (even if it was cancelled before it began)."""
        self._fast = None
        if self._transport is None:
            if cleanup is not None:
                cleanup()
            return
        self._cancel_idle()
        self.release_parser()  # (a task's answer may be held)
        task = self._task = self._loop.create_task(self._answer(request, answering))
        if cleanup is not None:
            task.add_done_callback(lambda _: cleanup())

    async def _answer(
        self, request: Request, answering: Callable[[], Awaitable[StreamResponse]] | None = None
    ) -> None:
        try:
            try:
                work = self._app.handle(request) if answering is None else answering()
                response = await work
            except Exception:
                logger.exception("unhandled error answering a request")
                response = self._app.crashed()
                response.force_close()
            transport = self._transport
            if transport is None:
                return
            if not response.prepared:
                assert isinstance(response, Response)
                head, body = response.parts(request)
                if len(body) < JOIN_BELOW:  # (one write is cheaper)
                    transport.write(head + body if body else head)
                else:  # (one writev: the body is not copied)
                    transport.writelines((head, body))
            else:
                try:
                    await response.write_eof()
                except ConnectionError:
                    request.keep_alive = False
        except asyncio.CancelledError:
            if self._transport is not None:  # cancelled by shutdown, not by the client
                self._transport.close()
            return
        finally:
            if self._task is asyncio.current_task():
                self._task = None
        self._finished(request)

    def _finished(self, request: Request) -> None:
        if not request.keep_alive:
            self.closing = True
            self._queue.clear()
        self._next()

    def _refuse(self, answer: Refusal, head: bool | None = None) -> None:
        """The parser refused the request being read (a HEAD if `head`; None: as far as the
        parser read it): answer it after those before it."""
        self._refused_head = self._reading_head() if head is None else head
        self._in_head = False
        self.closing = True
        self._pause_reading()
        # A scanner's first bytes are not worth a line above DEBUG (as aiohttp did).
        level = logging.DEBUG if answer is BAD_METHOD else logging.INFO
        logger.log(
            level,
            "refused a malformed request from %s: %s %s",
            self._peer(),
            answer.status,
            answer.message,
        )
        self._queue.append(answer)
        if not self._busy:
            self._next()

    def _reading_head(self) -> bool:
        """Whether the request the parser is reading is a HEAD (its method is known once
        its first word is read, whatever it refuses after)."""
        parser = self._parser
        if parser is None or not self._in_message:
            return False
        try:
            return bool(parser.get_method() == b"HEAD")
        except httptools.HttpParserError:
            return False

    def _send_refusal(self, answer: Refusal, request: Request | None = None) -> None:
        transport = self._transport
        if transport is None:
            return
        response = self._app.refused(answer, request)
        response.force_close()
        # A HEAD's refusal (its request line or a header over the limit, a slow request...)
        # is answered as a HEAD: the head of the JSON answer, no body (as the engine does);
        # a client reading a HEAD answer takes a body for the start of its next answer.
        method = "HEAD" if self._refused_head else "GET"
        placeholder = Request(method, "", "", _NO_HEADERS, (1, 1), False, self, None)
        transport.write(response.serialize(placeholder))
        self._queue.clear()
        self._linger_close(transport)

    def _linger_close(self, transport: asyncio.Transport) -> None:
        """Close after a refusal as nginx's `lingering_close` does: the answer, then FIN, then
        what the client still sends is read and dropped (up to `LINGER_BYTES`, for up to
        `LINGER_SECONDS`, until it closes its side) before the socket is closed. Closed at
        once with the rest of a refused head unread in the kernel, the socket sent a reset,
        and a client still sending (a browser's fetch, undici) reported a network error
        instead of the 414 / 431 it had been sent (attack's exhaust.py)."""
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger = LINGER_BYTES
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        self._loop.call_later(LINGER_SECONDS, transport.close)

    def _peer(self) -> str | None:
        if self._transport is None:
            return None
        peer = self._transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)) and peer:
            return str(peer[0])
        return None

    # --- flow ----------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused_reading and self._transport is not None and not self.closing:
            self._paused_reading = False
            self._transport.resume_reading()

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_close(self) -> None:
        self._idle = None
        if self._transport is None or self._busy or self._queue:
            return  # (in use: `_next` arms it again once the connection is idle)
        now = self._loop.time()
        if self._in_message:  # a request still arriving: given until its own deadline
            left = self._message_began + REQUEST_READ_TIMEOUT - now
            if left > 0:
                self._idle = self._loop.call_later(left, self._idle_close)
                return
            if not self._in_head and self._request is None:
                # The body of a request answered before it arrived (413): closed unanswered.
                self._transport.close()
                return
            logger.debug(
                "closed a connection from %s: its request did not arrive within %s s",
                self._peer(),
                REQUEST_READ_TIMEOUT,
            )
            self._refused_head = self._reading_head()
            # (its head read, its body late: answered with the request's headers, as the
            # engine's middleware answers it: request id, CORS, `electric-server`)
            request = None if self._in_head else self._request
            self._in_message = False
            self._parser = None
            self.closing = True
            self._send_refusal(REQUEST_TIMEOUT, request)  # (a 408 in JSON, then closed)
            return
        if not self._message_began:
            # No request ever began on this connection: it is not idle between requests, it
            # holds a socket without asking anything (a slow-loris client, a port scan), so
            # it gets the request deadline, not the keep-alive. Closed without an answer (no
            # request to answer), as an idle keep-alive connection is. Checked here, when the
            # timer armed at `connection_made` fires: nothing per request.
            logger.debug(
                "closed a connection from %s: no request began within %s s",
                self._peer(),
                REQUEST_READ_TIMEOUT,
            )
            self._transport.close()
            return
        self.release_parser()  # (idle: a new request makes one again)
        left = self._idle_since + KEEPALIVE_TIMEOUT - now
        if left > 0:  # (armed before the fast-lane requests since, or a check on the way)
            self._idle = self._loop.call_later(min(left, REQUEST_READ_TIMEOUT), self._idle_close)
            return
        if self._transport.get_write_buffer_size():
            self._transport.abort()  # (its last answer is still unread: `close` would wait)
        else:
            self._transport.close()

    def idle_for(self, now: float) -> float:
        """Seconds this connection has been idle between requests: open or answered, no
        byte of a next request come; 0 otherwise (a head arriving, a request answered or
        queued, a live answer held). `Server._reclaim` closes such a one for a newcomer from
        its client address: a NAT-mate's idle keep-alive, never work in flight."""
        if self._transport is None or self._busy or self._queue or self._upgrading:
            return 0.0
        return 0.0 if self._in_message else now - self._idle_since

    def waiting_since(self, now: float) -> float:
        """Seconds this connection has waited without a request to answer: since its
        request began arriving (a head still incomplete), or since it was opened or last
        answered (idle); 0 while a request is answered or queued (`Server._make_room`)."""
        if self._transport is None or self._busy or self._queue or self._upgrading:
            return 0.0
        if self._in_message:
            return now - self._message_began if self._message_began else 0.0
        return now - self._idle_since

    def stalled_for(self, now: float) -> float:
        """Seconds this connection's writing has been paused, its client reading nothing
        (below the buffer's low mark since); 0 while it is not (`Server._make_room`)."""
        if self._transport is None:
            return 0.0
        spliced = self.splicing.stalled_for(now) if self.splicing is not None else 0.0
        if not self._writing_paused:
            return spliced  # (a spliced answer never fills the transport's buffer)
        return max(now - self._paused_at, spliced)

    def evict(self) -> None:
        """Drop the connection now, its unread answer with it (`Server._make_room`)."""
        logger.info(
            "closed a connection from %s to make room at the connection cap: its client "
            "read nothing of its answer for %.0f s",
            self._peer(),
            self.stalled_for(self._loop.time()),
        )
        if self._transport is not None:
            self._transport.abort()  # (connection_lost: its answer is cancelled)

    @property
    def answering(self) -> asyncio.Future[None] | None:
        """Done when the request being answered right now is (None: nothing is)."""
        if self._fast is not None:
            return self._fast.finished()
        return self._task

    def shut_down(self) -> None:
        """Server shutdown: close now if idle, else after the request being answered."""
        self.closing = True
        self._queue.clear()
        self._pause_reading()
        if not self._busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Server shutdown, out of time: cancel the request being answered and close."""
        if self._task is not None:
            self._task.cancel()
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.cancel()
        if self._transport is not None:
            self._transport.close()

"""The engine's HTTP server: parser refusals and server errors as the engine's JSON.

The refusals themselves (414, 431, 400 before any handler runs) are shared with the proxy
(`parser_refusals`); here they get the engine's body, `{"message": ...}`. A handler's own
crash (a bug) gets its traceback and a bare 500, as every other engine error does.

A request body must arrive in full within `REQUEST_READ_TIMEOUT` of its head, or its reader
gets `BodyTimeout`: a 408 in JSON, then the connection is closed (as the proxy answers a
request that does not arrive in time, proxy/http/protocol.py). A client trickling a body held
its connection for as long as it trickled, and the connection cap (`parser_refusals`) counts
a connection whose request is being handled as busy: a handful of them locked others out.
"""

from __future__ import annotations

import logging
import zlib
from functools import partial
from typing import Any, NoReturn

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .errors import BodyTimeout, json_response
from .params import MAX_BODY
from .parser_refusals import (
    Refusal,
    RefusingApplication,
    RefusingRequestHandler,
    announced_length,
)

logger = logging.getLogger(__name__)


#: Content codings of a request body the engine decodes (zlib's window bits; 0 for
#: `deflate`: with its zlib header, or raw as some clients send it). `x-gzip` is gzip
#: (RFC 9110, 8.4.1.3). The proxy (proxy/http/handlers.py `_read_body`) reads the same.
_DECODED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
#: Bytes decoded per step: a small body in one, a bomb never more than this ahead of its
#: reader (which stops at its limit, `params.MAX_BODY`: a 413).
_DECODE_STEP = 64 * 1024
#: Seconds a request's body may take to arrive in full after its head (the proxy's
#: `REQUEST_READ_TIMEOUT`; nginx's client_body_timeout is 60 s between reads).
REQUEST_READ_TIMEOUT = 30.0
_NO_STORE = {"cache-control": "no-store", "surrogate-control": "no-store"}
_UNSUPPORTED_CODING = orjson.dumps(
    {"message": "Unsupported Content-Encoding: a request body may be gzip, deflate or identity"}
).decode()


def _deadline(payload: StreamReader) -> None:
    """The body's time is up: a reader waiting on it (or coming later) gets `BodyTimeout`."""
    if not payload.is_eof() and payload.exception() is None:
        payload.set_exception(BodyTimeout("the request body did not arrive in time"))


class _DecodedBody(StreamReader):
    """A request body decoded from its Content-Encoding as its reader asks for it.

    Where a reader would wait for the parser to feed it, it reads the raw body's next piece
    and decodes it (at most `_DECODE_STEP` bytes out). A body that is not the whole of one
    stream in its coding (cut short, undecodable, bytes after its end) is a
    `ContentEncodingError` when read: the engine's 400 "Malformed request body", as the
    proxy's. A body in a coding the engine does not decode is a 415 when read.
    """

    __slots__ = ("_decoder", "_raw", "_wbits")

    def __init__(self, raw: StreamReader, wbits: int | None, loop: Any) -> None:
        super().__init__(raw._protocol, raw._low_water, loop=loop)
        self._raw = raw
        self._wbits = wbits
        self._decoder: Any = None

    async def _wait(self, func_name: str) -> None:
        if self._wbits is None:
            # (not cacheable, as every other error answer of the engine: `json_response`)
            raise web.HTTPUnsupportedMediaType(
                text=_UNSUPPORTED_CODING, content_type="application/json", headers=_NO_STORE
            )
        decoder = self._decoder
        if decoder is not None and decoder.unconsumed_tail:
            data = decoder.unconsumed_tail
        else:
            data = await self._raw.readany()
            if not data:
                if decoder is not None and not decoder.eof:
                    self._fail("cut short")
                self.feed_eof()
                return
        if decoder is None:
            wbits = self._wbits
            if not wbits:
                wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
            decoder = self._decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(data, _DECODE_STEP)
        except zlib.error:
            self._fail("undecodable")
        if decoder.unused_data:
            self._fail("bytes after its end")
        if out:
            self.feed_data(out)

    def _fail(self, why: str) -> NoReturn:
        exc = ContentEncodingError(f"request body in its Content-Encoding {why}")
        self.set_exception(exc)
        raise exc


#: aiohttp's own slot for `RequestHandler._lingering_time` (see the property of that name).
_LINGERING: Any = RequestHandler.__dict__["_lingering_time"]


class EngineRequestHandler(RefusingRequestHandler):
    __slots__ = ("_oversized",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The body of the request being handled was declared longer than `MAX_BODY` (a 413).
        self._oversized = False
        super().__init__(*args, **kwargs)

    @property
    def _lingering_time(self) -> float:
        """How long aiohttp reads on after answering a request whose declared body has not
        come in full (a GET with `Content-Length: 10` and no body), before it closes.

        After an answer that keeps the connection: until the body's own deadline
        (`REQUEST_READ_TIMEOUT` from its head, `_deadline`), the proxy's rule too (it cuts
        such a request 30 s after its first byte). aiohttp's 10 s closed it sooner; Electric's
        Bandit reads on for its socket's read timeout (60 s), but no request may hold a
        connection busy (the connection cap counts it) longer than a body may take. After
        an answer that closes the connection (417, an error) or to a body declared over
        `MAX_BODY` (a 413 at once: nothing of it is wanted), aiohttp's own."""
        if self._keepalive and not self._close and not self._oversized:
            return REQUEST_READ_TIMEOUT
        value: float = _LINGERING.__get__(self)
        return value

    @_lingering_time.setter
    def _lingering_time(self, value: float) -> None:
        _LINGERING.__set__(self, value)

    def request_body(self, message: Any, payload: StreamReader) -> StreamReader:
        # (a no-op when it fires after the body has arrived)
        self._loop.call_later(REQUEST_READ_TIMEOUT, _deadline, payload)
        length = announced_length(message.headers.get("Content-Length"))
        self._oversized = length is not None and length > MAX_BODY
        coding = message.headers.get("Content-Encoding")
        if coding is None:
            return payload
        coding = coding.strip().lower()
        if coding in ("", "identity"):
            return payload
        return _DecodedBody(payload, _DECODED.get(coding), self._loop)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After a handler answered a request whose body turned out unreadable (bad chunking),
        # aiohttp drains the rest and logs the body's error as unhandled.
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            logger.info("dropped the unreadable rest of a request body: %s", type(exc).__name__)
            return
        if isinstance(exc, BodyTimeout):  # (the unread body of an answered request)
            logger.info("dropped the rest of a request body that did not arrive in time")
            return
        super().log_exception(*args, **kw)

    def refused(self, refusal: Refusal) -> web.StreamResponse:
        return json_response(refusal.status, {"message": refusal.message})

    def server_error(
        self, request: Any, status: int, exc: BaseException | None, message: str | None
    ) -> web.StreamResponse:
        body: dict[str, str]
        if status == 500 and isinstance(exc, ConnectionError) and self.transport is None:
            logger.debug("client went away while its request was handled: %r", exc)
            body = {"error": "Internal server error"}
        elif status == 504:
            body = {"message": "The request timed out"}
        else:
            logger.error("error handling request from %s", request.remote, exc_info=exc)
            body = {"error": "Internal server error"}
        if request.writer.output_size > 0:  # a response is half sent: the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = json_response(status, body)
        resp.force_close()
        return resp


#: The engine's public app: its server answers malformed requests as above.
EngineApplication = partial(RefusingApplication, EngineRequestHandler)

"""Requests refused by aiohttp's HTTP parser, before any handler runs: JSON and one log line.

aiohttp answers a request line or header over its limits, and any malformed message, on its
own: a text body quoting the first 100 bytes of the offending line (a URL with its enforced
filter, say) and a traceback at ERROR. It has no public hook for that answer
(aio-libs/aiohttp#3287), so the engine's app makes its server with `EngineRequestHandler`,
whose `handle_error` answers like the rest of the engine: 414 for a request target over
`MAX_REQUEST_TARGET`, 431 for headers over `MAX_HEADER_FIELD` or `MAX_HEADERS`, 400 for
anything else malformed, each a JSON body that names the limit and quotes nothing, logged as
one INFO line. A handler's own crash (a bug) still gets its traceback and a bare 500.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from .errors import json_response

log = logging.getLogger(__name__)

#: Bytes of request target (path and query) read; aiohttp's default, which the proxy's
#: upstream bound (proxy/limits/upstream.py) is computed from.
MAX_REQUEST_TARGET = 8190
#: Bytes of one header (name and value). Differs from the target's limit on purpose: the
#: parser's LineTooLong says only which limit was crossed.
MAX_HEADER_FIELD = 8192
MAX_HEADERS = 128

HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_TARGET,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
}


def refusal(exc: BaseException | None) -> tuple[int, str]:
    """Status and message for a request the parser refused; nothing of the request quoted."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_HEADER_FIELD,):
            return 431, f"Request header too large: the limit is {MAX_HEADER_FIELD} bytes"
        return 414, f"Request URI too long: the limit is {MAX_REQUEST_TARGET} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return 431, f"Too many request headers: the limit is {MAX_HEADERS}"
    if isinstance(exc, BadHttpMethod):
        return 400, "Malformed HTTP request: invalid method"
    return 400, "Malformed HTTP request"


class EngineRequestHandler(RequestHandler):
    __slots__ = ()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After a handler answered a request whose body turned out unreadable (bad chunking,
        # not really gzip), aiohttp drains the rest and logs the body's error as unhandled.
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            log.info("dropped the unreadable rest of a request body: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status < 500:
            status, text = refusal(exc)
            # a scanner's first bytes are not worth a line above DEBUG (as aiohttp does)
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(level, "refused a request from %s: %s %s", request.remote, status, text)
            body: dict[str, str] = {"message": text}
        elif status == 500 and isinstance(exc, ConnectionError) and self.transport is None:
            log.debug("client went away while its request was handled: %r", exc)
            body = {"error": "Internal server error"}
        elif status == 504:
            body = {"message": "The request timed out"}
        else:
            log.error("error handling request from %s", request.remote, exc_info=exc)
            body = {"error": "Internal server error"}
        if request.writer.output_size > 0:  # a response is half sent: the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = json_response(status, body)
        resp.force_close()
        return resp


class _EngineServer(web.Server):
    """A `web.Server` whose connections are `EngineRequestHandler`s."""

    def __call__(self) -> RequestHandler:
        return EngineRequestHandler(self, loop=self._loop, **self._kwargs)


with warnings.catch_warnings():
    # aiohttp discourages subclassing (its internals may change); the tests of
    # tests/sync_engine/test_bad_input.py fail if the override stops being used.
    warnings.simplefilter("ignore", DeprecationWarning)

    class EngineApplication(web.Application):
        """The engine's public app: its server answers malformed requests as above."""

        def _make_handler(self, **kwargs: Any) -> web.Server:
            server = super()._make_handler(**kwargs)
            server.__class__ = _EngineServer
            return server

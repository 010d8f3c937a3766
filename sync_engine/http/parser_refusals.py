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
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

#: Bytes of request target (path and query) read; aiohttp's default. The proxy's upstream
#: bound (proxy/limits/upstream.py) is computed from the engine's.
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """What to answer a request the parser refused: status, stable reason, message."""

    status: int
    reason: str
    message: str


def refusal(exc: BaseException | None) -> Refusal:
    """The answer for a request the parser refused; nothing of the request quoted."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] in ((MAX_HEADER_FIELD,), (str(MAX_HEADER_FIELD),)):
            return Refusal(
                431,
                "header_too_large",
                f"Request header too large: the limit is {MAX_HEADER_FIELD} bytes",
            )
        return Refusal(
            414, "uri_too_long", f"Request URI too long: the limit is {MAX_REQUEST_TARGET} bytes"
        )
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
        return Refusal(
            431, "too_many_headers", f"Too many request headers: the limit is {MAX_HEADERS}"
        )
    if isinstance(exc, BadHttpMethod):
        return Refusal(400, "bad_request", "Malformed HTTP request: invalid method")
    return Refusal(400, "bad_request", "Malformed HTTP request")


class RefusingRequestHandler(RequestHandler):
    """A connection whose parser refusals (status < 500) are answered by `refused`."""

    __slots__ = ()

    def refused(self, refusal: Refusal) -> web.StreamResponse:
        """The service's response for a refused request (it is closed after)."""
        raise NotImplementedError

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
        answer = refusal(exc)
        # A scanner's first bytes are not worth a line above DEBUG (as aiohttp does).
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
        logger.log(
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
        return response


_HANDLER_CLASS = web.AppKey("refusing_handler_class", type)


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

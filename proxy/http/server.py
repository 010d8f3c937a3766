"""Requests refused by aiohttp's HTTP parser, before the proxy's middleware runs.

aiohttp answers a request line or header over its limits (a huge bearer token, a URL over
8 KiB), and any malformed message, on its own: a `text/plain` body quoting the first 100
bytes of the offending line (a token, a URL) and a traceback at ERROR. There is no public
hook for that answer (aio-libs/aiohttp#3287), so the proxy's app makes its server with
`ProxyRequestHandler`, whose `handle_error` answers like every other proxy refusal: JSON,
`no-store`, nothing of the request quoted; 414 for a request target over the limit, 431 for
headers over theirs, 400 for anything else malformed; one INFO line in the log. A handler's
own crash (a bug) still gets its traceback and a bare 500. The engine does the same in
`sync_engine/http/server.py`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy.http.errors import error_response

logger = logging.getLogger(__name__)

#: Bytes of request target read (aiohttp's default). A client URL this long still fits the
#: engine's limit only if the policy adds little: see `proxy.limits.upstream`.
MAX_REQUEST_TARGET = 8190
#: Bytes of one header line; differs from the target's limit so `LineTooLong` tells them apart.
MAX_HEADER_FIELD = 8192
MAX_HEADERS = 128

HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_TARGET,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
}


def refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, reason, message) for a request the parser refused; nothing of it quoted."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_HEADER_FIELD,) or exc.args[1:2] == (str(MAX_HEADER_FIELD),):
            return (
                431,
                "header_too_large",
                f"Request header too large: the limit is {MAX_HEADER_FIELD} bytes",
            )
        return 414, "uri_too_long", f"Request URI too long: the limit is {MAX_REQUEST_TARGET} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
        return 431, "too_many_headers", f"Too many request headers: the limit is {MAX_HEADERS}"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_request", "Malformed HTTP request: invalid method"
    return 400, "bad_request", "Malformed HTTP request"


class ProxyRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        status, reason, text = refusal(exc)
        # A scanner's first bytes are not worth a line above DEBUG (as aiohttp does).
        level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
        logger.log(
            level, "refused a malformed request from %s: %s %s", request.remote, status, text
        )
        if request.writer.output_size > 0:  # a response is half sent: the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response")
        response = error_response(status, reason, text)
        response.force_close()
        return response


class _ProxyServer(web.Server):
    """A `web.Server` whose connections are `ProxyRequestHandler`s."""

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


with warnings.catch_warnings():
    # aiohttp discourages subclassing its internals; tests/proxy/test_proxy_fuzz.py fails if
    # the override stops being used (its over-long requests must get JSON).
    warnings.simplefilter("ignore", DeprecationWarning)

    class ProxyApplication(web.Application):
        """The proxy's app: its server answers malformed requests as above."""

        def _make_handler(self, **kwargs: Any) -> web.Server:
            server = super()._make_handler(**kwargs)
            server.__class__ = _ProxyServer
            return server

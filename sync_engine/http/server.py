"""The engine's HTTP server: parser refusals and server errors as the engine's JSON.

The refusals themselves (414, 431, 400 before any handler runs) are shared with the proxy
(`parser_refusals`); here they get the engine's body, `{"message": ...}`. A handler's own
crash (a bug) gets its traceback and a bare 500, as every other engine error does.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from .errors import json_response
from .parser_refusals import Refusal, RefusingApplication, RefusingRequestHandler

logger = logging.getLogger(__name__)


class EngineRequestHandler(RefusingRequestHandler):
    __slots__ = ()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After a handler answered a request whose body turned out unreadable (bad chunking,
        # not really gzip), aiohttp drains the rest and logs the body's error as unhandled.
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | HttpProcessingError):
            logger.info("dropped the unreadable rest of a request body: %s", type(exc).__name__)
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

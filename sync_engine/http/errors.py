"""The one table that turns engine errors into HTTP responses (`error_answer`).

Any exception that is not an EngineError is a bug: it is logged with its traceback and
answered with a bare 500 that reveals nothing.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from ..errors import (
    BadBody,
    EngineError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    ShapeGone,
    Unauthorized,
)
from ..log.entries import MUST_REFETCH_BODY

logger = logging.getLogger(__name__)

DATABASE_UNREACHABLE = "database_unreachable"
#: The proxy's words for a request that did not arrive in time (proxy/http/protocol.py
#: `REQUEST_TIMEOUT`), so the two answer alike.
REQUEST_TIMEOUT_MESSAGE = "Request timeout: the request did not arrive in time"


class BodyTimeout(Exception):
    """A request body did not arrive in full within `server.REQUEST_READ_TIMEOUT` of its
    head: raised to its reader; `error_answer` answers 408 and closes the connection."""


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    h = {"cache-control": "no-store", "surrogate-control": "no-store"}
    if headers:
        h.update(headers)
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=h,
    )


def error_response(exc: EngineError) -> web.Response:
    if isinstance(exc, InvalidRequest):
        return json_response(400, {"message": exc.message, "errors": exc.errors})
    if isinstance(exc, BadBody):
        body: dict[str, object] = {"error": exc.message}
        if exc.details:
            body["details"] = exc.details
        return json_response(exc.status, body)
    if isinstance(exc, Unauthorized):
        return json_response(401, {"message": "Unauthorized - Invalid API secret"})
    if isinstance(exc, NotFound):
        return json_response(404, {"message": exc.message})
    if isinstance(exc, ShapeGone):
        # A CDN may keep the 409 a minute when it names the new handle (every client of the
        # old one must go there), a second when it does not.
        max_age = 60 if exc.current_handle else 1
        headers = {"cache-control": f"public, max-age={max_age}, must-revalidate"}
        if exc.current_handle:
            headers["electric-handle"] = exc.current_handle
        return web.Response(
            status=409,
            body=MUST_REFETCH_BODY,
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )
    if isinstance(exc, ServiceUnavailable):
        body = {"message": exc.message}
        if exc.code:
            body["code"] = exc.code
        if exc.code == DATABASE_UNREACHABLE:
            # Electric's words for it are under `error` (ServeShapePlug's handler for a
            # DBConnection.ConnectionError): `{"code": "database_unreachable", "error":
            # "Database is unreachable"}`; `message` stays, as on every other 503.
            body["error"] = "Database is unreachable"
        return json_response(503, body, {"retry-after": str(exc.retry_after)})
    logger.error("unmapped engine error %r", exc)
    return json_response(500, {"error": "Internal server error"})


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request whose handler raised `exc` (`app.engine_middleware`): the
    table above for an `EngineError`, JSON for an aiohttp error status; raises `exc` again
    for an aiohttp exception that is not an error (or already JSON), which aiohttp sends."""
    if isinstance(exc, EngineError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_response(exc.status, {"message": exc.reason})
        raise exc
    if isinstance(exc, (ConnectionResetError, TimeoutError)):
        if request.transport is None or request.transport.is_closing():
            # The client went away: an everyday event, not an error, and nobody to answer.
            logger.debug("client went away during %s %s: %r", request.method, request.path, exc)
            return web.Response(status=499)
        logger.exception("error serving %s", request.path)
        return json_response(500, {"error": "Internal server error"})
    if isinstance(exc, BodyTimeout):
        # (the proxy's answer to a request that did not arrive in time: a 408, then closed)
        logger.info("request body from %s did not arrive in time", request.remote)
        resp = json_response(408, {"message": REQUEST_TIMEOUT_MESSAGE, "code": "request_timeout"})
        resp.force_close()
        return resp
    if isinstance(exc, (RequestPayloadError, BadHttpMessage)):
        logger.info("unreadable request body for %s: %s", request.path, type(exc).__name__)
        if isinstance(exc, ContentEncodingError) or isinstance(
            exc.__cause__, ContentEncodingError
        ):  # (the body is framed whole, not whole in its coding: the proxy's answer too)
            return json_response(400, {"message": "Malformed request body"})
        # Its framing (chunked, its length) is broken: what the parser answers when the
        # bad bytes come in the head's packet (and the proxy always), whatever the timing;
        # the connection cannot be read on.
        resp = json_response(400, {"message": "Malformed HTTP request"})
        resp.force_close()
        return resp
    logger.exception("error serving %s", request.path)
    return json_response(500, {"error": "Internal server error"})

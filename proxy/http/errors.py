"""The one place that turns errors into responses: JSON body, `no-store`, reason code.

Bodies are Electric's: `{"message": "...", "errors": {"<param>": ["..."]}}`, where `errors`
names the parameter at fault when there is one (nested for subsets, as Electric does:
`{"subset": {"where": [...]}}`), and a 400 about a parameter says `"Invalid request"` as
Electric's does. The proxy adds its stable machine-readable reason as `"code"`, except where
the engine refuses the same request in the same words (a malformed parameter, body or HTTP
message, an unknown path or method): that refusal is the engine's, byte for byte (compact
JSON, no `code`; the access log keeps the reason). Every refusal
has `cache-control: no-store` (no cache may keep it), `WWW-Authenticate` on 401 and
`Retry-After` on 502/503/504. The server's own HTTP errors (method not allowed, body too
large) are rendered the same way, and anything unexpected is a bare 500 that says nothing
about internals.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from proxy.errors import EngineRefusal, ProxyError, Unauthenticated
from proxy.http.wire import HttpError, Response, json_response

logger = logging.getLogger(__name__)

_HTTP_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    400: "bad_request",
}


def error_body(status: int, reason: str, message: str, field: str | None = None) -> str:
    """Electric's error JSON, plus the proxy's `code`: compact, as the engine (and Electric)
    write theirs (the proxy's had spaces after `:` and `,`, a tell beside the engine's)."""
    body = _electric_body(status, message, field)
    body["code"] = reason
    return orjson.dumps(body).decode()


def _electric_body(status: int, message: str, field: str | None) -> dict[str, Any]:
    """`{"message": ..., "errors": {<field>: [message]}}`, as Electric and the engine say it."""
    body: dict[str, Any] = {"message": message}
    if field is not None:
        errors: dict[str, Any] = {}
        parts = field.split(".")
        node = errors
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = [message]
        if status == 400:
            body["message"] = "Invalid request"
        body["errors"] = errors
    return body


def error_response(
    status: int,
    reason: str,
    message: str,
    *,
    retry_after: int | None = None,
    www_authenticate: bool = False,
    field: str | None = None,
) -> Response:
    headers = {"Cache-Control": "no-store", "Surrogate-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if www_authenticate:
        error = "invalid_request" if reason == "missing_token" else "invalid_token"
        headers["WWW-Authenticate"] = f'Bearer realm="shape-proxy", error="{error}"'
    body = error_body(status, reason, message, field)
    return json_response(body, status=status, headers=headers)


def engine_response(status: int, body: dict[str, Any]) -> Response:
    """A refusal the engine makes of the same request, as the engine renders it: its JSON,
    compact (orjson's, as the engine's), no `code`, its headers. The access log still has
    the proxy's reason."""
    headers = {"Cache-Control": "no-store", "Surrogate-Control": "no-store"}
    return json_response(orjson.dumps(body).decode(), status=status, headers=headers)


def render_proxy_error(exc: ProxyError) -> Response:
    if isinstance(exc, EngineRefusal):  # the engine's own words and body
        return engine_response(exc.status, exc.body)
    if exc.engine_words:
        return engine_response(exc.status, _electric_body(exc.status, exc.message, exc.field))
    return error_response(
        exc.status,
        exc.reason,
        exc.message,
        retry_after=exc.retry_after,
        www_authenticate=isinstance(exc, Unauthenticated),
        field=exc.field,
    )


def render_http_error(exc: HttpError) -> Response:
    """The server's own HTTP errors, each as the engine's server answers it."""
    if exc.status == 413:  # a POST body over the limit: in Electric's (and the engine's) words
        return engine_response(413, {"error": "Request body too large"})
    if exc.status in _HTTP_REASONS:
        return engine_response(exc.status, {"message": exc.reason})
    return error_response(exc.status, "http_error", exc.reason)

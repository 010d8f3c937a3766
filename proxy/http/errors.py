"""The one place that turns errors into responses: JSON body, `no-store`, reason code.

Every proxy error looks like `{"error": "<reason>", "message": "..."}` with a
`cache-control: no-store` (no cache may keep a refusal), `WWW-Authenticate` on 401 and
`Retry-After` on 502/503/504. aiohttp's own HTTP errors (unknown route, body too large) are
rendered the same way, and anything unexpected is a bare 500 that says nothing about
internals.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from proxy.errors import ProxyError, Unauthenticated

logger = logging.getLogger(__name__)

_AIOHTTP_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    400: "bad_request",
}


def error_response(
    status: int,
    reason: str,
    message: str,
    *,
    retry_after: int | None = None,
    www_authenticate: bool = False,
) -> web.Response:
    headers = {"Cache-Control": "no-store", "Surrogate-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if www_authenticate:
        error = "invalid_request" if reason == "missing_token" else "invalid_token"
        headers["WWW-Authenticate"] = f'Bearer realm="shape-proxy", error="{error}"'
    body = json.dumps({"error": reason, "message": message})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def render_proxy_error(exc: ProxyError) -> web.Response:
    return error_response(
        exc.status,
        exc.reason,
        exc.message,
        retry_after=exc.retry_after,
        www_authenticate=isinstance(exc, Unauthenticated),
    )


def render_http_exception(exc: web.HTTPException) -> web.Response:
    reason = _AIOHTTP_REASONS.get(exc.status, "http_error")
    return error_response(exc.status, reason, exc.reason)

"""Requests refused by aiohttp's HTTP parser, before the proxy's middleware runs.

The refusals (414 for a request target over the limit, 431 for headers over theirs, 400 for
anything else malformed; nothing of the request quoted, one INFO line) are shared with the
engine in `sync_engine.http.parser_refusals`; here they get the proxy's JSON: `no-store`,
the stable reason as `code`. A handler's own crash (a bug) still gets aiohttp's bare 500.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from proxy.http.errors import error_response
from sync_engine.http.parser_refusals import (
    HANDLER_ARGS,
    MAX_HEADER_FIELD,
    MAX_HEADERS,
    MAX_REQUEST_TARGET,
    Refusal,
    RefusingApplication,
    RefusingRequestHandler,
)

__all__ = [
    "HANDLER_ARGS",
    "MAX_HEADERS",
    "MAX_HEADER_FIELD",
    "MAX_REQUEST_TARGET",
    "ProxyApplication",
    "ProxyRequestHandler",
]


class ProxyRequestHandler(RefusingRequestHandler):
    __slots__ = ()

    def refused(self, refusal: Refusal) -> web.StreamResponse:
        return error_response(refusal.status, refusal.reason, refusal.message)


#: The proxy's app: its server answers malformed requests as above.
ProxyApplication = partial(RefusingApplication, ProxyRequestHandler)

"""Which route a request's path picks: the one Electric's router (and the engine) would pick.

Electric serves its API with Plug.Router on Bandit: the path as sent is split on `/`, the
empty segments dropped, and each segment percent-decoded on its own before the list is
matched. So `/v1//shape`, `//v1/shape`, `/v1/shape/`, `/v1/%73hape` and `/v1/health/` are
its shape and health routes, while `/v1/shape%2F` (segments `v1`, `shape/`), `/v1%2Fshape`,
`/v1/./shape` and `/v1/Shape` match nothing: a 404. The engine routes the same way
(`sync_engine/http/routes.py`), and so does the proxy, for every route it serves: a client
must not be able to tell the proxy from the engine by a path's spelling.

None of this is a second way in: whatever the spelling, a path reaches the one handler of
its route, under the same token and policy checks, and the engine request's path is always
the proxy's own `/v1/shape` (Electric's secret bypass, GHSA-m4f6-p2j8-rq76, came from
checking the secret on one reading of the path and routing on another).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

#: The routes served, as their handlers know them.
ROUTES = ("/", "/v1/shape", "/v1/health", "/healthz", "/metrics")
_BY_SEGMENTS: dict[tuple[bytes, ...], str] = {
    tuple(p.encode() for p in path.split("/") if p): path for path in ROUTES
}
#: A named shape's route: `/shapes/<name>`.
NAMED_PREFIX = "/shapes/"
_NAME = re.compile(rb"[A-Za-z0-9_-]{1,100}")


def route_of(raw_path: str) -> str | None:
    """The route `raw_path` (the request target's path, still percent-encoded, no query)
    picks, read as Plug's router reads it (`/shapes/<name>` for a named shape), or None."""
    if raw_path in ROUTES:  # (the everyday spellings, as they are)
        return raw_path
    segments = tuple(unquote_to_bytes(s) for s in raw_path.split("/") if s)
    route = _BY_SEGMENTS.get(segments)
    if route is not None:
        return route
    if len(segments) == 2 and segments[0] == b"shapes" and _NAME.fullmatch(segments[1]):
        return NAMED_PREFIX + segments[1].decode("ascii")
    return None


#: The methods a shape route takes (the engine's: GET, with HEAD, POST, DELETE, OPTIONS).
SHAPE_METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "OPTIONS"})


def is_shape_route(route: str | None, method: str | None = None) -> bool:
    """Whether `route` serves shapes, for `method` when given: a request matched by a shape
    route (path and method) gets the shape route's CORS methods, any other answer (a 404, a
    405 for a PATCH, health) the engine's `GET, HEAD`, as the engine's router sets them."""
    if route is None or not (route == "/v1/shape" or route.startswith(NAMED_PREFIX)):
        return False
    return method is None or method in SHAPE_METHODS

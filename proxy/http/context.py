"""Per-request facts gathered along the way, for the access log and metrics."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: An incoming X-Request-Id is kept when it is 20 to 200 bytes long, as Electric keeps it
#: (`Plug.RequestId`), and as the engine does: a client sees the same id either way. (Its
#: bytes are safe to echo: the HTTP parser admits no CR, LF or NUL in a header value, and the
#: access log is JSON.)
_ID_BYTES = range(20, 201)


@dataclass(slots=True)
class RequestContext:
    """Mutable only by the handling of its own request (`Request.context`)."""

    request_id: str
    started: float = field(default_factory=time.monotonic)
    outcome: str = "ok"
    reason: str = ""
    subject: str | None = None
    table: str | None = None
    rule: str | None = None
    upstream_status: int | None = None
    shape: bool = False  # a shape path (gets CORS, `Vary: Authorization`)
    shared: bool = False  # the answer is the same for every caller: no `Vary: Authorization`
    cors: Mapping[str, str] | None = None
    live: bool = False
    cache: str = "-"  # "hit", "revalidated", "collapsed" (see upstream.respond.Outcome) or "-"


#: Request ids are this process's random prefix plus a counter: unique across processes and
#: restarts without a `getrandom` call per request (they identify, they protect nothing).
_ID_PREFIX = os.urandom(8).hex()
#: A new id each call (the prefix, then the counter as 16 hex digits), made in C: no
#: Python-level frame per request (`proxy.http.fastlane` calls it when none came in).
next_request_id: Callable[[], str] = map(f"{_ID_PREFIX}%016x".__mod__, itertools.count(1)).__next__


def new_request_id(incoming: str | None) -> str:
    """Keep an incoming X-Request-Id (for tracing across hops) of 20 to 200 bytes, else make
    one (`_ID_BYTES`)."""
    if incoming and len(incoming.encode("utf-8", "surrogateescape")) in _ID_BYTES:
        return incoming
    return next_request_id()

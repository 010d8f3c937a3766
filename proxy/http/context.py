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


#: Ids drawn per `os.urandom` call (one getrandom() per 256 requests without an id).
_ID_BATCH = 256


def _draw_ids() -> list[str]:
    """A batch of request ids: 32 random hex digits each (a uuid4's length, as before and as
    the engine's). Not a per-process prefix and a counter: with those, any client could count
    every other user's requests between two of its own."""
    pool = os.urandom(16 * _ID_BATCH).hex()
    return [pool[i : i + 32] for i in range(0, len(pool), 32)]


#: A new id each call, made in C (`chain` over batches `iter` draws when one runs out): no
#: Python-level frame per request (`proxy.http.fastlane` calls it when none came in), one
#: per `_ID_BATCH` requests. (The proxy does not fork; a forked child would share the
#: parent's current batch.)
next_request_id: Callable[[], str] = itertools.chain.from_iterable(iter(_draw_ids, None)).__next__


def new_request_id(incoming: str | None) -> str:
    """Keep an incoming X-Request-Id (for tracing across hops) of 20 to 200 bytes, else make
    one (`_ID_BYTES`)."""
    if incoming and len(incoming.encode("utf-8", "surrogateescape")) in _ID_BYTES:
        return incoming
    return next_request_id()

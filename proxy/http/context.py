"""Per-request facts gathered along the way, for the access log and metrics."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import monotonic as _monotonic

#: An incoming X-Request-Id is kept when it is 20 to 200 bytes long, as Electric keeps it
#: (`Plug.RequestId`), and as the engine does: a client sees the same id either way. (Its
#: bytes are safe to echo: the HTTP parser admits no CR, LF or NUL in a header value, and the
#: access log is JSON.)
_ID_BYTES = range(20, 201)


@dataclass(slots=True, init=False)
class RequestContext:
    """Mutable only by the handling of its own request (`Request.context`).

    Its `__init__` is written by hand: made once per request, and the dataclass's (a
    parameter per field, `started`'s default_factory checked) ran ~49 bytecodes to this
    one's constants (bar 4)."""

    request_id: str
    started: float
    outcome: str
    reason: str
    subject: str | None
    table: str | None
    rule: str | None
    upstream_status: int | None
    shape: bool  # a shape path (gets CORS, `Vary: Authorization`)
    shared: bool  # the answer is the same for every caller: no `Vary: Authorization`
    cors: Mapping[str, str] | None
    live: bool
    cache: str  # "hit", "revalidated", "collapsed" (see upstream.respond.Outcome) or "-"

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = _monotonic()
        self.outcome = "ok"
        self.reason = ""
        self.subject = None
        self.table = None
        self.rule = None
        self.upstream_status = None
        self.shape = False
        self.shared = False
        self.cors = None
        self.live = False
        self.cache = "-"


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

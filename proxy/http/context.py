"""Per-request facts gathered along the way, for the access log and metrics."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


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
_ID_COUNTER = itertools.count(1)


def new_request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming X-Request-Id (for tracing across hops), else make one."""
    if incoming and _SANE_ID.match(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"

"""What a client connection of the proxy promises, shared by the layers that write to it.

The HTTP layer (`proxy.http.protocol`, the connection; `proxy.http.fastlane`), the upstream
layer (`proxy.upstream.forward`, which streams the engine's answers to it) and the app
(`proxy.app`, which renders the refusals) all use these: they live here, below all of them,
so that none of those has to import another for a constant (they formed an import circle).
"""

from __future__ import annotations

from sync_engine.http.parser_refusals import Refusal

#: Seconds a response may wait for its client to read (the connection's buffer over its high
#: mark) before the connection is dropped: a client that stops reading held its socket, and
#: for a streamed answer an engine connection, for good (nginx's send_timeout is 60 s). An
#: idle connection whose last answer was never read is dropped when its keep-alive ends.
SEND_TIMEOUT = 60.0
#: Seconds a connection's answer may wait for its client to read (over the buffer's high
#: mark) before, at the connection cap with no idle connection to close, it may be closed to
#: make room for a new client (`proxy.http.serve.Server._make_room`): clients that stop
#: reading a large answer (from the cache: charged to no principal) held every connection
#: for `SEND_TIMEOUT` (attack 07:50).
STALL_GRACE = 5.0
#: A fast answer's body below this size goes out in one write with its head, joined if it
#: came in pieces (one write is cheaper); from it up, piece by piece in one writev (no copy).
JOIN_BELOW = 64 * 1024
#: A request that did not arrive in full within `REQUEST_READ_TIMEOUT` of its first byte
#: (`proxy.http.protocol`).
REQUEST_TIMEOUT = Refusal(
    408, "request_timeout", "Request timeout: the request did not arrive in time"
)
#: Two `Authorization` headers: which one is the caller? A front that reads the last one and
#: a proxy that reads the first would each authorise a different principal, so neither is.
REPEATED_AUTHORIZATION = Refusal(
    400, "bad_request", "Malformed HTTP request: more than one Authorization header"
)

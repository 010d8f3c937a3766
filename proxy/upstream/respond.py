"""Client responses built from engine answers, and the `Outcome` that reports how it went.

`forward()` returns an `Outcome` rather than writing into the request's context: the upstream
package knows nothing of the proxy's HTTP layer, and the handler decides what to log.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.http.wire import Response, StreamResponse
from proxy.upstream.cache import CachedResponse
from proxy.upstream.headers import Head


@dataclass(slots=True)
class Outcome:
    """What happened to one forwarded request, for the access log and metrics."""

    response: StreamResponse
    upstream_status: int | None = None
    #: "hit" (served from the response cache), "revalidated" (cached body, the engine
    #: confirmed it with a 304), "collapsed" (shared another client's engine request), or "-".
    cache: str = "-"
    #: Set when the answer was cut short: ("error", "upstream_broken_stream") or
    #: ("client_gone", "client_disconnected").
    failure: tuple[str, str] | None = None


def complete(head: Head, body: bytes) -> Response:
    """A whole answer in one write (the headers proxy is copied into its own dict)."""
    return Response(
        status=head.status, reason=head.reason, body=body, headers=head.response_headers
    )


def streaming(head: Head) -> StreamResponse:
    """A response whose body follows chunk by chunk; the caller prepares and writes it."""
    response = StreamResponse(status=head.status, reason=head.reason)
    response.headers.extend(head.response_headers)
    if head.content_length is not None:
        response.content_length = head.content_length
    return response


def from_cache(entry: CachedResponse, age: float) -> Response:
    """A cached answer, with `Age` (RFC 9111 §5.1) when it is at least a second old."""
    response = Response(
        status=entry.status, reason=entry.reason, body=entry.body, headers=entry.response_headers
    )
    if age >= 1:
        response.headers["Age"] = str(int(age))
    return response

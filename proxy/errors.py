"""Errors the proxy raises while deciding what to do with a request.

Domain modules raise these; only `proxy.http.errors` turns them into responses, so every
refusal has the same JSON shape (Electric's `{"message", "errors"}` plus a stable
machine-readable `code`) and `no-store` caching.

    ProxyError                     (status 500; never raised for malformed input)
    ├── BadShapeRequest            400  malformed or ambiguous request
    │   ├── EngineWords            400  ... the engine refuses in the same words (no `code`)
    │   └── EngineRefusal          400  ... as the engine's own body
    ├── Unauthenticated            401  missing or invalid token (adds WWW-Authenticate)
    ├── Forbidden                  403  policy denies the shape / origin
    ├── NotFound                   404  unknown path (exact routes only)
    ├── MethodNotAllowed           405  e.g. DELETE on /v1/shape
    ├── PayloadTooLarge            413  POST subset body too large
    ├── UnsupportedMediaType       415  POST body in a content coding the proxy cannot read
    └── UpstreamError              502  engine unreachable, broke the connection, or a hop
                                            between redirected (`upstream_redirect`)
        ├── ServiceUnavailable     503  keys or config unavailable; retry later
        └── UpstreamTimeout        504  engine did not answer in time

Messages are written for the client: they never contain a token, the source secret or the
upstream URL (which carries the secret).
"""

from __future__ import annotations


class ProxyError(Exception):
    """Root of the proxy's error tree; carries an HTTP status, a reason code and a message."""

    status: int = 500
    #: The engine refuses the same request in the same words: rendered as the engine renders
    #: it (compact JSON, no `code`), so that a client cannot tell the two apart.
    engine_words: bool = False

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        #: The request parameter at fault (`where`, `subset.where`, `columns`...), rendered
        #: under Electric's `errors` key.
        self.field = field

    def copy(self) -> ProxyError:
        """A fresh instance (one instance raised in many tasks would share tracebacks)."""
        return type(self)(self.reason, self.message, retry_after=self.retry_after, field=self.field)


class BadShapeRequest(ProxyError):
    """The request is malformed (repeated parameter, unparsable where, bad column list...)."""

    status = 400


class EngineWords(BadShapeRequest):
    """A malformed request the proxy's own check refuses in the words the engine says of the
    same request (a client's where that does not parse, a `$n` with no param): rendered as
    the engine renders it, `{"message": "Invalid request", "errors": {<field>: [...]}}`
    with no `code`, so the client cannot tell who refused it."""

    engine_words = True


class EngineRefusal(BadShapeRequest):
    """What the engine itself says of a malformed request, in its own body (`body`), said
    by the proxy first so the client hears the engine's answer in the engine's order."""

    engine_words = True

    def __init__(self, reason: str, message: str, *, body: dict[str, object], status: int = 400):
        super().__init__(reason, message)
        self.body = body
        self.status = status

    def copy(self) -> EngineRefusal:
        return EngineRefusal(self.reason, self.message, body=self.body, status=self.status)


class Unauthenticated(ProxyError):
    """No usable bearer token: the client should (re)authenticate."""

    status = 401


class Forbidden(ProxyError):
    """Authenticated, but the policy does not allow this shape (or this origin)."""

    status = 403


class NotFound(ProxyError):
    """Path is not one of the proxy's exact routes."""

    status = 404
    engine_words = True


class MethodNotAllowed(ProxyError):
    """Method is not served on this route (DELETE is refused on purpose)."""

    status = 405
    engine_words = True


class PayloadTooLarge(ProxyError):
    """POST body over the configured cap."""

    status = 413


class UnsupportedMediaType(ProxyError):
    """A POST body in a content coding the proxy does not decode (`br`, `zstd`...)."""

    status = 415
    engine_words = True


class UpstreamError(ProxyError):
    """The engine could not be reached, dropped the connection before answering, or its URL
    was answered with a redirect (by a hop between: the engine never redirects)."""

    status = 502


class ServiceUnavailable(UpstreamError):
    """A dependency (JWKS endpoint, configuration) is unavailable; the client should retry."""

    status = 503


class UpstreamTimeout(UpstreamError):
    """The engine accepted the connection but did not answer within the first-byte timeout."""

    status = 504

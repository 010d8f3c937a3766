"""Extract the bearer token from a request, and refuse tokens anywhere else.

Tokens in query strings end up in access logs, browser history and CDN cache keys, so a
request that carries something token-like in its query is refused outright (400) rather than
silently ignored: the client has a bug worth surfacing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from proxy.errors import BadShapeRequest, Unauthenticated

#: Query parameter names that clients commonly use to smuggle a token.
TOKEN_QUERY_NAMES = frozenset(
    {"token", "access_token", "id_token", "jwt", "auth", "authorization", "bearer", "auth_token"}
)

#: A compact JWS: three base64url segments, the first one a JSON object ("eyJ" = '{"').
_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")

#: Tokens longer than this are refused before any parsing (cheap DoS guard).
MAX_TOKEN_LENGTH = 16 * 1024


def refuse_token_in_query(query_items: Iterable[tuple[str, str]]) -> None:
    """Raise `BadShapeRequest` when the query string carries a token.

    Checks parameter names (`token`, `access_token`, ...) and values shaped like a JWT.
    """
    for name, value in query_items:
        if name.lower() in TOKEN_QUERY_NAMES or _JWT_SHAPE.match(value):
            raise BadShapeRequest(
                "token_in_query",
                "tokens are accepted only in the Authorization header, never in the URL",
            )


def bearer_token(headers: Mapping[str, str]) -> str:
    """Return the raw token from `Authorization: Bearer <token>`.

    Raises `Unauthenticated` for a missing header, another scheme, or an empty/oversized token.
    The header lookup is case-insensitive when given aiohttp's CIMultiDict.
    """
    value = headers.get("Authorization")
    if value is None:
        raise Unauthenticated("missing_token", "an Authorization: Bearer token is required")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("invalid_token", "the Authorization header must be 'Bearer <token>'")
    # (a JWT is ASCII; anything else, bytes that are not UTF-8 included, is no token)
    if len(token) > MAX_TOKEN_LENGTH or " " in token or not token.isascii():
        raise Unauthenticated("invalid_token", "the bearer token is malformed")
    return token

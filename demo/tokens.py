"""Demo tokens: HS256 JWTs that config/demo.yaml's issuer accepts, minted and checked here.

The demo server plays the part of an app's login: it hands each page a token for the user
picked, and its write API checks the same token (same secret, issuer and audience as the
proxy's policy), so reads (through the proxy) and writes (through this API) agree on who the
user is. A real app would get tokens from its identity provider instead.
"""

from __future__ import annotations

import re
import time

import jwt

ISSUER = "shapegate-demo"
AUDIENCE = "shapegate"
#: One day: well under the issuer's max_lifetime (604800 s) in config/demo.yaml.
LIFETIME = 86400
#: Demo user names: short, lower-case, safe to show and to compare in SQL parameters.
USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class TokenError(Exception):
    """The bearer token is missing, malformed, expired or not signed with the demo secret."""


def mint(sub: str, secret: str, *, now: float | None = None) -> str:
    """A token for demo user `sub`, valid for `LIFETIME` seconds."""
    if not USER_NAME.match(sub):
        raise ValueError("user names are 1-32 characters: a-z, 0-9, '_' or '-'")
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": issued, "exp": issued + LIFETIME}
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(authorization: str | None, secret: str) -> str:
    """The `sub` of a valid `Authorization: Bearer <token>` header; raises `TokenError`."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("send Authorization: Bearer <token>")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid token ({type(exc).__name__})") from None
    sub = claims["sub"]
    if not isinstance(sub, str) or not USER_NAME.match(sub):
        raise TokenError("invalid token (sub)")
    return sub

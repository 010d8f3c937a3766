"""`shape-proxy token`: mint a development token that the configured proxy accepts.

Only for an issuer whose key is here: an HMAC (HS*) issuer whose `secret_env` variable is
set. Tokens of a JWKS or public-key issuer can only be signed by the holder of the private
key (the identity provider); the command says so instead of guessing. The claims are exactly
what the proxy checks: `iss`, the first `aud`, `sub`, `iat`, and `exp` within the issuer's
`max_lifetime`, plus any extra claims given as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from proxy.config.model import HMAC_ALGORITHMS, IssuerConfig, ProxyConfig

DEFAULT_TTL = 3600


class TokenError(Exception):
    """Why no token can be minted with this config; the message says what to do."""


def pick_issuer(config: ProxyConfig, wanted: str | None) -> tuple[int, IssuerConfig]:
    issuers = list(enumerate(config.issuers))
    if wanted is not None:
        issuers = [(i, iss) for i, iss in issuers if iss.issuer == wanted]
        if not issuers:
            names = ", ".join(iss.issuer for iss in config.issuers)
            raise TokenError(f"no issuer {wanted!r} in the config (it has: {names})")
    for i, issuer in issuers:
        if any(key.secret_env for key in issuer.keys):
            return i, issuer
    _, first = issuers[0]
    where = f"its JWKS ({first.jwks_url})" if first.jwks_url else "public keys in the config"
    raise TokenError(
        f"issuer {first.issuer!r} verifies tokens with {where}: only the holder of the private"
        " key (your identity provider) can sign its tokens; `token` mints only for an HS256/384/512"
        " issuer whose secret_env is set here"
    )


def mint(
    config: ProxyConfig,
    environ: Mapping[str, str],
    *,
    sub: str,
    claims: Mapping[str, Any] | None = None,
    ttl: int | None = None,
    issuer_name: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for `sub`, or TokenError saying why not."""
    index, issuer = pick_issuer(config, issuer_name)
    j, key = next((j, k) for j, k in enumerate(issuer.keys) if k.secret_env)
    assert key.secret_env is not None
    secret = environ.get(key.secret_env)
    if not secret:
        raise TokenError(
            f"{key.secret_env} is not set (issuers.{index}.keys.{j}.secret_env): export the same"
            " secret the proxy uses"
        )
    algorithm = next(a for a in issuer.algorithms if a in HMAC_ALGORITHMS)
    limit = issuer.max_lifetime
    if ttl is None:
        ttl = min(DEFAULT_TTL, limit) if limit else DEFAULT_TTL
    if ttl <= 0 or (limit is not None and ttl > limit):
        raise TokenError(f"--ttl must be between 1 and the issuer's max_lifetime ({limit} s)")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {**(claims or {})}
    payload.update(iss=issuer.issuer, aud=issuer.audience[0], sub=sub, iat=issued, exp=issued + ttl)
    missing = [name for name in issuer.require if name not in payload]
    if missing:
        raise TokenError(
            f"issuer {issuer.issuer!r} requires the claims {', '.join(missing)}: add them with"
            " --claims '{\"" + missing[0] + "\": ...}'"
        )
    headers: dict[str, Any] = {"kid": key.kid} if key.kid else {}
    if issuer.typ is not None:
        headers["typ"] = issuer.typ
    return jwt.encode(payload, secret.encode(), algorithm=algorithm, headers=headers or None)

"""Source secrets: generated, hashed for storage, verified in constant time.

A secret is `secrets.token_urlsafe(32)` (256 random bits, 43 URL-safe characters). Only a
salted scrypt hash is stored (`scrypt$n$r$p$<salt>$<hash>`, base64url), so a copy of
`sources.db` does not give access. Verification always does the same scrypt work and
compares digests with `hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024
_DKLEN = 32


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = _derive(secret.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored`; same work whatever the answer."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            raise ValueError(kind)
        params = (int(n), int(r), int(p))
        salt_b, want = _unb64(salt), _unb64(digest)
    except ValueError:
        params, salt_b, want = (SCRYPT_N, SCRYPT_R, SCRYPT_P), b"\0" * 16, b"\1" * _DKLEN
    got = _derive(secret.encode(), salt_b, *params)
    return hmac.compare_digest(got, want)

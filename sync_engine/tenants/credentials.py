"""Source secrets: generated, hashed for storage, verified in constant time.

A secret is `secrets.token_urlsafe(32)` (256 random bits, 43 URL-safe characters). Only a
salted hash is stored, so a copy of `sources.db` does not give access:

    sha256$<salt>$<sha256(salt + secret)>           secrets issued from schema 4 on
    scrypt$n$r$p$<salt>$<scrypt(secret)>            secrets issued before (still accepted)

A slow hash (scrypt) protects guessable passwords; a secret of 256 random bits cannot be
found from its SHA-256 by any amount of work, so it gains nothing there, and it made every
request whose secret was not yet known cost ~50 ms of CPU in a worker thread: a flood of
wrong secrets then queued in front of good requests and kept the CPUs busy. SHA-256 takes
a microsecond, on the event loop. (GitHub's and most API keys are stored the same way.)
An old scrypt hash is replaced by rotating the source's secret.

Verification always does the same work for a kind of hash and compares digests with
`hmac.compare_digest`. Secrets are encoded with `surrogatepass`: whatever string a request
decoded to is hashed, never an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024
_DKLEN = 32
FAST = "sha256"
_SEALED = "aesgcm"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bytes(secret: str) -> bytes:
    return secret.encode("utf-8", "surrogatepass")


def _derive(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


def hash_secret(secret: str, *, slow: bool = False) -> str:
    """The stored form of a secret: salted SHA-256 (`slow`: scrypt, as before schema 4)."""
    salt = os.urandom(16)
    if slow:
        digest = _derive(_bytes(secret), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"
    return f"{FAST}${_b64(salt)}${_b64(hashlib.sha256(salt + _bytes(secret)).digest())}"


def is_slow(stored: str) -> bool:
    """Whether checking a secret against `stored` takes scrypt work (run it in a thread)."""
    return not stored.startswith(FAST + "$")


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored`; same work whatever the answer (for its kind)."""
    if not is_slow(stored):
        try:
            _, salt, digest = stored.split("$")
            salt_b, want = _unb64(salt), _unb64(digest)
        except ValueError:
            salt_b, want = b"\0" * 16, b"\1" * 32
        return hmac.compare_digest(hashlib.sha256(salt_b + _bytes(secret)).digest(), want)
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            raise ValueError(kind)
        params = (int(n), int(r), int(p))
        salt_b, want = _unb64(salt), _unb64(digest)
    except ValueError:
        params, salt_b, want = (SCRYPT_N, SCRYPT_R, SCRYPT_P), b"\0" * 16, b"\1" * _DKLEN
    got = _derive(_bytes(secret), salt_b, *params)
    return hmac.compare_digest(got, want)


def sealing_key(admin_token: str | None) -> bytes:
    """The key that seals a source's first secret until its answer was sent: derived from
    the admin token (HKDF), so a copy of sources.db alone does not give the secret back;
    the admin API, which only the token reaches, is the one way to ask for it again."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"shapegate: sealed secret"
    ).derive(_bytes(admin_token or ""))


def seal_secret(secret: str, key: bytes, source_id: str) -> str:
    """`secret` encrypted and authenticated for storage (AES-256-GCM, a random nonce, the
    source id as associated data: a sealed secret moved to another source does not open)."""
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, _bytes(secret), _bytes(source_id))
    return f"{_SEALED}${_b64(nonce)}${_b64(sealed)}"


def unseal_secret(sealed: str, key: bytes, source_id: str) -> str | None:
    """The secret `seal_secret` sealed, or None when it cannot be opened (another key: the
    admin token changed; another source; damaged). Check it against the source's hash
    before using it."""
    try:
        kind, nonce_t, data_t = sealed.split("$")
        if kind != _SEALED:
            return None
        raw = AESGCM(key).decrypt(_unb64(nonce_t), _unb64(data_t), _bytes(source_id))
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError, InvalidTag):
        return None

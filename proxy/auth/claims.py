"""Verify a bearer JWT and return its claims.

Per issuer: pinned algorithms (never the token header's word alone), exact `iss` and `aud`,
`exp` and a non-empty `sub` required (the subject is who the proxy serves: per-principal
limits, logs and `{{sub}}` filters all need it; RFC 9068 and OpenID Connect require it
too), `nbf`/`iat` checked with leeway, a maximum lifetime (`exp - iat`), an optional `typ`.
The issuer is read from the unverified payload only to pick the key set, which is allowed
(RFC 8725 §3.2: key selection) because the signature and `iss` are then verified.

Verified tokens are cached by SHA-256 of the token until their `exp` (or the cache TTL), so
the signature check runs once per token rather than once per long-poll.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import jwt
from cachetools import TTLCache
from jwt import PyJWK

from proxy.config.model import IssuerConfig
from proxy.errors import Unauthenticated

Claims = Mapping[str, Any]
logger = logging.getLogger(__name__)


class KeySource(Protocol):
    """Where an issuer's verification keys come from (JWKS cache or static keys)."""

    async def get_key(self, kid: str | None, algorithm: str) -> PyJWK | bytes | str: ...


class StaticKeys:
    """Keys written in the config file (public keys) or given through env vars (HMAC)."""

    def __init__(self, keys: Sequence[tuple[str | None, PyJWK | bytes | str]]) -> None:
        self._keys = list(keys)

    async def get_key(self, kid: str | None, algorithm: str) -> PyJWK | bytes | str:
        if kid is not None:
            for key_id, key in self._keys:
                if key_id == kid:
                    return key
            if any(key_id is not None for key_id, _ in self._keys):
                raise Unauthenticated("unknown_key", "the token was signed with an unknown key")
        unnamed = [key for key_id, key in self._keys if key_id is None]
        if len(unnamed) == 1 or len(self._keys) == 1:
            return unnamed[0] if unnamed else self._keys[0][1]
        raise Unauthenticated("unknown_key", "the token needs a kid header to pick its key")


@dataclass(frozen=True, slots=True)
class Issuer:
    """An issuer's verification rules and its key source."""

    config: IssuerConfig
    keys: KeySource


#: pyjwt error class -> (reason, message). Most specific first; messages never echo the token.
#: A registered claim of the wrong type (a numeric `sub`) is `invalid_claims`, not "malformed":
#: the token parsed and its signature may be fine, the issuer minted it wrongly.
_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    *(
        (cls, "invalid_claims", message)
        for name, message in (
            ("InvalidSubjectError", "the token sub claim must be a string"),
            ("InvalidJTIError", "the token jti claim must be a string"),
            ("InvalidIssuedAtError", "the token iat claim must be a number"),
        )
        if (cls := getattr(jwt.exceptions, name, None)) is not None  # pyjwt >= 2.10
    ),
    (jwt.ExpiredSignatureError, "token_expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "invalid_audience", "the token is not meant for this service"),
    (jwt.InvalidIssuerError, "invalid_issuer", "the token issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token signature is invalid"),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "the token algorithm is not allowed"),
    (jwt.InvalidKeyError, "invalid_key", "the token cannot be verified with the issuer's key"),
    (jwt.PyJWTError, "invalid_token", "the token is malformed or invalid"),
)


def _translate(exc: Exception) -> Unauthenticated:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        # pyjwt reports only names from the `require` list it was given: the registered ones
        # and the issuer's `require:` (the operator's config, not a secret). Named, so a
        # frontend developer need not guess which claim the token lacks (newuser LOW).
        return Unauthenticated("missing_claim", f"the token lacks the required {exc.claim} claim")
    if isinstance(exc, jwt.DecodeError) and "crypto padding" in str(exc):
        # The signature segment is not valid base64url (one character changed or cut):
        # the same answer as a signature that decodes but does not match.
        return Unauthenticated("invalid_signature", "the token signature is invalid")
    for cls, reason, message in _ERRORS:
        if isinstance(exc, cls):
            return Unauthenticated(reason, message)
    return Unauthenticated("invalid_token", "the token is malformed or invalid")


#: Claims every token must carry, whatever the issuer's `require:` adds.
_ALWAYS_REQUIRED = ("exp", "iss", "aud", "sub")


def _media_type(value: str) -> str:
    lower = value.strip().lower()
    return lower.removeprefix("application/") if "/" in lower else lower


def _same_typ(given: object, wanted: str) -> bool:
    """`typ` compared as RFC 7515 §4.1.9 says: a media type, case-insensitively, with its
    `application/` prefix optional (`at+jwt`, `AT+JWT` and `application/at+jwt` are one)."""
    return isinstance(given, str) and _media_type(given) == _media_type(wanted)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("a repeated member name")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # (NaN, Infinity: Python's json reads them)


def _json_object(segment: str) -> dict[str, Any]:
    """A token's header or payload as RFC 7519 has it (section 7.2): base64url of UTF-8 JSON
    (RFC 8259: no NaN), an object, no member name twice, no string that is not Unicode text
    (a lone surrogate escaped as `\\ud800`: I-JSON, RFC 7493, forbids it; the proxy would
    otherwise bind "org-\\ud800a" as "org-a", the surrogate dropped on the way to the engine)
    (ValueError otherwise)."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_repeats, parse_constant=_no_constant
        )
        if b"\\u" in raw:  # (only an escape can spell a surrogate)
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (binascii.Error, UnicodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


#: The registered claims that are NumericDates (RFC 7519 section 2): JSON numbers. pyjwt
#: reads them with `int()`, so it took `"nbf": "0"` and `"iat": true` as dates.
_DATES = ("exp", "nbf", "iat")


def _canonical(segment: str) -> bool:
    """Whether a segment is base64url as RFC 7515 (section 2) writes it: the URL-safe
    alphabet, no `=` padding, and no bits set past the data in its last character.

    pyjwt's decoder tolerates padding and stray low bits, so `<token>=` verified as the
    token itself: one token, many spellings, each its own entry in the verified-token cache,
    the prepared-request cache and any cache that varies on Authorization."""
    if len(segment) % 4 == 1 or not segment.isascii():
        return False
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=") == segment.encode()


def _strict(token: str) -> None:
    """Refuse what pyjwt's reading is lenient about, so the proxy and the issuer cannot read
    one token two ways: a claim or header member given twice (pyjwt keeps the last one; an
    issuer's checks may have read the first), a header or payload that is not UTF-8 (pyjwt
    reads UTF-16 and a byte order mark), a NumericDate that is not a JSON number, and a
    segment spelt other than canonical base64url (padding, stray bits); and any `crit` header."""
    parts = token.split(".")
    if len(parts) != 3:
        return  # (pyjwt refuses it in its own words)
    if not (_canonical(parts[0]) and _canonical(parts[1])):
        raise Unauthenticated("invalid_token", "the token is malformed or invalid")
    if not _canonical(parts[2]):  # (a signature spelt otherwise is not this token's)
        raise Unauthenticated("invalid_signature", "the token signature is invalid")
    try:
        header = _json_object(parts[0])
        payload = _json_object(parts[1])
    except ValueError:
        raise Unauthenticated("invalid_token", "the token is malformed or invalid") from None
    if "crit" in header:
        # RFC 7515 §4.1.11: a verifier must refuse a token whose `crit` names an extension it
        # does not understand, and the proxy understands none (pyjwt knows `b64`, whose only
        # use, a detached payload, no bearer token has). Said here, not left to pyjwt: it
        # checks `crit` only since 2.12.
        raise Unauthenticated("invalid_token", "the token is malformed or invalid")
    for name in _DATES:
        value = payload.get(name)
        if name not in payload:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unauthenticated("invalid_claims", f"the token {name} claim must be a number")
        if not _finite(value):
            # (JSON allows any number of digits: `"exp": 1e999` reads as infinity, a
            # 400-digit integer as one no float holds, and every deadline is a float)
            raise Unauthenticated("invalid_claims", f"the token {name} claim is out of range")


def _a_lifetime(claims: Mapping[str, Any]) -> None:
    """Refuse a token whose `iat` or `nbf` is after its `exp`: one issued, or valid only,
    after it expires describes no lifetime (a clock or minting fault at the issuer). pyjwt
    checks each date against the clock alone, so with all three inside the leeway such a
    token passed, and `exp - iat` below zero passes any `max_lifetime`. Equal is a
    zero-length lifetime, judged by the clock as any other (Microsoft.IdentityModel refuses
    NotBefore > Expires the same way, IDX10224). The dates are finite numbers (`_strict`)."""
    exp = float(claims["exp"])
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if isinstance(value, int | float) and float(value) > exp:
            raise Unauthenticated(
                "invalid_claims", f"the token {name} claim is after its exp claim"
            )


class TokenVerifier:
    """Verifies tokens of the configured issuers, with a cache of verified claims."""

    def __init__(
        self,
        issuers: Sequence[Issuer],
        *,
        cache_size: int = 10_000,
        cache_ttl: float = 300,
        clock: Callable[[], float] = time.time,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        self._issuers = {issuer.config.issuer: issuer for issuer in issuers}
        self._clock = clock
        self._cache: TTLCache[bytes, tuple[Claims, float]] | None = (
            TTLCache(maxsize=cache_size, ttl=cache_ttl, timer=clock) if cache_size else None
        )
        self._on_cache = on_cache or (lambda _hit: None)
        #: Bumped by `forget`: a result worked out from claims verified before it must not be
        #: remembered after it.
        self.epoch = 0

    def forget(self) -> None:
        """Drop every verified token: a key they were verified with may be gone."""
        self.epoch += 1
        if self._cache is not None:
            self._cache.clear()

    def leeway(self, iss: object) -> float:
        """The clock-skew leeway of the issuer named `iss` (0 for one not configured): a
        token of it is accepted until its `exp` plus this."""
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        return 0.0 if issuer is None else float(issuer.config.leeway)

    @staticmethod
    def digest(token: str) -> bytes:
        """The cache key of a token: its SHA-256, so caches never hold the token itself.

        Of its bytes as sent: header values are decoded with `surrogateescape`, so a header
        that is not UTF-8 must not fail here (it is refused as a malformed token later)."""
        return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()

    async def verify(self, token: str, *, digest: bytes | None = None) -> Claims:
        """Return the verified claims of `token`, or raise `Unauthenticated`."""
        if digest is None:
            digest = self.digest(token)
        if self._cache is not None:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] > self._clock():
                self._on_cache(True)
                return cached[0]
            self._on_cache(False)
        epoch = self.epoch
        claims = await self._verify(token)
        if self._cache is not None and epoch == self.epoch:
            self._cache[digest] = (claims, float(claims["exp"]))
        return claims

    async def _verify(self, token: str) -> Claims:
        if not self._issuers:
            # (not "the signature is invalid" or "the issuer is not accepted": those send the
            # operator to the keys or the token; the config has no `issuers:` at all)
            raise Unauthenticated(
                "no_issuer", "this proxy accepts no bearer token: no issuer is configured"
            )
        _strict(token)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _translate(exc) from None
        iss = unverified.get("iss") if isinstance(unverified, dict) else None
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            logger.debug(
                "refused a token whose iss %s is not a configured issuer (%s)",
                json.dumps(iss)[:200],
                ", ".join(json.dumps(name) for name in self._issuers),
            )
            raise Unauthenticated("invalid_issuer", "the token issuer is not accepted")
        config = issuer.config
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in config.algorithms:
            raise Unauthenticated("algorithm_not_allowed", "the token algorithm is not allowed")
        if config.typ is not None and not _same_typ(header.get("typ"), config.typ):
            raise Unauthenticated("invalid_token_type", "the token has the wrong typ header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("invalid_token", "the token is malformed or invalid")
        key = await issuer.keys.get_key(kid, algorithm)
        required = [*_ALWAYS_REQUIRED, *config.require]
        if config.max_lifetime is not None:
            required.append("iat")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": required, "enforce_minimum_key_length": True},
            )
        except jwt.InvalidAudienceError as exc:
            logger.debug(
                "refused a token of %s whose aud %s is not the configured audience %s",
                json.dumps(iss),
                json.dumps(unverified.get("aud"))[:200],
                json.dumps(config.audience),
            )
            raise _translate(exc) from None
        except jwt.PyJWTError as exc:
            raise _translate(exc) from None
        if not isinstance(claims.get("exp"), int | float):
            raise Unauthenticated("invalid_claims", "the token exp claim must be a number")
        _a_lifetime(claims)
        if not claims["sub"]:
            # (pyjwt checks it is a string; an empty one names nobody)
            raise Unauthenticated("invalid_claims", "the token sub claim must not be empty")
        if config.max_lifetime is not None:
            iat = claims.get("iat")
            if not isinstance(iat, int | float):
                raise Unauthenticated(
                    "token_lifetime_too_long",
                    "the token has no iat claim, so its lifetime cannot be checked against "
                    f"this service's limit of {config.max_lifetime:g} s",
                )
            if claims["exp"] - iat > config.max_lifetime:
                # (the two numbers say what to fix: an IdP's 7-day tokens, or an exp written
                # in milliseconds; neither is a secret: newuser 2026-12-07)
                raise Unauthenticated(
                    "token_lifetime_too_long",
                    f"the token lives too long: exp - iat is {claims['exp'] - iat:g} s, this "
                    f"service accepts at most {config.max_lifetime:g} s",
                )
        return MappingProxyType(claims)


def unverified_summary(token: str) -> dict[str, Any]:
    """What `explain --token` shows of a refused token, read without verifying it: the
    header's `alg`, `kid` and `typ` and the payload's `iss`, `aud`, `iat`, `nbf` and `exp`
    (its times: a lifetime over the issuer's `max_lifetime`, an expiry or a clock skew are
    told by them; never the token, its signature or any other claim), and `exp - iat` as
    `lifetime` when both are numbers. Members it cannot read are left out."""
    parts = token.split(".")
    shown: dict[str, Any] = {}
    for segment, names in ((0, ("alg", "kid", "typ")), (1, ("iss", "aud", "iat", "nbf", "exp"))):
        try:
            value = _json_object(parts[segment])
        except (ValueError, IndexError):
            continue
        shown.update((name, value[name]) for name in names if name in value and _shown(value[name]))
    iat, exp = shown.get("iat"), shown.get("exp")
    if (
        isinstance(iat, int | float)
        and isinstance(exp, int | float)
        and not isinstance(iat, bool)
        and not isinstance(exp, bool)
    ):
        shown["lifetime"] = exp - iat
    return shown


def _shown(value: object) -> bool:
    """Not a float past JSON's numbers (`1e400` reads as inf: the report would not be JSON,
    review 20:07); any other value is shown as it came."""
    return not isinstance(value, float) or math.isfinite(value)


def _loose(value: object) -> object:
    return value.rstrip("/").lower() if isinstance(value, str) else value


def mismatch_hint(given: object, accepted: Sequence[str], what: str) -> str | None:
    """A hint when the token's `iss` or `aud` differs from an accepted one only by a trailing
    slash or letter case (the most common JWT setup mistake: Auth0 writes `https://x/`,
    Clerk and Supabase `https://x`), else None. The comparison stays exact."""
    values = given if isinstance(given, list) else [given]
    for value in values:
        for wanted in accepted:
            if value != wanted and _loose(value) == _loose(wanted):
                return (
                    f"the token's {what} {json.dumps(value)} differs from the configured"
                    f" {json.dumps(wanted)} only by a trailing slash or letter case; they must"
                    " be equal (fix the config or the issuer's setting)"
                )
    return None

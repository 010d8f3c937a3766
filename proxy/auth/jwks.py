"""An asynchronous JWKS cache for one issuer, fetched with the app's aiohttp session.

Written instead of pyjwt's `PyJWKClient`, which blocks the event loop (urllib), refetches on
every unknown `kid` without a cooldown (attacker-chosen kids amplify traffic to the IdP),
clears its cache when a fetch fails, and never expires per-key entries.

Behaviour:
- keys are fetched on first use and again when older than `ttl`;
- an unknown `kid` triggers at most one refetch per `refetch_cooldown` seconds;
- fetches are single-flight: concurrent callers wait for the same fetch;
- a failed fetch keeps the last good key set (stale-if-error) and is not retried for
  `error_backoff` seconds, so a down IdP costs at most one request per backoff period; but
  for `max_stale` (24 h) at most: keys the issuer may have revoked meanwhile do not work for
  ever, the issuer is then unavailable (503) until it answers again;
- a key set the issuer publishes without a usable signing key (`{"keys": []}`) is the issuer's
  word, not a failed fetch: every token of its old keys stops working;
- a fetched key set that drops a key, or changes one (same kid, other material), calls the
  `on_keys_changed` listeners at once: whatever remembers tokens verified with the old set
  (the verified-token cache, the prepared-request cache) must forget them, or a removed key
  keeps working for as long as they keep an entry;
- `refresh_if_due` refetches a key set older than `ttl` without a token asking, so a key
  removed at the issuer stops working even while every request is a cache hit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from proxy.errors import ServiceUnavailable, Unauthenticated
from proxy.redact import redact_url

logger = logging.getLogger(__name__)
MAX_JWKS_BYTES = 1024 * 1024
#: How long the last good key set is served while every fetch fails (dioxus-clerk's figure).
MAX_STALE = 24 * 3600.0


class JwksCache:
    """Keys of one JWKS URL, by `kid`."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        ttl: float = 300,
        refetch_cooldown: float = 30,
        timeout: float = 5,
        error_backoff: float = 10,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
        max_stale: float = MAX_STALE,
    ) -> None:
        self.url = url
        #: `url` for the log: without a password or query values (`proxy.redact`).
        self.shown = redact_url(url)
        self._session = session
        self._ttl = ttl
        self._cooldown = refetch_cooldown
        self._timeout = timeout
        self._error_backoff = min(error_backoff, ttl)
        self._max_stale = max(max_stale, ttl)
        self._clock = clock
        self._on_fetch = on_fetch or (lambda _result: None)
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._prepared: dict[tuple[str | None, str], PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at = float("-inf")
        self._last_unknown_refetch = float("-inf")
        self._generation = 0
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []

    def on_keys_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a fetch removes or changes a key that was in the set."""
        self._listeners.append(listener)

    async def refresh_if_due(self) -> None:
        """Refetch a key set fetched before and now older than `ttl` (background refresh)."""
        if self._fetched_at is not None and self._needs_refresh(self._clock()):
            await self._refresh()

    def configure(self, *, ttl: float, refetch_cooldown: float, timeout: float) -> None:
        """Apply new timings after a config reload, keeping the cached keys."""
        self._ttl, self._cooldown, self._timeout = ttl, refetch_cooldown, timeout
        self._error_backoff = min(10.0, ttl)

    async def get_key(self, kid: str | None, algorithm: str) -> PyJWK:
        """The key for `kid`, prepared for `algorithm` (already checked against the allowlist).

        Raises `Unauthenticated` for an unknown kid or a key that does not fit the algorithm,
        `ServiceUnavailable` when no key set could ever be fetched.
        """
        now = self._clock()
        if self._needs_refresh(now):
            await self._refresh()
        if self._fetched_at is not None and self._clock() - self._fetched_at > self._max_stale:
            # Every fetch failed for that long: the keys may have been revoked meanwhile.
            raise ServiceUnavailable(
                "keys_unavailable", "the token issuer's keys cannot be fetched", retry_after=5
            )
        jwk = self._lookup(kid)
        if jwk is None and self._clock() - self._last_unknown_refetch >= self._cooldown:
            self._last_unknown_refetch = self._clock()
            await self._refresh(force=True)
            jwk = self._lookup(kid)
        if jwk is None:
            if self._fetched_at is None:
                raise ServiceUnavailable(
                    "keys_unavailable", "the token issuer's keys cannot be fetched", retry_after=5
                )
            raise Unauthenticated("unknown_key", "the token was signed with an unknown key")
        if jwk.get("alg") not in (None, algorithm):
            raise Unauthenticated(
                "algorithm_not_allowed", "the token's algorithm does not fit its key"
            )
        cache_key = (kid, algorithm)
        prepared = self._prepared.get(cache_key)
        if prepared is None:
            try:
                prepared = PyJWK(jwk, algorithm=algorithm)
            except PyJWTError:
                raise Unauthenticated(
                    "algorithm_not_allowed", "the token's algorithm does not fit its key"
                ) from None
            self._prepared[cache_key] = prepared
        return prepared

    def _needs_refresh(self, now: float) -> bool:
        if now - self._failed_at < self._error_backoff:
            return False  # the issuer just failed: serve what we have (possibly nothing)
        return self._fetched_at is None or now - self._fetched_at >= self._ttl

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:  # a token without kid is fine when there is one key
            return next(iter(self._keys.values()))
        return None

    async def _refresh(self, *, force: bool = False) -> None:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # someone else fetched while we waited
            now = self._clock()
            if now - self._failed_at < self._error_backoff:
                return
            if not force and not self._needs_refresh(now):
                return
            self._generation += 1
            try:
                keys = await self._fetch()
            except Exception as exc:
                self._failed_at = self._clock()
                self._on_fetch("error")
                logger.warning(
                    "JWKS fetch failed for %s: %s; keeping %d cached keys",
                    self.shown,
                    fetch_problem(exc, self._timeout),
                    len(self._keys),
                )
                return
            old, self._keys = self._keys, keys
            self._prepared = {}
            self._fetched_at = self._clock()
            self._failed_at = float("-inf")
            self._on_fetch("ok")
            if any(keys.get(kid) != jwk for kid, jwk in old.items()):
                logger.info(
                    "JWKS of %s dropped or changed a key; verified tokens forgotten", self.shown
                )
                for listener in self._listeners:
                    listener()

    async def _fetch(self) -> dict[str | None, dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._session.get(self.url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                where = resp.headers.get("Location")
                moved = (
                    f", a redirect to {redact_url(where)} (not followed: set jwks_url to it)"
                    if where and 300 <= resp.status < 400
                    else ""
                )
                raise JwksError(f"the endpoint answered HTTP {resp.status}{moved}")
            raw = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise JwksError(f"the document is larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(raw)


class JwksError(ValueError):
    """What is wrong with a JWKS answer, in words an operator acts on (its text is logged:
    it holds no document content but a redacted `jwks_uri`)."""


def fetch_problem(exc: BaseException, timeout: float) -> str:
    """Why a JWKS fetch failed, in words (newuser LOW: the log said only `ValueError` or
    `ClientConnectorError`): the HTTP status, not JSON, no `keys` list (an OpenID
    configuration's `jwks_uri` named), a timeout, connection refused, a name that does not
    resolve, a TLS failure. Never the exception's own text, which may carry the URL."""
    if isinstance(exc, JwksError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (jwks_timeout)"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ConnectionRefusedError):
            return "cannot connect (connection refused)"
        reason = os.strerror(error.errno).lower() if error.errno else type(error).__name__
        return f"cannot connect ({reason})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the server closed the connection before the whole answer"
    if isinstance(exc, aiohttp.ClientError):
        return f"the request failed ({type(exc).__name__})"
    return f"an unexpected error ({type(exc).__name__})"


def parse_jwks(raw: bytes) -> dict[str | None, dict[str, Any]]:
    """Usable signing keys of a JWKS document by kid; symmetric (`oct`) keys are ignored.

    A document with none (`{"keys": []}`, or only encryption keys) is an empty key set: the
    issuer's word that no token of its old keys is good any more (ValueError is for what is
    no JWKS document at all)."""
    try:
        data = json.loads(raw)
    except ValueError:  # (JSONDecodeError, UnicodeDecodeError)
        raise JwksError("the answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        if isinstance(data, dict) and isinstance(data.get("jwks_uri"), str):
            raise JwksError(
                "the document has no keys list: it is an OpenID configuration; set jwks_url to"
                f" its jwks_uri, {redact_url(data['jwks_uri'])}"
            )
        raise JwksError("the document is JSON but has no keys list (not a JWKS document)")
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") in (None, "oct"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            PyJWK(jwk)
        except PyJWTError:
            continue
        keys[jwk.get("kid")] = jwk
    return keys

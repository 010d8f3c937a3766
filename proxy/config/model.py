"""Pydantic models of the proxy's YAML configuration file.

Every model forbids unknown keys, so a typo (`colums:`) is an error naming the field rather
than a silently ignored rule. Secrets are never written in the file: fields ending in `_env`
name an environment variable that the loader resolves. Semantic checks that need more than
one field (HMAC mixed with asymmetric algorithms, a rule with neither a filter nor an explicit
`all_rows: true`) live here too, so a bad file fails at load, not at the first request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import types
import unicodedata
import uuid
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pglast.parser import ParseError, scan
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.limits.config import LimitsConfig, RuleLimits
from proxy.policy.sql import PLACEHOLDER

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
Algorithm = Literal[
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: An origin as a browser writes it: scheme://host[:port] (RFC 6454), lower case.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@A-Z]+")
_SHAPE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

#: `issuers[].max_lifetime: unlimited`: no cap on a token's lifetime (null is refused).
UNLIMITED = "unlimited"

#: A claim value a condition compares against.
Scalar = str | int | bool


class YamlWord(str):
    """A plain (unquoted) y, yes, n, no, on or off in the YAML file (YAML 1.1's booleans).

    YAML 1.1 reads these as booleans (`country: NO` is false: the "Norway problem"), YAML 1.2
    as text; the loader keeps them as this text so that where the two readings differ, a
    claim condition or a boolean setting (`YamlBool`), the file is refused at load rather
    than read one way by the proxy and another by the operator's tools. Where text is
    expected (a column `y`, a reason) it is the text, as both read it there.
    """


def _yaml_bool(value: object) -> object:
    """A boolean setting takes YAML's true or false only: `collapse: yes` (or `sse: off`)
    read as a boolean here and as text to a YAML 1.2 reader, and pydantic also took `1`,
    `"t"` or a quoted `"false"` (config probe, 2026-12-07). Said as the YAML 1.1 numbers
    are: write true/false, or quote the text."""
    if isinstance(value, bool):
        return value
    if value is None:
        raise ValueError(
            "empty (null): write true or false, or remove the key for its default (an unset "
            "variable after envsubst leaves it empty)"
        )
    if isinstance(value, YamlWord):
        raise ValueError(
            f"{str(value)!r} is a boolean only in YAML 1.1 (YAML 1.2 reads the text): write "
            "true or false"
        )
    raise ValueError(f"{value!r} is not a boolean: write true or false (unquoted)")


#: A boolean setting: true or false as YAML 1.2 writes them, nothing else (`_yaml_bool`).
YamlBool = Annotated[bool, BeforeValidator(_yaml_bool)]


def _invisible(text: str) -> str | None:
    """The first character of `text` no one sees in an editor: a control character other
    than a newline, a format character (zero-width space, BOM, bidi marks), a line or
    paragraph separator, a space other than U+0020 (a no-break space). Named as `U+XXXX`."""
    for char in text:
        kind = unicodedata.category(char)
        if (
            (kind == "Cc" and char != "\n")
            or kind in ("Cf", "Zl", "Zp", "Co", "Cn")
            or (kind == "Zs" and char != " ")
        ):
            name = unicodedata.name(char, "")
            return f"U+{ord(char):04X}" + (f" ({name})" if name else "")
    return None


def _not_composed(text: str) -> str | None:
    """Why `text` is not in Unicode's composed form (NFC), or None when it is. A letter
    written as a base letter and a combining accent (`c` + U+0327 for `ç`, as some editors,
    macOS file names and copied text give it) looks the same as the composed letter a token
    or a database row carries, and never equals it: a deny on `country: Curaçao` so written
    never fired (config probe, 2026-12-07)."""
    if unicodedata.is_normalized("NFC", text):
        return None
    return (
        "is not in composed Unicode form (NFC): a letter written with a separate combining "
        "accent looks the same as the composed letter tokens and rows carry, and never "
        "equals it; retype it"
    )


def _claim_path(path: object) -> None:
    """A claim name or path compared byte for byte: one holding a character no one sees
    (a zero-width space pasted from a web page) or surrounding spaces never matches a
    token's claim, and in a deny rule that fails open (config probe, 2026-12-07)."""
    if not isinstance(path, str):
        return
    if not path:
        # (`"${CLAIM}": suspended` after an envsubst with the variable unset: a deny on no
        # claim never fires)
        raise ValueError("an empty claim name names no claim: write the claim's name")
    hidden = _invisible(path)
    if hidden is not None:
        raise ValueError(
            f"{path!r}: the claim name holds an invisible character {hidden}: retype it"
        )
    decomposed = _not_composed(path)
    if decomposed is not None:
        raise ValueError(f"{path!r}: the claim name {decomposed}")
    if path.startswith("$") or "[" in path or "]" in path:
        # (`$.account.status`, `roles[0]`: no token has such a claim, so a deny on it never
        # fired)
        raise ValueError(
            f"{path!r}: a claim is named by its name or a dotted path into objects "
            "(account.status); JSONPath ($, [n]) is not read here"
        )
    if "." in path and "" in path.split("."):
        raise ValueError(f"{path!r}: a dotted claim path with an empty part names no claim")
    if path != path.strip():
        raise ValueError(f"{path!r}: the claim name has spaces around it: remove them")


def _no_yaml_words(when: object) -> object:
    if not isinstance(when, dict):
        return when
    for path, value in when.items():
        _claim_path(path)
        if value == []:
            raise ValueError(f"{path}: an empty list matches no token: give at least one value")
        for item in value if isinstance(value, list) else [value]:
            if item is None or isinstance(item, float | dict):
                what = "null" if item is None else type(item).__name__
                raise ValueError(
                    f"{path}: a {what} matches no token: write the text, number, true or "
                    "false the claim must be, or remove the condition"
                )
            if isinstance(item, str) and not item.strip():
                # (`status: "${SUSPENDED}"` after an envsubst with the variable unset: a deny
                # that matched only tokens whose claim is blank, never the suspended ones)
                raise ValueError(
                    f'{path}: {item!r} is empty text (an unset variable in "${{VAR}}" '
                    "leaves it so): write the value the claim must be, or remove the condition"
                )
            if isinstance(item, str) and _not_composed(item) is not None:
                raise ValueError(f"{path}: {item!r} {_not_composed(item)}")
            if isinstance(item, YamlWord):
                raise ValueError(
                    f"{path}: {str(item)!r} is ambiguous in YAML (older readers take it for a "
                    f"boolean): write true or false for a boolean, or quote it "
                    f"({str(item)!r}) for the text"
                )
    return when


def _env_name(value: str) -> str:
    """A variable's name (letters, digits, `_`, not starting with a digit). Anything else is
    refused without repeating it: what is written there instead is most often the secret
    itself (pydantic's "should match pattern" said neither that nor what to write)."""
    if not _ENV_NAME.match(value):
        raise ValueError(
            "not a variable's name (letters, digits and _ only, not starting with a digit; "
            "the value is not repeated here): give the name of the environment variable "
            "holding the secret, e.g. ENGINE_SECRET, not the secret itself"
        )
    return value


def _absolute(value: str) -> str:
    """A key or secret file's path, absolute: a relative one was read from the proxy's
    working directory, not the config file's, so `secret_file: engine.secret` beside the
    config read whatever file of that name the directory the proxy was started in held (an
    old secret, an old key) or nothing (config probe, 2026-12-07)."""
    if not os.path.isabs(value):
        raise ValueError(
            "give an absolute path (/run/secrets/...): a relative one is read from the "
            "directory the proxy was started in, not the config file's"
        )
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


EnvName = Annotated[str, AfterValidator(_env_name), Field(description="environment variable")]


class NumberSettingError(ValueError):
    """A value no number setting takes (a boolean, `.inf`, `.nan`). `key`: the setting,
    which the loader adds to the error's key path, so the message names its line
    (`loader._format_validation`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _numeric(annotation: Any) -> bool:
    """Whether a field of this type takes a number and no boolean (`int`, `float | None`)."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = get_args(annotation)
    else:
        kinds = (annotation,)
    return bool not in kinds and any(kind in (int, float) for kind in kinds)


def check_number_settings(model: type[BaseModel], value: object) -> object:
    """`value` (the mapping `model` is made from) unless it gives a number setting
    something no number means there: `true` or `false` (a YAML boolean is a Python int,
    so pydantic took `port: true` as 1 and `max_age_cap: false` as 0: `${FLAG}` pasted
    into the wrong key, a list of settings shifted by a line), or `.inf` / `.nan` (YAML's
    infinity loaded wherever no upper bound was set: `reload_interval: .inf` never
    reloaded the file, so an edit narrowing the policy silently never applied;
    `jwks_ttl: .inf` kept a key dropped from the issuer's set). Raises
    `NumberSettingError`."""
    if isinstance(value, dict):
        for name, info in model.model_fields.items():
            key = info.alias or name
            given = value.get(key)
            if not _numeric(info.annotation):
                continue
            if isinstance(given, bool):
                raise NumberSettingError(
                    key,
                    f"{str(given).lower()} is a boolean, not a number (it was read as "
                    f"{int(given)}): write the number",
                )
            if isinstance(given, float) and not math.isfinite(given):
                raise NumberSettingError(
                    key, f"{given!r} is no finite number: write the number (a finite one)"
                )
    return value


class _Model(BaseModel):
    # allow_inf_nan=False: a quoted "inf", "Infinity" or "1e999" became inf after the YAML
    # check (`check_number_settings` sees only floats): every number setting refuses it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: object) -> object:
        return check_number_settings(cls, value)


class StaticKey(_Model):
    """One verification key given in the file: a public key (PEM or JWK) or an HMAC secret."""

    kid: str | None = Field(
        default=None,
        description="the token header `kid` this key verifies; left out: tokens without a "
        "kid (or any token, when it is the issuer's only key)",
    )
    public_key: str | None = Field(default=None, description="PEM public key (not a secret)")
    public_key_file: AbsolutePath | None = Field(
        default=None,
        description="PEM public key, read from this file (an absolute path) at start and reload",
    )
    jwk: dict[str, str] | None = Field(default=None, description="public JWK object")
    secret_env: EnvName | None = Field(default=None, description="HMAC secret, from this env var")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> StaticKey:
        given = [self.public_key, self.public_key_file, self.jwk, self.secret_env]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of public_key, public_key_file, jwk or secret_env")
        if self.jwk is not None and self.jwk.get("kty") == "oct":
            raise ValueError("symmetric keys must come from secret_env, not an inline jwk")
        return self


class IssuerConfig(_Model):
    """How tokens from one issuer are verified."""

    issuer: str = Field(min_length=1, description="exact `iss` value")
    audience: list[str] = Field(min_length=1, description="accepted `aud` values (exact)")
    algorithms: list[Algorithm] = Field(
        min_length=1,
        description="accepted `alg` values: HS256/384/512 (with a secret_env key) or "
        "RS/PS/ES/EdDSA ones (with public keys or jwks_url), not both kinds",
    )
    jwks_url: str | None = Field(
        default=None,
        description="the issuer's JWKS URL, https (plain http loads, with a warning unless "
        "it is a loopback address); or give keys, not both",
    )
    keys: list[StaticKey] = Field(
        default_factory=list, description="verification keys written in the file (below)"
    )
    leeway: float = Field(default=30, ge=0, le=300, description="clock skew, seconds")
    max_lifetime: int | None = Field(
        default=86400,
        gt=0,
        description="max exp - iat in seconds, which requires iat; `unlimited`: no cap",
    )

    @field_validator("max_lifetime", mode="before")
    @classmethod
    def _lifetime_given(cls, value: object) -> object:
        """`max_lifetime:` left empty (or `${MAX_LIFETIME}` after an envsubst with the
        variable unset) is null, which read as "no cap": any token lifetime passed (config
        probe, 2026-12-07). No cap is said in words, `unlimited`; null is a load error. (Runs
        only for a value given: left out, the default cap holds.)"""
        if value is None:
            raise ValueError(
                "empty (null): give the longest token lifetime in seconds (exp - iat), e.g. "
                "max_lifetime: 86400, or write max_lifetime: unlimited for no cap (an unset "
                "variable in max_lifetime: ${VAR} leaves it empty)"
            )
        if value == UNLIMITED:
            return None
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(
                f"{value!r}: give the longest token lifetime in seconds (a number), or "
                f"{UNLIMITED} for no cap"
            )
        return value

    require: list[str] = Field(default_factory=list, description="extra claims that must exist")

    @field_validator("require")
    @classmethod
    def _require_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _claim_path(path)
        return value

    typ: str | None = Field(default=None, description="required `typ` header, e.g. 'JWT'")

    @field_validator("typ", mode="before")
    @classmethod
    def _typ_given(cls, value: object) -> object:
        """`typ:` left empty (`typ: ${TOKEN_TYP}` after an envsubst with the variable unset)
        is null, which read as "any typ": an ID token passed where only access tokens
        (`at+jwt`) should (config probe, 2026-12-07). Only leaving the key out checks no
        typ. (Runs only for a value given.)"""
        if value is None or value == "":
            raise ValueError(
                "empty: give the typ header tokens must carry (e.g. typ: at+jwt), or remove "
                "the key to accept any typ"
            )
        return value

    jwks_ttl: float = Field(default=300, gt=0, description="seconds a fetched JWKS is kept")
    jwks_refetch_cooldown: float = Field(
        default=30, ge=0, description="at most one refetch per this many seconds for an unknown kid"
    )
    jwks_timeout: float = Field(default=5, gt=0, description="seconds a JWKS fetch may take")

    @field_validator("audience", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        """One audience or a list. An empty one (`audience: "${AUDIENCE}"` after an
        envsubst with the variable unset) is refused: it accepted the issuer's tokens whose
        `aud` is empty text, meant for no service in particular."""
        value = [value] if isinstance(value, str) else value
        for item in value if isinstance(value, list) else ():
            if isinstance(item, str) and not item.strip():
                raise ValueError(
                    f"{item!r} is empty: give the aud value this service's tokens carry (an "
                    'unset variable in "${VAR}" leaves it empty)'
                )
        return value

    @model_validator(mode="after")
    def _keys_and_algorithms(self) -> IssuerConfig:
        algs = set(self.algorithms)
        if algs & HMAC_ALGORITHMS and algs & ASYMMETRIC_ALGORITHMS:
            raise ValueError(
                "algorithms: do not mix HMAC (HS*) with asymmetric algorithms for one issuer "
                "(a public key could be used as an HMAC secret)"
            )
        if self.jwks_url is None and not self.keys:
            raise ValueError("give jwks_url or keys")
        if self.jwks_url is not None and self.keys:
            raise ValueError("give jwks_url or keys, not both")
        if self.jwks_url is not None:
            if algs & HMAC_ALGORITHMS:
                raise ValueError("HMAC algorithms need static keys (secret_env), not jwks_url")
            if not self.jwks_url.startswith(("https://", "http://")):
                raise ValueError("jwks_url must be an http(s) URL")
        for key in self.keys:
            hmac_key = key.secret_env is not None
            if hmac_key != bool(algs & HMAC_ALGORITHMS):
                raise ValueError(
                    "keys: HMAC algorithms need secret_env keys and asymmetric algorithms "
                    "need public keys"
                )
        return self


class UpstreamConfig(_Model):
    """Where the engine is and how to authenticate to it."""

    url: str = Field(description="engine base URL, e.g. http://127.0.0.1:3000")
    source_id: str | None = Field(
        default=None,
        description="the engine source to serve (`sync-engine sources add` prints its id); "
        "left out: the engine's own --database-url database",
    )
    secret_env: EnvName | None = Field(default=None, description="engine secret, from env var")
    secret_file: str | None = Field(
        default=None,
        min_length=1,
        description="engine secret, read from this file (an absolute path) at start and at "
        "every reload (a rotated secret without a restart: write the file, then reload)",
    )
    connect_timeout: float = Field(
        default=5, gt=0, description="seconds to open a connection to the engine"
    )
    first_byte_timeout: float = Field(
        default=75,
        gt=0,
        description="max wait for the response headers and max silence between body chunks; "
        "must exceed the engine's 20 s long-poll hold and 21 s SSE keep-alive (a subset "
        "snapshot's answer is waited for at least 310 s: the engine's own limit is 300 s)",
    )
    pool_size: int = Field(default=4096, ge=1, description="max upstream connections")
    retry_after: int = Field(default=2, ge=1, description="Retry-After on 502/503/504")

    @field_validator("source_id", mode="before")
    @classmethod
    def _source_id_given(cls, value: object) -> object:
        """`source_id:` left empty (`${SOURCE_ID}` after an envsubst with the variable unset)
        sent every request to the engine's own `--database-url` database instead of the
        source (checked against the engine's `--secret`, not the source's), or as
        `source_id=` to no source: a proxy that ran, with a 401 for every request. Only
        leaving the key out means the engine's own database. (Runs only for a value
        given.)"""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(
                "empty: give the source's id (`sync-engine sources add` prints it), or remove "
                "the key to use the engine's own database (an unset variable in "
                "source_id: ${VAR} leaves it empty)"
            )
        return value

    @field_validator("source_id")
    @classmethod
    def _canonical_source_id(cls, value: str | None) -> str | None:
        """A source id as the engine writes it (lower-case uuid with hyphens): the engine
        takes no other spelling (`ABC...`, `{...}`, `urn:uuid:...` are an unknown id, a 401
        at the first request). Another spelling of a uuid is written the engine's way."""
        if value is None:
            return None
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            return value  # (not a uuid: the engine says what it makes of it)

    @field_validator("secret_file")
    @classmethod
    def _absolute_secret_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or info.data.get("secret_env") is not None:
            return value  # (given with secret_env: `_one_secret` says so first)
        return _absolute(value)

    @model_validator(mode="after")
    def _one_secret(self) -> UpstreamConfig:
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give secret_env or secret_file, not both")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if "?" in value or "#" in value:
            raise ValueError("must not contain a query or fragment")
        base = value.rstrip("/")
        if base.endswith(("/v1/shape", "/v1")):
            # (the proxy appends /v1/shape: every request was the engine's bare 404)
            raise ValueError(
                "give the engine's base URL, e.g. http://127.0.0.1:3000: the proxy appends "
                "/v1/shape itself"
            )
        return base


class ServerConfig(_Model):
    """Listener settings; read at start (a reload does not rebind)."""

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="port to listen on")
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="largest request body (POST /v1/shape) read"
    )
    reload_interval: float = Field(default=1.0, gt=0, description="config file poll, seconds")
    token_cache_size: int = Field(
        default=10_000, ge=0, description="verified tokens kept (by their SHA-256); 0: none"
    )
    token_cache_ttl: float = Field(
        default=300,
        gt=0,
        description="seconds a verified token is kept at most (and never past its exp)",
    )
    trusted_proxies: tuple[IPvAnyNetwork, ...] = Field(
        default=(),
        description="CIDRs of load balancers / reverse proxies in front of the proxy: a "
        "request from one of them is charged (anonymous per-principal limits) to the "
        "right-most X-Forwarded-For (else Forwarded for=) address not in this list; empty: "
        "forwarding headers are ignored (proxy.limits.client). Applied on reload.",
    )

    max_connections_per_address: int | None = Field(
        default=None,
        ge=1,
        description="client connections one client address may hold at once (its next one "
        "gets a 503 and is closed); left out: a quarter of the proxy's connection cap, at "
        "least 8. Loopback and trusted_proxies peers are exempt. Applied on reload, to new "
        "connections (proxy.http.serve)",
    )

    @field_validator("max_connections_per_address", mode="before")
    @classmethod
    def _per_address_given(cls, value: object) -> object:
        """Left empty (`${MAX_CONNS}` with the variable unset) it is refused, as every
        setting left empty is: only leaving the key out means the default share."""
        if value is None:
            raise ValueError(
                "empty (null): give a number of connections, or remove the key for the "
                "default (a quarter of the connection cap, at least 8)"
            )
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        """Each entry a network or one address, said clearly when not (`10.0.0.1/8`: its
        host bits are set, so which network was meant is not known)."""
        if isinstance(value, str):
            raise ValueError("a list of CIDRs, e.g. [10.0.0.0/8]")
        for item in value if isinstance(value, (list, tuple)) else ():
            try:
                ipaddress.ip_network(str(item))
            except ValueError as error:
                raise ValueError(f"{item!r}: {error}") from None
        return value


class MetricsConfig(_Model):
    """Who may read `GET /metrics`: its counters show when and how many users are live and
    write, so the public port does not hand them to anyone (the engine's `/metrics` is behind
    its secret for the same reason)."""

    token_env: EnvName | None = Field(
        default=None,
        description="bearer token /metrics requires (`Authorization: Bearer <token>`), from "
        "this env var",
    )
    allow_loopback: YamlBool = Field(
        default=False,
        description="clients on a loopback address whose request has no forwarding header "
        "may read /metrics without the token (a scraper on this host); a reverse proxy on "
        "this host must then add X-Forwarded-For or not route /metrics. Neither this nor "
        "token_env: /metrics answers no one",
    )


class CorsConfig(_Model):
    """Cross-origin access: an exact allowlist of origins ("*" echoes any origin)."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description=(
            'origins (scheme://host[:port]) browsers may call from; "*": any. A page on one '
            "may send its own request headers too (X-Tenant, Sentry's sentry-trace and "
            "baggage): the preflight allows the names it asks for; none reaches the engine"
        ),
    )
    allow_credentials: YamlBool = Field(
        default=False, description="send Access-Control-Allow-Credentials: true"
    )
    max_age: int = Field(default=86400, ge=0, description="seconds a browser keeps a preflight")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        """Each entry as a browser sends `Origin:` (scheme://host[:port], no path, no
        slash): `app.example.com` or `https://app.example.com/` can never equal one, and
        CORS silently never worked (config probe, 2026-12-07)."""
        for origin in value:
            if origin != "*" and any(char in origin for char in "*?"):
                # (`https://*.example.com`, what preview-deploy users write first, loaded and
                # was compared as written: no browser's Origin ever equalled it; newuser
                # 2026-12-07)
                raise ValueError(
                    f"{origin!r}: origins are compared whole, with no wildcards (a browser "
                    "sends its own host, never a *): list each origin, or '*' for any"
                )
            if origin not in ("*", "null") and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin as browsers send it: write "
                    "scheme://host[:port] with no path or trailing slash, e.g. "
                    "https://app.example.com"
                )
        return value

    @model_validator(mode="after")
    def _no_credentials_for_everyone(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            # Browsers refuse `*` with credentials, so the proxy would echo each Origin: every
            # site on the web could then send credentialed requests and read the answers.
            raise ValueError(
                "allow_credentials: true needs the origins listed, not '*' (every site could "
                "send credentialed requests and read the answers)"
            )
        return self


class CacheConfig(_Model):
    """The proxy's own response cache, and how cache headers are made safe for clients.

    The in-memory cache sits behind the policy (it is keyed by the upstream URL the policy
    built, which holds the enforced filter and its bound claim values), so users share a
    cached response only when their effective shape is the same.
    """

    max_age_cap: int | None = Field(
        default=60,
        ge=0,
        description="cap max-age of private responses, seconds; `unlimited`: the engine's "
        "max-age as it sent it (null is refused)",
    )

    @field_validator("max_age_cap", mode="before")
    @classmethod
    def _cap_given(cls, value: object) -> object:
        """`max_age_cap:` left empty (`${MAX_AGE_CAP}` after an envsubst with the variable
        unset) is null, which read as "no cap": browsers kept a private answer as long as
        the engine said, past a revoked grant (as `max_lifetime`). No cap is said in words,
        `unlimited`; null is a load error. (Runs only for a value given: left out, 60.)"""
        if value is None:
            raise ValueError(
                "empty (null): give the longest max-age clients may keep a private answer, in "
                f"seconds (e.g. max_age_cap: 60), or write max_age_cap: {UNLIMITED} to pass "
                "the engine's max-age on as it is (an unset variable in max_age_cap: ${VAR} "
                "leaves it empty)"
            )
        if value == UNLIMITED:
            return None
        return value

    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="in-memory cache of cacheable engine responses, in bytes; 0 turns it off",
    )
    max_entry_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="largest single response kept (engine chunks are ~10 MiB); "
        "never more than max_bytes",
    )
    live_max_age: float = Field(
        default=5,
        ge=0,
        le=60,
        description="keep live long-poll answers at most this long (Electric sends max-age=5)",
    )


ClaimMatch = Scalar | list[Scalar]


class DenyRule(_Model):
    """Refuse the table when every condition matches (deny wins over allow)."""

    when: dict[str, ClaimMatch] = Field(
        min_length=1,
        description="claim path -> value or any-of list; all must match (a claim present "
        "but not comparable matches too)",
    )
    reason: str | None = Field(default=None, description="the 403's message; default: denied")

    @field_validator("when", mode="before")
    @classmethod
    def _when_words(cls, value: object) -> object:
        return _no_yaml_words(value)


class AccessRule(_Model):
    """Who may sync a table, which rows and columns, and what the client may add."""

    name: str | None = Field(
        default=None, description="the rule's name in logs, explain and load errors"
    )
    when: dict[str, ClaimMatch] = Field(
        default_factory=dict, description="claim path -> value or any-of list; all must match"
    )

    @field_validator("when", mode="before")
    @classmethod
    def _when_words(cls, value: object) -> object:
        return _no_yaml_words(value)

    anonymous: YamlBool = Field(
        default=False,
        description="also serve requests without a token (the anonymous principal has no "
        "claims, so the rule may have no `when` and no {{claim}} in its where)",
    )
    where: str | None = Field(default=None, description="row filter; {{claim.path}} placeholders")

    @field_validator("where")
    @classmethod
    def _where_as_written(cls, value: str | None) -> str | None:
        """A filter YAML changed on its way in is refused: YAML folds the lines of a plain,
        quoted or `>` value into one, so a `--` comment then runs to the end of the whole
        filter and swallows the conditions after it; a double-quoted value's escapes turn
        SQL's `\\_` into a no-break space (`NOT LIKE 'tmp\\_%'` matched tmp_ rows). Both
        served rows the filter as written forbids (config probe, 2026-12-07)."""
        if value is None:
            return None
        hidden = _invisible(value)
        if hidden is not None:
            raise ValueError(
                f"holds an invisible character {hidden} (from a YAML escape such as \\_ in a "
                "double-quoted string?): write SQL filters in single quotes or a `|` block"
            )
        decomposed = _not_composed(value)
        if decomposed is not None:
            raise ValueError(f"the filter {decomposed}")
        if _line_comment(value):
            raise ValueError(
                "a `--` comment runs to the end of the filter once YAML folds its lines into "
                "one (it hides the conditions after it): use /* ... */ comments"
            )
        return value

    all_rows: YamlBool = Field(default=False, description="explicitly allow every row (no filter)")
    columns: list[str] | None = Field(
        default=None, min_length=1, description="the columns shown; left out: every column"
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_given(cls, value: object) -> object:
        """`columns:` written with nothing after it (or `columns: ${COLS}` after an envsubst
        with the variable unset) is null, which read as "no restriction": every column was
        shown (config probe, 2026-12-07). An empty value under a key that restricts is a
        mistake; only leaving the key out shows every column. (Runs only for a value given.)"""
        if value is None:
            raise ValueError(
                "empty (null): list the columns to show, e.g. columns: [id, title], or remove "
                "the key to show every column"
            )
        return value

    @field_validator("columns")
    @classmethod
    def _column_names_as_stored(cls, value: list[str] | None) -> list[str] | None:
        """A column written with spaces around it or a character no one sees (pasted from a
        web page) names a column no table has: the rule loaded and every request of it was
        the engine's 400 about a column the client never named (config probe, 2026-12-07).
        (Quotes are part of a name as written: `'"Title"'` is the column `"Title"`, as
        stored; tests/proxy/test_policy.py.)"""
        for name in value or ():
            if name != name.strip():
                raise ValueError(f"{name!r}: the column name has spaces around it: remove them")
            hidden = _invisible(name)
            if hidden is not None:
                raise ValueError(f"{name!r}: holds an invisible character {hidden}: retype it")
        return value

    client_where: Literal["forbid", "validated", "passthrough"] = Field(
        default="forbid",
        description="forbid: no client where; validated: a checked subset of SQL, ANDed with "
        "the filter; passthrough: the client's where and subset clauses go to the engine as "
        "written (only with all_rows and no columns: nothing is hidden, and a subquery may "
        "read other tables)",
    )
    subset: YamlBool = Field(
        default=True, description="accept subset requests (`subset__*`, checked as a where)"
    )
    replica_full: YamlBool = Field(default=False, description="accept `replica=full`")
    sse: YamlBool = Field(default=True, description="accept live SSE (`live_sse=true`)")
    delete: YamlBool = Field(
        default=False, description="forward DELETE /v1/shape (the engine must allow it too)"
    )
    limits: RuleLimits | None = Field(default=None, description="overrides of the limits")

    @field_validator("limits", mode="before")
    @classmethod
    def _limit_numbers(cls, value: object) -> object:
        return check_number_settings(RuleLimits, value)

    @model_validator(mode="after")
    def _rows_explicit(self) -> AccessRule:
        if (self.where is None) == (not self.all_rows):
            raise ValueError("give either a where filter or all_rows: true (not both)")
        if self.anonymous:
            if self.when:
                raise ValueError("an anonymous rule has no claims to match: remove `when`")
            if self.where is not None and "{{" in self.where:
                raise ValueError("an anonymous rule's where cannot use {{claim}} placeholders")
        if self.client_where == "passthrough" and (not self.all_rows or self.columns):
            raise ValueError(
                "client_where: passthrough needs all_rows: true and no columns (a client "
                "clause passed through unchecked could reveal filtered rows or hidden columns)"
            )
        return self


def _line_comment(sql: str) -> bool:
    """Whether `sql` holds a `--` comment, as Postgres's own scanner (pglast's) reads the
    filter the proxy parses (its `{{claim}}` placeholders made `$1`, as `compile_policy`
    does). A hand-written reading missed one after a dollar-quoted string holding a quote
    (`title <> $q$it's$q$ -- note` + a folded line: the comment hid `AND org_id = 'a'`, and
    every organisation's rows were served; config probe, 2026-12-07). A filter the scanner
    refuses does not parse either: its load error says why."""
    if "--" not in sql:
        return False
    try:
        tokens = scan(PLACEHOLDER.sub("$1", sql))
    except (ParseError, ValueError):
        return False
    return any(token.name == "SQL_COMMENT" for token in tokens)


def _claim_values(match: ClaimMatch) -> set[tuple[bool, Scalar]]:
    """A condition's accepted values, booleans kept apart from numbers (`True == 1` in
    Python, but an allow condition `true` never matches the claim 1)."""
    return {(isinstance(v, bool), v) for v in (match if isinstance(match, list) else [match])}


def covers(earlier: AccessRule, later: AccessRule) -> bool:
    """`earlier` certainly matches every request `later` matches, so under first-match
    (`proxy.policy.evaluate._select_rule`) `later` can never apply. Deny rules are checked
    before any allow rule and so do not change which allow rule is first.

    Only what is certain: `later` serves requests without a token only if `earlier` does
    too, and each of `earlier`'s conditions is one of `later`'s on the same claim path with
    no value `earlier` does not accept. Anything else (another spelling of the path, values
    that could match the same claims) is taken as not covered."""
    if later.anonymous and not earlier.anonymous:
        return False
    for path, wanted in earlier.when.items():
        if path not in later.when or not _claim_values(later.when[path]) <= _claim_values(wanted):
            return False
    return True


class TablePolicy(_Model):
    """Rules for one table. No matching allow rule means denied."""

    allow: list[AccessRule] = Field(
        min_length=1, description="access rules, first match serves (below)"
    )
    deny: list[DenyRule] = Field(
        default_factory=list, description="deny rules, any match refuses (below)"
    )

    def shadowed(self) -> list[tuple[int, int]]:
        """(index of an allow rule that can never apply, index of the first earlier rule
        that matches every request it would: `covers`)."""
        # Only rules that could cover `later` are tried: ones with no `when`, and ones
        # accepting on some path of `later`'s a value `later` needs there (every condition of
        # a covering rule is on one of `later`'s paths and accepts all of its values). Trying
        # every earlier rule made 12,000 rules take 130 s to load (config probe, 2026-12-07).
        unconditional: list[int] = []
        accepting: dict[tuple[str, tuple[bool, Scalar]], list[int]] = {}
        out = []
        for j, later in enumerate(self.allow):
            candidates = set(unconditional)
            for path, wanted in later.when.items():
                value = next(iter(_claim_values(wanted)))
                candidates.update(accepting.get((path, value), ()))
            first = min((i for i in candidates if covers(self.allow[i], later)), default=None)
            if first is not None:
                out.append((j, first))
            if not later.when:
                unconditional.append(j)
            for path, wanted in later.when.items():
                for value in _claim_values(wanted):
                    accepting.setdefault((path, value), []).append(j)
        return out


class NamedShape(TablePolicy):
    """A shape served at `/shapes/<name>`: table fixed by the config, same rules."""

    table: str = Field(description="the one table the shape serves (no pattern)")


class ProxyConfig(_Model):
    """The whole configuration file."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="the listener")
    upstream: UpstreamConfig = Field(description="the sync engine")
    issuers: list[IssuerConfig] = Field(
        default_factory=list, description="token issuers; none: only anonymous rules serve"
    )
    cors: CorsConfig = Field(default_factory=CorsConfig, description="cross-origin access")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="caching")
    collapse: YamlBool = Field(
        default=True,
        description="send identical concurrent engine requests once and share the answer",
    )
    tables: dict[str, TablePolicy] = Field(
        default_factory=dict,
        description='table name or pattern (items, public.*, "Sales"."Q1") -> its rules',
    )
    shapes: dict[str, NamedShape] = Field(
        default_factory=dict, description="name -> a shape served at GET /shapes/<name>"
    )
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="per-principal limits (proxy.limits.config)"
    )

    @field_validator("limits", mode="before")
    @classmethod
    def _limit_numbers(cls, value: object) -> object:
        return check_number_settings(LimitsConfig, value)

    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="who may read GET /metrics"
    )

    @field_validator("shapes")
    @classmethod
    def _shape_names(cls, value: dict[str, NamedShape]) -> dict[str, NamedShape]:
        for name in value:
            if not _SHAPE_NAME.match(name):
                raise ValueError(f"shape name {name!r} must match [A-Za-z0-9_-]+")
        return value

    @model_validator(mode="after")
    def _unique_issuers(self) -> ProxyConfig:
        seen = [i.issuer for i in self.issuers]
        if len(seen) != len(set(seen)):
            raise ValueError("issuers: each issuer may appear once")
        if not self.tables and not self.shapes:
            raise ValueError("give at least one entry under tables or shapes")
        return self

"""Header rules between the proxy and the engine, as pure functions over header lists.

Upstream requests carry only an allowlist of client headers (never `Authorization`,
`Cookie`, `Origin` or forwarding headers). Engine responses lose hop-by-hop and engine CORS
headers, and any header whose value holds the engine secret (an echo of the engine URL: a
load balancer's http->https `Location`, a `Link`, a `Content-Location`: the engine URL never
reaches a client, as nginx's `proxy_redirect` keeps it from them); they keep
`Content-Encoding` (the body is passed on raw; `Content-Length` is set from the body actually
sent) and `Vary` (the app merges its own tokens in), and get a client-facing `Cache-Control`:
made private when the rows depend on the caller's token (which is not part of the client's
URL), kept as the engine sent it when every caller gets the same bytes.

`Head` is an engine answer's status and headers after these rules, built once per answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

logger = logging.getLogger(__name__)

#: Client request headers forwarded to the engine.
FORWARDED_REQUEST_HEADERS = (
    "accept",
    "accept-encoding",
    "content-type",
    "if-none-match",
    "traceparent",
    "tracestate",
    "user-agent",
)

#: Response headers never passed back (hop-by-hop, RFC 9110 §7.6.1), plus those we own.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "server",
        "date",
        "cache-control",
        "x-request-id",
        "content-length",  # set per response from the body actually sent
        # A cache tier's own state (the nginx tier's `add_header ... always`): HIT or MISS
        # told a user whether a colleague had asked for the same filter (attack 08:18)
        "x-cache-status",
        "x-proxy-cache",
        # ... and Varnish's own on every delivery (config/varnish): its transaction ids (two
        # on a hit), the seconds the object was kept, its name (review 08:45); the engine
        # sends none of them, and the proxy's cache says its own `Age`
        "x-varnish",
        "age",
        "via",
    }
)


#: Forwarded for one client's own engine request only: on a request shared by several clients
#: (a collapsed flight, a shared SSE stream) one client's values would shape everyone's
#: answer. A 9 KB User-Agent that a cache tier between proxy and engine refuses (nginx's
#: 8 KB header buffers: its HTML 400) failed every client that joined that flight (attack
#: 05:06). The engine reads none of them for its answer.
PER_CLIENT_REQUEST_HEADERS = ("traceparent", "tracestate", "user-agent")


def upstream_request_headers(
    client: Mapping[str, str], request_id: str, shared: bool = False
) -> dict[str, str]:
    """Allowlisted client headers plus the request id; nothing identifying the user. For a
    request `shared` by several clients, none of a client's own (`PER_CLIENT_REQUEST_HEADERS`)."""
    headers = {name: client[name] for name in FORWARDED_REQUEST_HEADERS if name in client}
    if shared:
        for name in PER_CLIENT_REQUEST_HEADERS:
            headers.pop(name, None)
    headers["x-request-id"] = request_id
    return headers


def upstream_client_lines(client: Mapping[str, str]) -> str:
    """`upstream_request_headers` as request header lines (`proxy.http.fastlane`), without
    the request id's: the same for every request with the same headers, so the fast lane
    keeps them per connection. `client` is the request's case-insensitive headers
    (`CIMultiDictProxy`), so each name's lookup is one C call and gives its first value, as
    there; lines whose value holds CR or LF are dropped, as `client.header_lines` drops
    them."""
    get = client.get
    lines = ""  # (a loop, not a list comprehension: no frame of its own, once per request)
    for name in FORWARDED_REQUEST_HEADERS:
        value = get(name)
        if value is not None and "\r" not in value and "\n" not in value:
            lines += f"{name}: {value}\r\n"
    return lines


def _kept(name: str) -> bool:
    lower = name.lower()
    return lower not in _DROPPED_RESPONSE_HEADERS and not lower.startswith("access-control-")


#: `_kept` by exact header name: the engine sends the same dozen names on every answer.
_KEPT: dict[str, bool] = {}
_KEPT_MAX = 1024


def upstream_response_headers(
    upstream: Iterable[tuple[str, str]],
    secret_forms: tuple[str, ...] = (),
    secret_marker: str | None = None,
) -> list[tuple[str, str]]:
    """Response headers to copy: drop hop-by-hop, engine CORS, and what we rewrite, and any
    header whose value holds the engine secret in one of its `secret_forms`.

    On every forwarded response: one dict lookup per header name seen before, and with a
    secret one `in` per kept header (`secret_marker`, a part of the secret found in each of
    its forms); the forms are looked for only in a value that holds the marker.
    """
    known = _KEPT
    kept = []
    for item in upstream:
        name = item[0]
        keep = known.get(name)
        if keep is None:
            keep = _kept(name)
            if len(known) < _KEPT_MAX:
                known[name] = keep
        if keep:
            if secret_marker is not None and secret_marker in item[1]:
                if any(form in item[1] for form in secret_forms):
                    secret_dropped(name)
                    continue
            kept.append(item)
    return kept


def secret_dropped(name: str) -> None:
    """Log (the name, never the value) a response header dropped for holding the secret."""
    logger.warning(
        "dropped the engine's %s response header: its value holds the engine secret "
        "(an echo of the engine URL, e.g. a redirect by a hop between the proxy and the engine)",
        name,
    )


def without_secret_lines(lines: bytes, secret_bytes: tuple[bytes, ...]) -> bytes:
    """`Name: value` header lines (each ending in CRLF, as the fast lane's `_kept_lines`
    makes them) less the lines holding one of `secret_bytes` (`upstream_response_headers`'
    rule, for the fast lane: called only when a form was found in `lines`)."""
    out = []
    for line in lines.split(b"\r\n")[:-1]:
        if any(form in line for form in secret_bytes):
            secret_dropped(line.partition(b":")[0].decode("latin-1"))
        else:
            out.append(line + b"\r\n")
    return b"".join(out)


#: `_kept` by raw header name, for `proxy.http.fastlane` (names as the engine sent them).
_KEPT_RAW: dict[bytes, bool] = {}


def kept_raw(name: bytes) -> bool:
    """`upstream_response_headers`' rule for one header name as llhttp gave it."""
    keep = _KEPT_RAW.get(name)
    if keep is None:
        keep = _kept(name.decode("utf-8", "surrogateescape"))
        if len(_KEPT_RAW) < _KEPT_MAX:
            _KEPT_RAW[name] = keep
    return keep


def client_response_headers(
    headers: Iterable[tuple[str, str]], cache_control: str
) -> CIMultiDictProxy[str]:
    """An engine answer's client-facing headers plus its `Cache-Control`.

    Built once per answer: every client it is sent to (a flight's waiters, cache hits) gets
    a copy in one C-level call instead of a dozen header insertions.
    """
    built = CIMultiDict(headers)
    built["Cache-Control"] = cache_control
    return CIMultiDictProxy(built)


def private_cache_control(values: Iterable[str], max_age_cap: int | None) -> str:
    """Make an engine `Cache-Control` safe for a per-user response.

    `public` becomes `private`, shared-cache directives (`s-maxage`, `proxy-revalidate`,
    `immutable`) go, and `max-age` / `stale-*` are capped. `no-store`/`no-cache` survive, so
    errors and POST responses keep Electric's semantics. No header becomes `private, no-cache`.
    """
    out: list[str] = []
    for value in values:
        for directive in value.split(","):
            directive = directive.strip()
            if not directive:
                continue
            name, _, arg = directive.partition("=")
            name = name.strip().lower()
            if name in ("public", "private", "s-maxage", "proxy-revalidate", "immutable"):
                continue
            if (
                name in ("max-age", "stale-while-revalidate", "stale-if-error")
                and max_age_cap is not None
            ):
                try:
                    seconds = min(int(arg.strip().strip('"')), max_age_cap)
                except ValueError:
                    continue
                directive = f"{name}={seconds}"
            out.append(directive)
    if not out:
        out.append("no-cache")
    if "no-store" not in out:
        out.insert(0, "private")
    return ", ".join(out)


def shared_ttl(cache_control: Iterable[str], *, live: bool, live_max_age: float) -> float:
    """Seconds a shared cache may keep an answer with these `cache-control` values; 0 = never.

    `s-maxage` wins over `max-age` (the proxy's cache is a shared cache). `public` is required:
    Electric marks everything shareable that is, and anything else (no header, `private`,
    `no-store`, `no-cache`, `must-revalidate` with max-age 0) is not kept.
    """
    public = False
    max_age: float | None = None
    s_maxage: float | None = None
    for value in cache_control:
        for directive in value.split(","):
            name, _, arg = directive.strip().partition("=")
            name = name.strip().lower()
            if name == "public":
                public = True
            elif name in ("private", "no-store", "no-cache"):
                return 0.0
            elif name in ("max-age", "s-maxage"):
                try:
                    seconds = float(int(arg.strip().strip('"')))
                except ValueError:
                    return 0.0
                if name == "max-age":
                    max_age = seconds
                else:
                    s_maxage = seconds
    ttl = s_maxage if s_maxage is not None else max_age
    if not public or ttl is None or ttl <= 0:
        return 0.0
    return min(ttl, live_max_age) if live else ttl


@dataclass(frozen=True, slots=True)
class Head:
    """An engine response's status and headers, already made safe for clients."""

    status: int
    reason: str | None
    headers: tuple[tuple[str, str], ...]  # without Content-Length (set per response)
    content_length: int | None
    cache_control: str  # client-facing
    ttl: float  # how long the proxy's shared cache may keep it; 0: not at all
    #: `headers` plus `Cache-Control`, built once: a flight's waiters each copy it in one C
    #: call instead of adding a dozen headers one by one.
    response_headers: CIMultiDictProxy[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        headers = client_response_headers(self.headers, self.cache_control)
        object.__setattr__(self, "response_headers", headers)

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), as sent to clients."""
        return self.response_headers.get(name)

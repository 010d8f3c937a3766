"""Bounded engine requests, and engine error bodies cleaned before a client sees them.

The proxy rebuilds every engine URL: the enforced filter, its parameters, the client's own
clauses (escaped no more than the client could have written them: `proxy.upstream.url.
encode_query`) and the secret. The engine reads request lines of at most 10,000 bytes with
their line end (Electric's server's limit, `sync_engine.http.parser_refusals.
MAX_REQUEST_LINE`); past that it answers a 414 (older engines a 400 whose text could echo
the start of the URL). So the proxy measures the request target first and refuses with a
414 (`check_forwarded_fits`: in the engine's words when the client's own request would be
too long for it, else naming the limit; a GET subset snapshot can move its clauses into a
POST body instead: see `fits`).

Whatever the engine answers with a 4xx/5xx body is also passed through `sanitise_error_body`:
the secret (in any of its encodings) and any echo of the engine URL are removed, so no
version of the engine can leak them through the proxy.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

from yarl import URL

from proxy.errors import ProxyError
from sync_engine.http.parser_refusals import MAX_REQUEST_LINE, REQUEST_LINE_TOO_LONG

#: The engine's request-line limit (its line end included) less `POST ` and ` HTTP/1.1\r\n`:
#: the longest request target (path and query) it reads, for a GET or a POST. (It was
#: aiohttp's 8,190 bytes: the proxy refused targets of 8,177-9,984 bytes with a 414 that the
#: engine, now at Electric's 10,000, serves.)
ENGINE_MAX_LINE = MAX_REQUEST_LINE
MAX_REQUEST_TARGET = ENGINE_MAX_LINE - len("POST ") - len(" HTTP/1.1\r\n")

REMOVED_URL = "[engine request removed]"
REDACTED = "[REDACTED]"
#: An echo of the engine URL, to the end of its line (or JSON string): a decoded or quoted
#: URL may hold spaces and quotes, so nothing after the path is kept.
_ENGINE_PATH = re.compile(r"(?:https?://\S*?)?/v1/shape[^\r\n]*", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"((?:source_)?secret|api_secret|source_id)=[^&\s\"'<>]*", re.IGNORECASE)


class UriTooLong(ProxyError):
    """414: the engine request this would become is longer than the engine reads."""

    status = 414


def request_target_length(url: URL) -> int:
    """Bytes of the request target (path and query, as sent) of an absolute engine URL."""
    return len(url.raw_path_qs)


def target_limit(method: str = "GET") -> int:
    """The longest request target the engine reads after `method` (its request line is
    bounded, so a GET's target may be a byte longer than a POST's: the proxy measured every
    GET as a POST and refused a 9,985-byte target the engine serves)."""
    return MAX_REQUEST_TARGET + len("POST") - len(method)


def fits(url: URL, limit: int | None = None, method: str = "GET") -> bool:
    return request_target_length(url) <= (limit or target_limit(method))


def check_fits(url: URL, limit: int | None = None, method: str = "GET") -> None:
    """Raise `UriTooLong` when `url` is over the engine's request-line limit (for `method`).

    The message names the limit but nothing of the URL (which carries the enforced filter and
    the secret).
    """
    limit = limit or target_limit(method)
    if request_target_length(url) > limit:
        raise UriTooLong(
            "uri_too_long",
            f"Request too long: the request to the sync engine would exceed its {limit:,}-byte "
            "limit; shorten the where clause or send subset clauses in a POST body",
        )


def check_forwarded_fits(
    url: URL, method: str, *, client_method: str, client_target: str, credentials: str
) -> None:
    """`check_fits` for the engine request made of a client's (`client_method`,
    `client_target` as sent): past the limit, in the engine's own words (its
    `REQUEST_LINE_TOO_LONG`) when the client's request with the `credentials` a client of the
    engine adds itself (`&source_id=...&secret=...` as the proxy encodes them) is past it too,
    as the engine would answer it; else in the proxy's (the policy's filter or the proxy's
    forms made it longer), which say what to shorten."""
    try:
        check_fits(url, method=method)
    except UriTooLong:
        if len(client_target) + len(credentials) > target_limit(client_method):
            raise UriTooLong("uri_too_long", REQUEST_LINE_TOO_LONG.message) from None
        raise


def _needles(secret: str | None) -> list[str]:
    """The forms the secret takes in text: as it is, percent-encoded (as the proxy sends it
    in the engine URL's query, as yarl and `quote`/`quote_plus` make it) and JSON-escaped; longest
    first. One form for a hex or alphanumeric secret."""
    if not secret:
        return []
    from proxy.upstream.url import encode_value

    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        URL.build(query={"s": secret}).raw_query_string[2:],
        encode_value(secret),  # (as the engine URL holds it: `proxy.upstream.url`)
    }
    return sorted(forms, key=len, reverse=True)


def secret_forms(secret: str | None) -> tuple[str, ...]:
    """`_needles`: what `proxy.upstream.headers.upstream_response_headers` and the fast lane
    look for in the engine's response headers (`UpstreamOptions.secret_forms`)."""
    return tuple(_needles(secret))


def secret_marker(secret: str | None) -> str | None:
    """The longest run of letters and digits of the secret (its first, of equal ones): each
    of its `secret_forms` holds it unchanged (percent-encoding and JSON escaping leave letters
    and digits as they are), so a value without it holds none of them (one `in` per header).
    All of the secret for a hex or alphanumeric one; None without a secret."""
    if not secret:
        return None
    return max(re.split(r"[^A-Za-z0-9]+", secret), key=len)


def _clean_text(text: str, needles: list[str]) -> str:
    for needle in needles:
        text = text.replace(needle, REDACTED)
    if "/v1/shape" in text.lower():
        text = _ENGINE_PATH.sub(REMOVED_URL, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def _clean_json(value: Any, needles: list[str]) -> Any:
    if isinstance(value, str):
        return _clean_text(value, needles)
    if isinstance(value, list):
        return [_clean_json(item, needles) for item in value]
    if isinstance(value, dict):
        return {_clean_text(str(k), needles): _clean_json(v, needles) for k, v in value.items()}
    return value


def needs_sanitising(body: bytes, secret: str | None) -> bool:
    """Cheap test: could this body hold the secret or an engine URL?"""
    lowered = body.lower()
    if b"/v1/shape" in lowered or b"secret=" in lowered or b"source_id=" in lowered:
        return True
    return any(needle.encode() in body for needle in _needles(secret))


def sanitise_error_body(body: bytes, secret: str | None) -> bytes:
    """`body` without the secret or any engine URL; the same bytes when there is nothing to do.

    A JSON body stays JSON of the same structure (strings are cleaned one by one); anything
    else is cleaned as text.
    """
    if not body or not needs_sanitising(body, secret):
        return body
    needles = _needles(secret)
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return _clean_text(text, needles).encode()
    return json.dumps(_clean_json(parsed, needles), separators=(",", ":")).encode()


def clean_error_response(response: object, secret: str | None) -> bool:
    """Clean the body of a whole engine error answer in place, before it is sent; False
    when it cannot be looked at (a coding other than gzip or deflate, or a corrupt one): the
    caller answers its own 502 instead.

    Every error body arrives here whole (a `Response` with bytes), however it was framed
    (`proxy.upstream.client.read_error_body`: a hop's chunked error page too).
    """
    from proxy.http.wire import Response

    if not (isinstance(response, Response) and isinstance(response.body, bytes)):
        return True
    body = response.body
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity" and body:
        # (never the engine's, which compresses no answer: a hop's, e.g. nginx's gzip on an
        # error page echoing the engine URL; its compressed bytes hide the secret from
        # `needs_sanitising`, so it is looked at decoded)
        decoded = _decoded(body, encoding)
        if decoded is None:
            return False
        cleaned = sanitise_error_body(decoded, secret)
        if cleaned is not decoded:  # sent decoded, cleaned (identity is always acceptable)
            response.headers.popall("Content-Encoding", None)
            response.body = cleaned
        return True
    cleaned = sanitise_error_body(body, secret)
    if cleaned is not body:
        response.body = cleaned
    return True


def _decoded(body: bytes, encoding: str) -> bytes | None:
    """A gzip or deflate error body decoded (at most `ERROR_BODY_LIMIT` bytes); None for
    any other coding, a corrupt or truncated one, or one decoding to more."""
    import zlib

    from proxy.upstream.client import ERROR_BODY_LIMIT

    if encoding in ("gzip", "x-gzip"):
        tries = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        tries = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # (zlib-wrapped, or raw as some send it)
    else:
        return None
    for wbits in tries:
        decoder = zlib.decompressobj(wbits)
        try:
            data = decoder.decompress(body, ERROR_BODY_LIMIT + 1)
        except zlib.error:
            continue
        if len(data) <= ERROR_BODY_LIMIT and decoder.eof and not decoder.unconsumed_tail:
            return data
        return None
    return None

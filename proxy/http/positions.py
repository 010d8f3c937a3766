"""A shape GET's position parameters (`offset`, `handle`, `cursor`), split off its query.

Why: a live follower's every request names a new offset (and cursor), so the prepared
decision (`Runtime.prepared`) keyed by the whole query string was a one-shot entry each time
(a soak: 74 hits in ~12,000 requests) and the cache filled with them (~4.5 KB each, up to
`token_cache_size`: RSS rising for ~40 minutes, which looked like a leak). The decision never
reads them: the policy judges the definition, `live` and `live_sse` (`policy.evaluate`,
which passes the protocol parameters on untouched), the limits and the shape's definition key
leave them out (`upstream.url.definition_key`). So the decision is keyed by the rest of the
query and by the request's *kind* of position (which of the three came, and the offset's
class: `-1`, `-1_0`, `now`, or a log offset), and the engine request line is a template the
values are put into (`template`, `instantiate`).

That is exactly the general path's answer only for values it forwards as they came and whose
every spelling the engine checks alike; so only these are split off (`split`), and any other
query string returns None and is keyed whole, as before:

- each of the three at most once, spelled literally (a name that percent-decodes to one of
  them, `%6Fffset=`, declines the split: it would be a repeat), with a `=`;
- `offset`: `-1`, `-1_0`, `now`, or `<tx>_<op>` without leading zeros, `tx` below 2^64 (at
  most 19 digits) and `op` at most 18 digits or `inf` (below the engine's `INF_OP`, 2^62);
  the engine checks such an offset alike whatever its digits (`sync_engine.log.offsets`);
- `handle`: 1-128 of `[0-9A-Za-z_-]` (the engine's `electric-handle`s are digits and `-`;
  never empty: an empty one is dropped as absent);
- `cursor`: 0-18 digits (the engine reads it as an integer, an empty one as 0; kept empty);
- an `offset` present (a shape GET without one is the engine's 400, keyed whole).

Each of those characters is unreserved in a URL: the client's raw text is its decoded value
and yarl leaves it as it is in the engine URL, so the value goes into the template as sent.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from yarl import URL

from proxy.limits.upstream import MAX_REQUEST_TARGET

if TYPE_CHECKING:
    from proxy.runtime import Prepared

POSITIONS = ("offset", "handle", "cursor")

_LOG_OFFSET = re.compile(r"(?:0|[1-9][0-9]{0,18})_(?:0|[1-9][0-9]{0,17}|inf)")
_SPECIAL_OFFSETS = frozenset({"-1", "-1_0", "now"})
_HANDLE = re.compile(r"[0-9A-Za-z_-]{1,128}")
_CURSOR = re.compile(r"[0-9]{0,18}")
#: The longest values `split` accepts, together: a template is made only for an engine URL
#: that fits the engine's request line with them (`proxy.limits.upstream.check_fits`).
_LONGEST = 19 + 1 + 18 + 128 + 18

#: (the query without the position parameters, the kind, their values in `POSITIONS` order)
Split = tuple[str, str, tuple[str, ...]]


def split(query: str) -> Split | None:
    """The query string's position parameters split off (see the module's docstring), or
    None: the query is keyed whole."""
    if "offset=" not in query:
        return None
    offset = handle = cursor = None
    rest: list[str] = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if name == "offset":
            if offset is not None or not eq:
                return None
            offset = value
        elif name == "handle":
            if handle is not None or not eq:
                return None
            handle = value
        elif name == "cursor":
            if cursor is not None or not eq:
                return None
            cursor = value
        elif name in POSITIONS or ("%" in name and unquote(name) in POSITIONS):
            return None  # (`offset` without `=`; or a spelling the decoded query reads so)
        else:
            rest.append(part)
    if offset is None:
        return None
    if offset in _SPECIAL_OFFSETS:
        kind = offset
    elif _LOG_OFFSET.fullmatch(offset) is not None:
        kind = "L"
    else:
        return None
    kind += ":"
    values = [offset]
    if handle is not None:
        if _HANDLE.fullmatch(handle) is None:
            return None
        kind += "h"
        values.append(handle)
    if cursor is not None:
        if _CURSOR.fullmatch(cursor) is None:
            return None
        kind += "c"
        values.append(cursor)
    return "&".join(rest), kind, tuple(values)


def template(prepared: Prepared, kind: str, values: tuple[str, ...]) -> Prepared | None:
    """`prepared` (the general path's decision for a request whose positions `split` gave as
    `kind` and `values`) as the decision of every request of that kind with the same rest of
    the query: its engine request line and URL as templates (`%` escaped, `%s` for each
    value). None when its engine URL is not made of them as `split` read them (each once, in
    `POSITIONS` order, as sent), or would not fit the engine's request line with the longest
    values, or carries a subset (sent as a POST once too long): then it is kept whole."""
    url = prepared.url
    raw_query = url.raw_query_string
    if prepared.upstream_body is not None or any(n.startswith("subset__") for n in url.query):
        return None  # (a subset, in the URL or moved to a POST body: review 16:57)
    if len(url.raw_path_qs) - sum(map(len, values)) + _LONGEST > MAX_REQUEST_TARGET:
        return None
    parts = []
    found = []
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        if name in POSITIONS:
            found.append((name, value))
            parts.append(f"{name}=%s")
        else:
            parts.append(part.replace("%", "%%"))
    present = kind.partition(":")[2]
    names = ["offset"]
    if "h" in present:
        names.append("handle")
    if "c" in present:
        names.append("cursor")
    if found != list(zip(names, values, strict=True)):
        return None
    query_template = "&".join(parts)
    line = prepared.request_line
    url_text = prepared.url_text
    marker = "?" + raw_query
    at = line.find(marker + " HTTP/1.1\r\n")
    if at < 0 or not url_text.endswith(marker):
        return None
    line_template = (
        line[:at].replace("%", "%%") + "?" + query_template
        + line[at + len(marker):].replace("%", "%%")
    )  # fmt: skip
    url_template = url_text[: -len(marker)].replace("%", "%%") + "?" + query_template
    if line_template % values != line or url_template % values != url_text:
        return None
    # (its own request's URL, its text and request line are never sent: not kept, only the
    # templates; a 4 KB where made an entry ~1.5x the whole-query one: review 17:27)
    return dataclasses.replace(
        prepared,
        kind=kind,
        line_template=line_template,
        url_template=url_template,
        url=_NO_URL,
        url_text="",
        request_line="",
    )


#: A template's `url` (`template`): each request's is made by `instantiate`.
_NO_URL = URL()


def instantiate(prepared: Prepared, values: tuple[str, ...]) -> Prepared:
    """The decision of a request of `prepared`'s kind with these position `values`: what the
    general path makes of it (its engine URL, request line and handle)."""
    url_text = prepared.url_template % values
    handled = "h" in (prepared.kind or "").partition(":")[2]
    return dataclasses.replace(
        prepared,
        url=URL(url_text, encoded=True),
        url_text=url_text,
        handle=values[1] if handled and not prepared.initial else None,
        request_line=prepared.line_template % values,
        kind=None,
        line_template="",
        url_template="",
    )

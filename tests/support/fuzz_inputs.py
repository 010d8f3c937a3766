"""Seeded random and malformed `/v1/shape` requests, for the engine's and the proxy's fuzz tests.

`shape_requests(seed, n, ...)` yields `FuzzRequest`s: a method, a query string already
encoded (so it can hold percent-escapes of invalid UTF-8, NUL bytes, repeated keys and
malformed escapes exactly as sent), an optional body and headers. The mix: plausible
definitions with one or two things wrong, where fragments from a small grammar (including
constructs that only fail when Postgres runs them and nesting hundreds of levels deep),
hostile strings, huge values and random bytes. Same seed, same requests.

Placeholders `{handle}` and `{offset}` in values are for the caller to replace with a real
shape's, so some requests reach the paths behind a valid handle.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

#: The table the requests are about: `items (id int PRIMARY KEY, title text, n int,
#: tags text[], at timestamptz)`; see `ITEMS_DDL`.
ITEMS_DDL = (
    "CREATE TABLE items (id int PRIMARY KEY, title text, n int, tags text[], at timestamptz)"
)
COLUMNS = ("id", "title", "n", "tags", "at")


@dataclass
class FuzzRequest:
    method: str
    query: str  # encoded, without the `?`
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = ""  # which generator made it, for reports

    @property
    def path(self) -> str:
        return "/v1/shape?" + self.query if self.query else "/v1/shape"


HOSTILE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "'",
    '"',
    "\\",
    "%",
    "%00",
    "'; DROP TABLE items; --",
    "☃",
    "\u202e",
    "\ud7ff",
    "\ufffd",
    "\U0001d518\U0001d52b",
    "ß",
    "İ",
    "\r\n",
    "\t",
    "$1",
    "$0",
    "$99999999999",
    "null",
    "true",
    "-1",
    "0_0",
    "now",
    "9" * 40,
    "-" * 10,
    "[]",
    "{}",
    '{"1":"a"}',
    "x" * 300,
]

WHERE_ATOMS = [
    "id = 1",
    "n > 5",
    "title = 't1'",
    "title LIKE 't%'",
    "title ILIKE $1",
    "n IN (1, 2, 3)",
    "n BETWEEN 1 AND 3",
    "tags @> ARRAY['a']",
    "at > '2024-01-01'",
    "at > now()",
    "title IS NULL",
    "n IS NOT DISTINCT FROM 1",
    "upper(title) = 'T1'",
    "lower(title) = $1",
    "length(title) > 1",
    "id = $1",
    "n = $2",
    "true",
    "NOT false",
    "id / 0 = 1",
    "title::int4 = 1",
    "n * 2147483647 * 2 > 1",
    "ARRAY[[[[[[[1]]]]]]] IS NOT NULL",
    "(n::text)::int > 1",
    "nope = 1",
    "n = ",
    "n = 'abc'",
    "1=1) OR (1=1",
    "n = 1; DROP TABLE items",
    "id IN (SELECT id FROM items)",
    "pg_sleep(1) IS NULL",
    "count(*) > 1",
    "title = 'a\x00b'",
    "n > 1 --",
    "n > 1 /* c",
    "title = E'\\\\x'",
    "title = U&'\\0041'",
    "$$x$$ = title",
    "n > -9223372036854775808",
    "n::numeric(1000, 2) > 1",
    "at AT TIME ZONE 'UTC' > '2020-01-01'",
    "tags[1] = 'a'",
    "tags[99999999999] = 'a'",
]


def _deep(rng: random.Random) -> str:
    """Nesting a parser or compiler may recurse on: hundreds of levels."""
    depth = rng.choice([50, 100, 200, 300, 600, 1200])
    form = rng.randrange(7)
    if form == 0:
        return "NOT " * depth + "true"
    if form == 1:
        return "- " * depth + "1 = 1"
    if form == 2:
        return "n" + "+1" * depth + " > 1"
    if form == 3:
        return "(" * depth + "true" + ")" * depth
    if form == 4:
        return " AND ".join(["n > 1"] * depth)
    if form == 5:
        return "n" + "::int" * depth + " > 1"
    return "upper(" * depth + "title" + ")" * depth + " = 'X'"


#: Where atoms that are valid for `items` (the others above are wrong in some way).
GOOD_ATOMS = [*WHERE_ATOMS[:15], "n = 3", "id < 10", "title <> 'x'", "n IS NOT NULL"]


def _where(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return _deep(rng)
    if roll < 0.12:
        return rng.choice(HOSTILE)
    atoms = GOOD_ATOMS if roll < 0.6 else WHERE_ATOMS
    parts = [rng.choice(atoms) for _ in range(rng.randint(1, 3))]
    glue = rng.choice([" AND ", " OR ", " AND NOT "] * 3 + [" ", ", "])
    text = glue.join(parts)
    if rng.random() < 0.08:  # cut somewhere
        text = text[: rng.randrange(len(text) + 1)]
    return text


def _table(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return "items"
    return rng.choice(
        [
            "ITEMS",
            '"items"',
            "public.items",
            '"public"."items"',
            "nope",
            "pg_catalog.pg_class",
            "information_schema.tables",
            "a.b.c",
            '"items',
            "items;drop",
            "x" * 64,
            '""',
            ".",
            "public.",
            *HOSTILE,
        ]
    )


def _columns(rng: random.Random) -> str:
    pick = ["id", *rng.sample(COLUMNS[1:], rng.randint(0, len(COLUMNS) - 1))]
    roll = rng.random()
    if roll < 0.3:
        return ",".join(f'"{c}"' for c in pick)
    if roll < 0.5:
        return ",".join(pick)
    if roll < 0.8:
        return ",".join(reversed(pick))
    if roll < 0.85:
        return ",".join(pick) + ",nope"
    return rng.choice(["title", "id,,n", '"id', "id,", '"ID"', ",".join(["id"] * 500), *HOSTILE])


def _offset(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return rng.choice(["-1", "-1", "now", "{offset}"])
    return rng.choice(
        ["-1"] * 5
        + ["now", "{offset}", "0_0", "0_inf", "-1_0", "1_2_3", "0_-1", "abc", "9" * 30 + "_0"]
        + [f"{rng.randrange(10**12)}_{rng.randrange(100)}", *HOSTILE]
    )


def _handle(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return "{handle}"
    return rng.choice(
        ["{handle}"] * 3
        + ["1-2", "nope", "x" * 300, "x" * 5000, f"{rng.randrange(2**32)}-1", *HOSTILE]
    )


def _flag(rng: random.Random) -> str:
    return rng.choice(["true", "false", "", "1", "yes", "FALSE", *HOSTILE[:6]])


def _valid_definition(rng: random.Random) -> list[tuple[str, str]]:
    """A definition the engine accepts (the where's `$n` all given)."""
    offset = rng.choice(["-1", "-1", "now", "{offset}"])
    q: list[tuple[str, str]] = [("table", rng.choice(["items"] * 8 + ['"items"', "public.items"]))]
    q.append(("offset", offset))
    if rng.random() < 0.7:
        where = " AND ".join(rng.choice(GOOD_ATOMS) for _ in range(rng.randint(1, 2)))
        q.append(("where", where))
        needed = max((int(m) for m in re.findall(r"\$(\d)", where)), default=0)
        q += [(f"params[{i}]", rng.choice(["1", "3", "t1"])) for i in range(1, needed + 1)]
    if rng.random() < 0.3:
        q.append(("columns", ",".join(f'"{c}"' for c in ["id", *rng.sample(COLUMNS[1:], 2)])))
    if offset == "{offset}":
        q.append(("handle", "{handle}"))
        if rng.random() < 0.3:
            q += [("live", "true"), ("cursor", str(rng.randrange(10**6)))]
            if rng.random() < 0.3:
                q += [("live_sse", "true"), ("experimental_live_sse", "true")]
    if rng.random() < 0.2:
        q.append(("replica", rng.choice(["default", "full"])))
    if rng.random() < 0.2:
        q.append(("log", rng.choice(["full", "changes_only"])))
    return q


def _definition(rng: random.Random) -> list[tuple[str, str]]:
    """A valid definition, half the time with one to three things made wrong."""
    q = _valid_definition(rng)
    if rng.random() < 0.5:
        return q
    for _ in range(rng.randint(1, 3)):
        roll = rng.randrange(12)
        if roll == 0:
            q = [(k, _table(rng)) if k == "table" else (k, v) for k, v in q]
        elif roll == 1:
            q = [(k, _offset(rng)) if k == "offset" else (k, v) for k, v in q]
        elif roll == 2:
            q = [(k, v) for k, v in q if k != "where"] + [("where", _where(rng))]
        elif roll == 3:
            for i in range(1, rng.randint(2, 4)):
                key = rng.choice([str(i)] * 4 + ["0", "a", "", "-1", "²", "1" * 12, f"{i}]"])
                q.append((f"params[{key}]", rng.choice(["1", "t1", "x", *HOSTILE])))
        elif roll == 4:
            q = [(k, v) for k, v in q if k != "columns"] + [("columns", _columns(rng))]
        elif roll == 5:
            q = [(k, v) for k, v in q if k != "handle"] + [("handle", _handle(rng))]
        elif roll == 6:
            q.append((rng.choice(["live", "live_sse", "experimental_live_sse"]), _flag(rng)))
        elif roll == 7:
            q.append(("cursor", rng.choice(["", "1", "abc", "9" * 400, "-5", *HOSTILE])))
        elif roll == 8:
            q.append((rng.choice(["replica", "log"]), rng.choice(["FULL", "weird", *HOSTILE])))
        elif roll == 9:
            q.append(("params", rng.choice(['{"1":"a"}', "[1]", *HOSTILE[:6]])))
        elif roll == 10:
            q = [(k, v) for k, v in q if rng.random() < 0.7]  # something required may go
        else:
            q.append((rng.choice(["cache-buster", "expired_handle", "source_id", "zz"]), "1"))
    return q


def _valid_subset(rng: random.Random) -> list[tuple[str, str]]:
    out = [("subset__where", rng.choice([*GOOD_ATOMS[:5], "n = 3", "id < 10"]))]
    if rng.random() < 0.5:
        out += [("subset__order_by", rng.choice(["id", "n DESC, id"])), ("subset__limit", "5")]
    return out


def _subset(rng: random.Random) -> list[tuple[str, str]]:
    if rng.random() < 0.5:
        return _valid_subset(rng)
    out: list[tuple[str, str]] = []
    if rng.random() < 0.7:
        out.append(("subset__where", _where(rng)))
    if rng.random() < 0.4:
        out.append(("subset__order_by", rng.choice(
            ["id", "n DESC", "title ASC NULLS FIRST", "nope", "id; DROP TABLE items",
             "upper(title)", "1", *HOSTILE[:10]])))  # fmt: skip
    if rng.random() < 0.4:
        out.append(("subset__limit", rng.choice(["1", "0", "-1", "abc", "9" * 30, "1.5", "10"])))
    if rng.random() < 0.3:
        out.append(("subset__offset", rng.choice(["0", "-1", "abc", "9" * 30, "3"])))
    if rng.random() < 0.3:
        out.append(("subset__params", rng.choice(
            ['{"1":"a"}', '["a"]', "{not json", '{"1":{"a":1}}', '{"x":"1"}', "[" * 2000,
             *HOSTILE[:10]])))  # fmt: skip
    if rng.random() < 0.2:
        out.append(("subset__params[1]", rng.choice(HOSTILE)))
    if rng.random() < 0.1:
        out.append(("subset__bogus", "1"))
    return out or [("subset__where", "true")]


def _body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        valid: dict[str, object] = {"where": rng.choice(["n = 3", "id < 10", "title ILIKE $1"])}
        if "$1" in str(valid["where"]):
            valid["params"] = rng.choice([{"1": "t%"}, ["t%"]])
        if rng.random() < 0.5:
            valid.update(order_by="id", limit=rng.randint(1, 20), offset=rng.randint(0, 3))
        return json.dumps(valid).encode()
    roll = rng.random()
    if roll < 0.5:
        body: dict[str, object] = {}
        if rng.random() < 0.8:
            body["where"] = _where(rng)
        if rng.random() < 0.3:
            body["params"] = rng.choice(
                [{"1": "a"}, ["a", "b"], {"1": {"x": 1}}, "nope", {"a": "1"}, {"1": None}, [1, 2.5]]
            )
        if rng.random() < 0.3:
            body["order_by"] = rng.choice(["id", "nope", 5, None])
        if rng.random() < 0.3:
            body["limit"] = rng.choice([1, 0, -1, "x", 10**30, 1.5, True])
        if rng.random() < 0.2:
            body["offset"] = rng.choice([0, -1, "x", 10**30])
        if rng.random() < 0.1:
            body["subset"] = {"where": _where(rng)}
        if rng.random() < 0.1:
            body["where_expr"] = {"type": "func", "name": "eq", "args": []}
        if rng.random() < 0.1:
            body["table"] = _table(rng)
        return json.dumps(body).encode()  # not orjson: integers beyond 64 bits
    if roll < 0.6:
        depth = rng.choice([10, 63, 65, 200, 1000, 2000])
        return ('{"where":"true","x":' + "[" * depth + "]" * depth + "}").encode()
    choices = [b"", b"{", b"[]", b"null", b"42", b'"s"', b"\xff\xfe\x00", b'{"where": 1}',
               b'{"where":"' + b"n > 1 OR " * 10000 + b'true"}',
               b'{"' + b'k":1,"'.join(str(i).encode() for i in range(300)) + b'":1}',
               bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))]  # fmt: skip
    return rng.choice(choices)


def _encode(query: list[tuple[str, str]], rng: random.Random) -> str:
    parts = []
    for k, v in query:
        if rng.random() < 0.03:  # a raw, possibly malformed escape instead of the value
            v_enc = rng.choice(["%ff%fe", "%C0%AF", "%ED%A0%80", "%zz", "%", "%0", "%00", "+%2B"])
        else:
            v_enc = quote(v, safe="")
        k_enc = quote(k, safe="[]") if rng.random() < 0.9 else quote(k, safe="")
        parts.append(f"{k_enc}={v_enc}" if rng.random() < 0.97 else k_enc)
    return "&".join(parts)


def _random_query(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "%&=[]_-.~+$'\"()*;:,/?@!"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))


def shape_requests(seed: int, n: int) -> Iterator[FuzzRequest]:
    """`n` requests; every request's query is below the engine's 10,000-byte request-line
    limit unless it is one of the deliberately huge ones (kind `huge`)."""
    rng = random.Random(seed)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.45:
            yield FuzzRequest("GET", _encode(_definition(rng), rng), kind="definition")
        elif roll < 0.6:
            q = _definition(rng) + _subset(rng)
            yield FuzzRequest("GET", _encode(q, rng), kind="subset")
        elif roll < 0.75:
            q = _definition(rng)
            headers = {"content-type": rng.choice(["application/json", "text/plain", ""])}
            yield FuzzRequest("POST", _encode(q, rng), _body(rng), headers, kind="post")
        elif roll < 0.8:
            q = _definition(rng)
            q += [(k, v) for k, v in q if rng.random() < 0.5]  # repeated parameters
            yield FuzzRequest("GET", _encode(q, rng), kind="repeated")
        elif roll < 0.85:
            yield FuzzRequest("GET", _random_query(rng), kind="random")
        elif roll < 0.9:
            method = rng.choice(["DELETE", "HEAD", "OPTIONS", "PUT", "PATCH"])
            yield FuzzRequest(method, _encode(_definition(rng), rng), kind="method")
        elif roll < 0.95:
            q = [("table", "items"), ("offset", "-1")]
            name = rng.choice(["where", "columns", "table", "handle", "params[1]", "cursor",
                               "subset__where", "subset__order_by", "zz"])  # fmt: skip
            q.append((name, rng.choice(["a", "n > 1 AND ", "1,"]) * rng.choice([2000, 3000])))
            yield FuzzRequest("GET", _encode(q, rng), kind="huge")
        else:
            q = [("table", "items"), ("offset", "-1")]
            q += [(f"params[{i}]", "1") for i in range(1, rng.choice([5, 100, 600]))]
            q.append(("where", "id = $1"))
            yield FuzzRequest("GET", _encode(q, rng), kind="many-params")


#: Every parameter the engine reads, and a few it must ignore.
PARAM_NAMES = ("table", "offset", "handle", "where", "columns", "replica", "log", "live",
               "live_sse", "experimental_live_sse", "cursor", "params[1]", "params",
               "subset__where", "subset__params", "subset__params[1]", "subset__limit",
               "subset__offset", "subset__order_by", "queryable_columns", "source_id",
               "secret", "zz")  # fmt: skip
#: Values as sent (already percent-encoded): invalid UTF-8, a UTF-8 encoded lone surrogate,
#: an overlong slash, NUL bytes, malformed escapes, whitespace only, huge integers.
BAD_ENCODED = ("%ff%fe", "%ED%A0%80", "%C0%AF", "%00", "a%00b", "%zz", "%", "%4", "%20",
               "%C2%A0", "%09%0A", "1" + "0" * 5000, "-" + "9" * 5000, "0_" + "1" * 5000,
               "1" + "0" * 5000 + "_0", "%5Cud800", "%22%5Cud800%22")  # fmt: skip
_VALID_DEFINITION = "table=items&offset=%7Boffset%7D&handle=%7Bhandle%7D"  # (`send` fills them)
_DEEP_PARENS = "(" * 1000 + "true" + ")" * 1000
_BIG = "x" * (100 * 1024)


def _with(name: str, value: str) -> str:
    """The valid definition with `name` set to the encoded `value` (replacing its own)."""
    base = [p for p in _VALID_DEFINITION.split("&") if not p.startswith(name + "=")]
    return "&".join([*base, f"{quote(name, safe='[]')}={value}"])


def edge_requests() -> Iterator[FuzzRequest]:
    """Each malformed input in each parameter, deterministically (no seed): invalid UTF-8
    (`%ff%fe`), NUL bytes, bad escapes (`%zz`), repeated parameters, 100 KB values, 1,000
    parentheses deep, unknown parameters, lone surrogates (UTF-8 encoded in the URL, a
    `\\ud800` escape in JSON), whitespace-only values, integers of 5,000 digits."""
    for name in PARAM_NAMES:
        for value in BAD_ENCODED:
            yield FuzzRequest("GET", _with(name, value), kind="edge-value")
        for value in BAD_ENCODED[:7]:  # (the name itself malformed)
            yield FuzzRequest("GET", _VALID_DEFINITION + f"&{value}{name}=1", kind="edge-name")
        yield FuzzRequest("GET", _VALID_DEFINITION + f"&{name}=a&{name}=b", kind="edge-repeated")
        yield FuzzRequest("GET", _with(name, "items") + f"&{name}=nope", kind="edge-repeated")
        yield FuzzRequest("GET", _with(name, _BIG), kind="edge-100kb")
    yield FuzzRequest("GET", "table=a&table=b&offset=-1", kind="edge-repeated")
    for name in ("where", "subset__where", "subset__order_by"):
        yield FuzzRequest("GET", _with(name, quote(_DEEP_PARENS)), kind="edge-deep")
        yield FuzzRequest("GET", _with(name, quote("n > 1 AND " + _DEEP_PARENS)), kind="edge-deep")
    for clause in (
        r"title = E'\uD800'",
        r"title = U&'\D800'",
        r"title = E'\uDC00x'",
        r"title = U&'!D800' UESCAPE '!'",
        r"title = E'\xED\xA0\x80'",
        r"title = E'\355\240\200'",
        r"title = E'\U00110000'",
        r"title = U&'\0000'",
    ):
        for name in (
            "where",
            "subset__where",
        ):  # (SQL escapes of a lone surrogate, NUL, past U+10FFFF)
            yield FuzzRequest("GET", _with(name, quote(clause, safe="")), kind="edge-escape")
    for extra in ("zz=1", "foo[bar]=1", "params[1][2]=x", "subset__zz=1", "subset=1",
                  "subset[where]=true", "params[]=1", "params[=1", "=1", "&&", "="):  # fmt: skip
        yield FuzzRequest("GET", _VALID_DEFINITION + "&" + extra, kind="edge-unknown")
    json_headers = {"content-type": "application/json"}
    for key in ("where", "order_by", "params", "limit", "offset", "table", "subset"):
        for value in ('"\\ud800"', '"a\\u0000b"', '"' + _BIG + '"', '"' + _DEEP_PARENS + '"',
                      "1e400", "1" + "0" * 5000, "-" + "9" * 5000, "NaN", '"  "',
                      '{"1":"\\ud800"}', '{"1":1e400}', '{"1":' + "1" * 5000 + "}"):  # fmt: skip
            body = ('{"order_by":"id",' if key != "order_by" else "{") + f'"{key}":{value}}}'
            yield FuzzRequest("POST", _VALID_DEFINITION, body.encode(), json_headers, "edge-body")
    for raw in (b'{"where":"\xff\xfe"}', b'\xef\xbb\xbf{"where":"true"}',
                b'{"where":"true","where":"\\ud800"}', b'{"a":1e400,"where":"\\ud800"}'):  # fmt: skip
        yield FuzzRequest("POST", _VALID_DEFINITION, raw, json_headers, "edge-body")
    for name in PARAM_NAMES:  # (last: one may delete the shape the others name)
        yield FuzzRequest("DELETE", _with(name, "%ff%fe"), kind="edge-delete")


def loud_log_lines(text: str) -> list[str]:
    """Lines of a program's log (text or JSON format) at ERROR or above, or with a traceback."""
    loud = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {}
            if entry.get("level") in ("error", "critical") or "traceback" in entry:
                loud.append(line)
        elif "Traceback" in line or " ERROR " in line or " CRITICAL " in line:
            loud.append(line)
    return loud


def raw_requests(seed: int, n: int) -> Iterator[bytes]:
    """Whole HTTP/1.1 requests no client library would send: bytes straight on the socket
    (NUL, invalid UTF-8, spaces and control bytes in the target, broken or huge headers)."""
    rng = random.Random(seed)
    junk = [
        b"\x00",
        b"\xff",
        b"\xc0\xaf",
        b" ",
        b"\t",
        b"\x7f",
        b"%",
        b"#",
        b"\r",
        b"\n",
        b"\xe2\x98",
    ]
    for _ in range(n):
        target = bytearray(b"/v1/shape?table=items&offset=-1&where=")
        for _ in range(rng.randint(1, 8)):
            target += rng.choice(junk) if rng.random() < 0.5 else rng.choice(WHERE_ATOMS).encode()
        method = rng.choice([b"GET", b"POST", b"G\x00T", b"get", b"BREW", b""])
        headers = [b"Host: x", b"Connection: close"]  # the answer then ends at EOF
        roll = rng.random()
        if roll < 0.2:
            headers.append(b"X-Big: " + b"y" * rng.choice([100, 9000]))
        elif roll < 0.35:
            headers.append(rng.choice([b"No colon", b": empty-name", b"X\x00: 1", b"X: \xff\xfe"]))
        elif roll < 0.45:
            headers += [b"X-%d: 1" % i for i in range(rng.choice([50, 200]))]
        elif roll < 0.55:
            headers += [b"Content-Length: 5", b"Transfer-Encoding: chunked"]
        elif roll < 0.6:
            target += b"x" * 9000
        version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/9.9", b"HTTP/1", b""])
        yield b"%s %s %s\r\n%s\r\n\r\n" % (method, bytes(target), version, b"\r\n".join(headers))

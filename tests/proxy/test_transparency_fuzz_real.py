"""Seeded differential fuzz: the same requests straight to the engine and through the proxy
under the open policy (config/examples/open.yaml) must get the same answers.

Real path: proxy -> `sync-engine` (no secret, so both get byte-identical query strings) ->
PostgreSQL. A generator makes valid and malformed requests: repeated and oddly-cased
parameters, percent-encoded names and values, empty and huge values, bad offsets and handles,
column lists with quotes, `params[n]` variants, subset parameters, POST bodies, HEAD, OPTIONS
preflights with various Origins and request headers, If-None-Match. For each, the status, the
JSON error body (less the proxy's `code`), the rows of a valid answer and its body byte for
byte (but a subset's random `snapshot_mark`), and every header a
client reads (electric-*, cache-control, etag, content-type, content-encoding,
access-control-*, vary) must be the same, except `electric-cursor` (time-based) whose presence
only is compared. Other protocol parameters with odd values (Unicode, `&`, `;`), request
headers a client or a hop may add (Accept-Encoding, `Connection: Upgrade` as curl --http2
sends it, If-None-Match, Range, cookies, forwarding headers) and compressed POST bodies are
drawn too.

Also drawn: SSE (`live_sse`, `experimental_live_sse`; the engine's streams last 1 s, compared
by their events as sets: the proxy carries a client's stream that ends sooner than 2 s onto
the next one), DELETE (the engine runs without `--allow-delete`), `params[]` and encoded
bracket names, a parameter repeated with another value (both read the last, as Electric:
the proxy must never check one value and send another), raw bytes and broken
percent-escapes, lower-case hex, `%2B` next to `+`, values and names at and past the length
limits.

Swept at volume (07:30-08:35 UTC, 2026-12-05): seeds 1-400, 100,000 requests, no difference;
seeds 1-200 with bodies byte for byte, none (subset answers differed only in
`snapshot_mark`, random per request on both sides alike).

Bounded: `PROXY_TRANSPARENCY_FUZZ_ROUNDS` requests (default 250; about 2-3 s here) for the
seed `PROXY_TRANSPARENCY_FUZZ_SEED`; out of CI, `PROXY_TRANSPARENCY_FUZZ_SEEDS=1-200` sweeps a
range of seeds (each its rounds) against one engine and proxy.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import psycopg
import pytest
import yaml
from multidict import CIMultiDict
from yarl import URL

from proxy.config.loader import build_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("PROXY_TRANSPARENCY_FUZZ_SEED", "20261204"))
_SWEEP = os.environ.get("PROXY_TRANSPARENCY_FUZZ_SEEDS", "")
SEEDS = list(range(int(_SWEEP.split("-")[0]), int(_SWEEP.split("-")[-1]) + 1)) if _SWEEP else [SEED]
ROUNDS = int(os.environ.get("PROXY_TRANSPARENCY_FUZZ_ROUNDS", "250"))

#: Headers a client reads, compared by value (lower-case names).
READ_HEADERS = (
    "cache-control",
    "content-encoding",
    "etag",
    "content-type",
    "vary",
    "retry-after",
    "location",
    "allow",
    "server",
    "connection",
)
PRESENCE_ONLY = ("electric-cursor",)
#: Not compared (comma-separated names; none by default).
IGNORED = os.environ.get("PROXY_TRANSPARENCY_FUZZ_IGNORE", "").split(",")
#: Compare a valid answer's body byte for byte too (not only its rows and controls).
BYTES = os.environ.get("PROXY_TRANSPARENCY_FUZZ_BYTES", "1") == "1"


@pytest.fixture(params=["no-secret", "secret"])
def engine(
    db_url: str, tmp_path: Path, engine_secret: str, request: pytest.FixtureRequest
) -> Iterator[EngineProcess]:
    """The engine, without a secret (both get the same query string) or with one (the
    proxy injects it; a direct request gets it appended, as a server-side caller would)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, "Mixed" int)'
        )
        conn.execute(
            "INSERT INTO items VALUES (1, 'org-a', 'a1', 1), (2, 'org-b', 'b1', 2), "
            "(3, 'org-a', NULL, NULL)"
        )
        conn.execute("CREATE TABLE other (k text PRIMARY KEY, v jsonb)")
        conn.execute("""INSERT INTO other VALUES ('x', '{"a": 1}')""")
    secret = ("--secret", engine_secret) if request.param == "secret" else ()
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--sse-timeout", "1", *secret
    )
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


TABLES = ["items", "items", "items", "public.items", '"items"', "ITEMS", "other", "nosuch",
          "", " items", "public.", "a.b.c", '"it""ems"', "items%00", "%69tems"]  # fmt: skip
OFFSETS = ["-1", "-1", "-1", "now", "0_0", "abc", "-2", "0_inf", "1_0", "99999999999999999999_0",
           "", "-1 ", "0_-1", "-1.0"]  # fmt: skip
WHERES = ["id > 1", "id > $1", "title = $1 AND id > $2", "org_id = 'org-a'", "id >", "nosuch = 1",
          "\"Mixed\" = 1", "Mixed = 1", "title ILIKE '%a%'", "id IN (1, 2)", "id = ANY($1)",
          "1=1) OR (1=1", "title", "null", "id > 1 -- c", "id > 1; SELECT 1", "$1", "true",
          "(SELECT 1) = 1", "lower(title) = 'a1'", "id = $0", "x" * 5000, "'", "id > 0\x00"]  # fmt: skip
PARAM_VALUES = ["1", "abc", "", "{1,2}", "org-a", "2", "-1", "1e3", "x" * 300]
COLUMNS = ["id", "id,title", '"id","title"', "id,id", "title", "'id'", '"Mixed",id', "Mixed,id",
           "id, title", "", "id,", '"id', "*", "id,nosuch"]  # fmt: skip
NAME_VARIANTS = {"table": ["Table", "TABLE", "%74able", "table "], "offset": ["Offset", "%6Fffset"],
                 "where": ["WHERE", "wh%65re"]}  # fmt: skip
ORIGINS = [None, "https://app.example.com", "null", "http://evil.example", ""]
#: Other protocol parameters, and values a client could put in any of them.
EXTRA_NAMES = ["live_sse", "experimental_live_sse", "expired_handle", "subset__where_expr",
               "subset__order_by_expr", "api_secret", "secret", "source_id", "queryable_columns",
               "subset__params", "params[1]", "live", "handle", "columns", "replica", "log"]  # fmt: skip
EXTRA_VALUES = ["1", "true", "", "x", "é", "日本", "\u202e", "\U0001f600", "\ufeff", "İ", "-1", "now",
                "0_0", '{"1":"a"}', "id", "id > 1", "%", "a&b", "a=b", "a+b", "a;b"]  # fmt: skip
#: Request headers a client (or something on the way) may add.
HEADER_SETS: list[dict[str, str]] = [
    {"Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip, deflate, br"}, {"Accept-Encoding": "*"},
    {"Accept-Encoding": "identity"}, {"Accept": "text/event-stream"}, {"Accept": "application/xml"},
    {"If-None-Match": "*"}, {"If-None-Match": 'W/"x"'}, {"Range": "bytes=0-10"}, {"Cookie": "a=b"},
    {"Authorization": "Bearer garbage"}, {"Authorization": "Basic dTpw"}, {"X-Forwarded-For": "1.2.3.4"},
    {"Forwarded": "for=1.2.3.4"}, {"Cache-Control": "no-cache"}, {"Pragma": "no-cache"},
    {"Connection": "close"}, {"Connection": "Upgrade", "Upgrade": "websocket"},
    {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQ"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"X-Request-Id": "abc"}, {"X-Request-Id": "x" * 300}, {"TE": "trailers"}, {"Max-Forwards": "0"},
    {"Host": "evil.example"}, {"If-Match": "*"}, {"Accept-Language": "fr"},
]  # fmt: skip


#: Escapes no client library makes, spliced into a value now and then.
ODD_ESCAPES = ["%FF", "%C0%AF", "%E2%80%AE", "%2", "%", "%%", "%zz", "%00", "%0A", "%0D%0A",
               "%ED%A0%80", "%F4%90%80%80", "%2B", "+", "%20", "%3D", "%26", "%3B", ";", "%23",
               "%EF%BB%BF"]  # fmt: skip


def _enc(value: str, rng: random.Random) -> str:
    """Percent-encode a value the way some client would: fully, minimally, with `+`, with
    lower-case hex; now and then with an odd escape spliced in."""
    style = rng.random()
    if style < 0.55:
        text = quote(value, safe="")
    elif style < 0.75:
        text = quote(value, safe="$,()'=<>*\"").replace("%20", "+")
    elif style < 0.85:
        text = re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(value, safe=""))
    else:
        text = quote(value, safe="$,()'=<>*\"[]")
    if rng.random() < 0.06:
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(ODD_ESCAPES) + text[at:]
    return text


def _query(rng: random.Random, handles: list[str]) -> str:
    pairs: list[tuple[str, str]] = []
    if rng.random() < 0.95:
        pairs.append(("table", rng.choice(TABLES)))
    if rng.random() < 0.9:
        pairs.append(("offset", rng.choice(OFFSETS)))
    if handles and rng.random() < 0.4:
        pairs.append(("handle", rng.choice(handles)))
        pairs.append(("offset", "0_0"))
    elif rng.random() < 0.1:
        pairs.append(("handle", rng.choice(["bogus", "", "1-2", "x" * 200])))
    if rng.random() < 0.35:
        pairs.append(("where", rng.choice(WHERES)))
        for n in range(1, rng.randint(0, 3) + 1):
            key = rng.choice([f"params[{n}]", f"params[{n}]", f"params[0{n}]", "params[x]",
                              "params[]", f"params%5B{n}%5D", f"params[{n}", f"params[ {n}]"])  # fmt: skip
            pairs.append((key, rng.choice(PARAM_VALUES)))
        if rng.random() < 0.1:
            pairs.append(("params", rng.choice(['{"1":"2"}', "[1]", "x", '{"1":5}'])))
    if rng.random() < 0.25:
        pairs.append(("columns", rng.choice(COLUMNS)))
    if rng.random() < 0.1:
        pairs.append(("replica", rng.choice(["full", "default", "bogus", "FULL"])))
    if rng.random() < 0.1:
        pairs.append(("log", rng.choice(["changes_only", "full", "bogus"])))
    if rng.random() < 0.1:
        pairs.append(("cache-buster", str(rng.randint(0, 9))))
    if rng.random() < 0.05:
        pairs.append(("live", rng.choice(["false", "bogus", "1", "True"])))
    if rng.random() < 0.04:
        pairs.append(("live", "true"))  # held up to 1 s
    if rng.random() < 0.05:  # an SSE request (1 s streams)
        pairs.append(("live", "true"))
        pairs.append((rng.choice(["live_sse", "experimental_live_sse"]),
                      rng.choice(["true", "true", "false", "1", ""])))  # fmt: skip
    if rng.random() < 0.04:  # at and past the length limits
        name = rng.choice(["where", "columns", "handle", "x" * 128, "x" * 129, "params[1]"])
        pairs.append((name, "a" * rng.choice([4096, 8192, 8193, 20000])))
    if rng.random() < 0.05:
        pairs.append(("cursor", rng.choice(["1", "abc", ""])))
    if rng.random() < 0.15:
        pairs.append(("subset__where", rng.choice(WHERES[:10])))
        if rng.random() < 0.5:
            pairs.append(("subset__params[1]", rng.choice(PARAM_VALUES)))
    if rng.random() < 0.1:
        pairs.append(("subset__limit", rng.choice(["1", "0", "-1", "abc", "2"])))
        pairs.append(("subset__order_by", rng.choice(["id", "id DESC", "nosuch", "1", "title"])))
    if rng.random() < 0.05:
        pairs.append(("subset__offset", rng.choice(["1", "-1", "x"])))
    if rng.random() < 0.08:
        pairs.append((rng.choice(["foo", "experimental_compaction", "expired_handle"]), "1"))
    for _ in range(rng.choice([0, 0, 0, 0, 1, 2])):
        pairs.append((rng.choice(EXTRA_NAMES), rng.choice(EXTRA_VALUES)))
    if pairs and rng.random() < 0.15:  # a parameter repeated
        pairs.append(rng.choice(pairs))
    if rng.random() < 0.12:  # a parameter repeated with another value
        name = rng.choice(["table", "where", "columns", "replica", "log", "offset", "handle",
                           "live", "cursor", "params[1]", "subset__where", "subset__limit", "subset__params[1]",
                           "cache-buster", "expired_handle", "experimental_live_sse"])  # fmt: skip
        pool = {"table": TABLES, "where": WHERES, "columns": COLUMNS, "offset": OFFSETS,
                "handle": handles or ["x"]}.get(name, EXTRA_VALUES)  # fmt: skip
        pairs.append((name, rng.choice(pool)))
        pairs.append((name, rng.choice(pool)))
    rng.shuffle(pairs)
    parts = []
    for name, value in pairs:
        if name in NAME_VARIANTS and rng.random() < 0.08:
            name = rng.choice(NAME_VARIANTS[name]).replace(" ", "%20")
            parts.append(f"{name}={_enc(value, rng)}")
            continue
        enc_name = quote(name, safe="[]") if rng.random() < 0.8 else quote(name, safe="")
        if rng.random() < 0.03:
            parts.append(enc_name)  # a name without `=`
        else:
            parts.append(f"{enc_name}={_enc(value, rng)}")
    if rng.random() < 0.05:
        parts.append(rng.choice(["", "&", "=", "%zz=1", "a=%zz"]))
    return "&".join(parts)


def _request(rng: random.Random, handles: list[str], etags: list[str]) -> dict[str, Any]:
    # (DELETE: the engine runs without --allow-delete, so it changes nothing)
    method = rng.choices(["GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE"],
                         weights=[80, 6, 8, 6, 1, 3])[0]  # fmt: skip
    headers: dict[str, str] = {}
    origin = rng.choice(ORIGINS)
    if origin is not None:
        headers["Origin"] = origin
    body: bytes | None = None
    if method == "OPTIONS":
        if rng.random() < 0.8:
            headers["Access-Control-Request-Method"] = rng.choice(["GET", "POST", "DELETE", "PUT"])
        if rng.random() < 0.5:
            headers["Access-Control-Request-Headers"] = rng.choice(
                ["content-type", "authorization", "if-none-match, content-type", "x-custom"]
            )
    if method == "POST":
        headers["Content-Type"] = "application/json"
        body = rng.choice(
            [
                b'{"where": "id > 1"}',
                b'{"where": "id > $1", "params": {"1": "1"}}',
                b'{"where": "id > $1", "params": ["1"]}',
                b'{"order_by": "id", "limit": 1}',
                b'{"where": 5}',
                b"not json",
                b"",
                b"[]",
                b'{"table": "other"}',
                b'{"where": "nosuch > 1"}',
            ]
        )
    if body and rng.random() < 0.2:  # a compressed body (the engine's server decodes it)
        coding = rng.choice(["gzip", "deflate", "identity", "GZIP"])
        headers["Content-Encoding"] = coding
        if coding.lower() == "gzip":
            body = gzip.compress(body)
        elif coding == "deflate":
            body = zlib.compress(body)
    if etags and rng.random() < 0.1:
        headers["If-None-Match"] = rng.choice([*etags, '"nope"', "*"])
    for _ in range(rng.choice([0, 0, 1, 2])):
        headers.update(rng.choice(HEADER_SETS))
    return {"method": method, "query": _query(rng, handles), "headers": headers, "body": body}


def _events(body: bytes) -> Any:
    """An event stream's rows and controls, each once (the proxy's stream may carry on past
    the engine's 1 s one, with more up-to-dates)."""
    rows: set[object] = set()
    controls: set[str] = set()
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            try:
                message = json.loads(line[5:])
            except ValueError:
                rows.add(("not json", line[:200]))
                continue
            if "key" in message:
                rows.add(json.dumps([message.get("key"), message.get("value")]))
            else:
                controls.add(json.dumps(message.get("headers", {}).get("control")))
    return sorted(rows, key=str), sorted(controls)


def _rows(body: bytes) -> Any:
    try:
        answer = json.loads(body)
    except ValueError:
        return ("not json", body[:200])
    messages = answer["data"] if isinstance(answer, dict) and "data" in answer else answer
    if not isinstance(messages, list):
        return answer
    rows = sorted(json.dumps([m.get("key"), m.get("value")]) for m in messages if "key" in m)
    controls = sorted(json.dumps(m["headers"].get("control")) for m in messages if "key" not in m)
    return rows, controls


def _comparable(status: int, headers: Any, body: bytes, method: str, query: str = "") -> Any:
    seen = {}
    for name in READ_HEADERS:
        values = headers.getall(name, [])
        if name == "vary":
            # The proxy adds `Vary: Origin` where it echoes an Origin into a cacheable answer
            # (else a shared cache hands one origin's CORS answer to another), and to a
            # preflight from an Origin `Access-Control-Request-Headers` too (it reflects the
            # names asked for: docs/proxy-transparency.md); the engine adds no Vary at all.
            values = sorted(
                {v.strip().lower() for value in values for v in value.split(",")}
                - {"origin", "access-control-request-headers"}
            )
        seen[name] = values
    for name in {
        n.lower() for n in headers if n.lower().startswith(("electric-", "access-control-"))
    }:
        seen[name] = headers.getall(name)
        if name == "access-control-expose-headers":
            seen[name] = sorted(
                {v.strip().lower() for value in seen[name] for v in value.split(",")}
            )
        if name == "access-control-allow-headers":
            # The proxy allows more request headers than the engine (its token in
            # Authorization, a POST's Content-Type, any name an Origin's preflight asks
            # for): compared on the engine's own list.
            seen[name] = sorted(
                {v.strip().lower() for value in seen[name] for v in value.split(",")}
                & {"if-none-match", "traceparent"}
            )
            if not seen[name]:
                del seen[name]
    # Framing: a body of known length as Content-Length or chunked (a client streaming the
    # body, or waiting on its length, sees the difference); none on a 204/304/HEAD.
    seen["framing"] = [
        "chunked"
        if "chunked" in headers.get("transfer-encoding", "").lower()
        else "length"
        if "content-length" in headers
        else "none"
    ]
    if seen.get("etag"):
        # (a no-change answer's ETag ends with the time it was made: `h:req:resp:time`)
        seen["etag"] = [
            value.rsplit(":", 1)[0] if value.count(":") == 3 else value for value in seen["etag"]
        ]
    for name in PRESENCE_ONLY:
        if name in seen:
            seen[name] = ["(present)"]
    for name in list(seen):
        if name in IGNORED:
            del seen[name]
    if status >= 400 and body:
        # Byte for byte: where the engine refuses a request, the proxy refuses it in the
        # engine's words and form (compact JSON, no `code`), as a client reads it. The
        # proxy's own refusals (the policy's, with their `code`) are compared on their JSON
        # less the `code`.
        try:
            answer = json.loads(body)
        except ValueError:
            answer = ("not json", body[:200])
        else:
            form = "engine's" if body == orjson.dumps(answer) else "proxy's"
            if isinstance(answer, dict) and "code" in answer:
                answer.pop("code")
                form = "proxy's"
            seen["error form"] = [form]
    elif method in ("HEAD", "OPTIONS") or status in (204, 304):
        answer = body
    elif headers.get("content-type", "").startswith("text/event-stream"):
        answer = _events(body)
    else:
        answer = _rows(body)
        if BYTES:
            # (a subset's `snapshot_mark` is drawn at random per request, as Electric's)
            # (rows, controls, body: the rows first still)
            body = re.sub(rb'"snapshot_mark":\d+', b'"snapshot_mark":0', body)
            answer = (*answer, body) if isinstance(answer, tuple) else (answer, body)
    return status, answer, seen


async def _send(session: aiohttp.ClientSession, base: str, req: dict[str, Any]) -> Any:
    path = "/v1/shape" + (f"?{req['query']}" if req["query"] else "")
    try:
        async with session.request(
            req["method"],
            URL(base + path, encoded=True),
            headers=req["headers"],
            data=req["body"],
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            return resp.status, resp.headers, body
    except aiohttp.ClientResponseError as exc:
        # (a framing error; a refused HEAD was answered with a body, by both, until
        # test_head_refusals_real.py)
        return 0, CIMultiDict(), f"client error {exc.status} {exc.message[:40]}".encode()


async def test_the_proxy_answers_as_the_engine_under_the_open_policy(
    engine: EngineProcess, make_proxy: Any
) -> None:
    config = yaml.safe_load((ROOT / "config/examples/open.yaml").read_text())
    config["upstream"]["url"] = engine.url
    secret = engine.secret
    if secret is not None:
        config["upstream"]["secret_env"] = "ENGINE_SECRET"
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": secret or ""}))
    base = str(proxy.client.make_url(""))
    handles: list[str] = []
    etags: list[str] = []
    differences = []
    rounds = [(seed, n) for seed in SEEDS for n in range(ROUNDS)]
    rng = random.Random(SEEDS[0])
    async with aiohttp.ClientSession() as session:
        # The proxy's own answers name the engine (`electric-server`) once it has answered.
        assert (await _send(session, base, {"method": "GET", "query": "table=items&offset=-1",
                                            "headers": {}, "body": None}))[0] == 200  # fmt: skip
        for seed, n in rounds:
            if n == 0:
                rng = random.Random(seed)
            round_ = f"{seed}:{n}"
            req = _request(rng, handles, etags)
            direct = req
            if secret is not None:  # (appended last: it wins over a client's own `secret`)
                query = req["query"] + ("&" if req["query"] else "") + f"secret={secret}"
                direct = {**req, "query": query}
            d_status, d_headers, d_body = await _send(session, engine.url, direct)
            p_status, p_headers, p_body = await _send(session, base, req)
            expected = _comparable(d_status, d_headers, d_body, req["method"], req["query"])
            got = _comparable(p_status, p_headers, p_body, req["method"], req["query"])
            if got != expected:
                differences.append((round_, req, expected, got))
            handle = d_headers.get("electric-handle")
            if handle and handle not in handles:
                handles.append(handle)
            etag = d_headers.get("etag")
            if etag and etag not in etags:
                etags.append(etag)
    for round_, req, (e_status, e_answer, e_seen), (g_status, g_answer, g_seen) in differences[:15]:
        print("DIFFERENCE", round_, req["method"], req["query"][:300], req["headers"])
        if (e_status, e_answer) != (g_status, g_answer):
            print("  engine:", e_status, str(e_answer)[:300])
            print("  proxy: ", g_status, str(g_answer)[:300])
        for name in sorted(set(e_seen) | set(g_seen)):
            if e_seen.get(name) != g_seen.get(name):
                print("  header", name, e_seen.get(name), "|", g_seen.get(name))
    assert not differences, f"{len(differences)} of {len(rounds)} requests answered differently"

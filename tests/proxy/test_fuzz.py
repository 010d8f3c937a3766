"""Seeded fuzzing of the proxy in front of a real engine: no input may get a 5xx.

2,000+ requests (set `PROXY_FUZZ_REQUESTS` for more, `PROXY_FUZZ_SEED` for another seed) of
random and malformed query parameters, escapes, Authorization headers (missing, wrong scheme,
garbage, expired, huge), methods and POST bodies go through the proxy to `sync-engine`
(its CLI) on a real Postgres. Every answer must be below 500; every 4xx must carry a JSON
body; no answer may hold the engine secret or a token; no log line may hold a traceback.
Afterwards the proxy and the engine are healthy, and a client still syncs through the proxy
and receives a live change. Counts by status are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
from yarl import URL

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages, sync_through
from tests.support.fuzz_inputs import ITEMS_DDL, loud_log_lines, shape_requests

SEED = int(os.environ.get("PROXY_FUZZ_SEED", "20261203"))
REQUESTS = int(os.environ.get("PROXY_FUZZ_REQUESTS", "2000"))
CONCURRENCY = 8

PARAM_NAMES = [
    "table", "offset", "handle", "live", "where", "params[1]", "params[2]", "params",
    "columns", "replica", "cursor", "cache-buster", "live_sse", "experimental_live_sse", "log",
    "expired_handle", "subset__where", "subset__params", "subset__limit", "subset__offset",
    "subset__order_by", "subset__params[1]", "secret", "api_secret", "source_id", "token",
    "unknown", "", "table[]", "where[]", "offset\x00", "TABLE", "%74able",
]  # fmt: skip

WHERE_SAMPLES = [
    "id = 1", "id > $1", "title = $1", "title ILIKE 'a%'", "id IN (1, 2, 3)", "id = 1 OR id = 2",
    "title IS NULL", "NOT (id = 1)", "id::text = '1'", "true", "1 = 1) OR (1 = 1",
    "id = 1; DROP TABLE items", "(SELECT 1) = 1", "salary > 0", "org_id = 'org-b'",
    "id = 1 --", "id /* x */ = 1", "title = 'it''s'", "title = E'\\x00'", "id = 99999999999999999999",
    "id / 0 = 1", "title::int4 = 1", "length(title) > 1", "title ~ '('", "id = ANY('{1,2}')",
    "\"id\" = 1", "\"Id\" = 1", "title = '\u00df'", "upper(title) = 'A'", "id BETWEEN 1 AND 3",
    "coalesce(title, 'x') = 'x'", "id = $99", "$1 = $2", "", " ", "((((", "'unterminated",
    "NOT " * 300 + "true", "- " * 500 + "id = 1", "id" + "+1" * 800 + " = 1", "(" * 600 + "true" + ")" * 600,
    "<" * 2500, *(f"title = '{'<' * n}'" for n in (2000, 2600, 2650, 2670, 2690, 2700)), "id = 1 OR " * 800 + "true", "id = 1 AND " * 200 + "true", "\u202e id = 1", "id = 1\x00",
]  # fmt: skip


#: Header values the client library will send (no control characters).
_VISIBLE = string.ascii_letters + string.digits + string.punctuation + " "
#: Most targets stay under the proxy's own 8,190-byte request-line limit (so they reach the
#: application); a few go over it on purpose (refused by the HTTP parser: JSON too).
MAX_TARGET = 8170


def _rand_text(rng: random.Random, n: int) -> str:
    alphabet = string.printable + "\u00e9\u00df\u0130\u202e\U0001f600\x00\x7f"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _value(rng: random.Random, name: str, live: tuple[str, str]) -> str:
    handle, offset = live
    base = name.strip("%").lower()
    choices: list[Any]
    if base.startswith("table"):
        choices = ["items", "notes", "public.items", '"items"', "pg_catalog.pg_class",
                   "items;drop", "nope", "a.b.c", '"unterminated', "ITEMS", "x" * 300]  # fmt: skip
    elif base == "offset":
        choices = ["-1", "0_0", "now", offset, "-1_0", "1_2_3", "0_-1", "abc", "9" * 40,
                   "0_inf", " -1"]  # fmt: skip
    elif base in ("handle", "expired_handle"):
        choices = [handle, "h-1", "", "x" * 200, "../../etc/passwd"]
    elif base in ("live", "live_sse", "experimental_live_sse"):
        choices = ["true", "false", "1", "yes", ""]
    elif "where" in base:
        choices = WHERE_SAMPLES
    elif base.startswith("params") or base == "subset__params[1]":
        choices = ["1", "org-a", "'; drop", "{}", '{"1":"a"}', '{"1":{"x":1}}', "[" * 2000]
    elif base == "subset__params":
        choices = ['{"1":"1"}', '{"1":[1]}', "[]", "{", '{"x":"1"}', "[" * 2000]
    elif base == "columns":
        choices = ["id,title", '"id","title"', "id", "salary", "", ",", '"unterminated',
                   "id,id", "id," * 500]  # fmt: skip
    elif base == "replica":
        choices = ["full", "default", "partial"]
    elif base in ("subset__limit", "subset__offset"):
        choices = ["1", "0", "-1", "abc", "1e3", "99999999999999999999"]
    elif base == "subset__order_by":
        choices = ["id", "id DESC", "title NULLS FIRST", "salary", "id; drop", "- " * 800 + "id",
                   "NOT " * 400 + "true", "(SELECT 1)"]  # fmt: skip
    elif base == "log":
        choices = ["changes_only", "full", "x"]
    else:
        choices = ["", "1", "x" * 50]
    if rng.random() < 0.15:
        return _rand_text(rng, rng.choice([1, 10, 100, 1000]))
    return str(rng.choice(choices))


def _encode(rng: random.Random, text: str) -> str:
    """Percent-encode, sometimes badly (the proxy must cope with broken escapes)."""
    encoded = quote(text, safe="")
    roll = rng.random()
    if roll < 0.05:
        return encoded + "%"
    if roll < 0.10:
        return encoded + "%zz"
    if roll < 0.13:
        return encoded + "%ff%fe"
    if roll < 0.16:
        return encoded.replace("%20", "+")
    return encoded


def _query(rng: random.Random, live: tuple[str, str]) -> str:
    handle, offset = live
    roll = rng.random()
    if roll < 0.04:  # long but valid: the rebuilt engine URL may be over the engine's limit
        where = f"title = '{'<' * rng.randint(2500, 2710)}'"
        return f"table=items&offset=-1&where={quote(where, safe='')}"
    if roll < 0.4:  # mostly-valid requests, so the engine is exercised too
        pairs = [("table", "items"), ("offset", "-1")]
        if rng.random() < 0.5:
            pairs = [("table", "items"), ("offset", offset), ("handle", handle)]
            if rng.random() < 0.3:
                pairs += [("live", "true"), ("cursor", "")]
        if rng.random() < 0.4:
            pairs.append(("where", rng.choice(WHERE_SAMPLES)))
        if rng.random() < 0.3:
            pairs.append(("cache-buster", str(rng.random())))
        return "&".join(f"{_encode(rng, k)}={_encode(rng, v)}" for k, v in pairs)
    names = rng.sample(PARAM_NAMES, rng.randint(0, 7))
    if rng.random() < 0.7 and "table" not in names:
        names.insert(0, "table")
    if rng.random() < 0.1 and names:
        names.append(names[0])  # a repeated parameter
    parts = [f"{_encode(rng, n)}={_encode(rng, _value(rng, n, live))}" for n in names]
    if rng.random() < 0.05:
        parts.append("novalue")
    if rng.random() < 0.03:
        parts.append("&&==&")
    return "&".join(parts)


def _authorization(rng: random.Random, tokens: dict[str, str]) -> str | None:
    if rng.random() < 0.6:  # most requests carry a good token, so the engine is reached
        return f"Bearer {tokens[rng.choice(['admin', 'admin', 'member'])]}"
    kind = rng.choice(
        ["none", "expired", "wrong_aud", "garbage", "scheme", "basic", "empty", "huge", "two",
         "lower", "alg_none", "spaces"]
    )  # fmt: skip
    if kind == "none":
        return None
    if kind in tokens:
        return f"Bearer {tokens[kind]}"
    return {
        "garbage": "Bearer "
        + "".join(rng.choice(_VISIBLE) for _ in range(rng.choice([1, 40, 900]))),
        "scheme": "Token abc",
        "basic": "Basic dXNlcjpwYXNz",
        "empty": "Bearer ",
        "huge": "Bearer "
        + "".join(rng.choice(string.ascii_letters) for _ in range(rng.choice([7000, 9000, 20000]))),
        "two": f"Bearer {tokens['admin']}, Bearer {tokens['member']}",
        "lower": f"bearer {tokens['admin']}",
        "spaces": f"Bearer   {tokens['member']}  ",
    }[kind]


def _body(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"",
            b"{}",
            b'{"where":"id = 1"}',
            b'{"where":"id > $1","params":{"1":"1"},"limit":5,"order_by":"id"}',
            b'{"subset":{"where":"id = 2"}}',
            b'{"where": 1}',
            b'{"unknown": 1}',
            b"[]",
            b"not json",
            b"[" * 60000,
            b'{"params":' + b"[" * 30000 + b"}",
            json.dumps({"where": "NOT " * 400 + "true"}).encode(),
            json.dumps({"where": "id = 1", "order_by": "- " * 900 + "id"}).encode(),
            b"\xff\xfe\x00",
            b"x" * 70_000,
        ]
    )


@pytest.fixture
def fuzz_engine(db_url: str, tmp_path: Path, engine_secret: str) -> Iterator[EngineProcess]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        # The shared generator's table (tests/support/fuzz_inputs.py), plus the policy's org_id.
        conn.execute(ITEMS_DDL)
        conn.execute("ALTER TABLE items ADD COLUMN org_id text NOT NULL DEFAULT 'org-b'")
        conn.execute(
            "INSERT INTO items (id, title, n, tags, at, org_id) SELECT i, 'item ' || i, i, "
            "ARRAY['t' || i], now(), CASE WHEN i % 2 = 0 THEN 'org-a' ELSE 'org-b' END "
            "FROM generate_series(1, 20) i"
        )
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, owner text, body text)")
    engine = EngineProcess(
        db_url, tmp_path / "data",
        "--secret", engine_secret, "--long-poll-timeout", "1", "--no-fsync",
    )  # fmt: skip
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


async def test_proxy_fuzz_no_5xx_json_4xx_and_still_syncing(
    fuzz_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = base_config(fuzz_engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    # Tight per-principal limits, so 429s are part of the mix (8 clients, 1 s long-polls).
    config["limits"] = {"max_concurrent": 6, "rate": 60, "burst": 100, "retry_after": 1}
    member_rule = config["tables"]["items"]["allow"][1]
    assert member_rule["name"] == "member"
    member_rule["limits"] = {"rate": 2, "burst": 10}  # the member token soon gets 429s
    proxy = await make_proxy(build_config(config, environ))
    make = proxy.tokens.make
    tokens = {
        "admin": make(sub="admin", role="admin"),
        "member": make(sub="member", org_id="org-a"),
        "expired": make(sub="late", exp=1_000_000, iat=999_000),
        "wrong_aud": make(sub="x", aud="someone-else"),
        "alg_none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.",
    }
    _, handle, offset = await sync_through(proxy, tokens["admin"])
    live = (handle, offset)

    rng = random.Random(SEED)
    # Half the requests come from the generator shared with the engine's fuzz test.
    shared = shape_requests(SEED, REQUESTS)
    plan = []
    for _ in range(REQUESTS):
        method = rng.choices(
            ["GET", "POST", "OPTIONS", "DELETE", "HEAD", "PUT"], [70, 15, 4, 4, 4, 3]
        )[0]
        from_shared = next(shared) if rng.random() < 0.5 else None
        path = rng.choices(
            ["/v1/shape", "/shapes/my-items", "/v1//shape", "/v1/shape/", "/v1/%73hape",
             "/shapes/..%2f", "/healthz", "/nope"],
            [80, 6, 2, 2, 2, 2, 3, 3],
        )[0]  # fmt: skip
        headers: dict[str, str] = {}
        auth = _authorization(rng, tokens)
        if auth is not None:
            headers["Authorization"] = auth
        if rng.random() < 0.1:
            headers["Origin"] = rng.choice(["https://app.test", "https://evil.test", "null"])
        if rng.random() < 0.05:
            headers["If-None-Match"] = rng.choice(['"x"', 'W/"y"', "*"])
        if rng.random() < 0.05:
            headers["Accept-Encoding"] = "gzip, br"
        body = _body(rng) if method == "POST" else None
        if body is not None and rng.random() < 0.8:
            headers["Content-Type"] = "application/json"
        target = f"{path}?{_query(rng, live)}"
        if from_shared is not None:
            method, body = from_shared.method, from_shared.body
            headers.update(from_shared.headers)
            query = from_shared.query.replace("%7Bhandle%7D", quote(handle, safe=""))
            target = f"{path}?" + query.replace("%7Boffset%7D", quote(offset, safe=""))
        if rng.random() < 0.03:
            target += "&pad=" + "x" * rng.choice([8200, 12000])
        else:
            target = target[:MAX_TARGET]  # a cut may break an escape: fine
        if rng.random() < 0.01:
            headers.update({f"X-Fuzz-{i}": "1" for i in range(130)})
        oversized = len(target) > MAX_TARGET or len(headers) > 100
        if method == "HEAD" and (oversized or len(headers.get("Authorization", "")) > 8000):
            # The parser refuses these before it knows the method: its JSON answer has a body,
            # which a HEAD client cannot read. Send them as GETs.
            method = "GET"
        plan.append((method, target, headers, body))

    statuses: Counter[int] = Counter()
    failures: list[str] = []
    secret_forms = {engine_secret, quote(engine_secret, safe="")}
    session = proxy.client.session
    base = proxy.client.make_url("")
    queue: asyncio.Queue[tuple[str, str, dict[str, str], bytes | None]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            method, target, headers, body = queue.get_nowait()
            url = URL(str(base).rstrip("/") + target, encoded=True)
            try:
                async with session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    ctype = resp.headers.get("Content-Type", "")
                    seen = raw.decode("latin-1") + repr(list(resp.headers.items()))
            except (aiohttp.ClientError, ValueError) as exc:
                statuses[-1] += 1  # the client library refused to send it
                failures.append(f"client could not send {method} {target[:80]}: {exc!r}")
                continue
            statuses[status] += 1
            what = f"{method} {target[:160]} -> {status} {raw[:200]!r}"
            if status >= 500:
                failures.append("5xx: " + what)
            elif 400 <= status < 500 and method != "HEAD":
                if not ctype.startswith("application/json"):
                    failures.append("4xx without JSON: " + what)
                else:
                    try:
                        json.loads(raw)
                    except ValueError:
                        failures.append("4xx with a broken JSON body: " + what)
            if any(form in seen for form in secret_forms):
                failures.append("secret leaked: " + what)
            if any(t in seen for t in proxy.tokens.issued):
                failures.append("token leaked: " + what)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    print(f"\nproxy fuzz: seed {SEED}, {REQUESTS} requests, by status: "
          f"{dict(sorted(statuses.items()))}")  # fmt: skip
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses.values()) == REQUESTS

    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks[:5]]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    engine_log = fuzz_engine.log.read_text(errors="replace")
    assert not loud_log_lines(engine_log), loud_log_lines(engine_log)[:5]

    # Both still healthy, and a client still syncs through the proxy, live changes included.
    assert (await proxy.get("/healthz")).status == 200
    async with aiohttp.ClientSession() as s, s.get(f"{fuzz_engine.url}/v1/health") as resp:
        assert resp.status == 200
    member = make(sub="after-the-fuzz", org_id="org-a")  # a fresh principal: fresh limits
    rows, m_handle, m_offset = await sync_through(proxy, member)
    assert sorted(int(r["id"]) for r in rows.values()) == list(range(2, 21, 2))
    poll = asyncio.create_task(
        proxy.get(
            f"/v1/shape?table=items&offset={m_offset}&handle={m_handle}&live=true&cursor=",
            token=member,
        )
    )
    # (an engine request the fuzz left behind may still be held too; then the insert may
    # come before this poll parks, and the poll or the next one returns it at once)
    await fuzz_engine.until_parked()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO items (id, org_id, title) VALUES (100, 'org-a', 'after the fuzz')"
        )
    for _ in range(10):
        reply = await poll
        assert reply.status == 200, reply.body
        apply_messages(rows, reply.json())
        if "100" in {str(r["id"]) for r in rows.values()}:
            break
        m_offset = reply.headers["electric-offset"]
        poll = asyncio.create_task(
            proxy.get(
                f"/v1/shape?table=items&offset={m_offset}&handle={m_handle}&live=true&cursor=",
                token=member,
            )
        )
    assert any(r["title"] == "after the fuzz" for r in rows.values())

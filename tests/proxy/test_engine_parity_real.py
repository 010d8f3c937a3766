"""A client cannot tell the proxy from the engine where the policy does not narrow: the same
malformed request gets the same status and the same error body (less the proxy's `code`),
and the same rows when it is valid. Real path: proxy -> `sync-engine` -> PostgreSQL.

Each query below is sent twice: straight to the engine (with its secret) and through the
proxy under a rule that allows every row and column (an admin). Found by probing: the proxy
used to answer many of these in its own words (`subset__limit must be >= 1`), refuse what
the engine accepts (params the where does not use, a column listed twice, a JSON-array
`subset__params`), and let a NUL byte cut a where clause short in its SQL parser, serving
rows the rest of the clause would have filtered out.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

#: Query strings (after `/v1/shape?table=items&`), as a client would send them.
SAME_ANSWER = [
    # repeated parameters (the last value is read)
    "offset=-1&table=x&table=items",
    "offset=0_0&offset=-1",
    "offset=-1&where=id>1&where=id>2",
    "offset=-1&where=id>$1&params[1]=1&params[1]=2",
    "offset=-1&cache-buster=1&cache-buster=2",
    "offset=-1&foo=1&foo=2",
    # NUL bytes: refused, never cut short
    "offset=-1&where=id>0%00 OR true",
    "offset=-1&where=title=%27%00%27",
    "offset=-1&subset__where=id>0%00 OR true",
    "offset=-1&subset__order_by=id%00",
    "offset=-1&handle=%00",
    # percent-escapes that are not UTF-8: refused, never read as U+FFFD (the engine's check)
    "offset=-1&where=title%3D%27%ff%fe%27",
    "offset=-1&where=title=$1&params[1]=%C3%28",
    "offset=-1&foo=%ED%A0%80",
    "offset=bad&%ff=1",
    # params
    "offset=-1&where=id>$1&params[1]=1&params[2]=2",
    "offset=-1&where=id>$2&params[1]=1",
    "offset=-1&where=id>1&params[1]=1",
    "offset=-1&where=id>$1&params[2]=1",
    "offset=-1&where=id>$1&params[x]=1",
    "offset=-1&where=id>$1",
    "offset=-1&where=id=$0",
    "offset=-1&where=id=$0&params[1]=1",
    "offset=-1&subset__where=id=$0",
    "offset=-1&params[1]=1",
    "offset=-1&params=x",
    "offset=-1&params=",
    "offset=-1&params=%20",
    "offset=-1&params=%7B%221%22%3A%22a%22%7D",
    "offset=-1&params=x&params=",
    "offset=-1&params=&params=x",
    "offset=-1&where=title=$1&params[1]=",
    "offset=-1&where=title<>$1 AND id>$2&params[1]=&params[2]=1",
    "offset=-1&subset__where=title<>$1&subset__params[1]=",
    # the engine's own errors about a where it got: located in the client's text
    "offset=-1&where=nosuchcol>1",
    "offset=-1&where=id>$1&params[1]=abc",
    "offset=-1&where=id  >  'x'",
    "offset=-1&where=title = 1 --",
    # subsets
    "offset=-1&subset__where=id>$1",
    "offset=-1&subset__where=id>$2&subset__params[1]=1",
    "offset=-1&subset__where=id>1&subset__params[1]=1",
    "offset=-1&subset__params[1]=1",
    "offset=-1&subset__where=id>$1&subset__params=[1]",
    "offset=-1&subset__where=id>$1&subset__params=nojson",
    "offset=-1&subset__where=id>$1&subset__params=5",
    # a blank subset__params is no params to the engine (Ecto's empty value), not a refusal
    "offset=-1&subset__params=%20&subset__limit=2&subset__order_by=id",
    "offset=-1&subset__where=id<$1&subset__params=%7B%221%22%3A%223%22%7D",
    "offset=-1&subset__limit=-1&subset__order_by=id",
    "offset=-1&subset__limit=abc&subset__order_by=id",
    "offset=-1&subset__limit=99999999999999999999&subset__order_by=id",
    "offset=-1&subset__offset=-5&subset__order_by=id",
    "offset=-1&subset__limit=2",
    # identifiers, replica, log, offsets
    "offset=-1&columns=id,id",
    "offset=-1&columns=id,%FF",
    "offset=-1&columns=nosuch",
    "offset=-1&replica=bogus",
    "offset=-1&log=bogus",
    "offset=abc",
    "offset=0_0",
    "offset=-1&live=true",
    # the engine's order: offset, handle, live before the table; a table before its columns
    "offset=abc&table=a.b.c",
    "offset=0_0&columns=%22id",
    "offset=-1&columns=id,nosuch,nosuch",
    # an empty subset parameter still makes a subset request
    "offset=-1&subset__offset=",
]

#: (method, path and query, body) sent to both, for what is not a GET query string.
SAME_ANSWER_OTHERWISE = [
    ("PUT", "/v1/shape?table=items&offset=-1", None),
    ("GET", "/v1/shapes?table=items&offset=-1", None),
    ("GET", "/v1/shape?table=a.b.c&offset=-1&columns=%22id", None),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": 5}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id>$1", "params": "x"}),
    # a string in the body is decoded as JSON by the engine, and a blank one is no params
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id<$1", "params": '{"1": "3"}'}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id<3", "params": " "}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id>$1", "params": "5"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id>$1", "params": {"1": [1]}}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id>$1", "params": ["1"]}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id>$2", "params": ["1"]}),
    ("POST", "/v1/shape?table=items&offset=-1", {"limit": "x", "order_by": "id"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"limit": True, "order_by": "id"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"limit": 0, "order_by": "id"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"offset": -1, "order_by": "id"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"limit": 1}),
    ("POST", "/v1/shape?table=items&offset=-1", {"where": "id > 0\x00 OR true"}),
    # bodies the engine cannot read, in its words (`{"error": ...}`), before the query's errors
    ("POST", "/v1/shape?table=items&offset=-1", b"[1, 2]"),
    ("POST", "/v1/shape?table=items&offset=-1", b"{not json"),
    ("POST", "/v1/shape?table=items&offset=abc", b"null"),
    ("POST", "/v1/shape?table=items&offset=-1", b"\xff\xfe"),
    # URL and body subsets merge (the body's keys win); a body's table counts without one
    ("POST", "/v1/shape?table=items&offset=-1&subset__where=id>5", {"where": "id > 1"}),
    ("POST", "/v1/shape?table=items&offset=-1&subset__order_by=id", {"limit": 1}),
    ("POST", "/v1/shape?offset=-1", {"table": "items", "where": "id > 1"}),
    ("POST", "/v1/shape?table=items&offset=-1", {"subset": {"where": "id > 1"}}),
]


#: Where clauses the engine refuses (or, for the last ones, accepts), sent by a member whose
#: rule ANDs them with `org_id = $n`: the answer must be the engine's to the clause alone.
MEMBER_SAME_ANSWER = [
    "where=id>$1&params[1]=abc",
    "where=title=$1 AND id>$2&params[1]=x&params[2]=abc",
    "where=id  >  'x'",
    "where=title = 1 --",
    "where=title = 1 -- c%0A AND id > 0",
    "where=id > 1 AND title ~~ 5",
    "where=id >",
    "where=1 x 1",
    "where=id + 1",
    "where=id = $1::int&params[1]=q",
    "where=id IN (1,'a')",
    "where=id = ANY($1)&params[1]={1,x}",
    "where=id::text ~ 'a'",
    "where=title",
    "where=id",
    "where=1",
    "where='abc'",
    "where=null",
    "where=NOT title",
    "where=title AND id > 1",
    "where=(title AND true) OR id > 1",
    "where=id > 1 OR title",
    "where=id > $2&params[1]=1",
    "where=id = $0&params[1]=1",
    "subset__where=id  >  'x'",
    "subset__where=title = 1",
    "subset__where=title",
    "subset__where=id >",
    # functions: refused as the engine refuses them, in its words
    "where=now() > '2020-01-01'",
    "where=pg_sleep(1) IS NULL",
    "where=lower(id) = 'a'",
    "where=title[1] = 'a'",
    "subset__where=pg_read_file('x') = ''",
    # accepted: the same rows as the engine's for the clause ANDed with org_id = 'org-a'
    "where=title = 'a1' -- comment",
    "where=id > $1 OR title = $2&params[1]=5&params[2]=a1",
    "where=(id > 0)",
    "where=lower(title) = 'a1'",
    "where=upper(title) = 'A1' OR abs(id) = 2",
    "where=greatest(id, 0) = 1 AND concat(title, id) = 'a11'",
    "subset__where=lower(title) = 'a1'",
]


# One engine for the module's tests (each started its own: ~2 s apiece in CI); none of them
# writes.
engine_secret, engine = shared_engine_fixtures(
    "parity",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
    args=("--long-poll-timeout", "1"),
)


def _comparable(status: int, body: bytes) -> Any:
    answer: Any = json.loads(body) if body.strip() else None
    if status >= 400:
        answer.pop("code", None)  # the proxy's machine-readable reason, on top of Electric's
        return status, answer
    # The rows (a log's messages, or a subset's data), without per-request marks.
    messages = answer["data"] if isinstance(answer, dict) else answer or []
    rows = sorted(json.dumps([m["key"], m["value"]]) for m in messages if "key" in m)
    return status, rows


async def test_refusals_are_the_engines(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    proxy = await make_proxy(
        build_config(base_config(engine.url, str(idp_server.make_url("/jwks.json"))), environ)
    )
    admin = proxy.tokens.make(sub="root", role="admin")
    differences = []
    async with aiohttp.ClientSession() as session:
        for query in SAME_ANSWER:
            target = f"/v1/shape?table=items&{query}".replace(" ", "%20")
            direct = f"{engine.url}{target}&secret={engine_secret}"
            async with session.get(aiohttp.client.URL(direct, encoded=True)) as resp:
                expected = _comparable(resp.status, await resp.read())
            reply = await proxy.raw_get(target, admin)
            got = _comparable(reply.status, reply.body)
            if got != expected:
                differences.append((query, expected, got))
        for method, target, body in SAME_ANSWER_OTHERWISE:
            data = (
                (body if isinstance(body, bytes) else json.dumps(body).encode())
                if body is not None
                else None
            )
            async with session.request(
                method, f"{engine.url}{target}&secret={engine_secret}", data=data
            ) as resp:
                expected = _comparable(resp.status, await resp.read())
            reply = await proxy.request(method, target, token=admin, data=data)
            got = _comparable(reply.status, reply.body)
            if got != expected:
                differences.append((f"{method} {target} {body!r}", expected, got))
    assert differences == []


#: Query strings (after `/v1/shape?table=items&offset=-1&`) whose percent-escapes are not
#: UTF-8, and the parameter the refusal names.
NOT_UTF8 = [
    ("where=title%3D%27%ff%fe%27", "where"),
    ("where=title%3D%241&params%5B1%5D=%ff", "params[1]"),
    ("subset__where=title%3D%27%C3%28%27", "subset__where"),
    ("columns=id%2Ctitl%e9", "columns"),
    ("%ff=1", "query"),
    ("foo=%ED%A0%80", "foo"),  # (a UTF-16 surrogate, which UTF-8 never holds)
]


async def test_a_query_that_is_not_utf8_is_refused_never_replaced(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """Attack 07:35: the decoded query replaces bytes that are not UTF-8 with U+FFFD, so the
    proxy checked and forwarded `title = '\ufffd\ufffd'` for `title='%FF%FE'` (a 200 of
    rows the client never asked for) where Electric's Plug refuses the query. Now a 400 in
    the engine's form naming the parameter; the same clause in UTF-8 is served."""
    proxy = await make_proxy(
        build_config(base_config(engine.url, str(idp_server.make_url("/jwks.json"))), environ)
    )
    admin = proxy.tokens.make(sub="root", role="admin")
    for query, field in NOT_UTF8:
        reply = await proxy.raw_get(f"/v1/shape?table=items&offset=-1&{query}", admin)
        assert reply.status == 400, (query, reply.body)
        assert (
            reply.body
            == json.dumps(
                {"message": "Invalid request", "errors": {field: ["is not valid UTF-8"]}},
                separators=(",", ":"),
            ).encode()
        ), query
    reply = await proxy.raw_get("/v1/shape?table=items&offset=-1&where=title%3D%27%C3%A9%27", admin)
    assert reply.status == 200, reply.body


@pytest.mark.parametrize("direct", [False, True], ids=["collapsed", "fast-lane"])
async def test_a_members_where_errors_are_the_engines_for_the_clause_alone(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
    direct: bool,
) -> None:
    """The engine gets a member's where ANDed with the enforced filter. Its errors used to
    name positions in that combined text and the proxy's renumbered `$n` (`At location 24`
    for the client's `id>$1`, 'argument of AND must be type boolean' for a clause that is not
    a boolean); they must be what the engine says of the clause alone (rows: the engine's
    rows for `(clause) AND org_id = 'org-a'`). `direct`: no collapsing and no response cache,
    where a repeated request may take the fast lane, which relays the engine's answer as is."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    if direct:
        config.update(collapse=False, cache={"max_bytes": 0})
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    differences: list[tuple[Any, ...]] = []
    async with aiohttp.ClientSession() as session:
        for query in MEMBER_SAME_ANSWER:
            target = f"/v1/shape?table=items&offset=-1&{query}".replace(" ", "%20")
            direct_url = f"{engine.url}{target}&secret={engine_secret}"
            async with session.get(aiohttp.client.URL(direct_url, encoded=True)) as resp:
                status, answer = _comparable(resp.status, await resp.read())
            if status == 200:  # the member's rows of it
                answer = [row for row in answer if '"org_id": "org-a"' in row]
            for attempt in range(2):  # the second is one the proxy already authorised
                reply = await proxy.raw_get(target, member)
                got = _comparable(reply.status, reply.body)
                if got != (status, answer):
                    differences.append((query, attempt, (status, answer), got))
        body = json.dumps({"where": "id  >  'x'"}).encode()
        target = "/v1/shape?table=items&offset=-1"
        async with session.post(f"{engine.url}{target}&secret={engine_secret}", data=body) as resp:
            expected = _comparable(resp.status, await resp.read())
        reply = await proxy.request("POST", target, token=member, data=body)
        if _comparable(reply.status, reply.body) != expected:
            differences.append(("POST", expected, _comparable(reply.status, reply.body)))
    assert differences == []


async def test_a_members_where_is_never_shortened_nor_shifted_onto_the_policys_params(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`id > 0\\0 AND false` used to be checked and sent as `id > 0`: every row of the org."""
    proxy = await make_proxy(
        build_config(base_config(engine.url, str(idp_server.make_url("/jwks.json"))), environ)
    )
    member = proxy.tokens.make(org_id="org-a")
    # `$0` was shifted past the enforced params into `$1`: the member's own org claim.
    for query in ("where=org_id = $0", "subset__where=org_id = $0"):
        reply = await proxy.raw_get(
            f"/v1/shape?table=items&offset=-1&{query.replace(' ', '%20')}", member
        )
        assert reply.status == 400, reply.body
        assert "parameter $0 was not provided" in reply.body.decode()
    for query in (
        "where=id > 0%00 AND false",
        "subset__where=id > 0%00 AND false",
        "subset__order_by=id%00, title",
    ):
        reply = await proxy.raw_get(
            f"/v1/shape?table=items&offset=-1&{query.replace(' ', '%20')}", member
        )
        assert reply.status == 400, reply.body
        errors = reply.json()["errors"]
        assert list(errors.values()) == [["must not contain NUL bytes"]]
    for body in ({"where": "id > 0\x00 AND false"}, {"where": "id > $1", "params": {"1": "0\x00"}}):
        post = await proxy.request(
            "POST",
            "/v1/shape?table=items&offset=-1",
            token=member,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert post.status == 400, post.body
        assert post.json()["errors"] == {"subset": {"where": ["must not contain NUL bytes"]}}


async def _raw_answer(host: str, port: int, pieces: list[bytes]) -> tuple[int, bytes]:
    """Send `pieces` as separate writes (each after the last has gone out); the answer's
    status and body (the request says `Connection: close`, or the server closes)."""
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            out, rest = out + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        body = out
    return int(head.split(b" ", 2)[1]), body


async def test_a_post_asking_to_upgrade_is_read_with_its_body(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    """`curl --http2 -d ... http://...` sends `Connection: Upgrade, HTTP2-Settings` and
    `Upgrade: h2c` with its POST. llhttp ends such a request at its head and leaves the body
    to the new protocol, so the proxy answered the POST as bodiless: the whole shape where the
    engine (which ignores the Upgrade, as a server may) answers the body's subset."""
    proxy = await make_proxy(
        build_config(base_config(engine.url, str(idp_server.make_url("/jwks.json"))), environ)
    )
    admin = proxy.tokens.make(sub="root", role="admin")
    server = proxy.client.server
    engine_host, engine_port = engine.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"where": "id > 1"}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    upgrade = (
        b"Host: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: application/json\r\n"
    )
    for framing, payload in (
        (b"Content-Length: %d\r\n" % len(body), body),
        (b"Transfer-Encoding: chunked\r\n", chunked),
    ):
        head = b"POST /v1/shape?table=items&offset=-1%s HTTP/1.1\r\n" + upgrade + framing
        # (in one write: the engine reads a body only as far as its first read gets)
        direct = [head % f"&secret={engine_secret}".encode() + b"\r\n" + payload]
        status, answer = await _raw_answer(engine_host, int(engine_port), direct)
        expected = _comparable(status, answer)
        assert expected[0] == 200 and len(expected[1]) == 1, expected  # the subset: id 2
        for split in (None, 5):  # the body with its head, or in pieces after it
            pieces = [payload] if split is None else [payload[:split], payload[split:]]
            through = [
                head % b"" + f"Authorization: Bearer {admin}\r\n\r\n".encode(),
                *pieces,
            ]
            status, answer = await _raw_answer(server.host, server.port, through)
            assert _comparable(status, answer) == expected, (framing, split)


async def test_a_compressed_post_body_is_read_as_the_engine_reads_it(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    """The engine's server decodes a body's `Content-Encoding: gzip` or `deflate`; the
    proxy read the compressed bytes as JSON ("Invalid JSON in request body" where the engine
    served the subset), and read a `br` body as if it were plain JSON. Now: gzip and deflate
    decoded (bounded: a bomb is a 413), another coding a 415, undecodable bytes a 400."""
    import gzip
    import zlib

    proxy = await make_proxy(
        build_config(base_config(engine.url, str(idp_server.make_url("/jwks.json"))), environ)
    )
    admin = proxy.tokens.make(sub="root", role="admin")
    body = json.dumps({"where": "id > 1"}).encode()
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    target = "/v1/shape?table=items&offset=-1"
    refused = [
        ("br", body),
        ("zstd", body),
        ("gzip, identity", gzip.compress(body)),
        ("gzip", gzip.compress(body)[:-6]),  # (cut short: the engine served the whole shape)
        ("gzip", gzip.compress(body) + b"trailing"),
        ("gzip", gzip.compress(b'{"where": "' + b" " * (9 * 1024 * 1024) + b'"}')),  # 9 MiB
    ]
    same = [
        ("gzip", gzip.compress(body)),
        ("GZIP", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", raw.compress(body) + raw.flush()),  # (no zlib header, as some send it)
        ("identity", body),
        ("gzip", gzip.compress(b"[1, 2]")),
        ("gzip", gzip.compress(b"{not json")),
        ("gzip", b"not gzip at all"),
        *refused,
    ]
    differences = []
    # (a connection each: the engine closes one after a body its server could not read)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for coding, data in same:
            headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
            async with session.post(
                f"{engine.url}{target}&secret={engine_secret}", data=data, headers=headers
            ) as resp:
                expected = _comparable(resp.status, await resp.read())
            reply = await proxy.request("POST", target, token=admin, data=data, headers=headers)
            got = _comparable(reply.status, reply.body)
            if got != expected:
                differences.append((coding, data[:20], expected, got))
    assert differences == []
    answers = {}
    for coding, data in refused:
        headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
        reply = await proxy.request("POST", target, token=admin, data=data, headers=headers)
        answers[coding, len(data)] = (reply.status, reply.body)
    assert sorted(set(answers.values())) == [  # (the engine's, byte for byte)
        (400, b'{"message":"Malformed request body"}'),
        (413, b'{"error":"Request body too large"}'),
        (415, b'{"message":"Unsupported Content-Encoding: a request body may be gzip, deflate '
         b'or identity"}'),
    ]  # fmt: skip
    assert [v[0] for v in answers.values()] == [415, 415, 415, 400, 400, 413]


async def test_a_rule_hiding_a_key_column_is_named_not_the_client(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From policy: a rule whose columns omit the primary key made every request a 400 in
    the engine's words about the client's `columns` (which it may not have sent). Now the
    400 names the rule (not the hidden key), and a WARNING tells the operator which key
    columns are missing; a client's own `columns` without the key keeps the engine's words.
    On the old code: "The list of columns must include all primary key columns, missing: id".
    """
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["tables"]["items"]["allow"][1]["columns"] = ["org_id", "title"]
    config["collapse"] = False
    config["cache"] = {"max_bytes": 0}
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make()
    for _ in range(2):  # (the second on the fast lane)
        reply = await proxy.get("/v1/shape?table=items&offset=-1", token=member)
        assert reply.status == 400, reply.body
        (message,) = reply.json()["errors"]["columns"]
        assert "'member'" in message and "primary key" in message and "id" not in message.split()
    warnings = [r for r in caplog.records if "primary key columns" in r.getMessage()]
    assert len(warnings) == 1 and "missing: id" in warnings[0].getMessage()
    admin = proxy.tokens.make(sub="root", role="admin")
    reply = await proxy.get("/v1/shape?table=items&offset=-1&columns=title", token=admin)
    assert reply.status == 400
    assert reply.json()["errors"]["columns"] == [
        "The list of columns must include all primary key columns, missing: id"
    ]

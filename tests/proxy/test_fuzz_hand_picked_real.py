"""Hand-picked malformed requests through the proxy: invalid UTF-8 (`%ff`), NUL (`%00`), a
broken escape (`%zz`) in names and values, repeated and unknown parameters, 100 KB values, a
10 MB header, and bad tokens (garbage, expired, `alg=none`, signed with another key, in the
query). Each answer is below 500 with a JSON body, and holds neither the engine's secret nor
the token sent; under the open policy (the proxy adds the secret) the status and body are
the engine's own answer to the same request (less the proxy's `code`).

Real path: proxy -> `sync-engine` -> PostgreSQL; raw sockets, so every byte is as written.
"""

from __future__ import annotations

import asyncio
import base64
import json
import select
import socket
from typing import Any

import pytest

from proxy.config.loader import build_config
from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.proxy_fakes import KeyPair, now
from tests.proxy.real_proxies import items_config, open_config
from tests.support.engine_process import EngineProcess
from tests.sync_engine.http.test_fuzz import _unchunk

engine_secret, engine = shared_engine_fixtures(
    "fuzzpicked",
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, secret text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a1', 's1'), (2, 'org-b', 'b1', 's2')",
    args=("--long-poll-timeout", "1"),
)

KB100 = "x" * 100_000
TARGETS = [
    "/v1/shape?table=items&offset=-1&where=title%3D%27%ff%27",
    "/v1/shape?table=items&offset=-1&where=title%3D%27%c3%28%27",
    "/v1/shape?table=%ff&offset=-1",
    "/v1/shape?table=items&offset=-1%ff",
    "/v1/shape?table=items&offset=-1&%ff=1",
    "/v1/shape?table=items&offset=-1&where=id%3D1%00",
    "/v1/shape?table=items%00&offset=-1",
    "/v1/shape?table=items&offset=-1&%00=1",
    "/v1/shape?table=items&offset=-1&columns=id%00",
    "/v1/shape?table=items&offset=-1&subset__where=id%3D1%00",
    "/v1/shape?table=items&offset=-1&params%5B1%5D=%00&where=id%3D%241",
    "/v1/shape?table=items&offset=-1&where=%zz",
    "/v1/shape?table=it%zzems&offset=-1",
    "/v1/shape?table=items&offset=%zz",
    "/v1/shape?table=items&offset=-1&%zz=1",
    "/v1/shape?table=items&offset=-1&where=%",
    "/v1/shape?table=items&offset=-1&where=%4",
    "/v1/shape?table=items&table=items&offset=-1&offset=-1",
    "/v1/shape?table=nosuch&table=items&offset=-1",
    "/v1/shape?table=items&offset=-1&where=nonsense&where=id%3D1",
    "/v1/shape?table=items&offset=-1&subset__where=x&subset__where=id%3D1",
    "/v1/shape?table=items&offset=-1&handle=a&handle=b",
    "/v1/shape?table=items&offset=-1&live=true&live=false",
    "/v1/shape?table=items&offset=-1&foo=bar&baz&=x&&",
    "/v1/shape?table=items&offset=-1&secret=guess&api_secret=guess&source_id=x",
    # whitespace only: absent to the engine (Ecto's empty value), as to Electric
    "/v1/shape?table=items&offset=-1&where=%20",
    "/v1/shape?table=items&offset=-1&where=%09%0A",
    "/v1/shape?table=items&offset=-1&where=%C2%A0",
    "/v1/shape?table=items&offset=-1&columns=%20",
    "/v1/shape?table=items&offset=-1&replica=%20&log=%E3%80%80",
    "/v1/shape?table=%20&offset=-1",
    "/v1/shape?table=items&offset=%20",
    "/v1/shape?table=items&offset=-1&subset__where=%20",
    "/v1/shape?table=items&offset=-1&subset__order_by=%20&subset__limit=%20",
    f"/v1/shape?table=items&offset=-1&where={KB100}",
    f"/v1/shape?table=items&offset=-1&pad={KB100}",
    f"/v1/shape?table={KB100}&offset=-1",
    f"/v1/shape?table=items&offset=-1&{KB100}=1",
]


async def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection, as bytes; the status, headers and body read to
    the connection's end (`Connection: close`). What the server answers before it has read
    it all (a 10 MB header) is read as it comes, the rest of the request left unsent."""
    return await asyncio.to_thread(_exchange, port, head + body)


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setblocking(False)
        raw, sent = b"", 0
        while sent < len(request):
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break  # (answered before it read the whole request)
            try:
                sent += sock.send(request[sent : sent + 65536])
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionError:
                break
        sock.setblocking(True)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            raw += chunk
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        rest = _unchunk(rest)
    return status, headers, rest


def _head(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode("latin-1")


def _refusal(status: int, body: bytes) -> Any:
    """An error's JSON less the proxy's `code` (a success: its status alone)."""
    if status < 400:
        return status
    answer = json.loads(body)
    if isinstance(answer, dict):
        answer.pop("code", None)
    return status, answer


def _port(proxy: Any) -> int:
    return int(proxy.client.make_url("").port)


async def test_malformed_requests_get_the_engines_answers(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    engine_port = int(engine.url.rsplit(":", 1)[1])
    differences = []
    for target in TARGETS:
        status, headers, body = await _raw(_port(proxy), _head(target))
        assert status < 500, (target[:100], status, body[:300])
        assert engine_secret.encode() not in body + json.dumps(headers).encode()
        direct = await _raw(engine_port, _head(f"{target}&secret={engine_secret}"))
        expected = _refusal(direct[0], direct[2])
        if _refusal(status, body) != expected:
            differences.append((target[:100], expected, (status, body[:300])))
    assert differences == []


def _unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token: no signature at all."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize("spelling", [
    "garbage", "expired", "none", "none-signed", "other-key", "empty", "huge", "in-query",
    "two-headers", "basic",
])  # fmt: skip
async def test_a_bad_token_is_a_json_4xx_that_says_nothing_of_it(
    engine: EngineProcess, engine_secret: str, idp_server: Any, make_proxy: Any, spelling: str
) -> None:
    config = items_config(engine, idp_server)
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": engine_secret}))
    good = proxy.tokens.make()
    claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
    tokens = {
        "garbage": "not.a.token",
        "expired": proxy.tokens.make(iat=now() - 7200, exp=now() - 3600),
        "none": _unsigned(claims),
        "none-signed": _unsigned(claims)[:-1] + "." + good.split(".")[2],
        "other-key": proxy.tokens.make(key=KeyPair.generate("kid-1")),
        "empty": "",
        "huge": good + "A" * 20_000,
        "in-query": good,
        "two-headers": good,
        "basic": good,
    }
    token = tokens[spelling]
    target = "/v1/shape?table=items&offset=-1"
    extra = f"Authorization: Bearer {token}\r\n"
    if spelling == "in-query":
        target, extra = f"{target}&token={token}", ""
    elif spelling == "two-headers":
        extra += f"Authorization: Bearer {token}\r\n"
    elif spelling == "basic":
        extra = f"Authorization: Basic {token}\r\n"
    status, headers, body = await _raw(_port(proxy), _head(target, extra))
    assert 400 <= status < 500, (status, body[:300])
    assert isinstance(json.loads(body), dict), body[:300]
    seen = body + json.dumps(headers).encode()
    assert engine_secret.encode() not in seen
    for part in (p for p in token.split(".") if len(p) >= 8):
        assert part.encode() not in seen, spelling


async def test_a_10_mb_header_is_a_json_4xx(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    head = _head("/v1/shape?table=items&offset=-1", f"X-Big: {'a' * 10_000_000}\r\n")
    status, headers, body = await _raw(_port(proxy), head)
    assert 400 <= status < 500, (status, body[:300])
    assert isinstance(json.loads(body), dict), body[:300]
    assert engine_secret.encode() not in body


def _post(target: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode("latin-1") + body


BODIES = [
    b'{"where": "title = \'\xff\'"}',
    b'{"where": "id = 1\\u0000"}',
    b'{"where": "id = $1", "params": {"1": "\\u0000"}}',
    b'{"where": "id = $1", "params": {"1": "\\ud800"}}',
    b'{"where": "\\ud800"}',
    b'{"order_by": "\\udfff"}',
    b'{"where": "' + KB100.encode() + b'"}',
    b'{"where": "id = $1", "params": {"1": "' + KB100.encode() + b'"}}',
    b"[" * 100_000,
    b'{"limit": 1e400, "order_by": "id"}',
    b'{"where": null, "limit": NaN}',
    b'{"subset": {"where": {"a": 1}}}',
    b'{"where": "id > 0", "where": "id > 1"}',
    b"\xff\xfe{}",
    b'{"' + KB100.encode() + b'": 1}',
]
HEADERS = [
    "Authorization: Bearer \xff\xfe\r\n",
    "Origin: https://\xff.example\r\n",
    'If-None-Match: "\x00"\r\n',
    f'If-None-Match: {"W/" * 3000}"x"\r\n',
    "Content-Type: application/json; charset=\xff\r\n",
    "X-Forwarded-For: \xff, 1.2.3.4\r\n",
    "Cookie: token=abc\r\n",
    "Authorization: Bearer\r\n",
    "Authorization: \r\n",
    f"Authorization: Bearer {'A' * 9000}\r\n",
]


async def test_malformed_bodies_and_headers_under_a_token_policy(
    engine: EngineProcess, engine_secret: str, idp_server: Any, make_proxy: Any
) -> None:
    """The member's and the admin's token (a validated client where, a hidden column):
    every malformed target, body and header is a JSON answer below 500 without the
    secret or the token."""
    config = items_config(engine, idp_server)
    config["tables"]["items"]["allow"][1]["subset"] = True
    proxy = await make_proxy(build_config(config, {"ENGINE_SECRET": engine_secret}))
    port = _port(proxy)
    requests = []
    for role in ("member", "admin"):
        token = proxy.tokens.make(role=role)
        auth = f"Authorization: Bearer {token}\r\n"
        requests += [(token, _head(target, auth)) for target in TARGETS]
        requests += [
            (token, _post("/v1/shape?table=items&offset=-1", body, auth)) for body in BODIES
        ]
        requests += [
            (token, _head("/v1/shape?table=items&offset=-1", auth + header))
            for header in HEADERS
            if not header.startswith("Authorization")
        ]
        requests += [("", _head("/v1/shape?table=items&offset=-1", header)) for header in HEADERS]
    for token, request in requests:
        status, headers, body = await _raw(port, request)
        assert status < 500, (request[:200], status, body[:300])
        if status >= 400:
            assert isinstance(json.loads(body), dict), (request[:200], body[:300])
        seen = body + json.dumps(headers).encode()
        assert engine_secret.encode() not in seen
        assert not token or token.split(".")[2].encode() not in seen


RAW = [
    b"GET /shapes/%ff?offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /shapes/x%00?offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /shapes/%zz?offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /shapes/all?offset=%ff&subset__limit=%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/shape/../v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/%73hape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/shape%00?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/shape?table=items&offset=-1#%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET http://x/v1/shape?table=%ff&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"FOO /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/shape?table=items&offset=-1 HTTP/1.0\r\n\r\n",
    b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Length: -1\r\n\r\n",
    b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Length: 99999999999999999999\r\n\r\n{}",
    b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 200_000 + b"[" * 200_000 + b"\r\n0\r\n\r\n",
    b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00",
    b"DELETE /v1/shape?table=items&handle=%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"DELETE /v1/shape?handle=%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


async def test_malformed_request_heads_are_a_json_answer_below_500(
    engine: EngineProcess, engine_secret: str, make_proxy: Any
) -> None:
    named = {"all": {"table": "items", "allow": [{"anonymous": True, "all_rows": True,
                                                   "subset": True}]}}  # fmt: skip
    proxy = await make_proxy(open_config(engine.url, engine_secret, shapes=named))
    for request in RAW:
        status, headers, body = await _raw(_port(proxy), request)
        assert status < 500, (request[:120], status, body[:300])
        if status >= 400 and request.split(b" ")[0] != b"HEAD":
            assert isinstance(json.loads(body), dict), (request[:120], status, body[:300])
        assert engine_secret.encode() not in body + json.dumps(headers).encode()

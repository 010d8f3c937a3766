"""Hostile `source_id`/secret parameters and admin API requests against a real engine process.

Every answer is a 4xx (or the 200 of the one right pair) with a JSON body, never a 5xx; a
wrong credential of any kind gets the same 401 body; and no secret, password or admin token
reaches the engine's log (at DEBUG), its /metrics, or any answer but the ones creating it.
A small seeded fuzzer adds random percent-encoded bytes, repeated and mixed parameters.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.support.waiting import wait_until
from tests.sync_engine.tenants.harness import PROCESS_TOKEN, UNAUTHORIZED, AdminEngine, make_items

PASSWORD = "pw-hostile-hidden"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[AdminEngine]:
    engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log", "--log-level", "debug")
    try:
        yield engine
    finally:
        engine.stop()


def _q(value: str) -> str:
    return quote(value, safe="")


HOSTILE = [
    "", " ", "\x00", "a\x00b", "\ufffd", "\u202e", "☃", "\U0001f600", "'", '"', "%", "&",
    "=", "+", "\\", "\r\n", "null", "undefined", "[]", "{}", "x" * 65, "x" * 2000,
]  # fmt: skip
RAW_SECRETS = ["%ff", "%ED%A0%80", "%00", "%zz", "%", "a%2", "%C0%AF", "+"]  # sent as is


def _variants_of_id(sid: str) -> list[str]:
    return [sid.upper(), "{" + sid + "}", "urn:uuid:" + sid, sid.replace("-", ""),
            sid + " ", " " + sid, sid + "\x00", sid[:-1], sid + "0", sid.replace("-", "", 1)]  # fmt: skip


async def _get(session: aiohttp.ClientSession, base: str, query: str) -> tuple[int, Any, str]:
    async with session.get(URL(f"{base}/v1/shape?{query}", encoded=True)) as resp:
        raw = await resp.read()
        ctype = resp.headers.get("content-type", "")
        assert ctype.startswith("application/json"), (query[:200], resp.status, raw[:200])
        return resp.status, json.loads(raw), raw.decode("utf-8", "replace")


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def _admin(
    session: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    h = {"authorization": f"Bearer {PROCESS_TOKEN}"} if headers is None else headers
    async with session.request(method, URL(base + path, encoded=True), data=data,
                               headers=h) as resp:  # fmt: skip
        raw = await resp.read()
        body = json.loads(raw) if raw else None
        return resp.status, body, raw.decode("utf-8", "replace")


def test_hostile_credentials_and_admin_requests(
    make_db: Callable[[], str], engine: AdminEngine
) -> None:
    urls = [make_db() for _ in range(3)]
    for u in urls:
        make_items(u, ["row"])
    with_pw = [u.replace("postgres@", f"postgres:{PASSWORD}@") for u in urls]
    made = {}
    for name, u in zip(("alpha", "beta", "gone"), with_pw, strict=True):
        status, body = engine.api("POST", "/api/sources", {"name": name, "database_url": u})
        assert status == 201, body
        made[name] = body
    a, b, gone = made["alpha"], made["beta"], made["gone"]
    for s in (a, b):

        def serves(s: dict[str, Any] = s) -> bool:
            return engine.shape_status(s["source_id"], s["secret"]) == 200

        wait_until(serves, timeout=60, interval=0.2, message="the source serves")
    status, _ = engine.api("DELETE", f"/api/sources/{gone['source_id']}")
    assert status == 200
    secrets = [a["secret"], b["secret"], gone["secret"]]
    asyncio.run(_hostile(engine, a, b, gone))

    text = engine.log.read_text()
    for secret in [*secrets, PASSWORD, PROCESS_TOKEN, "FUZZ-SECRET"]:
        assert secret not in text, secret
    assert "Traceback" not in text and " 500 " not in text
    assert '"level": "error"' not in text and '"level": "critical"' not in text


async def _hostile(engine: AdminEngine, a: dict[str, Any], b: dict[str, Any],
                   gone: dict[str, Any]) -> None:  # fmt: skip
    base = f"http://127.0.0.1:{engine.port}"
    admin = f"http://127.0.0.1:{engine.admin_port}"
    sid, secret = a["source_id"], a["secret"]
    shape = "table=items&offset=-1"
    seen: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def expect(query: str, want: int) -> None:
            status, body, raw = await _get(session, base, f"{shape}&{query}")
            assert status == want, (query[:300], status, body)
            if want == 401:
                assert body == UNAUTHORIZED
            seen.append(raw)

        # the one right pair; other spellings of the same uuid (upper case, braces,
        # urn:uuid:, no hyphens) are unknown ids (were served: another CDN cache entry each)
        await expect(f"source_id={sid}&secret={_q(secret)}", 200)
        for v in _variants_of_id(sid):
            await expect(f"source_id={_q(v)}&secret={_q(secret)}", 401)
        # wrong secrets of every kind, for a real source and for no source
        wrong = [*HOSTILE, b["secret"], gone["secret"], secret.upper(), secret[:-1],
                 secret + "\x00", secret + " ", " " + secret, secret * 2, "FUZZ-SECRET-1"]  # fmt: skip
        for w in wrong:
            for who in (sid, gone["source_id"], "00000000-0000-4000-8000-000000000000"):
                await expect(f"source_id={who}&secret={_q(w)}", 401)
        for raw in RAW_SECRETS:
            await expect(f"source_id={sid}&secret={raw}", 401)
        for bad_id in [*HOSTILE, gone["source_id"], b["source_id"]]:
            await expect(f"source_id={_q(bad_id)}&secret={_q(secret)}", 401)
        await expect(f"source_id={gone['source_id']}&secret={_q(gone['secret'])}", 401)
        await expect(f"source_id={b['source_id']}&secret={_q(secret)}", 401)  # a's for b
        await expect(f"secret={_q(secret)}", 401)  # no source id
        await expect(f"source_id={sid}&secret={'FUZZ-SECRET-4' * 800}", 414)  # over the limit
        await expect(f"source_id={sid}", 401)  # no secret
        for name in ("api_secret", "source_secret"):  # the other accepted spellings
            await expect(f"source_id={sid}&{name}={_q(secret)}", 200)
            await expect(f"source_id={sid}&{name}=FUZZ-SECRET-2", 401)
        # a parameter given twice: its last value, as Electric (Plug's query decoding); the
        # first was taken (a proxy or cache reading the last saw another source or secret)
        other = b["source_id"]
        await expect(f"source_id={other}&source_id={sid}&secret={_q(secret)}", 200)
        await expect(f"source_id={sid}&source_id={other}&secret={_q(secret)}", 401)
        await expect(f"source_id={sid}&secret=FUZZ-SECRET-6&secret={_q(secret)}", 200)
        await expect(f"source_id={sid}&secret={_q(secret)}&secret=FUZZ-SECRET-6", 401)
        # `api_secret` only when there is no `secret` (as Electric's router): an empty
        # `secret` is a wrong one
        await expect(f"source_id={sid}&secret=&api_secret={_q(secret)}", 401)
        await expect(f"source_id={sid}&api_secret={_q(secret)}&secret=FUZZ-SECRET-7", 401)

        # seeded random: repeated, mixed and percent-encoded junk in the credential params
        rng = random.Random(1205)
        keys = ["source_id", "secret", "api_secret", "source_secret", "SOURCE_ID", "secret[]"]
        pieces = [*HOSTILE, sid, secret, b["secret"], "FUZZ-SECRET-3"]
        for _ in range(400):
            parts = [shape]
            for _ in range(rng.randint(1, 5)):
                key = rng.choice(keys)
                roll = rng.random()
                if roll < 0.4:
                    value = _q(rng.choice(pieces))
                elif roll < 0.7:
                    value = "".join(f"%{rng.randrange(256):02X}" for _ in range(rng.randint(0, 40)))
                else:
                    value = rng.choice(RAW_SECRETS) + _q(rng.choice(pieces))
                parts.append(f"{key}={value}")
            status, body, raw = await _get(session, base, "&".join(parts))
            assert status in (200, 400, 401), ("&".join(parts)[:300], status, body)
            seen.append(raw)

        # the admin API: bad ids, bodies, tokens, methods
        junk_bodies = [b"", b"{", b"[]", b"null", b'"x"', b"\x00", b"\xff\xfe", b"{}" * 10,
                       b'{"name": "\\u0000"}', b'{"name": 1e999}', b'{"name": "' + b"n" * 70000 + b'"}',
                       json.dumps({"name": "ok", "database_url": "postgresql://FUZZ-SECRET@h/d\x00"}).encode(),
                       json.dumps({"name": "ok\x00", "database_url": a["database_url"]}).encode(),
                       json.dumps({"name": "ok", "database_url": "x" * 60000}).encode(),
                       json.dumps({"name": ["a"], "database_url": {"a": 1}}).encode(),
                       json.dumps({"name": "ok", "database_url": "postgresql://h/d",
                                   "max_shapes": 1e300}).encode(),
                       json.dumps({"grace_period_seconds": 1e308}).encode(),
                       # not UTF-8 (were 500s)
                       b'{"name": "u1", "database_url": "postgresql://h/d\\ud800"}',
                       b'{"name": "u2", "database_url": "host=h dbname=\\udcff"}',
                       b'{"name": "u3", "database_url": "postgresql://%ff@h/d"}',
                       b'{"name": "u4", "database_url": "postgresql://u@h/d?password=%ed%a0%80"}',
                       json.dumps({"grace_period_seconds": -0.0, "x": 1}).encode()]  # fmt: skip
        paths = ["/api/sources", f"/api/sources/{sid}/rotate-secret", f"/api/sources/{sid}/pause",
                 f"/api/sources/{gone['source_id']}/resume"]  # fmt: skip
        for path in paths:
            for data in junk_bodies:
                if data == b"" and path != "/api/sources":
                    continue  # no body: a rotation without grace, a pause (valid)
                status, body, raw = await _admin(session, admin, "POST", path, data)
                assert 400 <= status < 500, (path, data[:100], status, body)
                assert body["error"] and body["message"], body
                seen.append(raw)
        for junk_id in [*HOSTILE, "%00", "%ff", "..", "%2e%2e", sid.upper(), "x" * 5000]:
            enc = junk_id if junk_id.startswith("%") or junk_id == ".." else _q(junk_id)
            for method in ("GET", "DELETE", "POST"):
                if method == "DELETE" and junk_id == sid.upper():
                    continue  # it names a: it would delete it
                suffix = "/pause" if method == "POST" else ""
                status, body, raw = await _admin(session, admin, method,
                                                 f"/api/sources/{enc}{suffix}")  # fmt: skip
                assert status in (200, 400, 404, 405, 414) and body is not None, (junk_id, status)
                if status != 200:
                    assert body.get("error") or body.get("message"), body
                else:  # the upper-case id names a, and pausing it works
                    assert junk_id == sid.upper()
                seen.append(raw)
        status, body = engine.api("POST", f"/api/sources/{sid}/resume")
        assert status == 200
        for token in ["", " ", "\x00", PROCESS_TOKEN + "x", PROCESS_TOKEN[:-1], "é" * 20,
                      PROCESS_TOKEN.upper(), "x" * 7000]:  # fmt: skip
            for header in ("authorization", "x-admin-token"):
                value = f"Bearer {token}" if header == "authorization" else token
                try:
                    status, body, raw = await _admin(session, admin, "GET", "/api/sources",
                                                     headers={header: value})  # fmt: skip
                except ValueError:  # aiohttp refuses to send a NUL or a newline in a header
                    continue
                assert status in (400, 401, 431), (token[:20], status)
                seen.append(raw)

        for path in ("/static/..%2f..%2fsources.db", "/static/%2e%2e/api/sources",
                     "/static/app.js%00", "/api/sources%00"):  # fmt: skip
            status, body, raw = await _admin(session, admin, "GET", path)
            assert status in (401, 404) and body["error"], (path, status, body)
        # bytes that are not UTF-8 in the admin token (were a 500: UnicodeEncodeError)
        for btoken in (b"\xff\xfe", b"\xc3\x28", PROCESS_TOKEN.encode() + b"\xed\xa0\x80"):
            for bheader in (b"Authorization: Bearer ", b"X-Admin-Token: "):
                head = await _raw(engine.admin_port, b"GET /api/sources HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n" + bheader + btoken + b"\r\n\r\n")  # fmt: skip
                assert head.startswith(b"HTTP/1.1 401 "), head[:200]
                assert b'"error": "unauthorized"' in head
        # malformed HTTP on the admin listener: JSON, nothing quoted (was aiohttp's text, the
        # request's first bytes quoted, a traceback at ERROR; a gzip body that is not gzip a 500)
        auth = f"Authorization: Bearer {PROCESS_TOKEN}\r\n".encode()
        head = b"Host: x\r\nConnection: close\r\n" + auth
        for request, want in [
            (b"POST /api/sources HTTP/1.1\r\n" + head + b"Content-Encoding: gzip\r\n"
             b"Content-Length: 7\r\n\r\ngarbage", 415),
            (b"POST /api/sources HTTP/1.1\r\n" + head + b"Content-Encoding: deflate\r\n"
             b"Content-Length: 7\r\n\r\ngarbage", 415),
            (b"POST /api/sources HTTP/1.1\r\n" + head + b"Transfer-Encoding: chunked\r\n\r\n"
             b"zz\r\nabc\r\n0\r\n\r\n", 400),
            (b"GET /api/sources/\xff HTTP/1.1\r\n" + head + b"\r\n", 400),
            (b"FOO /api/sources HTTP/1.1\r\n" + head + b"\r\n", 400),
            (b"GET /api/sources HTTP/1.1\r\n" + head + b"X: " + b"a" * 10_500 + b"\r\n\r\n", 431),
            (b"GET /api/sources HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer FUZZ-SECRET-5"
             + b"t" * 10_500 + b"\r\n\r\n", 431),
        ]:  # fmt: skip
            answer = await _raw(engine.admin_port, request)
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line.startswith(b"HTTP/1.1 %d " % want), (request[:80], answer[:300])
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert body["error"] and body["message"], body
            seen.append(answer.decode("utf-8", "replace"))
        async with session.get(f"{base}/metrics") as resp:
            seen.append(await resp.text())

    everything = "\n".join(seen)
    for s in (secret, b["secret"], gone["secret"], PASSWORD, PROCESS_TOKEN):
        assert s not in everything

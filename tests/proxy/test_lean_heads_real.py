"""A head read without per-header callbacks (`protocol._Lean`, 0eaf84bb) only where its message
ends with it (review 14:10, HIGH and MEDIUM).

The lean parser went on reading what followed a head with a body: a chunked body's trailers
were never checked (a trailer over the line limit, or too many, was a 200 where the engine
and the general path answer 431 and close), and a request pipelined after such a body was
read by the same lean parser and answered with the previous request's headers, another
user's Authorization included. Now only a head with neither Content-Length nor
Transfer-Encoding is remembered, so a lean parser reads one bodiless head and nothing more.
Real proxies (fast lane on and off) and engine; each compared with the general path.
(Adapted from the review's probes, /work/probes/review/test_review_lean_*.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from sync_engine.http.parser_refusals import MAX_HEADER_LINE, MAX_HEADERS
from tests.proxy.test_fastlane_real import (  # noqa: F401
    _pair,
    engine_secret,
    real_engine,
)

T = "/v1/shape?table=items&offset=-1"


async def _answers(host: str, port: int, writes: list[bytes], expect: list[int]) -> list[Any]:
    """Each write, then its `expect` answers: (status, the orgs of its rows)."""
    reader, writer = await asyncio.open_connection(host, port)
    out = []
    try:
        for data, n in zip(writes, expect, strict=True):
            writer.write(data)
            for _ in range(n):
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = re.search(rb"\r\nContent-Length: (\d+)\r\n", raw)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                status = raw.split(b" ", 2)[1].decode()
                try:
                    orgs: Any = sorted(
                        {m["value"]["org_id"] for m in json.loads(body) if "value" in m}
                    )
                except (ValueError, TypeError, KeyError):
                    orgs = body[:80]
                out.append((status, orgs))
    finally:
        writer.close()
    return out


async def test_a_request_after_a_repeated_chunked_head_gets_its_own_headers(
    real_engine: Any,  # noqa: F811 (the fixture imported above)
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
) -> None:
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = fast.tokens.make(sub="alice", org_id="org-1")
    carol = fast.tokens.make(sub="carol", org_id="org-0")
    chunked = (
        f"GET {T} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {alice}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    d = f"GET {T} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {carol}\r\n\r\n".encode()
    head_c, _, body_c = chunked.partition(b"\r\n\r\n")
    results = {}
    for name, proxy in (("fast", fast), ("general", general)):
        s = proxy.client.server
        results[name] = await _answers(s.host, s.port, [chunked, chunked, chunked + d], [1, 1, 2])
        # C's last chunk apart from its head: C answered early, then its end and D together
        results[name + "-split"] = await _answers(
            s.host, s.port, [chunked, chunked, head_c + b"\r\n\r\n", body_c + d], [1, 1, 1, 1]
        )
    assert results["general"][-1] == ("200", ["org-0"])
    assert results["fast"] == results["general"]
    assert results["fast-split"] == results["general-split"]


HEAD = (
    b"GET /v1/shape?table=posts&offset=-1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
)
TRAILERS = {
    "none": b"0\r\n\r\n",
    "nul": b"0\r\nX-T: a\x00b\r\n\r\n",
    "long": b"0\r\nX-T: " + b"v" * (MAX_HEADER_LINE + 10) + b"\r\n\r\n",
    "many": b"0\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 5)) + b"\r\n",
}


async def _first_lines(host: str, port: int, pieces: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    out = []
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            try:
                raw = await asyncio.wait_for(reader.read(65536), 2)
            except TimeoutError:
                raw = b"(nothing in 2 s)"
            first = raw.split(b"\r\n", 1)[0]
            out.append(first + (b" close" if b"onnection: close" in raw else b""))
            if not raw:
                break
    finally:
        writer.close()
    return out


@pytest.mark.parametrize("trailer", list(TRAILERS))
async def test_a_repeated_chunked_heads_trailers_are_checked_as_the_general_path_checks_them(
    real_engine: Any,  # noqa: F811 (the fixture imported above)
    idp_server: Any,
    environ: Any,
    make_proxy: Any,
    trailer: str,
) -> None:
    fast, general = await _pair(real_engine, idp_server, environ, make_proxy)
    pieces = [HEAD + TRAILERS["none"]] * 3 + [HEAD + TRAILERS[trailer], HEAD + TRAILERS["none"]]
    answers = []
    for proxy in (fast, general):
        s = proxy.client.server
        answers.append(await _first_lines(s.host, s.port, pieces))
    assert answers[0] == answers[1]

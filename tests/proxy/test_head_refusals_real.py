"""A HEAD request the HTTP parser refuses (its request line over the 10,000-byte limit, a header
line over its limit, too many headers, a malformed header) is answered without a body, by the
engine and by the proxy alike.

Both answered it with the JSON body of a GET's refusal: the parser refused the request line
(method and all), so the answer was made for a placeholder GET. A HEAD answer has no body
(RFC 9110, 9.3.2): a client reading one takes the body for the start of its next answer (a
framing error; aiohttp's client raised `ClientResponseError` on it).

Real path: proxy -> `sync-engine` -> PostgreSQL; raw sockets (a client library would not
send some of these).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from yarl import URL

from tests.proxy.engines import shared_engine_fixtures
from tests.proxy.real_proxies import open_config
from tests.support.engine_process import EngineProcess

TARGET = b"/v1/shape?table=items&offset=-1"
#: Requests each refused by the parser (ids: why), `T` the shape's target.
REFUSED: dict[str, bytes] = {
    "target-over-limit": b"HEAD T&pad=" + b"x" * 11000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header-over-limit": b"HEAD T HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 11000 + b"\r\n\r\n",
    "too-many-headers": b"HEAD T HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(60))  # (the 51st in the last write)
    + b"\r\n",
    "bad-header": b"HEAD T HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "expect-unknown": b"HEAD T HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n",
    # after a valid request on the same connection (its answer comes first)
    "second-on-connection": b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    b"HEAD T&pad=" + b"x" * 11000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


# One engine for the module's 12 cases (each started its own: ~2 s apiece); every request here is
# refused before it reads or changes a shape.
engine_secret, engine = shared_engine_fixtures(
    "heads",
    "CREATE TABLE items (id int PRIMARY KEY, title text)",
    "INSERT INTO items VALUES (1, 'a')",
)


async def _exchange(base: str, data: bytes, pieces: int) -> bytes:
    """`data` written in `pieces` writes (a long line split as a socket splits it); all the
    server answers until it closes."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        step = -(-len(data) // pieces)
        for at in range(0, len(data), step):
            writer.write(data[at : at + step])
            await writer.drain()
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        return b"(reset)"
    finally:
        writer.close()


def _answers(raw: bytes, methods: list[bytes]) -> list[tuple[int, bytes]]:
    """Each answer's status, and for the last what follows its head (a HEAD answer's body,
    if any); a GET's body (Content-Length or chunked) is skipped."""
    answers = []
    for method in methods:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        answers.append((int(lines[0][9:12]), b""))
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])
        }
        if method == b"GET" and b"content-length" in fields:
            raw = raw[int(fields[b"content-length"]) :]
        elif method == b"GET" and fields.get(b"transfer-encoding") == b"chunked":
            raw = raw.partition(b"\r\n0\r\n\r\n")[2]
    answers[-1] = (answers[-1][0], raw)
    return answers


@pytest.mark.parametrize("pieces", [1, 3], ids=["one-write", "three-writes"])
@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_refused_head_request_gets_no_body(
    engine: EngineProcess, engine_secret: str, make_proxy: Any, case: str, pieces: int
) -> None:
    proxy = await make_proxy(open_config(engine.url, engine_secret))
    base = str(proxy.client.make_url("")).rstrip("/")
    direct = TARGET + b"&secret=" + engine_secret.encode()
    seen = []
    for url, target in ((engine.url, direct), (base, TARGET)):
        raw = await _exchange(url, REFUSED[case].replace(b" T", b" " + target), pieces)
        data = REFUSED[case]
        methods = [line.split(b" ")[0] for line in data.split(b"\r\n") if b" HTTP/1.1" in line]
        answers = _answers(raw, methods)
        seen.append([status for status, _ in answers])
        assert answers, raw[:200]
        assert answers[-1][1] == b"", (url, raw[-300:])
    assert seen[0] == seen[1]
    assert seen[0][-1] >= 400

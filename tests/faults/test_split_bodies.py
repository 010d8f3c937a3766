"""A POST body that reaches the engine in more than one read (a client or network that
sends it in pieces, a chunked body whose chunks come apart) is read whole: the engine
answers it as it answers the same body sent at once. It used to parse the first read only:
a 400 "Invalid JSON" for a long where clause whose bytes came in two TCP segments, the
whole shape for a chunked body whose first chunk had not all arrived (its first bytes, `{}`,
read as the body), and a 400 instead of a 413 for a chunked body over the limit.

Real path: the engine as a process on a private Postgres cluster, a raw socket sending the
request in pieces with a pause between them (so that the engine reads them apart).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from sync_engine.http.params import MAX_BODY
from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess

#: Between two pieces of a request: long enough that the engine reads the first alone.
PAUSE = 0.3


async def _send(port: int, pieces: list[bytes]) -> tuple[int, bytes]:
    """Send `pieces` on one connection, pausing between them; the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(PAUSE)
            writer.write(piece)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        status = int(head.split(b" ", 2)[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        }
        if b"content-length" in headers:
            body = await reader.readexactly(int(headers[b"content-length"]))
        else:
            body = b""
            while True:  # chunked
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if not size:
                    break
                body += chunk[:-2]
        return status, body
    finally:
        writer.close()


def _head(length: int | None, path: str = "/v1/shape?table=items&offset=-1") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n{framing}\r\n\r\n"
    ).encode()


def _subset(answer: tuple[int, bytes]) -> list[int]:
    """The ids of a subset answer's rows (its metadata names the snapshot it was read in)."""
    status, body = answer
    assert status == 200, answer
    parsed = orjson.loads(body)
    assert isinstance(parsed, dict), body[:200]  # a subset's answer, not the shape's log
    return sorted(int(m["value"]["id"]) for m in parsed["data"])


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.mark.timeout(120)
async def test_a_post_body_in_pieces_is_read_whole(cluster: FaultCluster, tmp_path: Path) -> None:
    engine = EngineProcess(cluster.url, tmp_path / "data")
    await asyncio.to_thread(engine.start)
    try:
        # a long where (15 kB): more than one TCP segment across a network
        where = "id IN (" + ",".join(str(i) for i in range(3, 3000)) + ") AND id % 2 = 0"
        body = orjson.dumps({"where": where})
        whole = await _send(engine.port, [_head(len(body)) + body])
        assert _subset(whole) == list(range(4, 21, 2))

        split = await _send(engine.port, [_head(len(body)) + body[:100], body[100:]])
        assert _subset(split) == _subset(whole)

        chunked = [_head(None) + _chunk(body[:100]), _chunk(body[100:]) + _chunk(b"")]
        assert _subset(await _send(engine.port, chunked)) == _subset(whole)
        # a first chunk that has not all arrived: its first bytes are no body
        cut = _chunk(body)
        chunked = [_head(None) + cut[:8], cut[8:] + _chunk(b"")]
        assert _subset(await _send(engine.port, chunked)) == _subset(whole)

        # over the limit, chunked (no length to refuse it by): 413, not a JSON error
        big = b'{"where": "' + b" " * MAX_BODY + b'id > 1"}'
        pieces = [_head(None)] + [
            _chunk(big[i : i + (1 << 20)]) for i in range(0, len(big), 1 << 20)
        ]
        status, answer = await _send(engine.port, [b"".join(pieces) + _chunk(b"")])
        assert status == 413, answer
        # (as a body whose Content-Length says it is too large)
        assert await _send(engine.port, [_head(len(big))]) == (status, answer)
        assert "Traceback" not in engine.log_tail(1_000_000)
    finally:
        engine.stop()

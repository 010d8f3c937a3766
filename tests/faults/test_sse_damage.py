"""An SSE stream whose shape's log turns out damaged while it streams (a chunk file gone or
failing its check when the next change is read): the stream ends as a well-formed HTTP
response, and the client's next request gets the 409 that sends it back to -1.

The error used to be answered as a second HTTP response ("HTTP/1.1 409 Conflict" and its
headers) written into the middle of the SSE response's chunked body: bytes no client can
read as either.

Real path: the engine as a process on a private Postgres cluster, a raw socket for the
SSE client (to see every byte).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess


async def _chunked_body(reader: asyncio.StreamReader) -> bytes:
    """The body of a chunked response, checked to be well formed to its last chunk."""
    body = b""
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
        size = int(size_line.strip(), 16)  # (a status line here fails to parse)
        chunk = await asyncio.wait_for(reader.readexactly(size + 2), 60)
        assert chunk.endswith(b"\r\n"), chunk
        if not size:
            return body
        body += chunk[:-2]


@pytest.mark.timeout(120)
async def test_an_sse_stream_whose_log_is_damaged_ends_well_formed(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    engine = EngineProcess(cluster.url, data)
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            params = {"table": "items", "offset": "-1"}
            while True:
                async with session.get(engine.url + "/v1/shape", params=params) as r:
                    assert r.status == 200
                    await r.read()
                    params = {
                        "table": "items",
                        "offset": r.headers["electric-offset"],
                        "handle": r.headers["electric-handle"],
                    }
                    if "electric-up-to-date" in r.headers:
                        if r.headers["electric-offset"] != "0_inf":
                            break
                        cluster.query("UPDATE items SET v = 1 WHERE id = 1")  # a log file
            tip = "&".join(f"{k}={v}" for k, v in params.items())
            reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
            writer.write(
                f"GET /v1/shape?{tip}&live=true&live_sse=true HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"transfer-encoding: chunked" in head.lower(), head
            await engine.until_parked(1)

            (log,) = data.rglob("*.log.*.log")
            log.unlink()
            cluster.query("UPDATE items SET v = 2 WHERE id = 1")  # read from the gone file

            body = await _chunked_body(reader)
            assert b"HTTP/1.1" not in body, body
            assert all(
                line.startswith((b"data: ", b":")) for line in body.split(b"\n\n") if line
            ), body
            writer.close()

            async with session.get(engine.url + "/v1/shape", params=params) as r:
                assert r.status == 409, await r.read()
        assert "Traceback" not in engine.log_tail(1_000_000)
    finally:
        engine.stop()

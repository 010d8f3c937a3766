"""A client that half-closes its socket (`shutdown(SHUT_WR)`) right after a complete request
is still answered, then the connection closes (HTTP/1.1 allows it; curl with some options,
and some proxies, do it); a live request (held until the shape changes) is let go when its
client half-closes, as when it leaves (`RefusingRequestHandler.eof_received`).

Found (brief to faults): the engine took any FIN for the client leaving: it closed the
connection and cancelled the request, and a non-live request got no answer at all.

Real path: the engine's server on a socket, raw bytes.
"""

from __future__ import annotations

import asyncio
import socket

import orjson

from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine


def _half_closed(host: str, port: int, data: bytes) -> bytes:
    """Send `data`, shut the sending side, read until the server closes."""
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


async def _send(engine: Engine, data: bytes) -> bytes:
    server = engine.client.server
    return await asyncio.to_thread(_half_closed, str(server.host), server.port or 0, data)


async def test_a_request_then_a_half_close_is_answered(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1'), (2, 't2')")
    get = b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await _send(engine, get)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    keys = {m["key"] for m in orjson.loads(body) if "key" in m}
    assert keys == {'"public"."items"/"1"', '"public"."items"/"2"'}
    assert b"\r\nConnection: close" in head  # (nothing more is read: the client said so)

    # Two pipelined, then the half-close: both answered, in order.
    health = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await _send(engine, health + get)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:300]
    assert answer.index(b'{"status"') < answer.index(b'[{"key"'), answer[:300]


async def test_a_live_request_is_let_go_when_its_client_half_closes(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
    engine.sql("INSERT INTO items VALUES (1, 't1')")
    _, handle, offset = await engine.sync(table="items")
    server = engine.client.server
    sock = socket.create_connection((str(server.host), server.port or 0), timeout=20)
    try:
        sock.sendall(
            b"GET /v1/shape?table=items&live=true&handle=%s&offset=%s HTTP/1.1\r\nHost: x\r\n\r\n"
            % (handle.encode(), offset.encode())
        )
        await engine.until_parked(1)
        sock.shutdown(socket.SHUT_WR)
        await wait_until_async(lambda: engine.parked() == 0, message="the live request let go")
    finally:
        sock.close()

"""A request the engine's HTTP parser refuses is answered, then the connection closes as
nginx's `lingering_close` closes it: FIN after the answer, what the client still sends read
and dropped (bounded in bytes and time) before the socket is closed; at most
`MAX_LINGERING_REFUSALS` refused connections linger at once, the rest close at once
(sync_engine/http/parser_refusals.py, `RefusingRequestHandler._linger_close`).

Found (brief to faults, after a fuzz probe saw "connection reset" where it expected a JSON
4xx): the engine closed at once, with the rest of the client's bytes (a body, pipelined
requests) unread in the kernel's buffer; Linux answers such a close with a reset, and a client
still sending never read the 400 it had been sent.

Real path: the engine's server on a socket; a blocking client sending a malformed head and a
body larger than the sockets' buffers before it reads.
"""

from __future__ import annotations

import asyncio
import socket

import orjson

from sync_engine.http import parser_refusals
from sync_engine.http.parser_refusals import MAX_LINGERING_REFUSALS
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

#: A body the engine reads and drops after its refusal (less than `LINGER_BYTES`).
BODY = 768 << 10


def _send_then_read(host: str, port: int, data: bytes) -> bytes:
    """As a plain HTTP client does: send the whole request, then read the answer until the
    server closes. Raises what the socket raises (ConnectionResetError on a reset, in the
    send or in the read)."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def _malformed(extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: %d\r\nBad Header Line\r\n%s\r\n" % (BODY, extra)
    )


async def test_a_refused_request_is_answered_though_the_client_is_still_sending(
    engine: Engine,
) -> None:
    server = engine.client.server
    answer = await asyncio.to_thread(
        _send_then_read, str(server.host), server.port or 0, _malformed() + b"x" * BODY
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert orjson.loads(body) == {"message": "Malformed HTTP request"}
    assert b"\r\nConnection: close" in head
    # (nothing lingers after the client has closed)
    await wait_until_async(
        lambda: parser_refusals._Refusals.lingering_refused == 0, message="no lingering"
    )


async def test_at_most_so_many_refused_connections_linger_at_once(engine: Engine) -> None:
    """Past `MAX_LINGERING_REFUSALS` lingering at once, a refused connection is answered and
    closed at once (as before); those lingering close when their time is up even if the
    client never closes."""
    server = engine.client.server
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(MAX_LINGERING_REFUSALS + 5):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"NOT HTTP\r\n\r\n")
            await writer.drain()
            held.append((reader, writer))
        for reader, _ in held:  # (the answer, then the engine's FIN, for every one)
            answer = await asyncio.wait_for(reader.read(), 20)
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert parser_refusals._Refusals.lingering_refused == MAX_LINGERING_REFUSALS
        # The clients keep their side open: the engine closes its own when the time is up.
        await wait_until_async(
            lambda: parser_refusals._Refusals.lingering_refused == 0,
            timeout=parser_refusals.LINGER_SECONDS + 20,
            message="lingering refusals closed",
        )
    finally:
        for _, writer in held:
            writer.close()

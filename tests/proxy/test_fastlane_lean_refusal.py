"""A head read lean (`protocol._Lean`: the connection's last header lines) that llhttp refuses
is refused as a full read refuses it: a HEAD's refusal is written without its body (hostile
23:41: on b460a0ae the lean read had no `on_message_begin`, so the refusal of a malformed
HEAD was written as a GET's, its body after it, which a client reading a HEAD answer takes
for the start of its next answer)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.http.protocol import Connection
from proxy.http.wire import Response

BODY = b'{"message":"malformed request"}'


class _Transport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return False


class _App:
    """Answers every request at once as a fast answer would (so the next head is read
    lean); refuses with a JSON body."""

    max_body = 1024

    def answer_fast(self, request: Any, connection: Connection) -> Any:
        asyncio.get_running_loop().call_soon(
            connection.fast_written, request, b"HTTP/1.1 204 No Content\r\n\r\n", []
        )
        return object()

    def on_prepare(self, request: Any, response: Any) -> None:
        pass

    def refused(self, refusal: Any, request: Any = None) -> Response:
        return Response(status=refusal.status, body=BODY, content_type="application/json")


async def test_a_malformed_head_read_lean_is_refused_as_a_head() -> None:
    lines = b"Host: proxy.test\r\nAuthorization: Bearer AAAA.aaaa.1111\r\nUser-Agent: n\r\n\r\n"
    connection = Connection(_App())  # type: ignore[arg-type]
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(2):
        connection.data_received(b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\n" + lines)
        for _ in range(3):
            await asyncio.sleep(0)
    assert transport.out == b"HTTP/1.1 204 No Content\r\n\r\n" * 2
    assert connection._memo is not None  # (the next head with these lines is read lean)
    transport.out = b""
    connection.data_received(b"HEAD /v1/shape?table=\x80tems HTTP/1.1\r\n" + lines)
    for _ in range(3):
        await asyncio.sleep(0)
    assert transport.out.startswith(b"HTTP/1.1 400 "), transport.out
    assert f"Content-Length: {len(BODY)}\r\n".encode() in transport.out
    assert transport.out.endswith(b"\r\n\r\n"), transport.out  # (a HEAD's: no body)
    connection.connection_lost(None)

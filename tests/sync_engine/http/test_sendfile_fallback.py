"""A chunk file's response on a connection without a plain socket to `sendfile` to (TLS
here) is read and written through the transport: it holds the file's descriptor, not a
duplicate of the socket, and counts against the file limit only what it holds.

`open_chunk` counts two descriptors for a send (the file, and the socket duplicate its
`sendfile` makes later); the fallback made no duplicate and went on counting it until the
send ended (`room_for_send` stricter than it needs to be; the engine itself serves plain
TCP, so only an app served otherwise takes this path). Real aiohttp server with TLS and a TLS client; what is counted is noted when the file
is read (the fallback's `_read`, wrapped to look). No Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sync_engine.http import parser_refusals, sendfile
from sync_engine.http.sendfile import ChunkFileResponse, open_chunk

from .wire import FakeShape


def _server_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return ctx


@contextlib.asynccontextmanager
async def _serving_tls(handler: Any, ctx: ssl.SSLContext) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/chunk", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def _connect(port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    raw.settimeout(60)
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw)


def _ask(port: int) -> bytes:
    sock = _connect(port)
    try:
        sock.sendall(b"GET /chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while piece := sock.recv(1 << 16):
            got += piece
        return got
    finally:
        sock.close()


async def test_a_send_through_the_transport_counts_only_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b'{"a":1},' * 100_000 + b'{"a":2}'
    path = tmp_path / "chunk"
    path.write_bytes(data)
    held = parser_refusals._Descriptors.sends
    counted: list[int] = []
    read = sendfile._read

    def reading(fd: int, size: int, offset: int) -> bytes:
        counted.append(parser_refusals._Descriptors.sends - held)  # (while the file is read)
        return read(fd, size, offset)

    monkeypatch.setattr(sendfile, "_read", reading)

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = open_chunk(str(path))
        assert fd is not None
        shape: Any = FakeShape()
        return ChunkFileResponse(fd, len(data), {"electric-offset": "0_0"}, shape)

    async with _serving_tls(handler, _server_context(tmp_path)) as port:
        answer = await asyncio.to_thread(_ask, port)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"[" + data + b"]"
    assert counted == [1], f"a send holding one descriptor counted {counted}"
    assert parser_refusals._Descriptors.sends == held

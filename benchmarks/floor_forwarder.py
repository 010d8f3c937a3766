"""The floor: the least a Python forwarder can do per request, for S1's "floor" arm.

Run (S1 starts it): `.venv/bin/python benchmarks/floor_forwarder.py PORT ENGINE_HOST:PORT`.

Why: issue 13's bar 4 asks the proxy's CPU per uncached forward to be <= 1.5x nginx's. This
script is what the proxy would cost if it did nothing but forward, on the same stack (uvloop,
llhttp through httptools both ways, no task or coroutine per request), so `make bench` shows
in one run how much of the gap is CPython's and how much is ours: proxy/floor is what our
auth, policy, header rules, access log, metrics, limits and bookkeeping cost; floor/nginx is
what the language and its event loop cost.

What it does per request, and nothing more:
- parse the client's request (httptools), one callback per header;
- send the engine the request the proxy's fast lane sends: the request target as the client
  sent it (S1 sends the floor the engine URL the proxy would build, as it sends nginx), `Host`,
  the proxy's allowlisted client headers (lower-cased, in its order) and an `x-request-id`,
  on a kept-alive engine connection (a LIFO pool, a new connection when none is idle);
- parse the engine's answer (httptools) and write the client the engine's status line and
  headers minus hop-by-hop ones, plus `Content-Length` (or chunked framing), `Date` and
  `Connection` as needed, then the body as it arrives, in one write per engine read.
No auth, policy, limits, timeouts, access log, metrics or error scrubbing: it is a
measuring stick, not a server (an engine failure just closes the client connection).
"""

from __future__ import annotations

import asyncio
import sys
import time
from email.utils import formatdate
from typing import cast

import httptools
import uvloop

#: Client headers forwarded (proxy.upstream.headers.FORWARDED_REQUEST_HEADERS, inlined: the
#: floor imports nothing of the proxy).
FORWARDED = (
    b"accept",
    b"accept-encoding",
    b"content-type",
    b"if-none-match",
    b"traceparent",
    b"tracestate",
    b"user-agent",
)
_FORWARDED = frozenset(FORWARDED)
#: Engine headers not passed back (hop-by-hop, and those written here).
DROPPED = frozenset(
    (b"connection", b"keep-alive", b"transfer-encoding", b"date", b"content-length", b"server")
)


class _Date:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second, self.value = second, formatdate(second, usegmt=True).encode()
        return self.value


DATE = _Date()


class Engine(asyncio.Protocol):
    """One kept-alive engine connection, one request at a time."""

    def __init__(self, pool: list[Engine]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.headers: list[bytes] = []
        self.reason = b""
        self.out: list[bytes] = []
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool:
            self.pool.remove(self)
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.close()

    def send(self, data: bytes, client: Client) -> None:
        assert self.transport is not None
        self.client = client
        self.headers = []
        self.reason = b""
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        client = self.client  # (set before the answer's first byte; None after its last)
        out: list[bytes] = []
        self.out = out
        self.parser.feed_data(data)
        if out and client is not None and client.transport is not None:
            client.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if client is not None and self.client is None:
            client.answered()

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, value)

    def on_headers_complete(self) -> None:
        client = self.client
        assert client is not None
        raw = self.headers
        lines = [b"HTTP/1.1 %d %s" % (self.parser.get_status_code(), self.reason)]
        length = None
        for i in range(0, len(raw), 2):
            lower = raw[i].lower()
            if lower == b"content-length":
                length = raw[i + 1]
            elif lower not in DROPPED:
                lines.append(raw[i] + b": " + raw[i + 1])
        if length is not None:
            lines.append(b"Content-Length: " + length)
            self.chunked = False
        else:
            lines.append(b"Transfer-Encoding: chunked")
            self.chunked = True
        lines.append(b"Date: " + DATE.now())
        if not client.keep_alive:
            lines.append(b"Connection: close")
        lines.append(b"\r\n")
        self.out.append(b"\r\n".join(lines))

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.client = None  # (data_received writes the last bytes, then tells the client)
        if self.parser.should_keep_alive():
            self.pool.append(self)
        elif self.transport is not None:
            self.transport.close()


class Client(asyncio.Protocol):
    """One client connection."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.lines: list[bytes] = []
        self.found: dict[bytes, bytes] = {}
        self.keep_alive = True
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.found = {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in _FORWARDED and lower not in self.found:
            self.found[lower] = value

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        found = self.found
        forwarder = self.forwarder
        head = [b"GET " + self.url + b" HTTP/1.1", forwarder.host]
        head += [name + b": " + found[name] for name in FORWARDED if name in found]
        head.append(b"x-request-id: floor-%016x" % next(forwarder.ids))
        head.append(b"\r\n")
        forwarder.forward(b"\r\n".join(head), self)

    def answered(self) -> None:
        if not self.keep_alive and self.transport is not None:
            self.transport.close()


class Forwarder:
    def __init__(self, engine_host: str, engine_port: int) -> None:
        self.engine = (engine_host, engine_port)
        self.host = b"Host: %s:%d" % (engine_host.encode(), engine_port)
        self.pool: list[Engine] = []
        self.ids = iter(range(1 << 62))
        self.loop = asyncio.get_running_loop()

    def forward(self, data: bytes, client: Client) -> None:
        pool = self.pool
        while pool:
            engine = pool.pop()
            if engine.transport is not None and not engine.transport.is_closing():
                engine.send(data, client)
                return
        self.loop.create_task(self._connect(data, client))

    async def _connect(self, data: bytes, client: Client) -> None:
        pool = self.pool
        try:
            _, engine = await self.loop.create_connection(lambda: Engine(pool), *self.engine)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        engine.send(data, client)


async def main(port: int, upstream: str) -> None:
    host, _, engine_port = upstream.rpartition(":")
    forwarder = Forwarder(host, int(engine_port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(forwarder), "127.0.0.1", port, backlog=128)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))

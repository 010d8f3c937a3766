"""The proxy's engine client (`proxy.upstream.client`): a keep-alive pool over httptools.

Against the real `sync-engine` (a subprocess on a real Postgres): whole answers reuse one
connection, a large snapshot streams with backpressure (reading pauses while nobody reads and
every byte arrives afterwards), a cancelled request closes its connection, a long-poll that
outlasts the first-byte timeout is a 504, and no error or log line carries the secret.
Against small raw servers (behaviour the engine never shows on purpose): a keep-alive
connection the server dropped is retried once for a GET or a subset POST, never a DELETE, a body that
stalls or is cut short fails as a body error, garbage is a 502, chunked and read-until-close
bodies, HEAD answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import NoReturn

import pytest
from yarl import URL

from proxy.errors import ProxyError, UpstreamError, UpstreamTimeout
from proxy.upstream.client import (
    HIGH_WATER,
    BodyTimeout,
    BodyTruncated,
    RawHead,
    UpstreamOptions,
    UpstreamPool,
    UpstreamResponse,
    _serialize,
    key_of,
)
from tests.proxy.engines import engine_on_a_new_database
from tests.support.waiting import wait_until_async

SECRET = "client-test-secret-0123456789abcdef"
ROWS = 12_000  # ~5 MB of JSON: the first answer (~1 MB) passes the body buffer's high-water mark

OPTIONS = UpstreamOptions(connect_timeout=5, first_byte_timeout=10, retry_after=2, max_age_cap=60)


def _options(first_byte_timeout: float) -> UpstreamOptions:
    return UpstreamOptions(
        connect_timeout=5, first_byte_timeout=first_byte_timeout, retry_after=2, max_age_cap=60
    )


@pytest.fixture(scope="module")
def engine(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One engine (and one 5 MB snapshot) for the module's four real-engine tests: each
    started its own and made the snapshot again. None of them writes."""
    with engine_on_a_new_database(
        pg_server_url,
        tmp_path_factory.mktemp("upstream") / "data",
        SECRET,
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        f"INSERT INTO items SELECT g, repeat('x', 400) FROM generate_series(1, {ROWS}) g",
        args=("--long-poll-timeout", "20", "--no-fsync"),
    ) as process:
        yield process.url


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(8)
    try:
        yield pool
    finally:
        await pool.close()


def shape_url(base: str, **params: str) -> URL:
    return (
        URL(base).with_path("/v1/shape").with_query({"table": "items", **params, "secret": SECRET})
    )


async def read_all(response: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in response.content.iter_any()])


async def follow_to_tip(pool: UpstreamPool, base: str) -> tuple[str, str]:
    """Read the shape until up-to-date; returns (handle, offset) at the tip."""
    params = {"offset": "-1"}
    for _ in range(20):
        response = await pool.request("GET", shape_url(base, **params), {}, None, OPTIONS)
        await read_all(response)
        response.release()
        handle, offset = response.headers["electric-handle"], response.headers["electric-offset"]
        if "electric-up-to-date" in response.headers:
            return handle, offset
        params = {"offset": offset, "handle": handle}
    raise AssertionError("never up to date")


# --- the real engine ---------------------------------------------------------------------


async def test_large_body_pauses_reading_until_read_and_arrives_whole(
    engine: str, pool: UpstreamPool
) -> None:
    response = await pool.request("GET", shape_url(engine, offset="-1"), {}, None, OPTIONS)
    assert response.status == 200
    # Nobody reads: the connection stops reading once the buffer passes its high-water mark
    # (plus at most one socket read), instead of buffering the whole snapshot.
    await wait_until_async(lambda: response.content.reading_paused, message="reading paused")
    assert response.content.buffered <= HIGH_WATER + 256 * 1024
    body = await read_all(response)
    response.release()
    assert len(body) > HIGH_WATER
    assert pool.idle_connections == 1  # read whole: the connection is kept for reuse
    # Every byte arrived: the same answer read without pausing is identical.
    again = await pool.request("GET", shape_url(engine, offset="-1"), {}, None, OPTIONS)
    assert await read_all(again) == body
    again.release()
    assert [m for m in json.loads(body) if "key" in m]


async def test_whole_answers_reuse_one_connection(engine: str, pool: UpstreamPool) -> None:
    handle, offset = await follow_to_tip(pool, engine)
    for _ in range(3):
        url = shape_url(engine, offset=offset, handle=handle)
        response = await pool.request("GET", url, {"accept": "application/json"}, None, OPTIONS)
        assert response.status == 200
        assert response.content_length is not None
        body = await response.content.readexactly(response.content_length)
        response.release()
        assert json.loads(body)[-1]["headers"]["control"] == "up-to-date"
    assert pool.open_connections == 1


async def test_cancelled_request_closes_its_engine_connection(
    engine: str, pool: UpstreamPool
) -> None:
    handle, offset = await follow_to_tip(pool, engine)
    live = shape_url(engine, offset=offset, handle=handle, live="true")
    task = asyncio.create_task(pool.request("GET", live, {}, None, OPTIONS))
    await wait_until_async(
        lambda: pool.open_connections == 1 and pool.idle_connections == 0,
        message="the long-poll is on its connection",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open_connections == 0  # closed, not returned half-answered to the pool
    # The pool still works afterwards.
    handle2, _ = await follow_to_tip(pool, engine)
    assert handle2 == handle


async def test_long_poll_past_first_byte_timeout_is_504_without_secret(
    engine: str, pool: UpstreamPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handle, offset = await follow_to_tip(pool, engine)
    live = shape_url(engine, offset=offset, handle=handle, live="true")
    with pytest.raises(UpstreamTimeout) as caught:
        await pool.request("GET", live, {}, None, _options(first_byte_timeout=0.3))
    assert caught.value.status == 504 and caught.value.reason == "upstream_timeout"
    assert pool.open_connections == 0
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert SECRET not in text and "127.0.0.1" not in text


async def test_unreachable_engine_is_502_without_secret(
    pool: UpstreamPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as bound:  # (bound, never listening: refused, and kept from others)
        bound.bind(("127.0.0.1", 0))
        url = shape_url(f"http://127.0.0.1:{bound.getsockname()[1]}", offset="-1")
        with pytest.raises(UpstreamError) as caught:
            await pool.request("GET", url, {}, None, OPTIONS)
    assert caught.value.status == 502 and caught.value.reason == "upstream_unreachable"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert SECRET not in text


# --- raw servers: what the engine does not do on purpose ---------------------------------

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A TCP server running `serve(reader, writer, connection_number)` per connection."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.serve(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str = "/v1/shape") -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}{path}").with_query({"secret": SECRET})


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_stale_keep_alive_connection_is_retried_once_for_get(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # the second request on this connection: drop it unanswered

    async with RawServer(serve) as server:
        for _ in range(3):
            response = await pool.request("GET", server.url(), {}, None, OPTIONS)
            assert await response.content.readexactly(2) == b"ok"
            response.release()
        assert server.connections == 3  # each reuse found the connection dropped: one retry


async def test_whole_body_larger_than_the_high_water_mark_is_read(pool: UpstreamPool) -> None:
    # The forwarder reads answers up to 1 MiB (up to 16 MiB when it caches them) in one
    # `readexactly`; reading pauses past the high-water mark, and must go on for that reader.
    body = bytes(range(256)) * (3 * HIGH_WATER // 256)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    async with RawServer(serve) as server:
        response = await pool.request("GET", server.url(), {}, None, OPTIONS)
        assert await asyncio.wait_for(response.content.readexactly(len(body)), 10) == body
        response.release()
        response = await pool.request("GET", server.url(), {}, None, OPTIONS)
        assert await asyncio.wait_for(response.content.read(len(body) + 1), 10) == body
        response.release()


async def _answer_once_then_drop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    await read_request(reader)
    writer.write(OK)
    await writer.drain()
    await read_request(reader)  # the second request on this connection: drop it unanswered


async def test_stale_keep_alive_connection_is_retried_once_for_a_subset_post(
    pool: UpstreamPool,
) -> None:
    """A POST to /v1/shape is a subset snapshot (also a GET subset too long for a URL): a
    read, retried on a new connection as a GET is. It used to be the engine's 502."""
    async with RawServer(_answer_once_then_drop) as server:
        for _ in range(3):
            response = await pool.request("POST", server.url(), {}, b"{}", OPTIONS)
            assert await response.content.readexactly(2) == b"ok"
            response.release()
        assert server.connections == 3  # each reuse found the connection dropped: one retry


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/v1/shape"), ("POST", "/v1/other")])
async def test_stale_keep_alive_connection_is_not_retried_for_other_requests(
    pool: UpstreamPool, method: str, path: str
) -> None:
    async with RawServer(_answer_once_then_drop) as server:
        response = await pool.request(method, server.url(path), {}, b"{}", OPTIONS)
        await response.content.readexactly(2)
        response.release()
        with pytest.raises(UpstreamError) as caught:
            await pool.request(method, server.url(path), {}, b"{}", OPTIONS)
        assert caught.value.reason == "upstream_error" and SECRET not in str(caught.value)
        assert server.connections == 1


async def test_body_that_stalls_fails_after_the_idle_timeout(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes")
        await writer.drain()
        await reader.read()  # until the client gives up

    async with RawServer(serve) as server:
        response = await pool.request(
            "GET", server.url(), {}, None, _options(first_byte_timeout=0.3)
        )
        chunks = response.content.iter_any()
        assert await anext(chunks) == b"first bytes"
        with pytest.raises(BodyTimeout):
            await anext(chunks)
        response.close()
        assert pool.open_connections == 0


async def test_a_reused_connection_times_out_by_the_new_requests_timeout(
    pool: UpstreamPool,
) -> None:
    """A connection keeps one timer between requests: a later request with a shorter
    first-byte timeout still times out by its own, not by the earlier request's."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        await reader.read()  # the second request is never answered

    async with RawServer(serve) as server:
        response = await pool.request("GET", server.url(), {}, None, _options(3600))
        assert await response.content.readexactly(2) == b"ok"
        response.release()
        second = pool.request("GET", server.url(), {}, None, _options(first_byte_timeout=0.3))
        with pytest.raises(UpstreamTimeout):  # (wait_for: a hang fails, it does not pass late)
            await asyncio.wait_for(second, 60)
        assert server.connections == 1


async def test_time_paused_by_a_slow_reader_is_not_an_engine_timeout(pool: UpstreamPool) -> None:
    body = b"x" * (4 * HIGH_WATER)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await reader.read()

    async with RawServer(serve) as server:
        response = await pool.request("GET", server.url(), {}, None, _options(0.3))
        await wait_until_async(lambda: response.content.reading_paused, message="paused")
        await asyncio.sleep(0.6)  # the stimulus: twice the timeout without reading
        assert await read_all(response) == body
        response.release()


async def test_body_cut_short_fails_and_is_not_reused(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    async with RawServer(serve) as server:
        response = await pool.request("GET", server.url(), {}, None, OPTIONS)
        with pytest.raises(BodyTruncated):
            await response.content.readexactly(100)
        response.release()
        assert pool.open_connections == 0


async def test_garbage_instead_of_an_answer_is_502(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(serve) as server:
        with pytest.raises(UpstreamError) as caught:
            await pool.request("GET", server.url(), {}, None, OPTIONS)
        assert caught.value.reason == "upstream_error" and SECRET not in str(caught.value)
        assert pool.open_connections == 0


async def test_chunked_and_read_until_close_bodies(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = await read_request(reader)
        if b"chunked" in head:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
            await read_request(reader)  # kept alive: a second request comes on it
            writer.write(OK)
            await writer.drain()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")

    async with RawServer(serve) as server:
        chunked = server.url().update_query(kind="chunked")
        response = await pool.request("GET", chunked, {}, None, OPTIONS)
        assert response.content_length is None
        assert response.headers["Content-Encoding"] == "gzip"  # passed through, not decoded
        assert await read_all(response) == b"hello world"
        response.release()
        response = await pool.request("GET", chunked, {}, None, OPTIONS)
        assert await read_all(response) == b"ok"
        response.release()
        assert server.connections == 1

        response = await pool.request("GET", server.url(), {}, None, OPTIONS)
        assert await response.content.read(5) == b"until"  # the first bytes of a longer body
        assert await response.content.read(100) == b" the end"  # the rest, up to its end
        response.release()
        assert server.connections == 2


async def test_head_answer_has_no_body(pool: UpstreamPool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                writer.write(OK)
            await writer.drain()

    async with RawServer(serve) as server:
        response = await pool.request("HEAD", server.url(), {}, None, OPTIONS)
        assert response.status == 200 and response.content_length == 1234
        assert response.content.is_eof()
        response.release()
        response = await pool.request("GET", server.url(), {}, None, OPTIONS)
        assert await read_all(response) == b"ok"
        response.release()


async def test_request_headers_with_line_breaks_are_not_sent(pool: UpstreamPool) -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    async with RawServer(serve) as server:
        headers = {"accept": "application/json", "traceparent": "x\r\nInjected: yes"}
        response = await pool.request("GET", server.url(), headers, None, OPTIONS)
        await read_all(response)
        response.release()
    assert b"accept: application/json\r\n" in seen[0]
    assert b"Injected" not in seen[0]


async def test_a_full_pool_queues_requests_until_a_connection_is_free() -> None:
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(OK)
            await writer.drain()

    pool = UpstreamPool(1)
    try:
        async with RawServer(serve) as server:
            first = asyncio.create_task(pool.request("GET", server.url(), {}, None, OPTIONS))
            second = asyncio.create_task(pool.request("GET", server.url(), {}, None, OPTIONS))
            await wait_until_async(lambda: server.connections == 1, message="one connection")
            assert not second.done()  # waits for the pool's only connection
            release.set()
            for task in (first, second):
                response = await task
                assert await read_all(response) == b"ok"
                response.release()
            assert server.connections == 1 and pool.open_connections == 1
    finally:
        await pool.close()
    assert pool.open_connections == 0


class _Receiver:
    """A client socket the proxy would write to: `transport` (the proxy's side, with small
    socket buffers so backpressure shows at once) and what arrived at the other end."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.reading = asyncio.Event()
        self.reading.set()
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _Receiver:
        async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            while True:
                await self.reading.wait()
                data = await reader.read(65536)
                if not data:
                    break
                self.received += data
            self.closed.set()

        self._server = await asyncio.start_server(take, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self.transport is not None
        self.transport.abort()
        self._server.close()


async def test_a_long_body_is_spliced_to_a_client_socket_and_its_connection_reused(
    pool: UpstreamPool,
) -> None:
    """`UpstreamResponse.splice`: the client socket gets exactly the engine's body after the
    caller's head; the engine connection is reused afterwards. Chunked, HEAD-like and short
    answers are not spliced (None: read as before)."""
    body = bytes(range(256)) * (2 * HIGH_WATER // 256 + 7)
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        OK,
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()

    async with RawServer(serve) as server, _Receiver() as client:
        assert client.transport is not None
        for answer in answers:
            response = await pool.request("GET", server.url(), {}, None, OPTIONS)
            client.transport.write(b"head\r\n")
            spliced = response.splice(client.transport, 5, 5)
            if answer.endswith(body):
                assert spliced is not None
                await asyncio.wait_for(spliced, 30)
            else:
                assert spliced is None
                await read_all(response)
            response.release()
        await wait_until_async(
            lambda: len(client.received) >= 2 * len(body) + 4 * 6, message="all received"
        )
        assert client.received == b"head\r\n" + body + b"head\r\n" * 3 + body
        assert server.connections == 1  # one engine connection throughout


async def test_a_spliced_body_fails_when_the_engine_stalls_or_the_client_stops_reading(
    pool: UpstreamPool,
) -> None:
    """The engine silent for the read timeout: `BodyTimeout`; the client reading nothing for
    the send timeout: `ConnectionResetError` and its connection aborted. Either way the
    engine connection is closed, not reused with part of a body in it."""
    body = b"y" * (8 * HIGH_WATER)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body if n == 2 else body[: HIGH_WATER // 2])
        await writer.drain()
        await reader.read()

    async with RawServer(serve) as server:
        for stalls in (True, False):
            async with _Receiver() as client:
                if not stalls:
                    client.reading.clear()
                response = await pool.request("GET", server.url(), {}, None, OPTIONS)
                spliced = response.splice(client.transport, 0.3, 0.3)
                assert spliced is not None
                error = BodyTimeout if stalls else ConnectionResetError
                with pytest.raises(error):
                    await asyncio.wait_for(spliced, 30)
                response.release()
                assert pool.open_connections == 0
                assert client.transport is not None and client.transport.is_closing() != stalls
        assert server.connections == 2


class _Heads:
    """A `Listener` keeping what it is told (`_Connection.send_to`)."""

    def __init__(self) -> None:
        self.heads: list[RawHead] = []
        self.done = asyncio.Event()

    def on_headers(self, head: RawHead) -> None:
        self.heads.append(head)

    def on_complete(self) -> None:
        self.done.set()

    def on_failed(self, error: Exception, retry: bool) -> None:
        raise AssertionError(f"failed: {error!r}")


async def test_answers_on_one_connection_each_keep_exactly_their_own_raw_headers(
    pool: UpstreamPool,
) -> None:
    """The header list llhttp fills is the connection's, emptied for each request: each
    answer's `RawHead.raw` is its own copy, every header in order (a repeated name twice),
    an interim 1xx's headers dropped, none of an earlier answer's left in a later one."""
    answers = [
        b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nVary: Origin\r\nx-a: 1\r\nVary: Accept\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-b: 2\r\nContent-Length: 2\r\n\r\nok",
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await read_request(reader)

    async with RawServer(serve) as server:
        url = server.url()
        key = key_of(url)
        heads = []
        for n in range(2):
            # (the first request opens the connection the second takes idle)
            conn = pool.take_idle(key) if n else await pool._connect(key, OPTIONS)
            assert conn is not None
            listener = _Heads()
            conn.send_to(_serialize("GET", url, {}, None), 10, listener)
            await asyncio.wait_for(listener.done.wait(), 10)
            [head] = listener.heads
            assert head.body.take_all() == b"ok"
            head.release()
            heads.append(head)
        assert server.connections == 1
    assert heads[0].raw == [
        b"Vary", b"Origin", b"x-a", b"1", b"Vary", b"Accept", b"Content-Length", b"2"
    ]  # fmt: skip
    assert heads[1].raw == [b"x-b", b"2", b"Content-Length", b"2"]


async def test_a_bug_in_a_callback_of_ours_is_a_logged_500_not_the_engines_502(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception out of the proxy's own parser callback (here, making the answer's
    headers) is a bug of ours: it was swallowed as the engine's broken answer (a 502
    `upstream_error`, nothing logged); now it is logged with its traceback and the request's
    500 `internal_error`, as the direct path answers a bug. (Made on a request waiting for
    its headers, it left that request waiting for ever: the waiter was cleared first.)"""

    def bug(_: RawHead) -> NoReturn:
        raise KeyError("a bug")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    monkeypatch.setattr(RawHead, "response", bug)
    async with RawServer(serve) as server:
        with pytest.raises(ProxyError) as caught:  # (it waited for ever: bounded here)
            await asyncio.wait_for(pool.request("GET", server.url(), {}, None, OPTIONS), 10)
    assert (caught.value.status, caught.value.reason) == (500, "internal_error")
    assert SECRET not in str(caught.value)
    assert any(
        r.levelno == logging.ERROR and r.exc_info and isinstance(r.exc_info[1], KeyError)
        for r in caplog.records
    )

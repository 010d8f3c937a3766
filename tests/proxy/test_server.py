"""The proxy's own HTTP/1.1 server, byte for byte: keep-alive, pipelining, HTTP/1.0,
`Expect: 100-continue`, an oversized body, HEAD, a malformed request after a good one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.proxy.proxy_fakes import ORIGIN


async def _exchange(proxy: Any, data: bytes, *, until_closed: bool = True) -> bytes:
    """Send raw bytes; read until the proxy closes the connection (or 5 s of silence)."""
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 5 if until_closed else 1)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        out += b"<open>"
    writer.close()
    return out


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of Content-Length answers into (status, headers, body)."""
    answers = []
    while raw.startswith(b"HTTP/"):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return answers


async def test_pipelined_requests_are_answered_in_order_on_one_connection(proxy: Any) -> None:
    raw = await _exchange(
        proxy,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: first-request-0000001\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: third-request-0000003\r\n"
        b"Connection: close\r\n\r\n",
    )
    answers = _answers(raw)
    assert [status for status, _, _ in answers] == [200, 404, 200]
    assert answers[0][1]["x-request-id"] == "first-request-0000001"
    assert answers[2][1]["x-request-id"] == "third-request-0000003"
    assert answers[2][1]["connection"] == "close"
    assert answers[1][2] == b'{"message":"Not Found"}'  # (the engine's, byte for byte)


async def test_http_1_0_closes_unless_asked_to_keep_alive(proxy: Any) -> None:
    closed = await _exchange(proxy, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert closed.startswith(b"HTTP/1.0 200 ") and not closed.endswith(b"<open>")
    kept = await _exchange(
        proxy, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", until_closed=False
    )
    assert kept.startswith(b"HTTP/1.0 200 ") and kept.endswith(b"<open>")
    assert b"\r\nConnection: keep-alive\r\n" in kept


async def test_expect_100_continue_gets_the_interim_answer_first(proxy: Any) -> None:
    token = proxy.tokens.make()
    body = b'{"where": "id > 0"}'
    raw = await _exchange(
        proxy,
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
    )
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 ")
    status = int(raw.split(b"\r\n\r\n", 1)[1].split()[1])
    assert status < 500


async def test_a_body_over_the_limit_is_refused_at_once_and_dropped_as_it_arrives(
    proxy: Any,
) -> None:
    """Answered 413 as soon as its head says how large it is (nothing of it kept), then its
    body read and dropped, and the connection goes on (the engine's way: closed at once, a
    client still sending got a reset instead of the 413)."""
    token = proxy.tokens.make()
    raw = await _exchange(
        proxy,
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 999999999\r\n\r\n{",
        until_closed=False,
    )
    assert raw.endswith(b"<open>")
    (status, headers, body), *_ = _answers(raw.removesuffix(b"<open>"))
    assert status == 413 and body == b'{"error":"Request body too large"}'  # (the engine's)
    assert "connection" not in headers


async def test_head_gets_headers_without_a_body(proxy: Any) -> None:
    raw = await _exchange(
        proxy, b"HEAD /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    # (the engine's health answer, as for a GET: its length, no body)
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: " in head
    assert rest == b""


async def test_a_malformed_request_after_a_good_one_gets_json_then_close(proxy: Any) -> None:
    raw = await _exchange(
        proxy,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nBad header\r\n\r\n",
    )
    answers = _answers(raw)
    assert [status for status, _, _ in answers] == [200, 400]
    assert answers[1][1]["content-type"].startswith("application/json")
    assert answers[1][1]["connection"] == "close"


async def test_a_204_preflight_has_no_content_length(proxy: Any) -> None:
    raw = await _exchange(
        proxy,
        b"OPTIONS /v1/shape HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode() + b"\r\n"
        b"Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 ")
    assert b"content-length" not in head.lower() and rest == b""


async def test_a_token_that_is_not_utf8_is_refused_not_a_server_error(proxy: Any) -> None:
    raw = await _exchange(
        proxy,
        b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer \xff\xfe.\xc3\x28\r\nConnection: close\r\n\r\n",
    )
    [(status, headers, body)] = _answers(raw)
    assert status == 401
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["code"] == "invalid_token"


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(
    proxy: Any, monkeypatch: Any
) -> None:
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "KEEPALIVE_TIMEOUT", 0.2)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    for _ in range(3):  # requests in a row keep it open; each answered on the same connection
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    # Then idle: the proxy closes it (a hang fails the wait; it does not pass late).
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the proxy sent before closing; a connection still open after `seconds` fails."""
    return await asyncio.wait_for(reader.read(), seconds)


def _assert_timed_out(raw: bytes) -> None:
    """A 408 in JSON, then the connection closed (it was closed with no answer before)."""
    [(status, headers, body)] = _answers(raw)
    assert (status, headers["connection"]) == (408, "close")
    assert headers["cache-control"] == "no-store"
    assert json.loads(body)["code"] == "request_timeout"


async def test_a_request_head_that_never_completes_is_cut_off(proxy: Any, monkeypatch: Any) -> None:
    """Slow loris: a head sent in part (or one header line at a time, for ever) must not hold
    the connection open past the request deadline, however busy the trickle keeps it."""
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    _assert_timed_out(await _closed_within(reader, 10))
    writer.close()

    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")

    async def trickle() -> None:
        for i in range(200):  # 20 s of one header every 0.1 s
            writer.write(b"X-Trickle-%d: a\r\n" % i)
            await asyncio.sleep(0.1)

    trickling = asyncio.ensure_future(trickle())
    try:
        _assert_timed_out(await _closed_within(reader, 10))
    finally:
        trickling.cancel()
        writer.close()


async def test_a_request_pipelined_behind_an_answered_one_is_cut_at_its_own_deadline(
    proxy: Any, monkeypatch: Any
) -> None:
    """A head that never completes, pipelined behind a request the proxy answers: cut at its
    own deadline (`REQUEST_READ_TIMEOUT` after its first byte), as the engine cuts it, not at
    the end of the keep-alive the answer armed (75 s against the engine's 30 s: attack)."""
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(protocol, "KEEPALIVE_TIMEOUT", 600.0)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # and never the blank line
    )
    try:
        raw = await _closed_within(reader, 20)  # (600 s on the old code)
    finally:
        writer.close()
    first, *rest = _answers(raw)
    assert first[0] == 200
    _assert_timed_out(raw[raw.index(b"HTTP/1.1 408") :])


async def test_a_stalled_request_body_is_cut_off(proxy: Any, monkeypatch: Any) -> None:
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    _assert_timed_out(await _closed_within(reader, 10))
    writer.close()


async def test_a_slow_request_within_the_deadline_is_answered(proxy: Any, monkeypatch: Any) -> None:
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 3.0)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    for piece in (b"GET /healthz HT", b"TP/1.1\r\nHost: x\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(0.3)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


class _HoldingApp:
    """The least an app must be for `Connection`: every request is held until `release`."""

    max_body = 1024

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def answer_fast(self, request: Any, connection: Any) -> None:
        return None

    async def handle(self, request: Any) -> Any:
        from proxy.http.wire import Response

        self.held.set()
        await self.release.wait()
        return Response(status=204)

    def on_prepare(self, request: Any, response: Any) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_a_held_request_keeps_no_parser_header_list_or_target_pieces() -> None:
    """While a request is answered (a held long-poll, for minutes), its connection keeps
    neither the parser nor the raw header pairs and target pieces it was parsed from: the
    `Request` has what it needs (bar 4: memory per held long-poll)."""
    from proxy.http.protocol import Connection

    app = _HoldingApp()
    conn = Connection(app)  # type: ignore[arg-type]
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(
        b"GET /v1/shape?table=items&offset=-1&live=true HTTP/1.1\r\nHost: proxy.test\r\n"
        b"Authorization: Bearer abc\r\nUser-Agent: node\r\n\r\n"
    )
    await asyncio.wait_for(app.held.wait(), 5)
    assert conn._parser is None
    assert conn._headers == []
    assert conn._url == []
    app.release.set()
    for _ in range(100):
        if transport.out:
            break
        await asyncio.sleep(0)
    assert transport.out.startswith(b"HTTP/1.1 204 ")
    conn.connection_lost(None)


class _AtOnceApp:
    """An app whose fast lane answers every request at once (as `FastAnswer` writes one)."""

    max_body = 1024

    def __init__(self) -> None:
        self.parsers: list[Any] = []
        self.requests: list[Any] = []

    def answer_fast(self, request: Any, connection: Any) -> object:
        self.parsers.append(connection._parser)
        self.requests.append(request)
        asyncio.get_running_loop().call_soon(
            connection.fast_written, request, b"HTTP/1.1 204 No Content\r\n\r\n", []
        )
        return object()  # (the `FastAnswer` answering it)

    def on_prepare(self, request: Any, response: Any) -> None:
        pass


async def test_a_keep_alive_connection_parses_its_next_request_with_the_same_parser() -> None:
    """llhttp reads one request after another: a keep-alive connection answered by the fast
    lane keeps its parser between requests (making one per request was ~1% of a forward),
    and lets go of it after a request that closes the connection, once it holds a
    long-poll, or when it goes idle (`release_parser`), as before. A request with the last
    one's header lines is read by a parser without per-header callbacks (`_Lean`, made
    once and then kept as well) and gets the headers read from those lines."""
    from proxy.http.protocol import Connection

    app = _AtOnceApp()
    conn = Connection(app)  # type: ignore[arg-type]
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    get = b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: proxy.test\r\n"
    for n in (1, 2, 3):
        conn.data_received(get + b"\r\n")
        await asyncio.sleep(0)
        assert transport.out.count(b"HTTP/1.1 204 ") == n
    assert len(app.parsers) == 3 and app.parsers[1] is app.parsers[2]
    assert app.parsers[0] is not app.parsers[1]  # (the second and third: lean)
    assert [dict(r.headers) for r in app.requests] == [{"Host": "proxy.test"}] * 3
    other = get.replace(b"?table=items", b"?table=posts") + b"Accept: */*\r\n\r\n"
    conn.data_received(other)  # (other lines: read with the header callbacks again)
    await asyncio.sleep(0)
    assert app.parsers[3] is not app.parsers[2]
    assert dict(app.requests[3].headers) == {"Host": "proxy.test", "Accept": "*/*"}
    assert app.requests[3].raw_path == "/v1/shape?table=posts&offset=-1"
    kept = conn._parser
    assert kept is not None
    conn.release_parser()  # (held, or idle: the next request makes a new one)
    assert conn._parser is None
    conn.data_received(get + b"Connection: close\r\n\r\n")
    assert len(app.parsers) == 5 and app.parsers[4] is not kept
    assert conn._parser is None  # (not kept after a request that closes the connection)
    await asyncio.sleep(0)
    assert transport.out.count(b"HTTP/1.1 204 ") == 5
    conn.connection_lost(None)


async def test_repeated_header_lines_with_a_body_after_the_head_read_each_body_whole() -> None:
    """POSTs whose heads repeat the last request's header lines, with the body in the same
    read, in the next read, or split, and pipelined: each request gets its own target and
    its whole body, and the connection reads on after. (A head with a body is not read
    lean: its parser would read on past it.)"""
    from proxy.http.protocol import Connection

    app = _AtOnceApp()
    conn = Connection(app)  # type: ignore[arg-type]
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]

    def head(n: int) -> bytes:
        return (
            f"POST /v1/shape?table=t{n}&offset=-1 HTTP/1.1\r\nHost: proxy.test\r\n"
            "Content-Type: application/json\r\nContent-Length: 9\r\n\r\n"
        ).encode()

    reads = [
        [head(1) + b'{"n": 11}'],
        [head(2) + b'{"n": 22}'],
        [head(3), b'{"n": 33}'],  # (the head alone: straight to the lean parser)
        [head(4), b'{"n"', b": 44}"],
        [head(5) + b'{"n": 55}' + head(6) + b'{"n": 66}'],
    ]
    for pieces in reads:
        for piece in pieces:
            conn.data_received(piece)
        await asyncio.sleep(0)
    assert [r.raw_path for r in app.requests] == [
        f"/v1/shape?table=t{n}&offset=-1" for n in range(1, 7)
    ]
    assert [r.body for r in app.requests] == [f'{{"n": {n}{n}}}'.encode() for n in range(1, 7)]
    await asyncio.sleep(0)  # (the pipelined one's answer: after the one before it)
    assert transport.out.count(b"HTTP/1.1 204 ") == 6
    assert not conn._parser_lean  # (a head with a body is never read lean: review 14:10)
    conn.connection_lost(None)


async def test_http_1_1_without_host_is_refused_as_the_engine_refuses_it(proxy: Any) -> None:
    raw = await _exchange(proxy, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    [(status, headers, body)] = _answers(raw)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["message"] == "Malformed HTTP request"
    # HTTP/1.0 has no Host requirement (RFC 9112, 3.2)
    [(status, _, _)] = _answers(await _exchange(proxy, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert status == 200


async def test_an_absolute_form_target_is_served_as_its_path_and_query(proxy: Any) -> None:
    raw = await _exchange(
        proxy,
        b"GET http://elsewhere.example/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET HTTPS://elsewhere.example/nowhere?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert [status for status, _, _ in _answers(raw)] == [200, 404]


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    proxy: Any, monkeypatch: Any
) -> None:
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(protocol, "KEEPALIVE_TIMEOUT", 0.5)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    assert await _closed_within(reader, 10) == b""  # no request began: nothing to answer
    writer.close()


async def test_a_connection_that_sends_nothing_gets_the_request_deadline_not_the_keep_alive(
    proxy: Any, monkeypatch: Any
) -> None:
    """A connection that never begins a request was held for the whole keep-alive (75 s),
    not the request deadline (30 s): a slow-loris client that opens sockets and sends
    nothing held each one 2.5 times longer than one trickling a head. Closed unanswered at
    the request deadline now; a connection idle after an answer keeps its keep-alive."""
    import proxy.http.protocol as protocol

    monkeypatch.setattr(protocol, "REQUEST_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(protocol, "KEEPALIVE_TIMEOUT", 600.0)
    server = proxy.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        assert await _closed_within(reader, 20) == b""  # (held 600 s before)
    finally:
        writer.close()

    # after a request, idle between requests: the keep-alive, not the request deadline
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(1.5)  # past the request deadline (and its first timer)
    finally:
        writer.close()


async def test_http_0_9_and_2_0_request_lines_are_refused_not_answered_as_1_1(proxy: Any) -> None:
    """llhttp reads `GET /x` (no version), `HTTP/0.9` and `HTTP/2.0` request lines as if
    they were HTTP/1.x: they were answered `HTTP/1.1 200` with a body, which such a client
    cannot read. In JSON now: HTTP/0.9 a 400, HTTP/2.0 a 505; versions llhttp refuses itself
    stay a 400."""
    for line, status_code, code in (
        (b"GET /healthz\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/shape?table=items&offset=-1\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
        (
            b"GET /v1/shape?table=items&offset=-1 HTTP/2.0\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
    ):
        [(status, headers, body)] = _answers(await _exchange(proxy, line))
        assert (status, headers["connection"]) == (status_code, "close"), line
        assert list(json.loads(body)) == ["message"], code  # (the engine's form: no `code`)
    for line in (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", b"GET /healthz HTTP/3.0\r\n\r\n"):
        [(status, _, _)] = _answers(await _exchange(proxy, line))
        assert status == 400, line
    [(status, _, _)] = _answers(await _exchange(proxy, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert status == 200


async def test_a_transfer_coding_other_than_chunked_is_not_implemented(proxy: Any) -> None:
    """`Transfer-Encoding: gzip, chunked` was read as plain chunked (a 200 for a body that
    is gzip): a 501 now (RFC 9112, 6.1). Transfer-Encoding on HTTP/1.0 is a 400."""
    post = b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
    chunked = b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    # (an empty element too, `, chunked`: the engine's `unserved` finds "" before chunked)
    for coding in (
        b"gzip, chunked",
        b"deflate,chunked",
        b"identity, chunked",
        b"x, CHUNKED",
        b" , chunked",
    ):
        raw = await _exchange(proxy, post + b"Transfer-Encoding: " + coding + chunked)
        [(status, headers, body)] = _answers(raw)
        assert (status, headers["connection"]) == (501, "close"), coding
        assert list(json.loads(body)) == ["message"]  # (the engine's form: no `code`)
    raw = await _exchange(
        proxy, b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked" + chunked
    )
    assert _answers(raw)[0][0] == 501
    raw = await _exchange(proxy, b"POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked" + chunked)
    [(status, _, body)] = _answers(raw)
    assert status == 400 and "HTTP/1.0" in json.loads(body)["message"]
    # chunked alone, in any case, still read
    for coding in (b"chunked", b"Chunked", b" chunked"):
        raw = await _exchange(
            proxy,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: "
            + coding
            + chunked,
        )
        assert _answers(raw)[0][0] == 200, coding


class _RecordingApp(_HoldingApp):
    """Answers each request 204 at once, keeping it."""

    def refused(self, refusal: Any) -> Any:
        from proxy.http.wire import Response

        return Response(status=refusal.status)

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []
        self.release.set()

    async def handle(self, request: Any) -> Any:
        self.requests.append(request)
        return await super().handle(request)


async def test_the_body_of_a_request_asking_to_upgrade_is_read_piece_by_piece() -> None:
    """llhttp stops at the head of a request with `Connection: Upgrade`; its body (in the
    same read, in later ones, chunked or not) must still reach the request, and nothing after
    it is read as another request (the connection closes after the answer)."""
    from proxy.http.protocol import Connection

    head = (
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    )
    body = b'{"where": "id > 1"}'
    cases = [
        (b"Content-Length: %d\r\n\r\n" % len(body), body),
        (
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (body[:5], len(body) - 5, body[5:]),
        ),
    ]
    for framing, payload in cases:
        for cut in (0, 3, len(payload) // 2, len(payload)):
            app = _RecordingApp()
            conn = Connection(app)  # type: ignore[arg-type]
            transport = _Transport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            conn.data_received(head + framing + payload[:cut])
            for i in range(cut, len(payload)):
                conn.data_received(payload[i : i + 1])
            conn.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(100):
                if transport.out:
                    break
                await asyncio.sleep(0)
            assert [r.body for r in app.requests] == [body], (framing, cut)
            assert transport.out.startswith(b"HTTP/1.1 204 ")
            assert transport.out.count(b"HTTP/1.1") == 1
            conn.connection_lost(None)


async def test_a_client_that_stops_reading_is_dropped(proxy: Any, monkeypatch: Any) -> None:
    """A client that asks for a large answer and reads none of it held its connection, and
    the engine's answer being relayed, for good: the response waited on the full buffer
    forever. Now the connection is dropped once nothing was read for `SEND_TIMEOUT`."""
    import socket

    import proxy.http.protocol as protocol
    from tests.support.waiting import wait_until_async

    monkeypatch.setattr(protocol, "SEND_TIMEOUT", 0.5, raising=False)
    proxy.engine.body_size = 20_000_000
    server = proxy.client.server
    token = proxy.tokens.make()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    try:
        request = (
            f"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        connections = proxy.client.server._server

        def dropped() -> bool:
            return connections.connections == 0

        await wait_until_async(dropped, timeout=30, message="the unread connection dropped")
        # what the client can still read ends well short of the answer
        got = b""
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10):
                got += chunk
        except ConnectionResetError:
            pass
        assert got.startswith(b"HTTP/1.1 200 ") and len(got) < 20_000_000
    finally:
        sock.close()


async def test_bytes_after_an_upgrade_body_are_not_read() -> None:
    """After the body of a request asking to upgrade (here empty, `Content-Length: 00`), the
    bytes are the other protocol's: not parsed as a request, not answered 400."""
    from proxy.http.protocol import Connection

    app = _RecordingApp()
    conn = Connection(app)  # type: ignore[arg-type]
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(
        b"POST /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nContent-Length: 00\r\n\r\n\x00\x01 not HTTP\r\n\r\n"
    )
    for _ in range(100):
        if transport.out:
            break
        await asyncio.sleep(0)
    assert [r.body for r in app.requests] == [b""]
    assert transport.out.startswith(b"HTTP/1.1 204 ") and transport.out.count(b"HTTP/1.1") == 1
    conn.connection_lost(None)


async def test_an_answer_to_a_request_asking_to_upgrade_says_the_connection_closes(
    proxy: Any,
) -> None:
    """The connection closes after answering a request with `Connection: Upgrade` (nothing
    after it is read); the answer did not say so, so a client keeping the connection for its
    next request lost that request."""
    token = proxy.tokens.make()
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ\r\n\r\n",
    ):
        raw = await _exchange(proxy, head)
        [(status, headers, _)] = _answers(raw)
        assert (status, headers.get("connection")) == (200, "close"), head

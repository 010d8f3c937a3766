"""One client address cannot take every connection slot (LOW, trust).

Connections cost no token, and the connection cap's eviction closes only connections waiting
for a request head or whose client read nothing for `STALL_GRACE`: a client reading a large
answer at ~48 KB every 5 s is never stalled, so from one address it could hold every slot for
as long as it liked, and everyone else got 503 "Too many connections". Now one address may
hold a quarter of the cap (`proxy.http.serve.per_address_cap`); its next connection is
answered the same clear 503 and closed, while other addresses are served. Loopback and
`server.trusted_proxies` peers (a front tier, a load balancer: many clients behind one
address) are exempt.

Real path: `shape-proxy` (open.yaml, listening on every address) under `prlimit
--nofile=256` (a cap of 32, so 8 per address) in front of a real engine and Postgres; raw
sockets from this host's own non-loopback address, and a client on loopback.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from proxy.http.serve import MIN_CONNECTIONS, per_address_cap
from sync_engine.http.parser_refusals import CONNECTION_GRACE
from tests.proxy.test_connection_flood_real import _get, _port, _proxy

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")


def _own_address() -> str | None:
    """This host's address on its default route (a UDP socket's connect sends nothing)."""
    for probe in ("192.0.2.1", "203.0.113.1", "10.255.255.254"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.connect((probe, 9))
            except OSError:
                continue
            address = str(udp.getsockname()[0])
            if not address.startswith("127."):
                return address
    return None


def _ask(host: str, port: int, sock: socket.socket | None = None) -> bytes:
    """GET /v1/health from `host` to the proxy at `host`:`port` on `sock` (a new connection
    when None); the whole answer (the connection closes after it)."""
    if sock is None:
        sock = socket.create_connection((host, port), timeout=10, source_address=(host, 0))
    with sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_one_address_holds_at_most_its_share_of_the_connections(
    db_url: str, tmp_path: Path
) -> None:
    host = _own_address()
    if host is None:
        pytest.skip("no non-loopback address on this host")
    settings = {"server": {"max_body_bytes": 8388608, "host": "0.0.0.0"}}
    share = per_address_cap(MIN_CONNECTIONS)  # (256 descriptors: the cap is the least, 32)
    assert share == 8
    with _proxy(db_url, tmp_path, 256, settings=settings) as proxy_url:
        port = _port(proxy_url)
        held: list[socket.socket] = []
        try:
            for _ in range(share):  # (a request begun and held, as a slow reader's answer)
                sock = socket.create_connection((host, port), timeout=10, source_address=(host, 0))
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                held.append(sock)
            beyond = _ask(host, port)
            head, _, body = beyond.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), beyond
            assert b"\r\nRetry-After: 1\r\n" in head
            assert json.loads(body) == {
                "message": "Too many connections: try again in a moment, please."
            }
            # Another address is served meanwhile.
            status, _, body = _get(f"{proxy_url}/v1/health")
            assert status == 200, body
            # One of the address's connections closes: its next one is served.
            held.pop().close()
            answer = b""
            for _ in range(50):  # (until the proxy has seen the close)
                answer = _ask(host, port)
                if not answer.startswith(b"HTTP/1.1 503 "):
                    break
            assert answer.startswith(b"HTTP/1.1 200 "), answer
        finally:
            for sock in held:
                sock.close()


def test_loopback_peers_are_not_capped_per_address(db_url: str, tmp_path: Path) -> None:
    """A front tier on this host (nginx, Varnish) connects from loopback for all its clients:
    more connections than one address's share, each served."""
    with _proxy(db_url, tmp_path, 256) as proxy_url:
        port = _port(proxy_url)
        held: list[socket.socket] = []
        try:
            for _ in range(per_address_cap(MIN_CONNECTIONS) + 4):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(sock)
            for sock in held:
                answer = _ask("127.0.0.1", port, sock)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
        finally:
            for sock in held:
                sock.close()


def _connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10, source_address=(host, 0))


def _answer_on(sock: socket.socket) -> bytes:
    """One keep-alive GET /v1/health on `sock`: the answer's head and body (by its
    Content-Length), the connection left open; b"" when the proxy had closed it."""
    try:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except OSError:
        return b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(10)


def test_an_address_s_idle_connection_makes_room_for_its_next_one(
    db_url: str, tmp_path: Path
) -> None:
    """Everyone behind one NAT shares an address: their browsers' idle keep-alive
    connections filled its share and the next user got 503s while those slots sat idle
    (review 11:33). Now the address's connection idle longest is closed for the newcomer;
    one whose request is arriving is never closed for it."""
    host = _own_address()
    if host is None:
        pytest.skip("no non-loopback address on this host")
    settings = {"server": {"max_body_bytes": 8388608, "host": "0.0.0.0"}}
    share = per_address_cap(MIN_CONNECTIONS)
    with _proxy(db_url, tmp_path, 256, settings=settings) as proxy_url:
        port = _port(proxy_url)
        arriving: list[socket.socket] = []
        idle: list[socket.socket] = []
        try:
            for _ in range(share - 2):  # (requests arriving: heads begun, not finished)
                sock = _connect(host, port)
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                arriving.append(sock)
            for _ in range(2):  # (answered, kept alive: a browser's idle connections)
                sock = _connect(host, port)
                assert _answer_on(sock).startswith(b"HTTP/1.1 200 ")
                idle.append(sock)
            time.sleep(CONNECTION_GRACE + 0.5)  # (an idle connection gets its grace first)
            for _ in range(2):  # two newcomers from the address: each served
                sock = _connect(host, port)
                arriving.append(sock)
                assert _answer_on(sock).startswith(b"HTTP/1.1 200 ")
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert all(_closed_by_peer(sock) for sock in idle)
            # The address holds only requests arriving now: the next is refused.
            assert _ask(host, port).startswith(b"HTTP/1.1 503 ")
            for sock in arriving:  # none of them was closed: each request is answered
                sock.sendall(b"1\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer
        finally:
            for sock in arriving + idle:
                sock.close()


def test_refusals_over_an_address_s_share_are_logged_a_few_at_a_time(
    db_url: str, tmp_path: Path
) -> None:
    """One client refused in a loop wrote a log line per connect (14,534 in 5 s; review
    11:31): now the first few in a minute, then one line with the count."""
    host = _own_address()
    if host is None:
        pytest.skip("no non-loopback address on this host")
    settings = {"server": {"max_body_bytes": 8388608, "host": "0.0.0.0"}}
    with _proxy(db_url, tmp_path, 256, settings=settings) as proxy_url:
        port = _port(proxy_url)
        held: list[socket.socket] = []
        try:
            for _ in range(per_address_cap(MIN_CONNECTIONS)):
                sock = _connect(host, port)
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                held.append(sock)
            for _ in range(60):
                assert _ask(host, port).startswith(b"HTTP/1.1 503 ")
            status, _, _ = _get(f"{proxy_url}/v1/health")  # (the log written meanwhile)
            assert status == 200
        finally:
            for sock in held:
                sock.close()
        lines = (tmp_path / "proxy.log").read_text().count("holds its share")
        assert 1 <= lines <= 5, lines


def test_a_newcomer_refused_for_its_share_closes_no_one_else_s_connection(
    db_url: str, tmp_path: Path
) -> None:
    """At the whole cap, a newcomer over its address's share first closed another client's
    waiting connection (`_make_room`) and was then refused anyway (review LOW). Its share is
    checked first now: everyone else's connections stay open."""
    host = _own_address()
    if host is None:
        pytest.skip("no non-loopback address on this host")
    settings = {"server": {"max_body_bytes": 8388608, "host": "0.0.0.0"}}
    share = per_address_cap(MIN_CONNECTIONS)
    with _proxy(db_url, tmp_path, 256, settings=settings) as proxy_url:
        port = _port(proxy_url)
        mine: list[socket.socket] = []
        others: list[socket.socket] = []
        try:
            for _ in range(MIN_CONNECTIONS - share):  # (oldest: the first `_make_room` closes)
                others.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(share):  # (the whole cap, 32, reached)
                sock = _connect(host, port)
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                mine.append(sock)
            time.sleep(CONNECTION_GRACE + 0.5)  # (each now one `_make_room` may close)
            for _ in range(3):
                assert _ask(host, port).startswith(b"HTTP/1.1 503 ")
            closed = [sock for sock in others if _closed_by_peer(sock)]
            assert not closed, f"{len(closed)} other connections closed"
        finally:
            for sock in mine + others:
                sock.close()

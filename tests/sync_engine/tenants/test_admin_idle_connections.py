"""Idle connections on the admin listener never take the public port's room.

Both listeners' connections were counted against one cap, but only the public listener's
idle ones could be closed to make room for a new public client, and the admin listener's
were kept an hour (aiohttp's default keep-alive, 3630 s; the public port's is 75 s): anyone
who could reach the admin port, no token needed, opened connections there, sent one request
each and went quiet, and every public client got 503 "Too many connections" for as long as
they sat there (attack 20:13, MEDIUM). Admin connections are now counted apart, within
their own room (`ADMIN_RESERVE`), and kept alive 75 s like the public port's.

Real path: the engine as a process with a low descriptor limit (a public cap of ~100), raw
sockets on its admin port.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

from sync_engine.admin.api import ADMIN_RESERVE
from tests.sync_engine.tenants.harness import AdminEngine


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_idle_admin_connections_leave_the_public_port_its_room(tmp_path: Path) -> None:
    engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log", nofile=420)
    idle: list[socket.socket] = []
    try:
        public = f"http://127.0.0.1:{engine.port}/v1/health"
        before = _status(public)  # (202: no source registered; not 503)
        assert before != 503
        for _ in range(200):  # (no token needed: answered, then the connection is kept, idle)
            try:
                s = socket.create_connection(("127.0.0.1", engine.admin_port), timeout=5)
                s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                idle.append(s)
            except OSError:
                break
        answers: list[bytes] = []
        for s in idle:
            s.settimeout(5)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
        assert sum(a.startswith(b"HTTP/1.1 404 ") for a in answers) >= ADMIN_RESERVE
        # The public port still answers as before (not 503 "Too many connections").
        assert [_status(public) for _ in range(3)] == [before] * 3
    finally:
        for s in idle:
            s.close()
        engine.stop()


def _public_room(tmp_path: Path, admin_idle: int) -> int:
    """How many idle public connections an engine (nofile 420) keeps open with `admin_idle`
    idle admin connections: the public port closes its longest-idle ones to make room."""
    tmp_path.mkdir()
    engine = AdminEngine(tmp_path / "data", tmp_path / "engine.log", nofile=420)
    held: list[socket.socket] = []
    try:
        for _ in range(admin_idle):
            s = socket.create_connection(("127.0.0.1", engine.admin_port), timeout=5)
            s.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 404 ")
            held.append(s)
        public: list[socket.socket] = []
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", engine.port), timeout=5)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            head = s.recv(4096)
            public.append(s)
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")):
                break  # (a 503 once none could be closed: not expected, idle ones can)
        held += public
        # the public connections still open (those closed to make room read EOF)
        alive = 0
        for s in public:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive
    finally:
        for s in held:
            s.close()
        engine.stop()


def test_idle_admin_connections_take_none_of_the_public_ports_places(tmp_path: Path) -> None:
    """The admin listener's connections come out of `FD_RESERVE`; the public cap's recount
    took them off its room a second time (review 20:21: 145 public places with no idle
    admin connection, 113 with 32)."""
    without = _public_room(tmp_path / "without", 0)
    with_admin = _public_room(tmp_path / "with", ADMIN_RESERVE)
    assert with_admin == without, (without, with_admin)

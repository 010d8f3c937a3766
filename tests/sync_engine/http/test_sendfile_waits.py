"""A chunk file sent with `os.sendfile` to a client that reads slower than the engine sends:
every byte arrives in order, and the engine registers the socket with its event loop once for
the whole send, not once per full socket buffer.

Why: a 10 MiB chunk meets a full socket buffer several times; registering and removing the
socket each time cost uvloop 6 `epoll_ctl` calls per wait (210 per 1M-row warm sync, nginx
makes 2), plus a timer and futures per wait. No Postgres: the sender is
`sync_engine.http.sendfile._sendfile` on one end of a local socket pair, on a selector loop
that counts registrations, and a reader that takes 64 KiB at a time with pauses.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sync_engine.http import live, sendfile

SIZE = 4 << 20


class _CountingLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self.writers = 0

    def add_writer(self, fd: Any, callback: Any, *args: Any) -> None:  # type: ignore[override]
        self.writers += 1
        super().add_writer(fd, callback, *args)


def _read_slowly(sock: socket.socket, into: bytearray) -> None:
    while len(into) < SIZE:
        piece = sock.recv(1 << 16)
        if not piece:
            return
        into += piece
        time.sleep(0.0005)


def test_a_slowly_read_chunk_file_arrives_whole_with_one_registration(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    path = tmp_path / "chunk"
    path.write_bytes(data)
    engine, client = socket.socketpair()
    for sock, option in ((engine, socket.SO_SNDBUF), (client, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 64 << 10)  # (many full buffers)
    engine.setblocking(False)
    got = bytearray()
    reader = threading.Thread(target=_read_slowly, args=(client, got))
    reader.start()
    loop = _CountingLoop()
    fd = os.open(path, os.O_RDONLY)
    try:
        loop.run_until_complete(sendfile._sendfile(engine.fileno(), fd, SIZE))
    finally:
        os.close(fd)
        loop.close()
        reader.join(30)
        engine.close()
        client.close()
    assert bytes(got) == data
    assert loop.writers == 1, f"the socket was registered {loop.writers} times"


def test_a_client_that_reads_nothing_is_cut_after_the_send_timeout(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """(The send's one timer, not one per wait: a wait that lasts `SEND_TIMEOUT` still ends
    the send with a reset, as `test_sendfile_stall` checks through the engine.)"""
    monkeypatch.setattr(live, "SEND_TIMEOUT", 0.3)
    path = tmp_path / "chunk"
    path.write_bytes(b"x" * SIZE)
    engine, client = socket.socketpair()
    engine.setblocking(False)
    loop = _CountingLoop()
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            loop.run_until_complete(sendfile._sendfile(engine.fileno(), fd, SIZE))
        except ConnectionResetError:
            pass
        else:
            raise AssertionError("a send to a client that reads nothing ended")
    finally:
        os.close(fd)
        loop.close()
        engine.close()
        client.close()

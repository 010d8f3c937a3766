"""A splice cancelled (the client went away: `FastAnswer.cancel`) in the same loop turn as
the client socket's writer callback that is already due.

Found by attack (04:45): `done.cancel()` only schedules `_on_done`; the due `_pump` then ran
with the splice still open, its write to the gone client failed (EPIPE), and `_finish` set an
exception on the cancelled `done`: `InvalidStateError`, an ERROR traceback in the proxy's
log per such client (8 in 40 rounds). Descriptors and the engine connection were released
either way. Real sockets and a real pipe; the splice's engine side is a fake connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, cast

import pytest

from proxy.upstream import client as upstream_client

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux's")


class _Conn:
    """What `Splice` uses of an engine connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._body = None
        self.lost = False
        self.closed = 0
        self.resumed = 0

    def close(self) -> None:
        self.closed += 1

    def resume(self) -> None:
        self.resumed += 1


def _splice(conn: _Conn, fds: Any, remaining: int) -> upstream_client.Splice:
    """A splice of `remaining` bytes (its client transport is never used here)."""
    return upstream_client.Splice(cast(Any, conn), cast(Any, None), fds, [], remaining, 30, 30)


async def test_a_splice_cancelled_while_its_write_callback_is_due_raises_nothing() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    engine_side, engine_peer = socket.socketpair()
    client_side, client_peer = socket.socketpair()
    for s in (engine_side, client_side):
        s.setblocking(False)
    engine_peer.sendall(b"x" * 1000)  # the body's next bytes, waiting in the engine socket
    try:  # a client that stopped reading: its socket is full
        while True:
            client_side.send(b"y" * 65536)
    except BlockingIOError:
        pass
    conn = _Conn(loop)
    fds = (os.dup(engine_side.fileno()), os.dup(client_side.fileno()), upstream_client._pipe())
    splice = _splice(conn, fds, 5000)
    try:
        assert splice._waiting == "w"  # (1000 bytes in the pipe, for the client)
        client_peer.close()  # the client is gone: the next write to it fails (EPIPE)
        splice.done.cancel()  # `FastAnswer.cancel`: `_on_done` is only scheduled ...
        splice._pump()  # ... and the writer callback already due runs first
        await asyncio.sleep(0)  # (`_on_done` runs)
        await asyncio.sleep(0)
        assert errors == []
        assert splice.done.cancelled()
        assert conn.closed >= 1 and conn.resumed == 0  # never reused
        for fd in fds[:2]:  # the splice's duplicates are closed
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        for s in (engine_side, engine_peer, client_side):
            s.close()


async def test_a_splice_cancelled_as_its_read_is_due_does_not_reuse_the_engine() -> None:
    """The other side: the engine's last bytes came as the splice was cancelled. The due
    `_pump` moved them all and marked the engine connection reusable (`resume`) and `done`
    done: `InvalidStateError` again, and a connection handed back that its owner was told
    was closed."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    engine_side, engine_peer = socket.socketpair()
    client_side, client_peer = socket.socketpair()
    for s in (engine_side, client_side):
        s.setblocking(False)
    engine_peer.sendall(b"x" * 1000)
    conn = _Conn(loop)
    fds = (os.dup(engine_side.fileno()), os.dup(client_side.fileno()), upstream_client._pipe())
    splice = _splice(conn, fds, 2000)
    try:
        assert splice._waiting == "r"  # (half the body went out; the engine's rest to come)
        engine_peer.sendall(b"x" * 1000)
        splice.done.cancel()
        splice._pump()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert errors == []
        assert splice.done.cancelled()
        assert conn.closed >= 1 and conn.resumed == 0
    finally:
        for s in (engine_side, engine_peer, client_side, client_peer):
            s.close()

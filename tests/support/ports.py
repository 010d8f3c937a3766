"""Free TCP ports for the servers a test starts.

A port from `bind(0)` is free when asked for, not when the server that is given it binds it,
and two asks in a row can get the same port back: the probe socket is closed at once, and the
kernel may hand its port out again. A test that gives one port to two servers then has the
second's bind fail while the first answers for both. CI met exactly that: nginx could not bind
its port, the pass-through behind it had been given the same one, and the test's requests went
straight past the cache. So a test process never hands out the same port twice.
"""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now on `host`, never returned before in this process."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port left that this process has not handed out already")

"""Free TCP ports for the servers a test starts.

A port from `bind(0)` is free when asked for, not when the server that is given it binds it,
and two asks in a row can get the same port back: the probe socket is closed at once, and the
kernel may hand its port out again. A test that gives one port to two servers then has the
second's bind fail while the first answers for both. CI met exactly that: nginx could not bind
its port, the pass-through behind it had been given the same one, and the test's requests went
straight past the cache. So a test process never hands out the same port twice, and test processes running side by
side (pytest-xdist) hand out ports from separate ranges.
"""

from __future__ import annotations

import os
import random
import socket

_handed_out: set[int] = set()

#: Under pytest-xdist several test processes hand out ports at once, and each remembers only
#: its own. bind(0) in two processes can give both the same free port before either server
#: binds it, so each worker takes its ports from its own slice of this range (below Linux's
#: ephemeral range, 32768-60999, which outgoing connections use).
_WORKER_RANGE = (10000, 32000)


def _worker_slice() -> range | None:
    """This xdist worker's own ports, or None when the tests run in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if not worker.startswith("gw") or count < 2:
        return None
    index = int(worker[2:])
    low, high = _WORKER_RANGE
    width = (high - low) // count
    return range(low + index * width, low + (index + 1) * width)


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now on `host`, never returned before in this process."""
    ports = _worker_slice()
    if ports is not None:
        start = random.randrange(len(ports))
        for step in range(len(ports)):
            port = ports[(start + step) % len(ports)]
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
        raise RuntimeError("no free port left in this test worker's own range")
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port left that this process has not handed out already")

"""The test servers' ports: one port is never given to two servers of one test run."""

from __future__ import annotations

import socket

from tests.support.ports import free_port


def test_no_port_is_handed_out_twice_and_each_can_be_bound() -> None:
    # bind(0) alone repeats itself within a few hundred asks on Linux (the probe socket is
    # closed at once); three servers of one stack once got two equal ports in CI.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))

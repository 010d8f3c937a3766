"""The test servers' ports: one port is never given to two servers of one test run."""

from __future__ import annotations

import socket

import pytest

from tests.support.ports import free_port


def test_no_port_is_handed_out_twice_and_each_can_be_bound() -> None:
    # bind(0) alone repeats itself within a few hundred asks on Linux (the probe socket is
    # closed at once); three servers of one stack once got two equal ports in CI.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_side_by_side_test_workers_hand_out_ports_from_separate_ranges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two pytest-xdist workers each remember only their own ports; bind(0) in both could give
    # the same one to two servers. Each worker's ports come from its own slice.
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    handed: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        handed[worker] = {free_port() for _ in range(200)}
    assert len(handed["gw0"]) == len(handed["gw1"]) == 200
    assert not handed["gw0"] & handed["gw1"]
    assert max(handed["gw0"]) < min(handed["gw1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", max(handed["gw1"])))

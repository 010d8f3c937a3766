"""Connections refused at the cap hold a descriptor each while their 503 gets out; how many
may do so at once is bounded (`refuse_at_the_cap`, used by the engine and the proxy).

Unbounded, a flood of new connections at the cap, each refused and kept `CONNECTION_GRACE`,
took every descriptor though the cap was kept: the shape logs could not be written and
replication paused (CI under pytest-xdist: "Too many open files" in
test_server_flood.py's flood). The real path is test_server_flood.py and
tests/proxy/test_connection_flood_real.py.
"""

from __future__ import annotations

import asyncio

from sync_engine.http import parser_refusals
from sync_engine.http.parser_refusals import (
    CONNECTION_GRACE,
    MAX_LINGERING_REFUSALS,
    TOO_MANY_CONNECTIONS,
    refuse_at_the_cap,
)


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.eof = False
        self.aborted = False

    def pause_reading(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def abort(self) -> None:
        self.aborted = True


async def test_at_most_so_many_refused_connections_wait_for_their_503_the_rest_close_at_once() -> (
    None
):
    flood = [_Transport() for _ in range(MAX_LINGERING_REFUSALS + 40)]
    for transport in flood:
        refuse_at_the_cap(transport)
    answered, dropped = flood[:MAX_LINGERING_REFUSALS], flood[MAX_LINGERING_REFUSALS:]
    assert all(t.written == TOO_MANY_CONNECTIONS and t.eof and not t.aborted for t in answered)
    assert all(t.written == b"" and t.aborted for t in dropped)
    await asyncio.sleep(CONNECTION_GRACE + 0.2)
    assert all(t.aborted for t in answered)
    assert parser_refusals._Refusals.lingering == 0
    # (the room is back: the next refusal is answered again)
    later = _Transport()
    refuse_at_the_cap(later)
    assert later.written == TOO_MANY_CONNECTIONS and not later.aborted
    await asyncio.sleep(CONNECTION_GRACE + 0.2)
    assert later.aborted

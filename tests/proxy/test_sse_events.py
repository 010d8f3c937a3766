"""Positions and event keys of the SSE fan-out (pure): what a client at an offset must get."""

from __future__ import annotations

import orjson

from proxy.upstream.sse_events import (
    BEFORE_TRANSACTIONS,
    INF_OP,
    EventParser,
    Positions,
    offset_key,
)


def _change(lsn: int, op: int, last: bool = False) -> bytes:
    headers: dict[str, object] = {"operation": "insert", "lsn": str(lsn), "op_position": op}
    if last:
        headers["last"] = True
    return b"data: " + orjson.dumps({"key": f"k{lsn}.{op}", "headers": headers}) + b"\n\n"


def _up_to_date(lsn: int) -> bytes:
    message = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"data: " + orjson.dumps(message) + b"\n\n"


def test_offsets_read_as_the_engine_reads_them() -> None:
    assert offset_key("-1") is None and offset_key("now") is None and offset_key("x_1") is None
    assert offset_key("0_0") == offset_key("0_inf") == offset_key("0_7") == BEFORE_TRANSACTIONS
    assert offset_key("500_0") == offset_key("500_inf") == (500, INF_OP, 0)  # txn 500's end
    assert offset_key("500_4") == (500, 4, 0)
    assert offset_key("500_4") < offset_key("500_0") < offset_key("501_2")  # type: ignore[operator]


def test_events_are_keyed_by_their_place_in_the_log() -> None:
    parser = EventParser(offset_key("100_0") or BEFORE_TRANSACTIONS, Positions())
    stream = _change(200, 0) + _change(200, 2, last=True) + b": keep-alive\n\n" + _up_to_date(200)
    # Split anywhere: events are whole only once their blank line arrives.
    events, comments = parser.feed(stream[:30])
    assert events == [] and comments == b""
    events, comments = parser.feed(stream[30:])
    assert [e.key for e in events] == [(200, 0, 0), (200, 2, 0), (200, INF_OP, 0)]
    assert (
        b"".join(e.data for e in events) + comments
        == stream.replace(b": keep-alive\n\n", b"") + b": keep-alive\n\n"
    )
    # A message without a place of its own follows the one before it.
    events, _ = parser.feed(b'data: {"headers":{"event":"move-in"}}\n\n')
    assert [e.key for e in events] == [(200, INF_OP, 1)]


def test_a_transaction_seen_whole_makes_its_last_op_the_same_position_as_its_end() -> None:
    positions = Positions()
    parser = EventParser(BEFORE_TRANSACTIONS, positions)
    parser.feed(_change(300, 0) + _change(300, 4))
    assert positions.canonical((300, 4, 0)) == (300, 4, 0)  # not known to be whole yet
    parser.feed(_up_to_date(300))
    assert positions.canonical((300, 4, 0)) == (300, INF_OP, 0)
    assert positions.canonical((300, 2, 0)) == (300, 2, 0)  # mid-transaction stays
    assert positions.canonical((301, 4, 0)) == (301, 4, 0)  # a transaction it never saw


def test_a_client_gets_exactly_the_events_after_its_position() -> None:
    positions = Positions()
    parser = EventParser(BEFORE_TRANSACTIONS, positions)
    events, _ = parser.feed(
        _change(10, 0) + _change(10, 2) + _up_to_date(10) + _change(20, 0) + _up_to_date(20)
    )
    keys = [e.key for e in events]

    def after(offset: str) -> list[tuple[int, int, int]]:
        here = offset_key(offset)
        assert here is not None
        return [k for k in keys if k > positions.canonical(here)]

    assert after("0_inf") == keys
    assert after("10_0") == [(20, 0, 0), (20, INF_OP, 0)]  # SSE resume: after all of 10
    assert after("10_0") == after("10_inf")
    assert after("10_2") == after("10_0")  # a long-poll's offset at the end of txn 10
    assert after("10_0") == [k for k in keys if k > (10, INF_OP, 0)]
    assert after("20_0") == []

"""A shared SSE stream's memory: who may join it, and what each joiner is owed (no I/O)."""

from __future__ import annotations

import orjson
import pytest

from proxy.upstream import sse
from proxy.upstream.headers import Head
from proxy.upstream.sse_events import offset_key


def _batch(lsn: int, *ops: int) -> bytes:
    events = [
        b"data: "
        + orjson.dumps({"key": f"k{lsn}.{op}", "headers": {"lsn": str(lsn), "op_position": op}})
        + b"\n\n"
        for op in ops
    ]
    up_to_date = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"".join(events) + b"data: " + orjson.dumps(up_to_date) + b"\n\n"


def _stream(offset: str) -> sse.SharedStream:
    position = offset_key(offset)
    assert position is not None
    return sse.SharedStream(sse.StreamSpec(("k",), offset, position, 0))


def _key(offset: str) -> tuple[int, int, int]:
    key = offset_key(offset)
    assert key is not None
    return key


async def test_joiners_get_what_follows_their_offset() -> None:
    stream = _stream("100_0")
    stream.feed(_batch(200, 0, 2))
    stream.feed(_batch(300, 0))
    assert stream.events_after(_key("100_0")) == _batch(200, 0, 2) + _batch(300, 0)
    assert stream.events_after(_key("200_0")) == _batch(300, 0)
    assert stream.events_after(_key("200_2")) == _batch(300, 0)  # txn 200 ends at op 2
    assert stream.events_after(_key("300_0")) == b""
    # Ahead of the stream (an offset from a write it has not delivered yet): it joins and
    # will get only what follows its offset.
    assert stream.can_join(_key("400_0")) and stream.events_after(_key("400_0")) == b""
    # Behind the stream's start: not joined (the engine catches it up).
    assert not stream.can_join(_key("50_0")) and not stream.can_join(_key("0_inf"))
    assert stream.can_join(_key("100_0"))


async def test_the_start_offset_names_the_same_position_in_both_spellings() -> None:
    """The engine's `electric-offset` (max(offset, last entry)) tells where txn 100 ends."""
    stream = _stream("100_0")
    assert not stream.can_join(_key("100_4"))  # for all it knows, ops after 4 exist
    stream.learn_head(_head("100_4"))
    assert stream.can_join(_key("100_4")) and stream.can_join(_key("100_0"))
    assert not stream.can_join(_key("100_2"))  # mid-transaction: it would miss op 4


async def test_memory_is_bounded_and_the_floor_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _batch(200, 0)
    monkeypatch.setattr(sse, "HISTORY_BYTES", 3 * len(batch))
    stream = _stream("100_0")
    for lsn in range(200, 210):
        stream.feed(_batch(lsn, 0))
    assert not stream.can_join(_key("100_0"))  # forgotten: it goes to the engine
    assert stream.can_join(_key("208_0"))
    assert stream.events_after(_key("208_0")) == _batch(209, 0)


def _head(offset: str) -> Head:
    return Head(
        status=200,
        reason="OK",
        headers=(("electric-offset", offset), ("content-type", "text/event-stream")),
        content_length=None,
        cache_control="public, max-age=59",
        ttl=0.0,
    )

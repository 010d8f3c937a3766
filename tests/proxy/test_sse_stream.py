"""A shared SSE stream's memory: who may join it, and what each joiner is owed (no I/O)."""

from __future__ import annotations

import random

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
    """The engine's SSE ETag (`handle:offset:log end:time`) tells where txn 100 ends."""
    stream = _stream("100_0")
    assert not stream.can_join(_key("100_4"))  # for all it knows, ops after 4 exist
    stream.learn_head(_log_end_head("100_4"))
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


class _Transport:
    """What `attach` and the fan-out use of a client's transport: every byte kept."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _changes(data: bytes) -> list[tuple[int, int]]:
    """The (lsn, op) of each change event in `data`, which must be whole events."""
    assert data == b"" or data.endswith(b"\n\n"), data[-80:]
    out = []
    for block in data.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        headers = orjson.loads(block[6:])["headers"]
        if "op_position" in headers:
            out.append((int(headers["lsn"]), headers["op_position"]))
    return out


def _engine_after(change: tuple[int, int], offset: str) -> bool:
    """Whether the engine serves `change` to a request at `offset` (files.py `_after_key`)."""
    tx_text, _, op_text = offset.partition("_")
    tx = int(tx_text)
    if tx == 0:
        return True
    if op_text in ("0", "inf"):
        return change[0] > tx
    return change > (tx, int(op_text))


async def test_an_offset_below_the_logs_first_transaction_is_left_to_the_engine() -> None:
    """The engine answers a real offset below a shape's first transaction (one it never handed
    out for this shape: an older generation's) with a 409 must-refetch (faults2's 6db23da).
    A stream opened before any transaction (`0_inf`) must not serve one from its history:
    it vouches only from the first change it delivered, or from the log's end at its open."""
    stream = _stream("0_inf")
    assert not stream.can_join(_key("50_0"))  # nothing delivered yet: the engine judges
    stream.feed(_batch(100, 0, 1))
    assert not stream.can_join(_key("50_0")) and not stream.can_join(_key("99_3"))
    assert stream.can_join(_key("100_0")) and stream.can_join(_key("100_1"))
    assert stream.can_join(_key("0_inf")) and stream.can_join(_key("200_0"))
    opened = _stream("0_inf")
    opened.learn_head(_log_end_head("100_1"))  # (the log had txn 100 when it opened)
    assert opened.can_join(_key("100_0")) and opened.can_join(_key("300_0"))
    assert not opened.can_join(_key("50_0")) and not opened.can_join(_key("99_3"))


async def test_every_client_gets_exactly_the_changes_after_its_offset_whatever_the_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seeded model check of the fan-out: an engine stream opened at some offset, its bytes
    cut at random places, clients joining between reads at random offsets (behind, within,
    ahead of the stream, in every spelling, mid-transaction), a small history. Every client
    it lets join must end with exactly the changes the engine would serve from its offset,
    in order, as whole events (one it refuses goes to the engine: never wrong, only unshared).
    """
    rng = random.Random(20261204)
    joined = ahead = 0
    for _ in range(400):
        monkeypatch.setattr(sse, "HISTORY_BYTES", rng.choice([400, 1500, 1 << 20]))
        log = [(100 * k, rng.randint(1, 3)) for k in range(1, 13)]  # (lsn, ops): 0, 2, ...
        changes = [(lsn, 2 * i) for lsn, n in log for i in range(n)]
        offsets = ["0_inf"] + [
            f"{lsn}_{spelling}"
            for lsn, n in log
            for spelling in ["0", "inf", *(str(2 * i) for i in range(n))]
        ]
        # Real offsets below the log's first transaction (txn 100): never handed out for
        # this shape, the engine's 409; no stream may let one join.
        unissued = ["5_0", "50_inf", "99_3"]
        start = rng.choice(offsets[: len(offsets) // 2])
        stream = _stream(start)
        # The log's end when the stream opened (its last entry), as the engine says.
        start_tx = int(start.partition("_")[0])
        at_open = rng.choice([(lsn, 2 * (n - 1)) for lsn, n in log if lsn >= start_tx])
        stream.learn_head(_log_end_head(f"{at_open[0]}_{at_open[1]}"))
        # The engine's stream: the changes after `start`, in batches of whole transactions
        # (the first one may begin mid-transaction), each with its up-to-date.
        sent = [c for c in changes if _engine_after(c, start)]
        body = b""
        i = 0
        while i < len(sent):
            lsns = sorted({lsn for lsn, _ in sent[i:]})
            last = rng.choice(lsns[:3])
            batch = [c for c in sent[i:] if c[0] <= last]
            i += len(batch)
            body += b"".join(_change_event(lsn, op) for lsn, op in batch) + _up_to_date(last)
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 12))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        clients: list[tuple[str, _Transport]] = []
        for piece in [*pieces, b""]:
            for _ in range(rng.randint(0, 2)):
                offset = rng.choice(offsets + unissued)
                wanted = [c for c in changes if _engine_after(c, offset)]
                if not stream.can_join(offset_key(offset) or (0, 0, 0)):
                    continue  # (the engine serves it: behind, or not known not to be)
                assert offset not in unissued, (start, offset)
                assert set(wanted) <= set(sent), (start, offset)  # it would miss some
                transport = _Transport()
                position = offset_key(offset)
                assert position is not None
                ahead += stream.positions.canonical(position) > stream._last_key()
                spec = sse.StreamSpec((), offset, position, 0)
                stream.attach(transport, False, spec, None)  # type: ignore[arg-type]
                clients.append((offset, transport))
            if piece:
                stream.feed(piece)
        stream.end("ended")
        for offset, transport in clients:
            wanted = [c for c in changes if _engine_after(c, offset)]
            assert _changes(bytes(transport.data)) == wanted, (start, at_open, offset)
        joined += len(clients)
    assert joined > 1000 and ahead > 200, (joined, ahead)  # (the cases are all there)


def _change_event(lsn: int, op: int) -> bytes:
    message = {"key": f"k{lsn}.{op}", "headers": {"lsn": str(lsn), "op_position": op}}
    return b"data: " + orjson.dumps(message) + b"\n\n"


def _up_to_date(lsn: int) -> bytes:
    message = {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(lsn)}}
    return b"data: " + orjson.dumps(message) + b"\n\n"


def _log_end_head(offset: str) -> Head:
    return Head(
        status=200,
        reason="OK",
        headers=(("etag", f'"h-1:0_0:{offset}:1"'), ("content-type", "text/event-stream")),
        content_length=None,
        cache_control="public, max-age=59",
        ttl=0.0,
    )

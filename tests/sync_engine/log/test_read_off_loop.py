"""A big read of a shape log runs in a worker thread, and stays exact while the event loop
publishes more.

A live request woken by a 10 MB transaction read it on the event loop: 0.3-0.6 s in which
no other client was answered. `ShapeLog.read_after_async` plans the read on the loop (which
published records, where, the offset it ends at) and reads, checks and splits the bytes in
a thread. The thread must not use the index: `publish` appends a record's position before
it sets its chunk's size, so a thread reading it could skip the new record silently.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync_engine.errors import ServiceUnavailable
from sync_engine.log import files, store
from sync_engine.log.files import THREAD_READ_BYTES, LogDamaged, LogRead
from sync_engine.log.offsets import SNAPSHOT_END, LogOffset, parse_offset
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.log.test_files import _commit, _entry, _new, _tx

#: A transaction of ~1.2 MiB: read in a thread.
BIG = _tx(100, n=1200, size=1000)


class _HeldRead:
    """`files._run_read` that waits, in its thread, until the test lets it go; records the
    threads it ran in."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        self.threads: list[threading.Thread] = []
        real = files._run_read

        def held(plan: LogRead) -> Any:
            self.threads.append(threading.current_thread())
            if plan.size >= THREAD_READ_BYTES:
                self.started.set()
                assert self.go.wait(10)
            return real(plan)

        monkeypatch.setattr(files, "_run_read", held)

    async def until_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10)


async def test_a_read_in_flight_serves_what_was_published_when_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _new(tmp_path, chunk_bytes=1300 * 1024)
    log.append_transaction(100, BIG)
    _commit(log)
    held = _HeldRead(monkeypatch)
    reading = asyncio.ensure_future(log.read_after_async(SNAPSHOT_END))
    await held.until_started()
    # Published while the read is in flight: one in the same chunk, one spanning into the
    # next, one staged and rolled back (its bytes cut off the file the thread reads).
    log.append_transaction(200, _tx(200, n=3))
    _commit(log)
    log.append_transaction(300, _tx(300, n=200, size=1000))
    _commit(log)
    log.append_transaction(400, _tx(400))
    log.rollback()
    held.go.set()
    entries, end = await reading
    assert held.threads[0] is not threading.main_thread()
    assert entries == [e for _, e in BIG] and end == LogOffset(100, 2 * 1199)
    # and the next read goes on exactly where it ended: nothing lost, nothing twice
    rest: list[bytes] = []
    while log.has_after(end):
        more, end = await log.read_after_async(end)
        rest += more
    assert rest == [e for _, e in _tx(200, n=3) + _tx(300, n=200, size=1000)]
    assert end == LogOffset(300, 2 * 199) == log.latest_offset
    assert not log.has_after(LogOffset(300, 0)) and log.has_after(LogOffset(300, 2))
    assert log.first_published_lsn == 100 and _new(tmp_path / "2").first_published_lsn is None


async def test_a_damaged_record_read_in_a_thread_is_refused_and_retires_the_shape(
    tmp_path: Path,
) -> None:
    log = _new(tmp_path, chunk_bytes=4 << 20)
    log.append_transaction(100, BIG)
    _commit(log)
    reasons: list[str] = []
    log.on_damage = reasons.append
    path = log._log_name(0)
    with open(path, "r+b") as f:  # one byte of a value, deep inside the record
        f.seek(THREAD_READ_BYTES // 2)
        byte = f.read(1)
        f.seek(THREAD_READ_BYTES // 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(LogDamaged, match="checksum"):
        await log.read_after_async(SNAPSHOT_END)
    assert len(reasons) == 1 and "record checksum mismatch" in reasons[0]


async def test_a_shape_retired_while_its_read_is_in_flight_gets_a_409_not_a_damaged_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _new(tmp_path, chunk_bytes=4 << 20)
    log.append_transaction(100, BIG)
    _commit(log)
    reasons: list[str] = []
    log.on_damage = reasons.append
    held = _HeldRead(monkeypatch)
    reading = asyncio.ensure_future(log.read_after_async(SNAPSHOT_END))
    await held.until_started()
    store.retire(log)  # its files deleted, in the executor
    while store._pending:
        await asyncio.gather(*list(store._pending))
    assert not Path(log._log_name(0)).exists()
    held.go.set()
    with pytest.raises(LogDamaged):
        await reading
    assert reasons == []  # (nothing damaged: it was gone)


async def test_readers_of_the_same_range_share_one_read_joined_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _new(tmp_path, chunk_bytes=4 << 20)
    log.append_transaction(100, BIG)
    _commit(log)
    held = _HeldRead(monkeypatch)
    held.go.set()
    herd = [log.read_after_async(SNAPSHOT_END, joined=True) for _ in range(3)]
    answers = await asyncio.gather(*herd, log.read_after_async(SNAPSHOT_END))
    joined = b",".join(e for _, e in BIG)
    assert answers[:3] == [([joined], LogOffset(100, 2 * 1199))] * 3
    assert answers[3] == ([e for _, e in BIG], LogOffset(100, 2 * 1199))
    assert len(held.threads) == 2  # (one read joined, one not)
    assert threading.main_thread() not in held.threads


async def test_small_reads_stay_on_the_loop_and_whole_transactions_span_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _new(tmp_path, chunk_bytes=10_000)
    log.append_transaction(100, _tx(100))
    big = _tx(200, n=60, size=1000)  # ~6 chunks
    log.append_transaction(200, big)
    _commit(log)
    held = _HeldRead(monkeypatch)
    whole, end = await log.read_after_async(LogOffset(100, 2), whole_transactions=True)
    assert whole == [e for _, e in big] and end == LogOffset(200, 118)
    assert {t.name for t in held.threads} == {threading.main_thread().name}
    log.append_transaction(300, [(0, _entry(300, 0))])
    _commit(log)
    assert await log.read_after_async(end) == ([_entry(300, 0)], LogOffset(300, 0))


async def test_a_big_transaction_from_postgres_is_read_off_the_loop_exactly(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real path: Postgres -> replication -> the shape's log; a read of a ~1.3 MB
    transaction in flight while the replicator publishes the next one."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, t text NOT NULL)")
    engine.sql("INSERT INTO items VALUES (0, 'x')")
    _, handle, offset = await engine.sync(table="items")
    log = engine.source.shape(handle).log
    engine.sql("INSERT INTO items SELECT i, repeat('y', 1000) FROM generate_series(1, 1200) i")
    await wait_until_async(lambda: log.has_after(parse_offset(offset)), message="published")
    big_end = log.latest_offset
    held = _HeldRead(monkeypatch)
    reading = asyncio.ensure_future(log.read_after_async(parse_offset(offset)))
    await held.until_started()
    engine.sql("INSERT INTO items VALUES (5000, 'z')")
    await wait_until_async(lambda: log.latest_offset > big_end, message="next tx")
    held.go.set()
    entries, end = await reading
    assert held.threads[0] is not threading.main_thread() and end == big_end
    ids = [orjson.loads(e)["value"]["id"] for e in entries]
    # (what `Shape.issued` read the first chunk for, from the index)
    assert log.first_published_lsn == int(orjson.loads(entries[0])["headers"]["lsn"])
    assert ids == [str(i) for i in range(1, 1201)]
    more, last = await log.read_after_async(end)
    assert [orjson.loads(e)["value"]["id"] for e in more] == ["5000"]
    assert last == log.latest_offset


async def test_a_read_short_of_descriptors_is_a_503_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (a flood of connections), a read used to count as damage: the
    shape was retired and every client refetched a snapshot, adding to the load."""
    log = _new(tmp_path, chunk_bytes=4 << 20)
    log.write_snapshot_chunk(0, b'{"a":1}')
    log.chunks_readable(1, complete=False)
    log.append_transaction(100, BIG)
    _commit(log)
    reasons: list[str] = []
    log.on_damage = reasons.append
    real_open = open

    def no_fds(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(files, "open", no_fds, raising=False)
    for read in (
        lambda: log.read_after_async(SNAPSHOT_END),  # (in a thread)
        lambda: log.read_after_async(LogOffset(100, 2 * 1198)),  # (on the loop)
        lambda: asyncio.to_thread(log.read_snapshot_chunk, 0),
    ):
        with pytest.raises(ServiceUnavailable, match="Too many open files"):
            await read()
    assert reasons == [] and not log.retired
    monkeypatch.setattr(files, "open", real_open, raising=False)
    assert (await log.read_after_async(SNAPSHOT_END))[0] == [e for _, e in BIG]
    assert log.read_snapshot_chunk(0) == b'{"a":1}'


def test_a_huge_value_is_read_without_a_copy_and_still_checked(tmp_path: Path) -> None:
    """A record of one huge entry (a 200 MB row) was read whole, then its entry copied out of
    it: twice the value at the peak. Now read into its own bytes, checked all the same."""
    log = _new(tmp_path, chunk_bytes=1 << 20)
    value = orjson.dumps({"key": "k", "value": {"t": "v" * (8 << 20)}})
    log.append_transaction(100, _tx(100))
    log.append_transaction(200, [(0, value)])  # (bigger than a chunk: a record of its own)
    _commit(log)
    tracemalloc.start()
    try:
        entries, end = log.read_after(LogOffset(100, 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entries == [value] and end == LogOffset(200, 0)
    assert peak < 1.2 * len(value), peak / len(value)
    del entries
    reasons: list[str] = []
    log.on_damage = reasons.append
    with open(log._chunks[-1].path, "r+b") as f:  # one byte of the value
        f.seek(log._chunks[-1].size - len(value) // 2)
        byte = f.read(1)
        f.seek(log._chunks[-1].size - len(value) // 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(LogDamaged, match="record checksum mismatch"):
        log.read_after(LogOffset(100, 0))
    assert len(reasons) == 1

"""ReplicationStream and ensure_slot against a real PostgreSQL 15 (wal_level=logical)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from sync_engine.replication.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Relation,
    RelationColumn,
    Truncate,
    Update,
    decode,
)
from sync_engine.replication.slot import ensure_slot
from sync_engine.replication.stream import (
    XLOGDATA_HEADER,
    ReplicationConnectionError,
    ReplicationStream,
)
from sync_engine.replication.wal import parse_lsn

SLOT = "shapegate_test"
PUB = "shapegate_pub"
TITLE = "Crème brûlée ✓ 🐘 日本"


@pytest.fixture
async def setup_db(db_url: str) -> AsyncIterator[str]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2),"
            " done boolean, note text)"
        )
        await conn.execute("ALTER TABLE items REPLICA IDENTITY FULL")
        await conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE items")
    yield db_url


async def run_txn(db_url: str, *statements: str) -> int:
    """Run statements in one transaction on a fresh connection; return its xid."""
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute("SELECT txid_current()")
        row = await cur.fetchone()
        assert row is not None
        for stmt in statements:
            await conn.execute(stmt)
        await conn.commit()
    return int(row[0]) & 0xFFFFFFFF


async def read_messages(
    stream: ReplicationStream, commits: int, deadline_s: float = 10.0, max_messages: int = 5000
) -> list[tuple[int, Message]]:
    """Read and decode until `commits` Commit messages have arrived."""
    out: list[tuple[int, Message]] = []
    seen = 0
    end = time.monotonic() + deadline_s
    while seen < commits:
        left = end - time.monotonic()
        assert left > 0, f"timed out; got {out}"
        batch = await stream.read_batch(max_messages=max_messages, timeout=left)
        assert len(batch) <= max_messages
        for lsn, payload in batch:
            assert isinstance(payload, bytes)
            msg = decode(payload)
            out.append((lsn, msg))
            seen += isinstance(msg, Commit)
    return out


async def slot_row(db_url: str) -> tuple[int, int | None]:
    """(confirmed_flush_lsn, active_pid) of the test slot."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (SLOT,),
        )
        row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0]), row[1]


async def wait_confirmed(db_url: str, lsn: int, within: float = 30.0) -> int:
    end = time.monotonic() + within
    while True:
        confirmed, _ = await slot_row(db_url)
        if confirmed >= lsn or time.monotonic() > end:
            return confirmed
        await asyncio.sleep(0.05)


async def test_ensure_slot_is_idempotent(db_url: str) -> None:
    assert await ensure_slot(db_url, SLOT) is True
    assert await ensure_slot(db_url, SLOT) is False
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT plugin, slot_type, database = current_database()"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT,),
        )
        assert await cur.fetchone() == ("pgoutput", "logical", True)


async def test_ensure_slot_rejects_foreign_slot(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (SLOT,)
        )
    with pytest.raises(ValueError, match="test_decoding"):
        await ensure_slot(db_url, SLOT)


async def test_stream_decodes_acks_and_resumes(setup_db: str) -> None:
    db_url = setup_db
    assert await ensure_slot(db_url, SLOT)
    stream = ReplicationStream(db_url, SLOT, PUB)
    await stream.start()
    try:
        xid1 = await run_txn(
            db_url,
            f"INSERT INTO items VALUES (1, '{TITLE}', 12.50, true, NULL)",
            "INSERT INTO items VALUES (2, 'two', -0.01, NULL, 'n')",
        )
        xid2 = await run_txn(
            db_url,
            "UPDATE items SET title = 'one', price = price * 2 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        )
        xid3 = await run_txn(db_url, "TRUNCATE items")
        got = await read_messages(stream, commits=3)
    finally:
        await stream.close()

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute("SELECT 'items'::regclass::oid::int")
        row = await cur.fetchone()
        assert row is not None
        oid = row[0]

    msgs = [m for _, m in got]
    relation = Relation(
        oid=oid,
        schema="public",
        name="items",
        replica_identity="f",
        columns=(
            RelationColumn("id", 23, -1, True),
            RelationColumn("title", 25, -1, True),
            RelationColumn("price", 1700, (10 << 16 | 2) + 4, True),
            RelationColumn("done", 16, -1, True),
            RelationColumn("note", 25, -1, True),
        ),
    )
    row1 = ("1", TITLE, "12.50", "t", None)
    row1b = ("1", "one", "25.00", "t", None)
    row2 = ("2", "two", "-0.01", None, "n")
    # pgoutput sends a table's Relation before its first change in a session, and again
    # whenever the table's relcache entry was invalidated meanwhile: TRUNCATE does (a new
    # relfilenode), and so may a concurrent autovacuum, so a repeat may come anywhere.
    shape = [type(m).__name__ for m in msgs]
    assert shape[:2] == ["Begin", "Relation"]
    assert shape[shape.index("Truncate") - 1] == "Relation"
    relations = [m for m in msgs if isinstance(m, Relation)]
    assert all(r == relation for r in relations)
    changes = [m for m in msgs if not isinstance(m, Relation)]
    assert [type(m).__name__ for m in changes] == [
        "Begin", "Insert", "Insert", "Commit",
        "Begin", "Update", "Delete", "Commit",
        "Begin", "Truncate", "Commit",
    ]  # fmt: skip
    b1, i1, i2, c1, b2, u, d, c2, b3, t, c3 = changes
    assert isinstance(b1, Begin) and isinstance(b2, Begin) and isinstance(b3, Begin)
    assert [b1.xid, b2.xid, b3.xid] == [xid1, xid2, xid3]
    assert i1 == Insert(oid, row1)
    assert i2 == Insert(oid, row2)
    assert u == Update(oid, old=row1, new=row1b)
    assert d == Delete(oid, old=row2)
    assert t == Truncate((oid,), 0)
    for b, c in ((b1, c1), (b2, c2), (b3, c3)):
        assert isinstance(c, Commit)
        assert b.final_lsn == c.commit_lsn < c.end_lsn
        assert b.commit_ts == c.commit_ts
    assert isinstance(c1, Commit) and isinstance(c2, Commit) and isinstance(c3, Commit)
    # XLogData start positions never go backwards, except that pgoutput writes Relation
    # messages with a zero start; a Commit's start is its end LSN
    lsns = [lsn for lsn, m in got if not isinstance(m, Relation)]
    assert lsns == sorted(lsns) and 0 not in lsns
    assert [lsn for lsn, m in got if isinstance(m, Relation)] == [0] * len(relations)
    assert [lsn for lsn, m in got if isinstance(m, Commit)] == [
        c.end_lsn for c in (c1, c2, c3) if isinstance(c, Commit)
    ]
    assert stream.wal_end >= c3.commit_lsn

    # -- ack the first transaction only, then all three; the slot follows
    before, _ = await slot_row(db_url)
    assert before < c1.end_lsn
    stream = ReplicationStream(db_url, SLOT, PUB)
    await stream.start()
    try:
        again = await read_messages(stream, commits=3)
        resent = [type(m) for _, m in again if not isinstance(m, Relation)]
        assert resent == [type(m) for m in changes]  # nothing was acked
        stream.ack(c1.end_lsn)
        await stream.send_status()
        assert await wait_confirmed(db_url, c1.end_lsn) == c1.end_lsn
        stream.ack(c3.end_lsn)
        stream.ack(c2.end_lsn)  # an older ack never moves the position back
        assert stream.flushed_lsn == c3.end_lsn
        await stream.send_status(reply=True)
        assert await wait_confirmed(db_url, c3.end_lsn) == c3.end_lsn
    finally:
        await stream.close()

    # -- a new stream from the slot starts after the acked transactions
    xid4 = await run_txn(db_url, "INSERT INTO items VALUES (4, 'four', 4, false, '')")
    stream = ReplicationStream(db_url, SLOT, PUB)
    await stream.start()
    try:
        resumed = [m for _, m in await read_messages(stream, commits=1)]
    finally:
        await stream.close()
    assert [type(m).__name__ for m in resumed] == ["Begin", "Relation", "Insert", "Commit"]
    assert isinstance(resumed[0], Begin) and resumed[0].xid == xid4
    assert resumed[2] == Insert(oid, ("4", "four", "4.00", "f", ""))


async def test_read_batch_timeout_and_limits(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB) as stream:
        t0 = time.monotonic()
        assert await stream.read_batch(timeout=0.3) == []
        assert 0.25 <= time.monotonic() - t0 < 2.0
        assert await stream.read_batch(timeout=0) == []

        await run_txn(
            db_url, "INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 12000) g"
        )
        got = await read_messages(stream, commits=1, max_messages=5000)
        assert len(got) == 12003  # Begin, Relation, 12000 inserts, Commit
        inserts = [m for _, m in got if isinstance(m, Insert)]
        assert [m.new[0] for m in inserts] == [str(i) for i in range(1, 12001)]


async def test_periodic_status_updates_report_acks(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB, status_interval=0.2) as stream:
        await run_txn(db_url, "INSERT INTO items VALUES (1)")
        got = await read_messages(stream, commits=1)
        commit = got[-1][1]
        assert isinstance(commit, Commit)
        stream.ack(commit.end_lsn)
        # no explicit send_status: idle read_batch calls must report the ack on their own
        end = time.monotonic() + 30
        while (await slot_row(db_url))[0] < commit.end_lsn and time.monotonic() < end:
            assert await stream.read_batch(timeout=0.1) == []
        assert (await slot_row(db_url))[0] == commit.end_lsn


async def _flush_lsn(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
        row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def test_a_caught_up_stream_confirms_keepalives_never_past_unread_data(
    setup_db: str,
) -> None:
    """Once the caller says it is caught up, a keepalive's WAL end is confirmed as it comes
    (WAL that sent the slot nothing: a stopping walsender waits for exactly that); data read
    since ends it until the caller says so again, so nothing read is confirmed before the
    caller's ack."""
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE unpublished (x int)")
    async with ReplicationStream(db_url, SLOT, PUB, status_interval=0.2) as stream:
        stream.caught_up()
        await run_txn(db_url, "INSERT INTO items VALUES (1)")
        got = await read_messages(stream, commits=1)
        commit = got[-1][1]
        assert isinstance(commit, Commit)
        await run_txn(db_url, "INSERT INTO unpublished VALUES (1)")
        past = await _flush_lsn(db_url)
        end = time.monotonic() + 30
        while stream.wal_end < past:  # keepalives past the commit came
            assert time.monotonic() < end, "no keepalive past the commit"
            assert await stream.read_batch(timeout=0.1) == []
        assert stream.flushed_lsn < commit.commit_lsn  # not acked: never confirmed
        stream.ack(commit.end_lsn)
        assert stream.flushed_lsn == commit.end_lsn
        stream.caught_up()
        await run_txn(db_url, "INSERT INTO unpublished VALUES (2)")
        target = await _flush_lsn(db_url)
        end = time.monotonic() + 30
        while stream.flushed_lsn < target:  # confirmed without an ack: nothing to read
            assert time.monotonic() < end, "a keepalive's WAL end was not confirmed"
            assert await stream.read_batch(timeout=0.1) == []
        # and sent by the stream on its own, as it reads on (its status interval: a loaded
        # machine can be slower than a fixed wait after the reads stop; ci, 2 workers)
        end = time.monotonic() + 30
        while (await slot_row(db_url))[0] < target:
            assert time.monotonic() < end, "the confirmed position never reached the slot"
            assert await stream.read_batch(timeout=0.1) == []


async def test_keepalive_requests_are_answered(setup_db: str) -> None:
    # The server asks for a reply after wal_sender_timeout / 2 of silence and drops the
    # connection after wal_sender_timeout without one; status_interval is far longer than
    # both, so the stream sends nothing else: a reply the server records (reply_time) is an
    # answer to its request. wal_sender_timeout is 4 s, not 1.2: the reply must come within
    # 2 s of the request, where 0.6 s was missed about 1 run in 5 on a loaded machine.
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    sep = "&" if "?" in db_url else "?"
    dsn = f"{db_url}{sep}options=-c%20wal_sender_timeout%3D4000"
    async with ReplicationStream(dsn, SLOT, PUB, status_interval=3600) as stream:
        assert await reply_time(db_url) is None  # nothing sent yet
        deadline = time.monotonic() + 30
        while await reply_time(db_url) is None:
            assert time.monotonic() < deadline, "the server's keepalive was never answered"
            assert await stream.read_batch(timeout=0.2) == []
        assert stream.wal_end > 0  # keepalives were received
        xid = await run_txn(db_url, "INSERT INTO items VALUES (1)")
        got = await read_messages(stream, commits=1)
        assert isinstance(got[0][1], Begin) and got[0][1].xid == xid


async def reply_time(db_url: str) -> object:
    """When the server last heard a status update from the test slot's walsender (None:
    never)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT r.reply_time FROM pg_stat_replication r"
            " JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = %s",
            (SLOT,),
        )
        row = await cur.fetchone()
    assert row is not None, "the slot has no walsender"
    return row[0]


async def test_a_live_server_is_asked_and_answers(setup_db: str) -> None:
    """An idle stream with a short silence timeout asks for replies and gets them: quiet
    is not silence."""
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    # (1 s: it asks after 0.5 s of quiet, and a loaded machine's Postgres answered an ask
    # in more than the 0.2 s that 0.4 left it)
    async with ReplicationStream(db_url, SLOT, PUB, silence_timeout=1.0) as stream:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert await stream.read_batch(timeout=0.3) == []
        xid = await run_txn(db_url, "INSERT INTO items VALUES (1)")
        got = await read_messages(stream, commits=1)
        assert isinstance(got[0][1], Begin) and got[0][1].xid == xid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to stop the walsender (CI is root)")
async def test_a_silent_server_is_a_lost_stream(setup_db: str) -> None:
    """A walsender that stops answering (SIGSTOP: its socket stays open and quiet, as behind
    a network partition) fails the stream: it asks for a reply after half the silence
    timeout and none comes. The stream used to wait on the quiet socket for ever."""
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    stream = ReplicationStream(db_url, SLOT, PUB, silence_timeout=1.0)
    await stream.start()
    try:
        assert await stream.read_batch(timeout=0.1) == []
        _, pid = await slot_row(db_url)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ReplicationConnectionError, match="stopped answering"):
                async with asyncio.timeout(30):
                    while True:
                        await stream.read_batch(timeout=0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await stream.close()


async def test_logical_messages_option(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB, messages=True) as stream:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_logical_emit_message(false, 'shapegate', 'flush ✓')")
        batch: list[tuple[int, bytes]] = []
        while not batch:
            batch = await stream.read_batch(timeout=5)
        msg = decode(batch[0][1])
        assert isinstance(msg, LogicalMessage)
        assert (msg.transactional, msg.prefix, msg.content) == (
            False,
            "shapegate",
            "flush ✓".encode(),
        )


async def test_terminated_walsender_raises_promptly(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    stream = ReplicationStream(db_url, SLOT, PUB)
    await stream.start()
    try:
        assert await stream.read_batch(timeout=0.1) == []
        _, pid = await slot_row(db_url)
        assert pid is not None
        reader = asyncio.create_task(stream.read_batch(timeout=None))
        await asyncio.sleep(0.2)
        assert not reader.done()
        t0 = time.monotonic()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ReplicationConnectionError) as info:
            await asyncio.wait_for(reader, 5)
        assert time.monotonic() - t0 < 2
        assert "terminating connection due to administrator command" in str(info.value)
        assert isinstance(info.value.__cause__, psycopg.errors.AdminShutdown)
        # the stream stays failed; a later call fails fast too
        with pytest.raises(ReplicationConnectionError):
            await asyncio.wait_for(stream.read_batch(timeout=None), 5)
        with pytest.raises(ReplicationConnectionError):
            await stream.send_status()
    finally:
        await stream.close()

    # the caller's recovery: a new stream on the same slot works
    async with ReplicationStream(db_url, SLOT, PUB) as stream2:
        xid = await run_txn(db_url, "INSERT INTO items VALUES (1)")
        got = await read_messages(stream2, commits=1)
        assert isinstance(got[0][1], Begin) and got[0][1].xid == xid


async def test_close_wakes_a_waiting_reader(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    stream = ReplicationStream(db_url, SLOT, PUB)
    await stream.start()
    reader = asyncio.create_task(stream.read_batch(timeout=None))
    await asyncio.sleep(0.1)
    await stream.close()
    with pytest.raises(ReplicationConnectionError, match="closed"):
        await asyncio.wait_for(reader, 2)
    with pytest.raises(ReplicationConnectionError, match="closed"):
        await stream.read_batch(timeout=0)
    await stream.close()  # idempotent


async def test_start_errors_are_clear(setup_db: str) -> None:
    db_url = setup_db
    stream = ReplicationStream(db_url, "no_such_slot", PUB)
    with pytest.raises(ReplicationConnectionError, match="no_such_slot") as info:
        await stream.start()
    assert isinstance(info.value.__cause__, psycopg.Error)
    await stream.close()

    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB):
        busy = ReplicationStream(db_url, SLOT, PUB)
        with pytest.raises(ReplicationConnectionError, match="active"):
            await busy.start()


async def _read_raw_commits(stream: ReplicationStream, commits: int) -> tuple[list[bytes], int]:
    """Raw messages until `commits` commits arrived, and how many reads that took."""
    out: list[bytes] = []
    reads = 0
    while sum(m[XLOGDATA_HEADER] == ord("C") for m in out) < commits:
        batch = await stream.read_raw(timeout=10)
        assert batch, "timed out"
        reads += 1
        out += batch
    return out, reads


async def test_read_raw_gives_whole_xlogdata_messages(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    await run_txn(db_url, "INSERT INTO items VALUES (1, 'one')", "INSERT INTO items VALUES (2)")
    async with ReplicationStream(db_url, SLOT, PUB) as stream:
        raw, _ = await _read_raw_commits(stream, 1)
        assert stream.wal_end >= max(int.from_bytes(m[9:17], "big") for m in raw) > 0
    pairs: list[tuple[int, bytes]] = []
    async with ReplicationStream(db_url, SLOT, PUB) as stream:  # nothing acked: same again
        while len(pairs) < len(raw):
            pairs += await stream.read_batch(timeout=10)
    assert all(isinstance(m, bytes) and m[0] == ord("w") for m in raw)
    assert [(int.from_bytes(m[1:9], "big"), m[XLOGDATA_HEADER:]) for m in raw] == pairs
    assert [type(decode(p)).__name__ for _, p in pairs] == [
        "Begin", "Relation", "Insert", "Insert", "Commit"
    ]  # fmt: skip


async def test_linger_never_delays_a_lone_transaction(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    async with ReplicationStream(db_url, SLOT, PUB, linger=30.0) as stream:
        assert await stream.read_raw(timeout=0.2) == []
        for i in range(3):
            t0 = time.monotonic()
            await run_txn(db_url, f"INSERT INTO items VALUES ({i})")
            await _read_raw_commits(stream, 1)
            assert time.monotonic() - t0 < 5.0
            await asyncio.sleep(0.05)  # a pause ends the flow


async def test_linger_coalesces_reads_of_a_busy_flow(setup_db: str) -> None:
    db_url = setup_db
    await ensure_slot(db_url, SLOT)
    # Every flow counts as busy at once, and never ends: reads come at most every `linger`.
    async with (
        ReplicationStream(db_url, SLOT, PUB, linger=0.5, busy_after=0.0, flow_gap=3600.0) as stream,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
    ):
        assert await stream.read_raw(timeout=0) == []
        await run_txn(db_url, "INSERT INTO items VALUES (1)")
        await _read_raw_commits(stream, 1)
        t0 = time.monotonic()  # the previous read returned
        # four transactions well inside `linger`: on one open connection, since a connection
        # each took over 0.5 s in all under CI load
        for i in range(2, 6):
            await conn.execute(f"INSERT INTO items VALUES ({i})")
        raw, reads = await _read_raw_commits(stream, 4)
        assert time.monotonic() - t0 >= 0.45  # it waited for more
        assert reads == 1 and len(raw) == 12  # Begin, Insert, Commit x 4 in one read
        await run_txn(db_url, "INSERT INTO items VALUES (6)")
        t0 = time.monotonic()
        # timeout 0 never waits: none, some (Postgres may send a transaction's messages in
        # more than one segment under load) or all three of its messages
        assert len(await stream.read_raw(timeout=0)) <= 3
        assert time.monotonic() - t0 < 0.25
        await asyncio.sleep(0.6)  # a caller slower than `linger` is not held up either
        await run_txn(db_url, "INSERT INTO items VALUES (7)")
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        raw, reads = await _read_raw_commits(stream, 1)
        assert time.monotonic() - t0 < 0.25

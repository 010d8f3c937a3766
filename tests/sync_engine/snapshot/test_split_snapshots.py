"""Whole-table snapshots read by two backends sharing one exported snapshot (snapshot/bulk.py):
the chunks are byte for byte those one backend writes, whatever changes meanwhile, with every
row exactly once at the split; a second backend that cannot start leaves the whole table to
the first, one that dies mid-way fails the shape instead of completing it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection, pq

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import load_table
from sync_engine.pg.xid_snapshot import XidSnapshot
from sync_engine.snapshot.batch import SnapshotJob, run_batch
from sync_engine.snapshot.bulk import Split
from sync_engine.snapshot.query import row_json_sql

CHUNK = 20_000
END = b',{"headers":{"control":"snapshot-end"'


def _create_odd(db_url: str) -> None:
    """Values full of what COPY's text format escapes, the separators the bulk rows use,
    JSON to escape, NULLs; a text key and names that need quoting; an inheritance parent."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE odd (id int PRIMARY KEY, t text, j jsonb, b bool, c char(3), x numeric)"
        )
        conn.execute(
            """INSERT INTO odd SELECT g,
                 CASE WHEN g % 7 = 0 THEN NULL
                      ELSE 'a\\b "q" ' || chr(1) || chr(30) || chr(31) || E'\\t\\n\\r' || 'é€' || g
                 END,
                 CASE WHEN g % 5 = 0 THEN NULL
                      ELSE jsonb_build_object('k', g, 's', 'x\\y "z"', 'a', jsonb_build_array(g, null))
                 END,
                 g % 2 = 0, 'c' || (g % 10), g / 3.0
               FROM generate_series(1, 20000) g"""
        )
        conn.execute('CREATE TABLE "we""ird" ("k\\ey" text PRIMARY KEY, "va""l" int)')
        conn.execute(
            """INSERT INTO "we""ird" SELECT repeat('k/', 50) || g || '\\', g
               FROM generate_series(1, 20000) g"""
        )
        columns = ", ".join(f"c{i} text" for i in range(12))
        conn.execute(f"CREATE TABLE wide (id int PRIMARY KEY, {columns}, j jsonb)")
        values = ", ".join(f"repeat('w\\\\\"', {i}) || g" for i in range(12))
        conn.execute(
            f"""INSERT INTO wide SELECT g, {values}, jsonb_build_object('g', g, 'q', 'x"y')
                FROM generate_series(1, 10000) g"""
        )
        conn.execute("CREATE TABLE parent (id int PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE child (extra int) INHERITS (parent)")
        conn.execute("INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 8000) g")
        conn.execute("INSERT INTO child SELECT g, 'c' || g, g FROM generate_series(10001, 12000) g")


async def _snapshot(
    db_url: str,
    table: str,
    directory: Path,
    split: Split | None,
    on_snapshot: Callable[[XidSnapshot], None] = lambda _: None,
    on_chunk: Callable[[], None] = lambda: None,
) -> tuple[SnapshotJob, list[bytes]]:
    """One whole-table shape's snapshot by `run_batch`: the job and its chunks, the last one
    without its snapshot-end message (which names the transaction's snapshot)."""
    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        info = await load_table(conn, "public", table)
        assert info is not None
        query = row_json_sql(info, info.columns, info.pk, None)
        assert query.bulk is not None
        counts: list[tuple[int, bool]] = []
        directory.mkdir()

        def chunk(count: int, complete: bool) -> None:
            counts.append((count, complete))
            on_chunk()

        job = SnapshotJob(
            log=ShapeLog(directory / "shape", CHUNK, fsync=False),
            query=query,
            on_snapshot=on_snapshot,
            on_chunk=chunk,
            cancelled=lambda: False,
            record={"handle": "1"},
        )
        assert await run_batch(conn, [job], CHUNK, fsync=False, split=split) == []
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    if not job.done:
        return job, []
    count = counts[-1][0]
    chunks = [job.log.read_snapshot_chunk(i) for i in range(count)]
    last, _, _ = chunks[-1].rpartition(END)
    return job, [*chunks[:-1], last]


def _keys(chunks: list[bytes]) -> list[bytes]:
    return [row.split(b'","value"')[0] for c in chunks for row in c.split(b'{"key":')[1:]]


async def test_a_split_snapshot_equals_one_backends_byte_for_byte(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Head sizes that make either backend read the table's last block: the same chunks,
    every row once (a parent's rows, its child's included, come row by row in the head);
    narrow rows come compact, wide ones with the constant parts between them. (The tables
    and each one's single-backend chunks are made once for the three head sizes.)"""
    _create_odd(db_url)
    caplog.set_level(logging.DEBUG, logger="sync_engine.snapshot.bulk")
    tables = (("odd", 20000), ('we"ird', 20000), ("wide", 10000), ("parent", 10000))
    ones = {}
    for table, _ in tables:
        _, ones[table] = await _snapshot(db_url, table, tmp_path / f"one-{table}", None)
        assert len(ones[table]) > 10
    for head_pages in (32, 64, 96):
        fulls = []
        for table, rows in tables:
            caplog.clear()
            _, two = await _snapshot(
                db_url, table, tmp_path / f"two-{head_pages}-{table}", Split(db_url, head_pages)
            )
            logs = [r.message for r in caplog.records if "read by two backends" in r.message]
            assert logs, caplog.text
            fulls.append("full: True" in logs[0])
            assert two == ones[table], (head_pages, table)
            keys = _keys(two)
            assert len(keys) == len(set(keys)) == rows
        assert fulls == [False, True, True, False], head_pages  # "we\"ird" has 100-byte keys


async def test_a_table_changed_during_a_split_snapshot_is_read_as_of_its_snapshot(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows updated, deleted and inserted after the batch took its snapshot, before the
    second backend imports it (in the head, in either backend's blocks, new pages at the
    end): both read the table as the snapshot sees it, which is what one backend read
    before the changes."""
    _create_odd(db_url)
    caplog.set_level(logging.DEBUG, logger="sync_engine.snapshot.bulk")
    _, before = await _snapshot(db_url, "odd", tmp_path / "before", None)

    def change(_: XidSnapshot) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE odd SET t = 'changed' WHERE id % 97 = 0")
            conn.execute("DELETE FROM odd WHERE id % 89 = 0")
            conn.execute(
                "INSERT INTO odd SELECT g, 'new', NULL, true, 'n', 0"
                " FROM generate_series(30001, 40000) g"
            )

    _, during = await _snapshot(db_url, "odd", tmp_path / "during", Split(db_url, 32), change)
    assert any("read by two backends" in r.message for r in caplog.records), caplog.text
    assert during == before
    _, after = await _snapshot(db_url, "odd", tmp_path / "after", Split(db_url, 32))
    assert len(_keys(after)) == 20000 - len(range(89, 20001, 89)) + 10000


async def test_without_a_second_backend_one_reads_the_whole_table(
    db_url: str, tmp_path: Path
) -> None:
    """A second connection that cannot be opened (here: nothing listens) costs nothing but
    the speed-up."""
    _create_odd(db_url)
    _, one = await _snapshot(db_url, "odd", tmp_path / "one", None)
    nowhere = Split("postgresql://postgres@127.0.0.1:1/postgres", 32)
    job, two = await _snapshot(db_url, "odd", tmp_path / "two", nowhere)
    assert job.done and job.error is None
    assert two == one


async def test_a_second_backend_dying_mid_snapshot_fails_the_shape(
    db_url: str, tmp_path: Path
) -> None:
    """The second backend is terminated while the tail is read: the shape's snapshot is
    not completed (no marker, so nothing partial is served or loaded after a restart), it
    carries a transient error, and the batch's connection is left idle for the next."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, title text, n int)")
        conn.execute(
            "INSERT INTO items SELECT g, 'title ' || g, g % 1000 FROM generate_series(1, 300000) g"
        )
    helper_dsn = db_url + ("&" if "?" in db_url else "?") + "application_name=shapegate-second"
    killed: list[Any] = []

    def kill() -> None:
        if killed:
            return
        with psycopg.connect(db_url, autocommit=True) as conn:
            killed.extend(
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'shapegate-second'"
                ).fetchall()
            )

    job, chunks = await _snapshot(
        db_url, "items", tmp_path / "s", Split(helper_dsn, 32), on_chunk=kill
    )
    assert killed == [(True,)]
    assert not job.done and chunks == []
    assert isinstance(job.error, psycopg.OperationalError), job.error
    assert not list((tmp_path / "s").glob("*.pack"))

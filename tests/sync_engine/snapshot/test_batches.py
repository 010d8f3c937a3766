"""New shapes snapshotted together in one transaction (snapshot/batch.py), end to end."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.sync_engine.engine_harness import SETTINGS, Engine


def make_items(engine: Engine, n: int = 300) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    engine.sql("INSERT INTO items SELECT g, 't' || g, g %% 30 FROM generate_series(1, %s) g", (n,))


async def test_a_failing_shape_fails_alone_in_its_batch(engine: Engine) -> None:
    """A where clause that errors in Postgres at run time fails that shape only (a 400); the
    shapes queued behind it in the same batch are run again and sync."""
    make_items(engine)
    await engine.sync(table="items", where="n = -1")  # publish the table first

    async def first(where: str) -> tuple[int, Any]:
        status, _, body = await engine.get(table="items", where=where, offset="-1")
        return status, body

    wheres = (
        [f"n = {k}" for k in range(10)] + ["title::int > 0"] + [f"n = {k}" for k in range(10, 20)]
    )
    answers = await asyncio.wait_for(asyncio.gather(*(first(w) for w in wheres)), 60)
    bad = answers[10]
    assert bad[0] == 400, bad
    assert "22P02" in bad[1]["errors"]["where"][0], bad
    for k, (status, body) in enumerate(answers[:10] + answers[11:]):
        assert status == 200, (k, body)
    synced = await asyncio.gather(
        *(engine.sync(table="items", where=w) for w in wheres if "title" not in w)
    )
    assert [len(rows) for rows, _, _ in synced] == [10] * 20


async def test_shapes_after_a_failing_one_keep_their_data(engine: Engine) -> None:
    """Shapes in one batch share one snapshot; each gets exactly its rows and then its
    changes, including a row written while the batch was being taken."""
    make_items(engine)
    await engine.sync(table="items", where="n = -1")
    results = await asyncio.gather(
        *(engine.sync(table="items", where=f"n = {k}") for k in range(30))
    )
    assert all(len(rows) == 10 for rows, _, _ in results)
    engine.sql("INSERT INTO items VALUES (1000, 'late', 7)")
    rows, handle, offset = results[7]
    status, _, body = await engine.get(
        table="items", where="n = 7", offset=offset, handle=handle, live="true"
    )
    assert status == 200
    inserted = [m for m in body if m.get("headers", {}).get("operation") == "insert"]
    assert [m["value"]["title"] for m in inserted] == ["late"]


async def test_snapshots_work_with_descriptors_above_1023(engine: Engine) -> None:
    """`select()` cannot wait on descriptors >= 1024; a busy engine's connections get them."""
    make_items(engine, 30)
    held = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            held.append(fd)
            if fd > 1100:
                break
        rows, _, _ = await engine.sync(table="items", where="n < 5")
        assert len(rows) == 5
    finally:
        for fd in held:
            os.close(fd)


async def test_run_batch_reports_done_failed_and_not_run(db_url: str, tmp_path: Any) -> None:
    """[good, failing, good] in one batch: the first is written, the second carries the
    Postgres error, the third is handed back to run again; the connection is left idle."""
    from psycopg import AsyncConnection, pq

    from sync_engine.log.files import ShapeLog
    from sync_engine.pg.catalog import load_table
    from sync_engine.pg.xid_snapshot import XidSnapshot
    from sync_engine.snapshot.batch import SnapshotJob, run_batch
    from sync_engine.snapshot.query import row_json_sql

    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
        await conn.execute(
            "INSERT INTO items SELECT g, 't' || g, g % 3 FROM generate_series(1, 9) g"
        )
        table = await load_table(conn, "public", "items")
        assert table is not None
        snapshots: list[XidSnapshot] = []
        progress: list[tuple[int, int, bool]] = []

        def job(i: int, where: str) -> SnapshotJob:
            log = ShapeLog(tmp_path / str(i), 1 << 20, fsync=False)
            return SnapshotJob(
                log=log,
                query=row_json_sql(table, table.columns, table.pk, where),
                on_snapshot=snapshots.append,
                on_chunk=lambda count, complete: progress.append((i, count, complete)),
                cancelled=lambda: False,
                record={"handle": str(i)},
            )

        jobs = [job(0, "n = 1"), job(1, "(10 / (n - 2)) > 0"), job(2, "n = 0")]
        retry = await run_batch(conn, jobs, 1 << 20, fsync=False)
        assert retry == [jobs[2]]
        assert jobs[0].done and jobs[0].error is None
        assert not jobs[1].done and "division by zero" in str(jobs[1].error)
        assert not jobs[2].done and jobs[2].error is None
        assert progress == [(0, 1, True)]
        # The third never heard of the snapshot: it runs again under another one, so its
        # horizon must be that one's (it was set by this one, changes filtered by it).
        assert len(snapshots) == 2 and len(set(snapshots)) == 1
        assert jobs[0].announced and jobs[1].announced and not jobs[2].announced
        chunk = jobs[0].log.read_snapshot_chunk(0)
        assert chunk.count(b'"operation":"insert"') == 3 and b"snapshot-end" in chunk
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        assert await run_batch(conn, [jobs[2]], 1 << 20, fsync=False) == []
        assert jobs[2].done


async def test_new_shapes_are_packed_and_load_after_a_restart(
    aiohttp_client: Any, db_url: str, tmp_path: Any
) -> None:
    """Small new shapes cost one file together: their snapshots and markers are packed; after
    a restart they load under the same handles. A shape directory of the layout before
    packs is discarded (its clients get a 409 and refetch)."""
    from dataclasses import replace

    from sync_engine.app import SOURCES, build_app

    settings = replace(SETTINGS, database_url=db_url, data_dir=tmp_path / "data")
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    first = Engine(client, db_url, tmp_path / "data")
    make_items(first, 30)
    synced = await asyncio.gather(*(first.sync(table="items", where=f"n = {n}") for n in range(3)))
    await client.close()
    shapes = tmp_path / "data" / "sources" / "default" / "shapes"
    names = sorted(p.name for p in shapes.iterdir())
    assert all(n.endswith(".pack") for n in names) and 1 <= len(names) <= 3, names
    old = shapes / "1-1"
    old.mkdir()
    (old / "snapshot.complete").write_bytes(b"1")
    first.sql("INSERT INTO items VALUES (100, 'zero', 0), (101, 'one', 1), (102, 'two', 2)")

    client2 = await aiohttp_client(build_app(settings))
    await client2.app[SOURCES]["default"].ready.wait()
    second = Engine(client2, db_url, tmp_path / "data")
    for n, (_, handle, offset) in enumerate(synced):
        status, h, body = await second.get(
            table="items", where=f"n = {n}", offset=offset, handle=handle, live="true"
        )
        assert status == 200 and h["electric-handle"] == handle, body
        expected = ["zero", "one", "two"][n]
        assert [m["value"]["title"] for m in body if "value" in m] == [expected]
    status, h, body = await second.get(table="items", where="n = 2", offset="0_0", handle="1-1")
    assert status == 409 and body == [{"headers": {"control": "must-refetch"}}]
    assert not old.exists()


async def test_snapshot_over_many_chunks(aiohttp_client: Any, db_url: str, tmp_path: Any) -> None:
    """Chunks cut by size mid-stream (rows are joined in groups as they arrive): every row
    once, in chunks `0_0`, `0_1`, ... of about the configured size."""
    from dataclasses import replace

    from sync_engine.app import SOURCES, build_app

    settings = replace(
        SETTINGS, database_url=db_url, data_dir=tmp_path / "data", chunk_bytes=20_000
    )
    client = await aiohttp_client(build_app(settings))
    await client.app[SOURCES]["default"].ready.wait()
    engine = Engine(client, db_url, tmp_path / "data")
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    engine.sql(
        "INSERT INTO items SELECT g, repeat('x', g % 50) || E'\\\\' || g, g"
        " FROM generate_series(1, 2000) g"
    )
    offsets = []
    status, h, body = await engine.get(table="items", offset="-1")
    rows: dict[str, Any] = {}
    while True:
        assert status == 200, body
        offsets.append(h["electric-offset"])
        for m in body:
            if "key" in m:
                assert m["key"] not in rows
                rows[m["key"]] = m["value"]
        if "electric-up-to-date" in h:
            break
        status, h, body = await engine.get(
            table="items", offset=h["electric-offset"], handle=h["electric-handle"]
        )
    assert len(rows) == 2000
    assert rows['"public"."items"/"7"']["title"] == "xxxxxxx\\7"
    chunks = [o for o in offsets if o.startswith("0_") and o != "0_inf"]
    assert chunks == [f"0_{k}" for k in range(len(chunks))] and len(chunks) > 5


async def test_a_timed_batch_lifts_its_timeout_for_whole_tables(db_url: str, tmp_path: Any) -> None:
    """With a statement timeout (`--snapshot-timeout`) a batch runs its where-clause shapes
    under it and its whole-table shapes (last, as the scheduler orders them) without it: a
    where clause too costly for the timeout fails alone (its error says so), the shapes
    before it keep their rows, and a batch mixing both kinds completes."""
    from psycopg import AsyncConnection, pq

    from sync_engine.log.files import ShapeLog
    from sync_engine.pg.catalog import load_table
    from sync_engine.snapshot.batch import SnapshotJob, is_bulk, run_batch
    from sync_engine.snapshot.errors import timed_out
    from sync_engine.snapshot.query import row_json_sql

    async with await AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
        await conn.execute(
            "INSERT INTO items SELECT g, 't' || g, g % 3 FROM generate_series(1, 3000) g"
        )
        table = await load_table(conn, "public", "items")
        assert table is not None

        def job(i: int, where: str | None) -> SnapshotJob:
            return SnapshotJob(
                log=ShapeLog(tmp_path / str(i), 1 << 20, fsync=False),
                query=row_json_sql(table, table.columns, table.pk, where),
                on_snapshot=lambda _: None,
                on_chunk=lambda count, complete: None,
                cancelled=lambda: False,
                record={"handle": str(i)},
            )

        jobs = [job(0, "n = 1"), job(1, "n = 2"), job(2, None)]
        assert [is_bulk(j) for j in jobs] == [False, False, True]
        assert await run_batch(conn, jobs, 1 << 20, fsync=False, timeout_ms=60_000) == []
        assert all(j.done and j.error is None for j in jobs)
        whole = jobs[2].log.read_snapshot_chunk(0)
        assert whole.count(b'"operation":"insert"') == 3000
        costly = "pg_sleep(0.01)::text = ''"  # 30 s over the table's rows
        jobs = [job(3, "n = 1"), job(4, costly), job(5, None)]
        retry = await run_batch(conn, jobs, 1 << 20, fsync=False, timeout_ms=50)
        assert jobs[0].done and jobs[0].error is None
        assert jobs[1].error is not None and timed_out(jobs[1].error), jobs[1].error
        assert retry == [jobs[2]]
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE

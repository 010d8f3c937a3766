"""Shapes on a partitioned table and on an inheritance parent get their descendants' changes
live, as their snapshot has their rows (`SELECT ... FROM parent`); a shape on one partition
gets only that partition's. Also a partition made after the shape, a row moved from one
partition to another (a delete and an insert), and the same after the engine is killed and
started again.

Postgres publishes a partition's changes under the partition's own relation (the
publication's publish_via_partition_root is off, so that shapes on a partition work): the
engine routes them to the shapes of its ancestors too, as Electric does
(Electric.Shapes.Partitions). It used to route them to the partition's shapes only: a shape
on the root answered up-to-date with nothing, for ever, while its rows changed.

Real path: the engine as a process, the real npm client and an exactly-once follower.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.faults.test_damaged_files import NpmClient
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async


def _rows(db_url: str, table: str) -> list[tuple[str, ...]]:
    with psycopg.connect(db_url) as conn:
        return sorted(
            tuple(str(x) for x in row)
            for row in conn.execute(f"SELECT id, org, v FROM {table}".encode()).fetchall()
        )


def _view(rows: dict[str, dict[str, Any]] | None) -> list[tuple[str, ...]] | None:
    if rows is None:
        return None
    return sorted((str(r["id"]), str(r["org"]), str(r["v"])) for r in rows.values())


def _sql(db_url: str, *statements: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s.encode())


@pytest.mark.timeout(120)
async def test_parents_get_their_descendants_changes_live(db_url: str, tmp_path: Path) -> None:
    _sql(
        db_url,
        "CREATE TABLE items (id int, org text, v int NOT NULL, PRIMARY KEY (id, org))"
        " PARTITION BY LIST (org)",
        "CREATE TABLE items_a PARTITION OF items FOR VALUES IN ('a')",
        "CREATE TABLE items_b PARTITION OF items FOR VALUES IN ('b')",
        "INSERT INTO items VALUES (1, 'a', 0), (2, 'b', 0)",
        # inheritance: the parent's SELECT reads its child's rows too
        "CREATE TABLE p (id int PRIMARY KEY, org text NOT NULL, v int NOT NULL)",
        "CREATE TABLE c (extra text) INHERITS (p)",
        "INSERT INTO p VALUES (1, 'p', 0)",
        "INSERT INTO c VALUES (2, 'c', 0, 'x')",
    )
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "1")
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    tables = ["items", "items_a", "p"]
    followers = [Follower(engine.url, None, table=t, increments=False) for t in tables]
    npm = NpmClient(engine.url, "items", sse=True)
    stop = asyncio.Event()
    try:
        await npm.start()
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]
            await wait_until_async(lambda: all(f.live for f in followers), message="live")

            async def converged(what: str) -> None:
                def equal() -> bool:
                    return all(
                        _view(f.rows) == _rows(db_url, t)
                        for f, t in zip(followers, tables, strict=True)
                    ) and _view(npm.rows) == _rows(db_url, "items")

                try:
                    await wait_until_async(equal, timeout=30, message=what)
                except AssertionError as exc:
                    views = [(t, _view(f.rows)) for f, t in zip(followers, tables, strict=True)]
                    raise AssertionError(f"{exc}: {views}, npm {_view(npm.rows)}") from None

            _sql(
                db_url,
                "INSERT INTO items VALUES (3, 'a', 0), (4, 'b', 0)",
                "UPDATE items SET v = v + 1 WHERE id = 2",
                "UPDATE items SET org = 'b' WHERE id = 1",  # moved: items_a -> items_b
                "DELETE FROM items WHERE id = 3",
                "INSERT INTO c VALUES (3, 'c', 0, 'y')",
                "UPDATE p SET v = v + 1",  # the parent's row and its child's
                "UPDATE c SET extra = 'z' WHERE id = 2",  # a column the parent does not have
            )
            await converged("live")
            _sql(
                db_url,
                "CREATE TABLE items_c PARTITION OF items FOR VALUES IN ('c')",
                "INSERT INTO items VALUES (5, 'c', 0)",
                "UPDATE items SET org = 'c' WHERE id = 4",
            )
            await converged("a partition made after the shape")
            engine.kill()
            _sql(db_url, "INSERT INTO items VALUES (6, 'c', 0)", "DELETE FROM c WHERE id = 3")
            await asyncio.to_thread(engine.start)
            _sql(db_url, "UPDATE items SET v = v + 1 WHERE org <> 'b'")
            await converged("after a restart")
            stop.set()
            await asyncio.gather(*tasks)
        for f in followers:
            f.assert_clean(resets=False)
        assert not npm.errors, npm.errors
    finally:
        stop.set()
        await npm.stop()
        engine.stop()


@pytest.mark.timeout(120)
async def test_changes_without_their_old_row_are_not_guessed(db_url: str, tmp_path: Path) -> None:
    """A partition made after its root's shapes has the default REPLICA IDENTITY until the
    engine sees it (its first changes come with the key as old row at most), and an operator
    may set a published table's back to DEFAULT: an update then comes without its old row, a
    delete with its key. A shape without a where clause takes them (every column of the new
    row as changed: it used to compare the new row with itself and send nothing, so the
    update was lost); a shape whose where clause reads other columns cannot tell whether the
    old row was in it (a row moved out of it, or deleted, stayed with its clients): it is
    retired and its clients refetch. The new partition gets REPLICA IDENTITY FULL."""
    _sql(
        db_url,
        "CREATE TABLE items (id int, org text, v int NOT NULL, t text, PRIMARY KEY (id, org))"
        " PARTITION BY LIST (org)",
        "CREATE TABLE items_a PARTITION OF items FOR VALUES IN ('a')",
        "INSERT INTO items VALUES (1, 'a', 1, 'x')",
        "CREATE TABLE plain (id int PRIMARY KEY, org text NOT NULL, v int NOT NULL, t text)",
        "INSERT INTO plain VALUES (1, 'p', 1, 'x'), (2, 'p', 1, 'x')",
    )
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "1")
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    cases = [("items", None), ("items", "v > 0"), ("plain", None)]
    followers = [Follower(engine.url, w, table=t, increments=False) for t, w in cases]
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]
            await wait_until_async(lambda: all(f.live for f in followers), message="live")
            _sql(
                db_url,
                "ALTER TABLE plain REPLICA IDENTITY DEFAULT",
                "UPDATE plain SET v = 2, t = NULL WHERE id = 1",
                "DELETE FROM plain WHERE id = 2",
                "CREATE TABLE items_b PARTITION OF items FOR VALUES IN ('b')",
                "INSERT INTO items VALUES (2, 'b', 1, 'x'), (3, 'b', 1, 'x'), (4, 'b', 1, 'x')",
                "UPDATE items SET v = 0 WHERE id = 2",  # out of `v > 0`
                "UPDATE items SET t = NULL WHERE id = 4",
                "DELETE FROM items WHERE id = 3",
            )

            def expected(table: str, where: str | None) -> list[tuple[str, ...]]:
                with psycopg.connect(db_url) as conn:
                    q = f"SELECT id, org, v, t FROM {table}" + (f" WHERE {where}" if where else "")
                    return sorted(tuple(str(x) for x in r) for r in conn.execute(q.encode()))

            def views() -> list[list[tuple[str, ...]]]:
                return [
                    sorted(
                        (str(r["id"]), str(r["org"]), str(r["v"]), str(r.get("t")))
                        for r in f.rows.values()
                    )
                    for f in followers
                ]

            want = [expected(t, w) for t, w in cases]
            try:
                await wait_until_async(lambda: views() == want, timeout=30, message="as SELECT")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {views()} != {want}") from None
            stop.set()
            await asyncio.gather(*tasks)
        for f in followers:
            f.assert_clean()  # (the where shape's clients may refetch: a 409)
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT relreplident::text FROM pg_class WHERE relname = 'items_b'"
            ).fetchone()
        assert row == ("f",), row
    finally:
        stop.set()
        engine.stop()

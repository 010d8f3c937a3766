"""A shaped table's family (partitions, inheritance children) changing while its shapes
live, or while the engine is down: every shape ends equal to `SELECT`, for ever.

DDL changes which rows `SELECT ... FROM parent` reads with no row change in the WAL:
- a child made after the parent's shapes (`CREATE TABLE c () INHERITS (p)`) or an existing
  table made one (`ALTER TABLE q INHERIT p`) was not published: its rows and its changes
  never reached the parent's shapes (a new snapshot had them: clients were wrong for ever);
- `ATTACH PARTITION t` brings t's rows into the root with no INSERT in the WAL;
- `DETACH PARTITION`, `NO INHERIT` take rows out of it with no DELETE.
The engine now looks at the families of shaped tables (`Tables.check_families`, every
`--family-check-interval` seconds, at once when the stream names a new relation, and at
start), publishes and routes the new members, and retires the shapes made with another
family: their clients get a 409 and refetch a snapshot taken after that. A partition made
as one (`CREATE TABLE ... PARTITION OF`) needs no refetch: all its rows come through the
stream (`test_partitions.py`).

A table whose REPLICA IDENTITY an operator set back to DEFAULT makes its where shapes
refetch on every update and delete (correct, see `test_partitions.py`): the engine says so
once in its log, and /v1/health lists it under `warnings`.

Real path: the engine as a process, the real npm client and followers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from sync_engine.source import Source, SourceConfig
from tests.faults.test_damaged_files import NpmClient
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async


def _sql(db_url: str, *statements: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s.encode())


def _select(db_url: str, table: str, where: str | None) -> list[tuple[str, ...]]:
    q = f"SELECT id, org, v FROM {table}" + (f" WHERE {where}" if where else "")
    with psycopg.connect(db_url) as conn:
        return sorted(tuple(str(x) for x in row) for row in conn.execute(q.encode()).fetchall())


def _view(rows: dict[str, dict[str, Any]] | None) -> list[tuple[str, ...]] | None:
    if rows is None:
        return None
    return sorted((str(r["id"]), str(r["org"]), str(r["v"])) for r in rows.values())


@pytest.mark.timeout(180)
async def test_a_family_change_ends_equal_to_select(db_url: str, tmp_path: Path) -> None:
    _sql(
        db_url,
        "CREATE TABLE items (id int, org text, v int NOT NULL, PRIMARY KEY (id, org))"
        " PARTITION BY LIST (org)",
        "CREATE TABLE items_a PARTITION OF items FOR VALUES IN ('a')",
        "INSERT INTO items VALUES (1, 'a', 1), (2, 'a', 0)",
        # to be attached, with its rows
        "CREATE TABLE items_x (id int, org text, v int NOT NULL, PRIMARY KEY (id, org))",
        "INSERT INTO items_x VALUES (10, 'x', 1), (11, 'x', 0)",
        "CREATE TABLE p (id int PRIMARY KEY, org text NOT NULL, v int NOT NULL)",
        "CREATE TABLE c () INHERITS (p)",
        "INSERT INTO p VALUES (1, 'p', 1)",
        "INSERT INTO c VALUES (2, 'c', 1)",
        # to inherit from p later, with its rows
        "CREATE TABLE q (id int PRIMARY KEY, org text NOT NULL, v int NOT NULL)",
        "INSERT INTO q VALUES (30, 'q', 1), (31, 'q', 0)",
    )
    engine = EngineProcess(
        db_url,
        tmp_path / "data",
        "--long-poll-timeout",
        "1",
        "--family-check-interval",
        "0.3",
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    cases = [("items", None), ("items", "v > 0"), ("items_a", None), ("p", None), ("p", "v > 0")]
    followers = [Follower(engine.url, w, table=t, increments=False) for t, w in cases]
    npms = {"items": NpmClient(engine.url, "items", sse=True), "p": NpmClient(engine.url, "p")}
    stop = asyncio.Event()
    try:
        for npm in npms.values():
            await npm.start()
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]
            await wait_until_async(lambda: all(f.live for f in followers), message="live")

            async def converged(what: str, only: str | None = None) -> None:
                """Every follower and npm client (of table `only`) equal to SELECT."""
                mine = [i for i, (t, _) in enumerate(cases) if only in (None, t)]
                clients = [t for t in npms if only in (None, t)]

                def views() -> list[Any]:
                    return [_view(followers[i].rows) for i in mine] + [
                        _view(npms[t].rows) for t in clients
                    ]

                def want() -> list[Any]:
                    return [_select(db_url, *cases[i]) for i in mine] + [
                        _select(db_url, t, None) for t in clients
                    ]

                try:
                    await wait_until_async(lambda: views() == want(), timeout=30, message=what)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {views()} != {want()}") from None

            # 1. a new inheritance child, and a table made a child, with rows
            _sql(
                db_url,
                "CREATE TABLE c2 () INHERITS (p)",
                "INSERT INTO c2 VALUES (20, 'c2', 1), (21, 'c2', 0)",
                "ALTER TABLE q INHERIT p",
            )
            await converged("new inheritance children")
            _sql(
                db_url, "UPDATE p SET v = v + 1 WHERE id IN (20, 31)", "DELETE FROM q WHERE id = 30"
            )
            await converged("the new children's changes")
            # 2. a partition attached with its rows
            _sql(
                db_url,
                "ALTER TABLE items ATTACH PARTITION items_x FOR VALUES IN ('x')",
                # made, filled and attached in one transaction: its first rows were written
                # before it was a partition (not published), the others after
                "BEGIN",
                "CREATE TABLE items_y (LIKE items)",
                "INSERT INTO items_y VALUES (40, 'y', 1)",
                "ALTER TABLE items ATTACH PARTITION items_y FOR VALUES IN ('y')",
                "INSERT INTO items_y VALUES (41, 'y', 1)",
                "COMMIT",
            )
            await converged("a partition attached")
            _sql(
                db_url,
                "UPDATE items SET v = v + 1 WHERE id = 11",
                "INSERT INTO items_x VALUES (12, 'x', 1)",
            )
            await converged("the attached partition's changes")
            # 3. a partition detached, a child no longer inheriting
            _sql(
                db_url,
                "ALTER TABLE items DETACH PARTITION items_a",
                "ALTER TABLE c NO INHERIT p",
            )
            await converged("a partition detached, a child disinherited")
            _sql(
                db_url,
                "INSERT INTO items_a VALUES (3, 'a', 1)",  # its own shape's; not the root's
                "UPDATE c SET v = v + 1",
            )
            await converged("the detached tables' changes")
            # a DETACH ... CONCURRENTLY interrupted: the partition is left "detach pending",
            # which the root's SELECT no longer reads
            with psycopg.connect(db_url) as holder:  # a transaction the detach waits for
                holder.execute("SELECT 1 FROM items LIMIT 1")
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute("SET statement_timeout = '300ms'")
                    with pytest.raises(psycopg.errors.QueryCanceled):
                        conn.execute("ALTER TABLE items DETACH PARTITION items_x CONCURRENTLY")
            await converged("a partition left detach pending")
            # 4. while the engine is down (killed): attached again, inheriting again
            engine.kill()
            _sql(
                db_url,
                "ALTER TABLE items ATTACH PARTITION items_a FOR VALUES IN ('a')",
                "ALTER TABLE c INHERIT p",
                "ALTER TABLE q NO INHERIT p",
            )
            # and a partition and an inheritance child (no primary key) whose locks are busy
            # when the engine first finds them (at start): their REPLICA IDENTITY FULL is
            # tried again until it is set, and the child is published only then (without
            # it, the application's UPDATE of the child would be refused)
            _sql(
                db_url,
                "CREATE TABLE items_w PARTITION OF items FOR VALUES IN ('w')",
                "INSERT INTO items VALUES (50, 'w', 1)",
                "CREATE TABLE c3 (extra int) INHERITS (p)",
                "INSERT INTO c3 VALUES (60, 'c3', 1, 0)",
            )
            with psycopg.connect(db_url) as holder:
                holder.execute("SELECT 1 FROM items_w, c3")  # (their locks, until the end)
                await asyncio.to_thread(engine.start)
                # (the stream names items_w again, replaying its insert: also in vain)
                await converged("families changed while the engine was down", only="items")
                _sql(db_url, "UPDATE c3 SET extra = 1")
            await converged("families changed while the engine was down")

            def identities() -> list[tuple[str, str]]:
                with psycopg.connect(db_url) as conn:
                    q = (
                        b"SELECT relname::text, relreplident::text FROM pg_class"
                        b" WHERE relname IN ('items_w', 'c3') ORDER BY 1"
                    )
                    return [(str(a), str(b)) for a, b in conn.execute(q).fetchall()]

            await wait_until_async(  # (tried again every 5 family checks: 1.5 s here)
                lambda: identities() == [("c3", "f"), ("items_w", "f")],
                timeout=30,
                message="identities FULL",
            )
            _sql(db_url, "UPDATE items SET v = v + 1", "UPDATE p SET v = v + 1")
            await converged("after the restart")
            # a table set back to REPLICA IDENTITY DEFAULT: said once, and FULL again at the
            # refetch its first UPDATE caused (test_identity_restored.py)
            _sql(db_url, "ALTER TABLE p REPLICA IDENTITY DEFAULT")
            for _ in range(3):
                _sql(db_url, "UPDATE p SET v = v + 1 WHERE id = 1")
                await converged("REPLICA IDENTITY DEFAULT")
            with psycopg.connect(db_url) as conn:
                row = conn.execute(b"SELECT relreplident FROM pg_class WHERE relname = 'p'")
                assert row.fetchone() == ("f",)
            stop.set()
            await asyncio.gather(*tasks)
        for f in followers:
            f.assert_clean()  # (they refetch: 409s)
        for npm in npms.values():
            assert not [e for e in npm.errors if "409" not in e], npm.errors
        said = (tmp_path / "engine.log").read_text().count("has REPLICA IDENTITY DEFAULT")
        assert said == 1, said
    finally:
        stop.set()
        for npm in npms.values():
            await npm.stop()
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_big_family_changed_while_the_engine_was_down(db_url: str, tmp_path: Path) -> None:
    """A table with more descendants than a shape's record lists (`FAMILY_LISTED`: the
    record holds their digest): a partition detached while the engine was down (SIGKILL)
    still retires its shapes at start."""
    _sql(
        db_url,
        "CREATE TABLE big (id int, k int, v int NOT NULL, PRIMARY KEY (id, k))"
        " PARTITION BY LIST (k)",
        "DO $$ BEGIN FOR i IN 1..300 LOOP EXECUTE format("
        "'CREATE TABLE big_%s PARTITION OF big FOR VALUES IN (%s)', i, i); END LOOP; END $$",
        "INSERT INTO big SELECT g, g, 0 FROM generate_series(1, 300) g",
    )
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "1")
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    follower = Follower(engine.url, "k > 100", table="big", increments=False)
    stop = asyncio.Event()

    def rows() -> list[tuple[str, ...]]:
        return sorted((str(r["id"]), str(r["k"]), str(r["v"])) for r in follower.rows.values())

    def want() -> list[tuple[str, ...]]:
        with psycopg.connect(db_url) as conn:
            q = b"SELECT id, k, v FROM big WHERE k > 100"
            return sorted(tuple(str(x) for x in r) for r in conn.execute(q).fetchall())

    try:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, message="live")
            engine.kill()
            _sql(db_url, "ALTER TABLE big DETACH PARTITION big_200")
            await asyncio.to_thread(engine.start)
            _sql(db_url, "UPDATE big SET v = 1 WHERE k IN (150, 200)")
            await wait_until_async(lambda: rows() == want(), timeout=30, message="as SELECT")
            stop.set()
            await task
        follower.assert_clean()
        assert follower.resets == 1, follower.resets
    finally:
        stop.set()
        engine.stop()


@pytest.mark.timeout(120)
async def test_a_child_the_engine_may_not_publish_stops_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """An inheritance child made after the parent's shapes by another role than the
    engine's: the engine may neither set its identity nor publish it. It says so once, and
    goes on serving the parent's own changes, also after a restart (the start's family
    check used to fail on it: the source never became ready)."""
    role = "fam_" + db_url.rsplit("/", 1)[1]
    url = db_url.replace("postgres@", f"{role}@", 1)
    _sql(
        db_url,
        f"CREATE ROLE {role} LOGIN REPLICATION",
        f"GRANT CREATE ON DATABASE {db_url.rsplit('/', 1)[1]} TO {role}",
        "CREATE TABLE p (id int PRIMARY KEY, org text NOT NULL, v int NOT NULL)",
        f"ALTER TABLE p OWNER TO {role}",
        "INSERT INTO p VALUES (1, 'p', 1)",
    )
    engine = EngineProcess(url, tmp_path / "data", "--long-poll-timeout", "1",
                           "--family-check-interval", "0.3")  # fmt: skip
    engine.log = tmp_path / "engine.log"
    follower = Follower(url, None, table="p", increments=False)
    stop = asyncio.Event()
    try:
        await asyncio.to_thread(engine.start)
        follower.base = engine.url
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(follower.run(session, stop))
            await wait_until_async(lambda: follower.live, message="live")
            _sql(db_url, "CREATE TABLE c () INHERITS (p)", "INSERT INTO c VALUES (2, 'c', 1)")
            said = "could not set REPLICA IDENTITY FULL on public.c"
            await wait_until_async(lambda: said in engine.log_tail(100_000), message="said")
            _sql(db_url, "UPDATE c SET v = 2")  # (the application's writes go on)
            engine.kill()
            await asyncio.to_thread(engine.start)
            _sql(db_url, "INSERT INTO p VALUES (3, 'p', 1)")
            await wait_until_async(lambda: '"public"."p"/"3"' in follower.rows, message="p's")
            stop.set()
            await task
        assert engine.log_tail(1_000_000).count(said) == 2  # (once per run)
    finally:
        stop.set()
        engine.stop()
        _sql(db_url, "DROP TABLE c, p", f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_a_busy_identity_is_retried_at_the_family_check_interval_from_the_start(
    tmp_path: Path,
) -> None:
    """The first family check (at start, before the periodic ones set the interval) timed
    the next REPLICA IDENTITY retry with the default interval: 10 s instead of 1.5 here."""
    config = SourceConfig("default", "postgresql://x/y", tmp_path, family_check_interval=0.3)
    assert Source(config).tables.family_check_interval == 0.3

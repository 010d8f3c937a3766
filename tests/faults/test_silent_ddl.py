"""DDL that changes what `SELECT` returns without writing a row change to the WAL: every
client (and every new one, served the same shape at offset -1, even after a restart) ends
equal to `SELECT` again.

- A new primary key (`DROP CONSTRAINT items_pkey; ADD PRIMARY KEY (id, org_id)`): the
  Relation message names only columns and types, so the shape kept its old keys and a row
  new under the new key (`(1, 2)` next to `(1, 1)`) overwrote another in every client.
- A column dropped and added again under the same name and type: every row now reads its
  default, the shape kept the old values.
- A table rewrite with the same columns (`ALTER COLUMN title TYPE text USING upper(title)`):
  every row reads otherwise, the table's relfilenode is new.
- The table taken out of the engine's publication by someone else: its changes stopped
  reaching the stream, clients stayed "up to date" without them for ever.

The engine's periodic check (`--schema-check-interval`) now sees these and retires the
table's shapes: their clients get a 409 and refetch. Real path: the engine as a process,
a follower that acts as the client does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.followed import Rows, followed_engine, rows_of, run_sql
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower
from tests.support.waiting import wait_until_async


def _select(db_url: str) -> Rows:
    return rows_of(db_url, b"SELECT id, org_id, title, extra FROM items")


def _view(rows: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted(
        tuple(str(r[c]) for c in ("id", "org_id", "title", "extra")) for r in rows.values()
    )


async def _status(session: aiohttp.ClientSession, url: str, handle: str, offset: str) -> int:
    q = {"table": "items", "handle": handle, "offset": offset}
    async with session.get(f"{url}/v1/shape", params=q) as r:
        await r.read()
        return r.status


@pytest.mark.timeout(120)
async def test_ddl_without_row_changes_ends_equal_to_select(db_url: str, tmp_path: Path) -> None:
    run_sql(
        db_url,
        "CREATE TABLE items (id int PRIMARY KEY, org_id int NOT NULL, title text, extra text)",
        "INSERT INTO items VALUES (1, 1, 'a', 's1'), (2, 1, 'b', 's2'), (3, 2, 'c', 's3')",
    )
    async with followed_engine(db_url, tmp_path, "0.3", _view, lambda: _select(db_url)) as f:
        await f.converged("first sync")
        old, old_offset = f.follower.handle, f.follower.offset
        assert old is not None
        # 1. a new primary key, then a row new under it only
        run_sql(
            db_url,
            "ALTER TABLE items DROP CONSTRAINT items_pkey",
            "ALTER TABLE items ADD PRIMARY KEY (id, org_id)",
            "INSERT INTO items VALUES (1, 2, 'dup', 's4')",
        )
        await f.converged("a new primary key")
        assert len(f.follower.rows) == 4, f.follower.rows
        assert f.follower.handle != old
        assert await _status(f.session, f.engine.url, old, old_offset) == 409
        await asyncio.sleep(0.7)  # (2+ checks: the new shape is not retired again)
        # a new client at -1 gets the new shape, whole
        fresh = Follower(f.engine.url, increments=False)
        fresh_task = asyncio.create_task(fresh.run(f.session, f.stop))
        await wait_until_async(lambda: fresh.live, timeout=60, message="fresh client")
        assert _view(fresh.rows) == _select(db_url)
        assert fresh.handle == f.follower.handle
        fresh_task.cancel()
        # 2. a column dropped and added again, same name and type: a new default
        old = f.follower.handle
        run_sql(db_url, "ALTER TABLE items DROP COLUMN extra, ADD COLUMN extra text DEFAULT 'x'")
        await f.converged("a column dropped and added again")
        assert {r["extra"] for r in f.follower.rows.values()} == {"x"}
        assert f.follower.handle != old
        assert f.follower.resets == 2, f.follower.statuses
        # 3. a table rewrite, same columns: every title upper-cased
        run_sql(db_url, "ALTER TABLE items ALTER COLUMN title TYPE text USING upper(title)")
        await f.converged("a table rewrite")
        assert {r["title"] for r in f.follower.rows.values()} == {"A", "B", "C", "DUP"}
        await asyncio.sleep(0.7)  # (2+ checks: nothing retired again)
        assert f.follower.resets == 3, f.follower.statuses
        # (the row new under the new key never reaches a client under the old key: the
        # Relation message before it has the shape checked first, test_pk_change_live.py)
        assert f.follower.counts()["invalid_json"] == f.follower.counts()["lost"] == 0
        assert f.follower.counts()["duplicated"] == 0


@pytest.mark.timeout(120)
async def test_a_table_taken_out_of_the_publication_is_noticed(db_url: str, tmp_path: Path) -> None:
    """`ALTER PUBLICATION <the engine's> DROP TABLE items` (a DBA, a migration tool): the
    rows written after it reach every client, through a refetch, and later ones live. Also
    for an inheritance child the engine published for its parent's shapes."""
    run_sql(
        db_url,
        "CREATE TABLE items (id int PRIMARY KEY, org_id int NOT NULL, title text, extra text)",
        "INSERT INTO items VALUES (1, 1, 'a', 's1'), (2, 1, 'b', 's2')",
        "CREATE TABLE items_c () INHERITS (items)",
        "INSERT INTO items_c VALUES (3, 2, 'c', 's3')",
    )
    async with followed_engine(db_url, tmp_path, "0.3", _view, lambda: _select(db_url)) as f:
        await f.converged("first sync")
        for n, (table, row) in enumerate([("items", 10), ("items_c", 20)]):
            old = f.follower.handle
            run_sql(
                db_url,
                f"ALTER PUBLICATION shapegate_pub_default DROP TABLE {table}",
                f"INSERT INTO {table} VALUES ({row}, 9, 'after', 'x')",
            )
            await f.converged(f"{table} taken out of the publication")
            assert f.follower.handle != old
            run_sql(db_url, f"INSERT INTO {table} VALUES ({row + 1}, 9, 'later', 'x')")
            await asyncio.sleep(0.7)  # (2+ checks: nothing retired again)
            await f.converged(f"{table}: a later change, live")
            assert len(f.follower.rows) == 5 + 2 * n
            assert f.follower.resets == n + 1, f.follower.statuses


async def _fresh(session: aiohttp.ClientSession, url: str, table: str) -> tuple[str, Any, Any]:
    """A new client's first request: (handle, electric-schema, rows)."""
    async with session.get(f"{url}/v1/shape", params={"table": table, "offset": "-1"}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        return r.headers["electric-handle"], json.loads(r.headers["electric-schema"]), body


@pytest.mark.timeout(60)
async def test_a_not_null_or_typmod_change_reaches_the_schema(db_url: str, tmp_path: Path) -> None:
    """`SET NOT NULL` and `varchar(20)` -> `varchar(50)` change no row (no rewrite either)
    but the `electric-schema` header, from which clients (pglite-sync) create their tables:
    the shape is retired, and its new handle's schema says so."""
    run_sql(
        db_url,
        "CREATE TABLE notes (id int PRIMARY KEY, title varchar(20))",
        "INSERT INTO notes VALUES (1, 'a')",
    )
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--schema-check-interval", "0.3"
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            old, schema, _ = await _fresh(session, engine.url, "notes")
            assert schema["title"] == {"type": "varchar", "max_length": 20}, schema
            run_sql(
                db_url,
                "ALTER TABLE notes ALTER COLUMN title SET NOT NULL",
                "ALTER TABLE notes ALTER COLUMN title TYPE varchar(50)",
            )

            async def rotated() -> bool:
                return (await _fresh(session, engine.url, "notes"))[0] != old

            await wait_until_async(rotated, timeout=10, message="shape retired")
            _, schema, _ = await _fresh(session, engine.url, "notes")
            assert schema["title"] == {"type": "varchar", "max_length": 50, "not_null": True}
    finally:
        await asyncio.to_thread(engine.stop)


def _values(body: Any, column: str) -> list[Any]:
    return sorted(str(m["value"][column]) for m in body if "key" in m)


async def _retired_to(
    session: aiohttp.ClientSession, url: str, table: str, old: str, column: str
) -> list[Any]:
    """Wait for `old` to be retired; the new shape's values of `column`."""

    async def rotated() -> bool:
        return (await _fresh(session, url, table))[0] != old

    await wait_until_async(rotated, timeout=10, message="shape retired")
    return _values((await _fresh(session, url, table))[2], column)


@pytest.mark.timeout(60)
async def test_a_partition_rewrite_or_an_enum_rename_is_noticed(
    db_url: str, tmp_path: Path
) -> None:
    """Two DDL that change every row's value and write no row change to the WAL, unseen
    by the table's own relfilenode: `ALTER COLUMN ... TYPE ... USING` on a partitioned root
    rewrites its partitions (the root's relfilenode stays 0); `ALTER TYPE ... RENAME VALUE`
    rewrites nothing. The shapes are retired: a new client reads what `SELECT` reads."""
    run_sql(
        db_url,
        "CREATE TABLE parts (id int PRIMARY KEY, title text) PARTITION BY RANGE (id)",
        "CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (10)",
        "CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (10) TO (20)",
        "INSERT INTO parts VALUES (1, 'a'), (11, 'b')",
        "CREATE TYPE mood AS ENUM ('sad', 'ok')",
        "CREATE DOMAIN dmood AS mood",
        "CREATE TABLE feel (id int PRIMARY KEY, m mood, ms mood[], d dmood)",
        "INSERT INTO feel VALUES (1, 'sad', '{sad,ok}', 'ok'), (2, 'ok', '{}', 'sad')",
    )
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--schema-check-interval", "0.3"
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            old, _, body = await _fresh(session, engine.url, "parts")
            assert _values(body, "title") == ["a", "b"]
            run_sql(db_url, "ALTER TABLE parts ALTER COLUMN title TYPE text USING upper(title)")
            assert await _retired_to(session, engine.url, "parts", old, "title") == ["A", "B"]
            old, _, body = await _fresh(session, engine.url, "feel")
            assert _values(body, "m") == ["ok", "sad"]
            run_sql(db_url, "ALTER TYPE mood ADD VALUE 'meh'")  # (changes no row)
            await asyncio.sleep(0.7)  # (2+ checks)
            assert (await _fresh(session, engine.url, "feel"))[0] == old
            run_sql(db_url, "ALTER TYPE mood RENAME VALUE 'sad' TO 'happy'")
            assert await _retired_to(session, engine.url, "feel", old, "m") == ["happy", "ok"]
            _, _, body = await _fresh(session, engine.url, "feel")
            assert _values(body, "ms") == ["{happy,ok}", "{}"]
            assert _values(body, "d") == ["happy", "ok"]
    finally:
        await asyncio.to_thread(engine.stop)


@pytest.mark.timeout(60)
async def test_a_composite_type_s_attributes_changed_are_noticed(
    db_url: str, tmp_path: Path
) -> None:
    """`ALTER TYPE cc ADD ATTRIBUTE` / `DROP ATTRIBUTE` changes the text of every row's value
    of that type (`(1,a)` reads `(1,a,)`), in a column, an array of it, a composite holding
    it, with no WAL row and no rewrite: the shapes served the old text for good (fidelity
    HIGH). They are retired: a new client reads what `SELECT` reads."""
    run_sql(
        db_url,
        "CREATE TYPE cc AS (x int, y text)",
        "CREATE TYPE outer_cc AS (inner_v cc, k int)",
        "CREATE TABLE ct (id int PRIMARY KEY, c cc, cs cc[], o outer_cc, n int)",
        "INSERT INTO ct VALUES (1, '(1,a)', '{\"(2,b)\"}', '(\"(3,c)\",4)', 0)",
        "CREATE TABLE plain (id int PRIMARY KEY, t text)",
        "INSERT INTO plain VALUES (1, 'p')",
        "CREATE TYPE e3 AS ENUM ('a', 'b')",
        "CREATE TYPE c3 AS (x e3)",
        "CREATE TABLE base4 (k int, t text)",
        "CREATE TABLE more (id int PRIMARY KEY, e c3, r base4)",
        "INSERT INTO more VALUES (1, '(a)', '(1,a)')",
        "CREATE TYPE e6 AS ENUM ('a', 'b', 'c')",
        "CREATE TYPE r6 AS RANGE (subtype = e6)",
        "CREATE TYPE c7 AS (x e6[])",
        "CREATE TABLE rng (id int PRIMARY KEY, m r6_multirange)",
        "INSERT INTO rng VALUES (1, '{[a,b)}')",
        "CREATE TABLE rc (id int PRIMARY KEY, r r6, c c7)",
        "INSERT INTO rc VALUES (1, '[a,c)', '(\"{a,b}\")')",
    )
    engine = EngineProcess(
        db_url, tmp_path / "data", "--long-poll-timeout", "1", "--schema-check-interval", "0.3"
    )
    engine.log = tmp_path / "engine.log"
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            old, _, body = await _fresh(session, engine.url, "ct")
            assert _values(body, "c") == ["(1,a)"]
            plain, _, _ = await _fresh(session, engine.url, "plain")
            run_sql(db_url, "ALTER TYPE cc ADD ATTRIBUTE z int")
            assert await _retired_to(session, engine.url, "ct", old, "c") == ["(1,a,)"]
            old, _, body = await _fresh(session, engine.url, "ct")
            assert _values(body, "cs") == ['{"(2,b,)"}']
            assert _values(body, "o") == ['("(3,c,)",4)']
            run_sql(db_url, "ALTER TYPE cc DROP ATTRIBUTE x")
            assert await _retired_to(session, engine.url, "ct", old, "c") == ["(a,)"]
            # (a table of no such type keeps its shape)
            assert (await _fresh(session, engine.url, "plain"))[0] == plain
            # an enum value renamed inside a composite; a column of another table's row
            # type, that table given a column
            old, _, body = await _fresh(session, engine.url, "more")
            assert _values(body, "e") == ["(a)"]
            run_sql(db_url, "ALTER TYPE e3 RENAME VALUE 'a' TO 'aa'")
            assert await _retired_to(session, engine.url, "more", old, "e") == ["(aa)"]
            old, _, _ = await _fresh(session, engine.url, "more")
            run_sql(db_url, "ALTER TABLE base4 ADD COLUMN z int")
            assert await _retired_to(session, engine.url, "more", old, "r") == ["(1,a,)"]
            # an enum value renamed under a range, a multirange, an array in a composite
            old, _, body = await _fresh(session, engine.url, "rng")
            assert _values(body, "m") == ["{[a,b)}"]
            old_rc, _, _ = await _fresh(session, engine.url, "rc")
            run_sql(db_url, "ALTER TYPE e6 RENAME VALUE 'a' TO 'aa'")
            assert await _retired_to(session, engine.url, "rng", old, "m") == ["{[aa,b)}"]
            assert await _retired_to(session, engine.url, "rc", old_rc, "r") == ["[aa,c)"]
            _, _, body = await _fresh(session, engine.url, "rc")
            assert _values(body, "c") == ['("{aa,b}")']
    finally:
        await asyncio.to_thread(engine.stop)

"""The still-there round of a `-1` (`pg/still_there.py`) sees catalog changes that write
no row to the WAL, rewrite nothing and keep every column's name, type and attnum, yet
change which rows a shape holds or how they read. Before, only the periodic schema check
(`schema_check_interval`, 10 s by default, 600 s here) saw them, and a `-1` right after
was answered the old log under the old handle:

- a column's collation changed (`ALTER COLUMN v TYPE text COLLATE "C"`): a where clause
  comparing text now admits other rows in Postgres;
- the table taken out of the engine's publication by an operator: its changes no longer
  stream, the old log said "up to date" for good;
- an enum value renamed: every row with it reads the new label;
- a composite type's attribute added or dropped: every row's text of it reads otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.sync_engine import test_still_there_checks
from tests.sync_engine.engine_harness import Engine, apply

#: The engine in process, with no periodic schema check meanwhile (600 s).
engine = test_still_there_checks.engine


async def first_answer(engine: Engine, **params: Any) -> tuple[int, str | None, dict[str, Any]]:
    """A new client's `-1`: status, handle, and the rows it was given (by key)."""
    status, headers, body = await engine.get(offset="-1", **params)
    rows: dict[str, dict[str, Any]] = {}
    if status == 200:
        apply(rows, body)
    return status, headers.get("electric-handle"), rows


async def test_a_first_request_after_a_collation_change_gets_postgres_rows(
    engine: Engine,
) -> None:
    """`ALTER COLUMN v TYPE text COLLATE ...` keeps the type, rewrites nothing (same
    relfilenode) and streams no row, yet `v < 'b'` judges every row by the new collation:
    the old log held rows the where no longer admits. The -1 right after gets no such row:
    a new shape with Postgres's rows (or a refusal of the where under that collation)."""
    (collate,) = engine.sql(
        "SELECT datcollate FROM pg_database WHERE datname = current_database()"
    )[0]
    other = '"und-x-icu"' if collate in ("C", "POSIX", "C.UTF-8", "C.utf8") else '"C"'
    engine.sql("CREATE TABLE co (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO co VALUES (1, 'a'), (2, 'Z'), (3, 'c'), (4, 'A')")
    where = "v < 'b'"
    before = {r[0] for r in engine.sql(f"SELECT id FROM co WHERE {where}")}
    rows, old, _ = await engine.sync(table="co", where=where)
    assert {int(r["id"]) for r in rows.values()} == before
    engine.sql(f"ALTER TABLE co ALTER COLUMN v TYPE text COLLATE {other}")
    now = {r[0] for r in engine.sql(f"SELECT id FROM co WHERE {where}")}
    assert now != before  # (the collations judge these rows otherwise)

    status, handle, got = await first_answer(engine, table="co", where=where)
    assert handle != old, f"the -1 after the collation change was served the old log ({status})"
    if status == 200:
        assert {int(r["id"]) for r in got.values()} <= now


async def test_a_first_request_after_the_table_left_the_publication_gets_a_new_shape(
    engine: Engine,
) -> None:
    """`ALTER PUBLICATION <engine's> DROP TABLE t` by an operator: t's changes no longer
    stream, and a -1 was answered the old log, "up to date" while rows changed. The -1
    right after gets a new shape, the table published again: a row inserted then arrives."""
    publication = engine.source.tables.publication
    engine.sql("CREATE TABLE pt (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO pt VALUES (1, 'a')")
    rows, old, _ = await engine.sync(table="pt")
    assert set(rows) == {'"public"."pt"/"1"'}
    engine.sql(f'ALTER PUBLICATION "{publication}" DROP TABLE pt')

    status, handle, _ = await first_answer(engine, table="pt")
    assert status == 200
    assert handle != old, "the -1 after the table left the publication got the old log"
    engine.sql("INSERT INTO pt VALUES (2, 'b')")
    for _ in range(50):
        rows, handle2, _ = await engine.sync(table="pt")
        if len(rows) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == 2, rows
    assert (
        engine.sql(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s AND tablename = 'pt'",
            (publication,),
        )[0][0]
        == 1
    )


@pytest.mark.parametrize("column", ["m", "ms"])
async def test_a_first_request_after_an_enum_value_renamed_reads_the_new_label(
    engine: Engine, column: str
) -> None:
    """`ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'`: every row with 'sad' (in an enum or
    an enum[] column) reads 'blue', with no WAL row; the -1 right after reads 'blue'."""
    engine.sql("CREATE TYPE mood AS ENUM ('sad', 'ok')")
    engine.sql("CREATE TABLE en (id int PRIMARY KEY, m mood, ms mood[])")
    engine.sql("INSERT INTO en VALUES (1, 'sad', '{sad,ok}')")
    rows, old, _ = await engine.sync(table="en", columns=f"id,{column}")
    assert "sad" in str(rows)
    engine.sql("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'")

    status, handle, got = await first_answer(engine, table="en", columns=f"id,{column}")
    assert status == 200
    assert handle != old and "blue" in str(got) and "sad" not in str(got), got


@pytest.mark.parametrize(
    ("alter", "reads"),
    [
        ("ALTER TYPE pair ADD ATTRIBUTE z int", "(1,2,)"),
        ("ALTER TYPE pair DROP ATTRIBUTE y", "(1)"),
    ],
    ids=["add", "drop"],
)
async def test_a_first_request_after_a_composite_changed_reads_its_new_text(
    engine: Engine, alter: str, reads: str
) -> None:
    """A composite type's attribute added or dropped: every row's text of it reads
    otherwise, no WAL row, no rewrite; the -1 right after reads the new text."""
    engine.sql("CREATE TYPE pair AS (x int, y int)")
    engine.sql("CREATE TABLE cp (id int PRIMARY KEY, p pair)")
    engine.sql("INSERT INTO cp VALUES (1, ROW(1, 2))")
    rows, old, _ = await engine.sync(table="cp")
    assert [r["p"] for r in rows.values()] == ["(1,2)"]
    engine.sql(alter)
    assert engine.sql("SELECT p::text FROM cp")[0][0] == reads

    status, handle, got = await first_answer(engine, table="cp")
    assert status == 200
    assert handle != old and [r["p"] for r in got.values()] == [reads], got

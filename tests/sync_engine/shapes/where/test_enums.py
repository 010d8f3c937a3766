"""Enum columns in a where clause: equality, IN, ANY/ALL, arrays and ordering, as Postgres.

Postgres orders an enum's values by their declared order (`pg_enum.enumsortorder`), not by
their text: `'sad' < 'ok'` for `ENUM ('sad', 'ok', 'happy')`, and a value added with
`ALTER TYPE ... ADD VALUE 'meh' BEFORE 'ok'` sorts between them. The engine reads each
enum's labels from the catalog (`ColumnInfo.enum_labels`) and compares as Postgres does; a
literal naming no label is Postgres's 400 (`invalid input value for enum`). A value added
after a shape's clause was compiled cannot be placed by the engine: the replicator asks
Postgres about such a row (`pg/row_where.py`), and the live client still ends with exactly
the snapshot's rows. Enums used to be a 400 but for `e::text = 'label'` and `IS NULL`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import column_map

ROWS = [
    ("sad", "{sad,ok}", "a"),
    ("ok", None, "b"),
    ("happy", "{}", "c"),
    ("meh", "{meh,NULL}", "d"),
    (None, "{happy,sad}", "e"),
    ("ok", "{ok,ok}", "f"),
]

CLAUSES = [
    # (an array of an enum's text was its tuple of labels, equal to no text)
    "ARRAY[e, NULL]::text = '{sad,NULL}'",
    "concat(ARRAY[e, o]) LIKE '{meh,%'",
    "ARRAY[e]::varchar(4) = '{ok}'",
    "e = 'sad'",
    "e <> 'ok'",
    "e < 'ok'",
    "e <= 'meh'",
    "e > 'meh'",
    "e >= 'happy'",
    "'ok' > e",
    "e IN ('sad', 'meh')",
    "e NOT IN ('sad', NULL)",
    "e NOT IN ('sad', 'happy')",
    "e BETWEEN 'sad' AND 'ok'",
    "e NOT BETWEEN 'meh' AND 'happy'",
    "e BETWEEN SYMMETRIC 'happy' AND 'meh'",
    "greatest(e, 'ok') = 'ok'",
    "least(e, 'meh', o) = e",
    "e IS DISTINCT FROM 'ok'",
    "e IS NOT DISTINCT FROM o",
    "NULLIF(e, 'ok') IS NULL",
    "COALESCE(e, 'happy') > 'ok'",
    "e = ANY('{sad,ok}')",
    "e < ALL('{ok,happy}')",
    "e >= ANY(ea)",
    "e = ANY(ea)",
    "e <> ALL(ea)",
    "ea @> '{sad}'",
    "ea <@ '{sad,meh,ok}'",
    "ea && ARRAY['meh'::mood]",
    "ea = '{ok,ok}'",
    "ea[1] < 'ok'",
    "(ea || e) @> ARRAY['ok'::mood]",
    "e < o",
    "e = o",
    "'happy'::mood > e",
    "CAST(e AS mood) = 'ok'",
    "e::text < 'ok'",  # (as text: 'happy' < 'ok')
    "e || '!' = 'ok!'",
]


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        # labels added later, one before an existing one: declared order is not OID order
        conn.execute("ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'")
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, e mood, ea mood[], o mood)")
        others = ["ok", "meh", None, "happy", "sad", "ok"]
        for i, ((e, ea, _), o) in enumerate(zip(ROWS, others, strict=True)):
            conn.execute("INSERT INTO d VALUES (%s, %s, %s, %s)", (i, e, ea, o))
        yield conn, column_map(url)


def test_enum_clauses_live_equal_postgres(table: tuple[psycopg.Connection[Any], Any]) -> None:
    conn, columns = table
    rows = {
        r[0]: {"id": str(r[0]), "e": r[1], "ea": r[2], "o": r[3]}
        for r in conn.execute("SELECT id, e::text, ea::text, o::text FROM d")
    }
    for clause in CLAUSES:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, got, expected)
    # (the point of declared order: as text, 'meh' > 'happy'; as mood, 'meh' < 'happy')
    assert conn.execute("SELECT 'meh'::mood < 'happy', 'meh' < 'happy'::text").fetchone() == (
        True,
        False,
    )


def test_an_unknown_label_is_postgres_400(table: tuple[psycopg.Connection[Any], Any]) -> None:
    conn, columns = table
    for clause, label in [("e = 'glad'", "glad"), ("e < 'Sad'", "Sad"),
                          ("e IN ('ok', 'x')", "x"), ("ea @> '{ok,nope}'", "nope")]:  # fmt: skip
        message = f'invalid input value for enum mood: "{label}"'
        with pytest.raises(WhereError, match=message):
            parse_where(clause, {}, columns)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match=message):
            conn.execute(f"SELECT 1 FROM d WHERE {clause}")


def test_a_label_added_after_compiling_is_not_guessed(
    table: tuple[psycopg.Connection[Any], Any],
) -> None:
    """A value the clause was compiled without: equality still knows (labels differ), its
    place in the order only Postgres knows, so ordering raises UnrepresentableValue."""
    _conn, columns = table
    lt = parse_where("e < 'ok'", {}, columns)
    eq = parse_where("e IN ('ok', 'sad')", {}, columns)
    new = {"id": "9", "e": "newer", "ea": None, "o": None}
    assert eq.matches(new) is False
    with pytest.raises(UnrepresentableValue):
        lt.matches(new)


async def test_live_enum_ordering_equals_the_snapshot_with_labels_added_later(
    engine: Engine,
) -> None:
    """Through the engine: a shape `m < 'ok'` gets exactly Postgres's rows live, also rows
    holding a label added (BEFORE 'ok', and after 'happy') once the shape was made."""
    engine.sql("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, m mood)")
    engine.sql("INSERT INTO docs VALUES (1, 'sad'), (2, 'ok'), (3, 'happy')")
    where = "m < 'ok' OR id = 100"
    rows, handle, offset = await engine.sync(table="docs", where=where)
    assert {r["id"] for r in rows.values()} == {"1"}
    engine.sql("ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'")
    engine.sql("ALTER TYPE mood ADD VALUE 'elated'")
    engine.sql("INSERT INTO docs VALUES (4, 'meh'), (5, 'elated'), (6, 'sad'), (7, 'ok')")
    engine.sql("INSERT INTO docs VALUES (100, 'happy')")
    await engine.follow_live(rows, handle, offset, "100", table="docs", where=where)
    expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM docs WHERE {where}")}
    assert expected == {"1", "4", "6", "100"}
    assert {r["id"] for r in rows.values()} == expected
    # a new shape knows the new labels (and refuses one that does not exist)
    status, _h, body = await engine.get(table="docs", offset="-1", where="m = 'glum'")
    assert status == 400, body
    assert body["errors"]["where"] == ['At location 2: invalid input value for enum mood: "glum"']
    # An enum type the clause names (a cast, a `$1` compared with the column) is named with
    # its schema in the query Postgres runs: the engine's sessions have search_path
    # pg_catalog, where `mood` alone is no type. The snapshot failed ("type mood does not
    # exist"), the shape was retired at once: a 409 to every request, for good.
    rows, _handle, _o = await engine.sync(table="docs", where="m = $1", **{"params[1]": "sad"})
    assert {r["id"] for r in rows.values()} == {"1", "6"}
    engine.sql("CREATE SCHEMA s; CREATE TYPE s.level AS ENUM ('low', 'high')")
    engine.sql("CREATE TABLE jobs (id int PRIMARY KEY, lv s.level, lvs s.level[])")
    engine.sql("INSERT INTO jobs VALUES (1, 'low', '{low}'), (2, 'high', '{high,low}')")
    for where, params, want in [
        ("lv = $1", {"params[1]": "high"}, {"2"}),
        ("lv IN ($1, 'high')", {"params[1]": "low"}, {"1", "2"}),
        ("lv = CAST('low' AS level)", {}, {"1"}),
        ("lv < 'high'::s.level", {}, {"1"}),
        ("lvs @> $1", {"params[1]": "{high}"}, {"2"}),
    ]:
        rows, _handle, _o = await engine.sync(table="jobs", where=where, **params)
        assert {r["id"] for r in rows.values()} == want, where

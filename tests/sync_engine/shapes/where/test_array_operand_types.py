"""Array operands: the types Postgres resolves, or its refusal in its words.

`=`, `<>`, `@>`, `<@`, `&&`, IS DISTINCT FROM and NULLIF on two arrays are `anyarray op
anyarray`: both must be one array type, with no conversion. The engine compared `a2a =
a8a`, `vca @> ARRAY['a']`, `r8a && ARRAY[n]` as their common type, and Postgres refused
the snapshot query ("operator does not exist"): a vague 400 from the snapshot, or none on
an empty table. `||`, array_append and array_prepend are `anycompatible`: the element type
is the common type of the array's elements and the scalar, in argument order, so `cc ||
txa` is character[] (whose `=` ignores trailing spaces) and `a8 || a2a` is bigint[]; the
engine had always taken the array's type (`a8 || a2a`, `r8 || na` were refused, `cc ||
txa` compared as text[]). Found by the Electric-list sweep (test_known_functions.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.support.databases import create_database, drop_database
from tests.sync_engine.shapes.where.columns import VERDICT_FUNCTION, column_map

TABLE = """
CREATE TABLE d (id int PRIMARY KEY, a2 int2, a8 int8, r8 float8, n numeric, cc char(3),
                tx text, a2a int2[], a8a int8[], r8a float8[], na numeric[], txa text[],
                vca varchar[]);
INSERT INTO d VALUES
  (1, 1, 1, 1.5, 1.5, 'a', 'a', '{1}', '{1}', '{1.5}', '{1.5}', '{a}', '{a}'),
  (2, 2, 9223372036854775807, 0.1, 0.1, 'a  ', 'a ', '{1,2}', '{2,1}', '{}', '{0.1}',
   '{"a ",b}', '{"a "}'),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""

REFUSED = [
    ("a2a = a8a", "smallint[] = bigint[]"), ("a2a <> a8a", "smallint[] <> bigint[]"),
    ("vca = ARRAY['a']", "character varying[] = text[]"),
    ("vca @> txa", "character varying[] @> text[]"), ("r8a && ARRAY[n]", "double precision[] && numeric[]"),
    ("ARRAY[1] <@ a2a", "integer[] <@ smallint[]"), ("a2a IN (a8a)", "smallint[] = bigint[]"),
    ("a2a IS DISTINCT FROM a8a", "smallint[] = bigint[]"),
    ("NULLIF(a2a, a8a) IS NULL", "smallint[] = bigint[]"),
    ("(cc || txa) = txa", "character[] = text[]"),
    ("array_prepend(cc, txa) && txa", "character[] && text[]"),
    # an IN list of array constants is no `= ANY` (there is no array of arrays): each item
    # is its own `=` (the engine compared them as the list's common type, int8[], text[]:
    # a 200 whose snapshot then failed; found by /work/where-fuzz/fuzz.py)
    ("a2a IN ('{1}'::int2[], '{}'::int8[])", "smallint[] = bigint[]"),
    ("ARRAY[cc] IN ('{a}'::text[], '{b}'::text[])", "character[] = text[]"),
    # NOT IN is `x <> item` AND ... to Postgres: its refusal names `<>` (the engine's said
    # `=`; found by /work/where-fuzz/fuzz.py)
    ("a2a NOT IN (a8a, NULL)", "smallint[] <> bigint[]"),
    ("a2a NOT IN ('{1}'::int2[], '{}'::int8[])", "smallint[] <> bigint[]"),
    ("ARRAY[cc] NOT IN (txa)", "character[] <> text[]"),
    ("tx NOT IN (a2, 1)", "text <> smallint"),
]  # fmt: skip

AGREE = [
    "(a8 || a2a) = a8a", "(r8 || na) = r8a", "(n || r8a) = r8a", "(a2a || a8) = '{1,1}'",
    "(cc || txa) = '{a}'", "(cc || txa) = '{a,a}'", "array_prepend(cc, txa) = '{a,a}'",
    "array_prepend(cc, txa) @> '{\"a \"}'", "(txa || cc) = '{a,a}'",
    "array_append(txa, cc) = '{a,a}'", "array_append(a2a, a8) = '{1,1}'",
    "array_append(a8a, 1.5) = '{1,1.5}'", "array_prepend(1.5, a8a) = '{1.5,1}'",
    "array_append(vca, tx) = '{a,a}'", "(a2a || a8a) = '{1,1}'", "COALESCE(a2a, a8a) = a8a",
    "NULLIF(a2a, '{1}') IS NULL", "a2a = '{1}'", "(txa || vca) = '{a,a}'",
    "a2a IN ('{1}', '{1,2}')", "a2a NOT IN ('{1}', '{2}', NULL)", "txa IN ('{a}', ARRAY['b'])",
    "a8a IN ('{2,1}'::int8[], '{}'::int8[])",
]  # fmt: skip


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, Any]]]:
    """One table for the module's cases, which only read it (a database each cost ~10 s of
    a loaded CI)."""
    dbname, db_url = create_database(pg_server_url)
    try:
        yield from _table(db_url)
    finally:
        drop_database(pg_server_url, dbname)


def _table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, Any]]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute(VERDICT_FUNCTION)
        cur = conn.execute("SELECT * FROM d LIMIT 0")
        names = [col.name for col in cur.description or ()]
        # (each value's output text, as the replication stream carries it: concat keeps
        # char(n)'s padding, which ::text drops)
        select = ", ".join(
            f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in names
        )
        rows = {
            int(r[0]): dict(zip(names, r, strict=True))
            for r in conn.execute(f"SELECT {select} FROM d").fetchall()
        }
        yield conn, column_map(url), rows


@pytest.mark.parametrize(("clause", "operator"), REFUSED)
def test_operators_postgres_lacks_are_refused_in_its_words(
    table: tuple[psycopg.Connection[Any], Any, dict[int, Any]], clause: str, operator: str
) -> None:
    conn, columns, _rows = table
    with pytest.raises(psycopg.errors.UndefinedFunction) as pg_info:
        conn.execute(f"SELECT id FROM d WHERE {clause}")
    assert f"operator does not exist: {operator}" in str(pg_info.value)
    with pytest.raises(WhereError) as info:
        parse_where(clause, {}, columns)
    assert f"operator does not exist: {operator}" in str(info.value)


def test_compatible_element_types_give_postgres_verdict(
    table: tuple[psycopg.Connection[Any], Any, dict[int, Any]],
) -> None:
    conn, columns, rows = table
    wrong = []
    for clause in AGREE:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, row in rows.items():
            pg = (verdicts[rid],)  # (all rows' verdicts in one round trip)
            if where.matches(row) != (pg[0] == "true"):
                wrong.append((clause, rid, pg[0]))
    assert not wrong, wrong

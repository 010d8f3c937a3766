"""`jsonb -> key` and `jsonb ->> key` (text keys, integer indexes) on a jsonb column.

`data ->> 'status' = 'open'` was a 400 "JSON operator ->> is not supported". The engine now
reads the field from the column's text (jsonb_out's) and writes a nested value back as
jsonb_out does (keys shorter first, `": "` and `", "`, escape_json's escapes, numbers as
numeric text); `->>` of a JSON null is SQL NULL; a missing key, an index past either end
(negative: from the end), the wrong container is NULL, and a scalar document is an array
of one for an index. Every chain below is compared with Postgres on every row, by its text,
and a list of clauses by their rows. Found worth doing (not a bug): a neutral refusal of a
construct clients write; differential runs: /work/wherefuzz/jsonfz.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import engine_verdict, table_in_own_database, text_rows

DOCS = [
    '{"a": 1, "b": "x", "status": "open", "n": {"bb": [1, 2.50, null], "c": "é\\n\\u0001"}}',
    '{"a": null, "status": "closed", "tags": ["x", "y"], "": {"1": true}}',
    '[1, "two", {"a": "deep"}, [3, 4], null, -0.0, 1e2]',
    '"just a string"',
    "5",
    "null",
    "true",
    "{}",
    "[]",
    None,
    '{"a": {"z": 1, "yy": 2, "x": {"q": [{}]}}, "status": "open", "k\\"q": "\\\\"}',
    '{"a": 12345678901234567890.5, "b": 1E-3, "status": "OPEN", "😀": "😀"}',
]

CHAINS = [
    "data -> 'a'", "data ->> 'a'", "data ->> 'status'", "data -> 'n' -> 'bb'",
    "data -> 'n' -> 'bb' ->> 1", "data -> 'n' ->> 'c'", "data ->> 0", "data -> -1", "data ->> -4",
    "data -> 2 ->> 'a'", "data -> 3 -> 0", "data ->> 5", "data -> 5", "data -> ''", "data -> '' ->> '1'",
    "data -> 'tags' ->> -1", "data ->> 'tags'", "data -> 'a' -> 'x'", "data ->> 'a'", "data -> 'a' ->> 'x'",
    "data ->> 'k\"q'", "data ->> '😀'", "data ->> 'b'", "data -> 0", "data ->> 1", "data -> 6",
    "data -> $1", "data ->> key", "data -> idx", "data -> idx::int2", "data -> key::varchar ->> 'z'",
]  # fmt: skip

CLAUSES = [
    "data ->> 'status' = 'open'", "data ->> 'status' ILIKE 'open'", "data -> 'a' IS NULL",
    "data ->> 'a' IS NULL", "(data ->> 'a') > '1'", "data -> 'tags' ->> 0 = 'x'",
    "data ->> 0 IN ('1', '5', 'just a string')", "(data -> 'n' -> 'bb' ->> 1)::numeric = 2.5",
    "data ->> key = '1'", "(data -> 'a')::text LIKE '{%'", "length(data ->> 'b') = 1",
    "coalesce(data ->> 'status', 'none') = 'none'", "(CASE WHEN data ? 'a' THEN 1 END) IS NULL",
]  # fmt: skip

REFUSED = [
    ("data -> 1::int8 IS NULL", "operator does not exist: jsonb -> bigint"),
    ("data -> 1.5 IS NULL", "operator does not exist: jsonb -> numeric"),
    ("js ->> 'a' = 'x'", "JSON operator ->> is supported on a jsonb column"),
    ("'{\"a\": 1}'::jsonb ->> 'a' = '1'", "unsupported type jsonb"),
    ("data #>> '{a}' = '1'", "JSON operator #>> is not supported"),
]


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any]]:
    ddl = "CREATE TABLE j (id int PRIMARY KEY, data jsonb, js json, key text, idx int)"
    with table_in_own_database(pg_server_url, ddl, "j") as (conn, columns):
        keys = ["a", "status", "", "n", None]
        for i, doc in enumerate(DOCS):
            conn.execute(
                "INSERT INTO j VALUES (%s, %s, %s, %s, %s)",
                (i, doc, doc, keys[i % len(keys)], [0, -1, 2, None, 7][i % 5]),
            )
        yield conn, columns


def test_fields_are_postgres_s_text(table: Any) -> None:
    conn, columns = table
    rows = text_rows(conn, "j", ["id", "data", "js", "key", "idx"])
    nulls = values = 0
    for chain in CHAINS:
        check_where_constructs(f"({chain}) IS NULL")  # (the proxy's schema-free check)
        for row in rows:
            literal = chain.replace("$1", "'a'")
            q = f"SELECT ({literal})::text FROM j WHERE id = %s"
            pg = conn.execute(q, (int(row["id"]),)).fetchone()[0]
            params = {"1": "a"} if "$1" in chain else {}
            if pg is None:
                where = parse_where(f"({chain}) IS NULL", params, columns)
                nulls += 1
            else:
                n = str(len(params) + 1)
                where = parse_where(f"({chain})::text = ${n}", {**params, n: pg}, columns)
                values += 1
            assert engine_verdict(where, row) == "true", (chain, row["data"], pg)
    assert values > 50 and nulls > 100, (values, nulls)  # (not trivial answers)


def test_clauses_select_postgres_s_rows(table: Any) -> None:
    conn, columns = table
    rows = text_rows(conn, "j", ["id", "data", "js", "key", "idx"])
    for clause in CLAUSES:
        try:
            where = parse_where(clause, {}, columns)
        except WhereError:
            assert "?" in clause  # (jsonb ? key stays refused)
            continue
        expected = {r[0] for r in conn.execute(f"SELECT id FROM j WHERE {where.sql}")}
        got = {int(r["id"]) for r in rows if engine_verdict(where, r) == "true"}
        assert got == expected, (clause, sorted(got ^ expected))
        assert expected or "IS NULL" in clause, clause


def test_refusals(table: Any) -> None:
    _conn, columns = table
    for clause, message in REFUSED:
        with pytest.raises(WhereError, match=re.escape(message)):
            parse_where(clause, {}, columns)


async def test_live_rows_move_by_a_json_field(engine: Engine) -> None:
    where = "data ->> 'status' = 'open' AND (data -> 'n' ->> 0)::int > 1"
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, data jsonb)")
    engine.sql("""INSERT INTO docs VALUES (1, '{"status": "open", "n": [2]}'),
                  (2, '{"status": "closed", "n": [5]}'), (3, '{"n": [9]}')""")
    rows, handle, offset = await engine.sync(table="docs", where=where)
    assert {r["id"] for r in rows.values()} == {"1"}
    engine.sql("""UPDATE docs SET data = '{"status": "open", "n": [5, 1]}' WHERE id = 2""")
    engine.sql("""UPDATE docs SET data = '{"status": "open", "n": [1]}' WHERE id = 1""")
    engine.sql("""UPDATE docs SET data = data || '{"status": "open"}' WHERE id = 3""")
    engine.sql("""INSERT INTO docs VALUES (100, '{"status": "open", "n": [100]}')""")
    await engine.follow_live(rows, handle, offset, "100", table="docs", where=where)
    expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM docs WHERE {where}")}
    assert {r["id"] for r in rows.values()} == expected == {"2", "3", "100"}
    (doc,) = [r["data"] for r in rows.values() if r["id"] == "2"]
    assert doc == '{"n": [5, 1], "status": "open"}'


def test_a_document_nested_past_python_s_reach_is_asked_of_postgres(table: Any) -> None:
    _conn, columns = table
    where = parse_where("data -> 0 ->> 0 IS NULL", {}, columns)
    deep = "[" * 3000 + "]" * 3000  # (Postgres reads it: `->> 0` is its text)
    with pytest.raises(UnrepresentableValue):  # (the replicator asks Postgres, row_where.py)
        where.matches({"id": "1", "data": deep, "js": None, "key": None, "idx": None})

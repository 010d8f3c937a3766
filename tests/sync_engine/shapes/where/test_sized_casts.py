"""Casts to varchar(n) and char(n), and how casts and timezone() the engine does not
evaluate are refused.

`vc::char(2) = 'ab'` was a 400 "type modifiers are not supported (bpchar)", `x::char` (which
is char(1)) too, though the client wrote no modifier. An explicit cast to varchar(n) or
char(n) cuts the value's text (its cast to text: `true` for a boolean, a char(n) value
without its padding) to n characters without an error, and char(n) compares without its
trailing spaces. Each clause is compared with Postgres on every row, as in the other
differential tests. What stays refused is refused naming the type as Postgres prints it
(`character(2)[]`, `numeric(5,2)`) and, for timezone(), naming what the client wrote
(timezone() or AT TIME ZONE) and saying "does not exist" only where Postgres has no such
function.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from tests.sync_engine.shapes.where.columns import column_map

TABLE = """
CREATE TABLE d (id int PRIMARY KEY, vc varchar(10), tx text, ch char(4), b bool, i int,
                dt date, n numeric, ts timestamp, tm time, ttz timetz);
INSERT INTO d VALUES
  (1, 'abc', 'ab', 'ab', true, 123, '2024-01-01', 1.5, '2024-03-31 02:30', '12:00', '12:00+02'),
  (2, 'a', 'a  ', 'a', false, -5, NULL, NULL, NULL, NULL, NULL),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, 'é😀x', '  ', '', true, 0, '2024-02-29', 0, '2024-10-27 02:30', '00:00', '00:00+00'),
  (5, 'ab c', 'abc ', 'abc', NULL, 10, NULL, 2, NULL, NULL, NULL),
  (6, 'a b ', ' a', ' a  ', false, 12345, '1999-12-31', -1.25, NULL, NULL, NULL)
"""

AGREE = [
    "vc::char(2) = 'ab'", "vc::varchar(2) = 'ab'", "vc::char = 'a'", "tx::char(1) = 'a'",
    "vc::char(3) = tx", "vc::varchar(3) = tx", "ch::varchar(1) = 'a'", "ch::char(2) = 'ab'",
    "(ch::char(10) || '|') = 'ab|'", "(vc::char(10) || '|') LIKE '%|'", "b::char(2) = 'tr'",
    "b::varchar(3) = 'tru'", "i::char(2) = '12'", "dt::varchar(4) = '2024'",
    "n::char(1) = '1'", "n::varchar(3) = '-1.'", "vc::varchar(2) IN ('ab', 'a', 'é😀')",
    "vc::char(2) IN ('ab', 'a')", "vc::char(2) > 'a'", "length(vc::char(5)) = 3",
    "upper(vc::char(2)) = 'AB'", "NULL::char(2) IS NULL", "COALESCE(vc::char(2), tx) = 'ab'",
    "vc::varchar(2)::char(1) = 'a'", "vc::char(4) = ch", "tx::char(4) = ch",
    "'abc'::char(2) = ch", "vc::character varying(1) = 'a'", "CAST(vc AS character(3)) = tx",
    "vc::varchar(3) = tx::varchar(3)", "octet_length(vc::varchar(2)) = 6",
    "vc::varchar(2) || tx::char(2) = 'aba'",
    # bpchar without a length (and N'..', a bpchar literal) cuts nothing; it was a 400
    # "unsupported type bpchar"
    "vc::bpchar = 'abc'", "vc::bpchar = ch", "(vc::bpchar || '|') = 'a|'", "tx = N'ab'",
    "ch = N'ab  '", "length(tx::bpchar) = 1", "char 'ab' = tx",
    # an array's text cut: Postgres casts any type to a string type explicitly (I/O); the
    # engine said "cannot cast type integer[] to character" (live fuzz seed 75037)
    "ARRAY[i, NULL]::char(3) = '{12'", "'{{1,2},{3,4}}'::int4[]::char(3) = '{{1'",
    "ARRAY[vc]::varchar(6) = '{abc}'", "ARRAY[dt, dt]::char(12) = '{2024-01-01'",
    "ARRAY[tx]::varchar(4) = '{\"a '", "ARRAY[ch::text]::varchar(4) = '{ab}'",
]  # fmt: skip

REFUSED = [
    ("vc::time(0) IS NULL", "casting to time(0) without time zone is not supported"),
    ("vc::timestamp(0) IS NULL", "casting to timestamp(0) without time zone is not supported"),
    ("vc::interval hour to minute IS NULL", "casting to interval with fields or a precision"),
    ("vc::char(2)[] IS NULL", "casting to character(2)[] is not supported"),
    # (Postgres keeps each element's padding in an array's text; the engine wrote `{ab}`)
    ("ARRAY[ch]::text = '{\"ab  \"}'", "the text of an array of char(n) values is not"),
    ("concat(ARRAY['a'::char(2)]) = '{a}'", "the text of an array of char(n) values is not"),
    ("vc::char(0) = ''", "length for type char must be at least 1"),
    ("vc::varchar(10485761) = ''", "length for type varchar cannot exceed 10485760"),
    ("timezone('Europe/Paris', tm) IS NULL", "timezone() on time without time zone is not"),
    ("tm AT TIME ZONE 'Europe/Paris' IS NULL", "AT TIME ZONE on time without time zone is not"),
    ("ttz AT TIME ZONE 'UTC' IS NULL", "AT TIME ZONE on time with time zone is not supported"),
    ("timezone('UTC', i) IS NULL", "function timezone(unknown, integer) does not exist"),
    ("i AT TIME ZONE 'UTC' IS NULL", "function timezone(unknown, integer) does not exist"),
    ("timezone(1, ts) IS NULL", "function timezone(integer, timestamp without time zone) does"),
    ("timezone(interval '1 hour', ts) IS NULL", "timezone() with an interval offset is not"),
    ("ts AT TIME ZONE tx IS NULL", "AT TIME ZONE needs a constant zone name"),
]  # fmt: skip


@pytest.fixture
def table(db_url: str) -> Any:
    url = with_display_settings(db_url)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(TABLE)
    names = ["id", "vc", "tx", "ch", "b", "i", "dt", "n", "ts", "tm", "ttz"]
    select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in names)
    rows = {
        int(r[0]): dict(zip(names, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM d")
    }
    yield conn, column_map(url), rows
    conn.close()


def test_casts_to_varchar_n_and_char_n_equal_postgres(table: Any) -> None:
    conn, columns, rows = table
    for clause in AGREE:
        where = parse_where(clause, {}, columns)
        check_where_constructs(clause)  # (the proxy's schema-free check takes it too)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, where.sql, sorted(got ^ expected))
    # the cut is by characters (é😀x is 3), with a parameter as with a literal
    where = parse_where("vc::varchar(2) = $1", {"1": "é😀"}, columns)
    assert {i for i, row in rows.items() if where.matches(row)} == {4}


def test_what_is_refused_is_named_as_postgres_names_it(table: Any) -> None:
    conn, columns, _rows = table
    for clause, message in REFUSED:
        with pytest.raises(WhereError, match=re.escape(message)):
            parse_where(clause, {}, columns)
        try:
            conn.execute(f"SELECT 1 FROM d WHERE {clause}").fetchall()
        except psycopg.Error as e:
            pg = e.diag.message_primary or ""
            if "does not exist" in message or "length for type" in message:
                assert pg.replace("pg_catalog.", "") in message, (clause, pg)
        else:  # Postgres has it: the engine must not say it does not exist
            assert "does not exist" not in message, clause

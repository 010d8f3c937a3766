"""`name` and `"char"` columns against untyped literals, which their input functions cut.

A literal taken as a "char" is its first byte ('abc' is 'a', 'é' the first byte of its
UTF-8, printed '\\303'), or the byte of a `\\ooo` escape; the engine compared the whole
literal with the row's one character (`ch = 'abc'` missed the row 'a').

`nm = '<70 letters>'` resolves the literal as a name, and Postgres's input function cuts
it to NAMEDATALEN - 1 = 63 bytes (at a character boundary), so it equals the name of its
first 63 letters (a name column holds at most that). The engine compared the whole
literal: `=`, IN, ANY, NULLIF, IS DISTINCT FROM, COALESCE, BETWEEN and GREATEST all
missed (or wrongly kept) such a row. A name beside text (`nm = t`, `nm = 'x'::text`)
compares as text, uncut.
"""

from __future__ import annotations

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.support.databases import latin1_database
from tests.sync_engine.shapes.where.columns import column_map

A63 = "a" * 63
E31 = "é" * 31  # 62 bytes: a 32nd é does not fit in 63
CLAUSES = [
    f"nm = '{A63}zzzz'", f"nm = '{A63}'", f"nm IN ('{A63}zzzz', 'x')", f"nm <> '{A63}zzzz'",
    f"'{A63}zzzz' = nm", f"nm < '{A63}zzzz'", f"nm = '{E31}éééé'", f"nm = '{E31}é'",
    f"nm = ANY('{{{A63}zz,x}}')", f"NULLIF(nm, '{A63}zzzz') IS NULL",
    f"nm IS DISTINCT FROM '{A63}zz'", f"COALESCE(nm, 'x') = '{A63}zz'",
    f"nm BETWEEN '{A63}z' AND '{A63}zz'", f"GREATEST(nm, 'a') = '{A63}zz'",
    f"nm = '{A63}zz'::text", "nm = t", f"nm::text = '{A63}'", f"nm LIKE '{A63}%'",
]  # fmt: skip


def test_name_literals_are_cut_as_namein_cuts_them(db_url: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, nm name, t text)")
        conn.execute(
            "INSERT INTO d VALUES (1, %s, %s), (2, 'abc', 'abc'), (3, %s, %s), (4, NULL, NULL)",
            (A63 + "bbbb", A63 + "bbbb", "é" * 40, "é" * 40),
        )
        rows = {
            r[0]: {"id": str(r[0]), "nm": r[1], "t": r[2]}
            for r in conn.execute("SELECT id, nm::text, t FROM d")
        }
        columns = column_map(url)
        for clause in CLAUSES:
            where = parse_where(clause, {}, columns)
            expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            got = {i for i, row in rows.items() if where.matches(row)}
            assert got == expected, (clause[:40], sorted(got ^ expected))
        where = parse_where("nm = $1", {"1": A63 + "zz"}, columns)
        assert {i for i, row in rows.items() if where.matches(row)} == {1}


def test_a_long_non_ascii_name_literal_is_refused_outside_utf8(pg_server_url: str) -> None:
    """Where the database encoding is not UTF8, where Postgres cuts a non-ASCII literal is
    not known (LATIN1 é is one byte): refused; ASCII is cut alike in every encoding."""
    with latin1_database(pg_server_url) as plain_url:
        url = with_display_settings(plain_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE d (id int PRIMARY KEY, nm name)")
            conn.execute("INSERT INTO d VALUES (1, %s)", (A63 + "b",))
            columns = column_map(url)
            with pytest.raises(WhereError, match="name literal longer than 15 non-ASCII"):
                parse_where(f"nm = '{'é' * 40}'", {}, columns)
            where = parse_where(f"nm = '{A63}zz'", {}, columns)
            assert where.matches({"id": "1", "nm": A63})
            assert conn.execute(f"SELECT id FROM d WHERE {where.sql}").fetchall() == [(1,)]


CHAR_CLAUSES = [
    "ch = 'abc'", "ch <> 'abc'", "ch IN ('abc', 'x')", "ch = 'é'", "ch = 'ébc'", "ch = ''",
    "ch = '\\351'", "ch = '\\000'", "ch = '\\0000'", "ch = '\\\\351'", "ch = ANY('{abc,é}')",
    "ch::text = 'abc'", "NULLIF(ch, 'ab') IS NULL",
]  # fmt: skip


def test_char_literals_are_their_first_byte(db_url: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('CREATE TABLE d (id int PRIMARY KEY, ch "char")')
        conn.execute(
            "INSERT INTO d VALUES (1, 'a'), (2, 'é'), (3, E'\\\\351'), (4, ''), (5, NULL), (6, 'x')"
        )
        rows = {
            r[0]: {"id": str(r[0]), "ch": r[1]} for r in conn.execute("SELECT id, ch::text FROM d")
        }
        assert rows[2]["ch"] == "\\303" and rows[3]["ch"] == "\\351" and rows[4]["ch"] == ""
        columns = column_map(url)
        for clause in CHAR_CLAUSES:
            where = parse_where(clause, {}, columns)
            expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            got = {i for i, row in rows.items() if where.matches(row)}
            assert got == expected, (clause, sorted(got ^ expected))

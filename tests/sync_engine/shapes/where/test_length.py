"""length(), char_length(), character_length() and octet_length() against Postgres.

@electric-sql/client's expression compiler (used for `subset__where` when a caller passes
`whereExpr`, as TanStack DB does) emits `LENGTH(<col>)`; the engine answered 400 "unknown
or unsupported function length/1". Each overload is the one Postgres resolves to: text
(varchar, name, an untyped literal) counts characters in the database encoding, or its
bytes; char(n) ignores its trailing spaces in length() but counts them in octet_length();
bytea counts bytes; NULL in, NULL out. What the engine cannot reproduce is a 400.

For each expression, every value Postgres computes on the table's rows is tried as
`<expression> = <value>` (and `IS NULL`): the rows the engine matches must be exactly
the rows Postgres returns.
"""

from __future__ import annotations

import random
import re
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.support.databases import latin1_database
from tests.sync_engine.shapes.where.columns import column_map

TEXTS = ["", " ", "a", "ab  ", "  x", "é", "ßß", "😀", "e\u0301", "a\t ", "日本語 ", None]
CHARS = ["", " ", "é", "ab  ", "😀x", "ééééé", "a\t", " b", None]  # char(5): padded to 5
BYTES = [b"", b"\x00", b"ab", b"\xff\xfe ", "é".encode(), None]

EXPRESSIONS = [
    "length(t)", "char_length(t)", "character_length(t)", "octet_length(t)",
    "length(vc)", "octet_length(vc)", "length(nm)", "octet_length(nm)",
    "length(ch)", "char_length(ch)", "character_length(ch)", "octet_length(ch)",
    "length(bp)", "octet_length(bp)", "length(b)", "octet_length(b)",
    "LENGTH(t)", "pg_catalog.length(t)", "length(t || 'x')", "octet_length(upper(t))",
    "length(ch::text)", "octet_length(ch::text)", "length(ch::varchar)",
    "length(COALESCE(ch, 'zz  '))", "char_length(COALESCE(t, ch))", "length(bp || '  ')",
    "length('ab  ')", "octet_length('é ')", "length(NULL)", "length(NULL::bytea)",
    "length(vc) + octet_length(b)", "length(lower(nm))",
]  # fmt: skip

REFUSED = {
    "length(i)": "function length(integer) does not exist",
    "octet_length(ta)": "function octet_length(text[]) does not exist",
    "char_length(b)": "function char_length(bytea) does not exist",
    "length(tv)": "function length(tsvector) is not supported",
    "octet_length(COALESCE(ch, 'x'))": "octet_length() on a char(n) expression is not supported",
}


def _rows(conn: psycopg.Connection[Any]) -> dict[int, dict[str, str | None]]:
    """The rows as the replication stream delivers them: each column's text output."""
    cur = conn.execute(
        "SELECT id, t, vc, ch::bpchar, bp, nm::text, b::text, i::text, ta::text, tv::text FROM d"
    )
    names = ["id", "t", "vc", "ch", "bp", "nm", "b", "i", "ta", "tv"]
    return {r[0]: dict(zip(names, [str(r[0]), *r[1:]], strict=True)) for r in cur}


def _check(conn: psycopg.Connection[Any], url: str, params: dict[str, str] | None = None) -> int:
    columns = column_map(url)
    rows = _rows(conn)
    assert rows[3]["ch"] == "ab   "  # (the padding is in the row, as replication sends it)
    checked = 0
    for expr in EXPRESSIONS:
        values = {r[0] for r in conn.execute(f"SELECT {expr} FROM d")}
        for value in values:
            clause = f"{expr} IS NULL" if value is None else f"{expr} = {value}"
            where = parse_where(clause, params or {}, columns)
            expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            got = {i for i, row in rows.items() if where.matches(row)}
            assert got == expected, (clause, sorted(got ^ expected))
            checked += 1
    for clause, message in REFUSED.items():
        with pytest.raises(WhereError, match=re.escape(message)):
            parse_where(f"{clause} > 0", {}, columns)
    return checked


def _populate(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE d (id int PRIMARY KEY, t text, vc varchar(10), ch char(5), bp bpchar,"
        " nm name, b bytea, i int, ta text[], tv tsvector)"
    )
    n = max(len(TEXTS), len(CHARS), len(BYTES))
    for k in range(n):
        t = TEXTS[k % len(TEXTS)]
        conn.execute(
            "INSERT INTO d VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL)",
            (k, t, t, CHARS[k % len(CHARS)], t, t, BYTES[k % len(BYTES)], k, None),
        )


def test_lengths_equal_postgres(db_url: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        _populate(conn)
        assert _check(conn, url) > 100


def test_length_of_a_parameter_is_the_text_overload(db_url: str) -> None:
    """`length($1)`: an untyped parameter is text, as in Postgres (`length('ab  ')` is 4)."""
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        _populate(conn)
        columns = column_map(url)
        rows = _rows(conn)
        for clause, value in [("length(t) = length($1)", "ab  "), ("octet_length($1) = 2", "é"),
                              ("length(ch) < char_length($1)", "😀 "),
                              ("length(COALESCE(ch, $1)) = 3", "xyz  ")]:  # fmt: skip
            where = parse_where(clause, {"1": value}, columns)
            expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            assert expected, clause
            assert {i for i, row in rows.items() if where.matches(row)} == expected, clause


def test_length_of_text_is_refused_outside_utf8(pg_server_url: str) -> None:
    """In a LATIN1 database Postgres counts LATIN1 bytes (octet_length('é') is 1): where
    the encoding is not known to be UTF8, the text overloads are refused; bytea's counts
    bytes in any encoding."""
    with latin1_database(pg_server_url) as plain_url:
        url = with_display_settings(plain_url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text, b bytea)")
            conn.execute("INSERT INTO d VALUES (1, 'é', '\\x0102')")
            columns = column_map(url)
            for clause in ["length(t) = 1", "octet_length(t) = 1", "char_length('a') = 1"]:
                with pytest.raises(WhereError, match="database encoding"):
                    parse_where(clause, {}, columns)
            where = parse_where("length(b) = 2 AND octet_length(b) = 2", {}, columns)
            assert where.matches({"id": "1", "t": "é", "b": "\\x0102"})
            assert conn.execute(f"SELECT id FROM d WHERE {where.sql}").fetchall() == [(1,)]


#: Byte strings at UTF-8's edges: overlong forms, surrogates, beyond U+10FFFF, truncated
#: sequences, stray continuation bytes, the zero byte (refused in every encoding).
EDGE_BYTES = [
    b"", b"a", b"\x00", b"a\x00", b"\x7f", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf",
    b"\xc2\x80", b"\xdf\xbf", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xed\x9f\xbf",
    b"\xed\xa0\x80", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf",
    b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xe2\x82", b"\xe2\x82\xac", b"\xc3",
    "é😀ß".encode(), b"\xc3\xa9\xff", b"abc\xe2\x82", "日本語".encode(),
]  # fmt: skip
#: Names as a client writes them (pg_char_to_encoding's aliases, case and punctuation),
#: one-byte encodings and UTF8
ENCODINGS = ["UTF8", "utf-8", "Unicode", "LATIN1", "iso-8859-1", "SQL_ASCII", "win1252",
             "KOI8-R", "WIN866", "Windows-1251", "latin10", "tcvn"]  # fmt: skip


def test_length_of_bytea_in_an_encoding_equals_postgres(db_url: str) -> None:
    """length(bytea, name) counts the characters the bytes hold in that encoding, and fails
    where they are not valid in it (a zero byte, in any encoding) - per row, as Postgres
    does (it is stable: never folded). It was a 400 "unknown or unsupported function
    length/2". The encoding name must be a constant; an invalid one is a 400 in
    Postgres's words, multibyte encodings other than UTF8 a 400 "not supported"."""
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, b bytea, t text)")
        data = [*EDGE_BYTES, None] + [
            bytes(random.Random(k).randrange(256) for _ in range(k % 7)) for k in range(60)
        ]
        for k, b in enumerate(data):
            conn.execute("INSERT INTO d VALUES (%s, %s, 'UTF8')", (k, b))
        columns = column_map(url)
        rows = {r[0]: {"id": str(r[0]), "b": r[1], "t": "UTF8"}
                for r in conn.execute("SELECT id, b::text FROM d")}  # fmt: skip
        checked = failed = 0
        for enc in ENCODINGS:
            for k, row in rows.items():
                try:
                    got_pg = conn.execute(
                        "SELECT length(b, %s) FROM d WHERE id = %s", (enc, k)
                    ).fetchone()
                except psycopg.errors.CharacterNotInRepertoire:
                    verdict: object = "error"
                else:
                    assert got_pg is not None
                    verdict = got_pg[0]
                n = verdict if isinstance(verdict, int) else 0
                where = parse_where(f"length(b, '{enc}') = {n}", {}, columns)
                if verdict == "error":
                    with pytest.raises(ValueError, match="invalid byte sequence"):
                        where.value(row)
                    failed += 1
                else:
                    assert where.value(row) is (None if verdict is None else True), (enc, k)
                checked += 1
        assert failed > 50 and checked == len(ENCODINGS) * len(rows)
        # a parameter is a name too; a NULL name is NULL before any row (strict)
        where = parse_where("length(b, $1) = 2", {"1": "latin-1"}, columns)
        clean = [k for k, b in enumerate(data) if b is not None and b"\0" not in b]
        expected = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM (SELECT * FROM d WHERE id = ANY(%s) OFFSET 0) d WHERE {where.sql}",
                (clean,),
            )
        }
        assert expected and {i for i in clean if where.matches(rows[i])} == expected
        assert parse_where("length(b, NULL) IS NULL", {}, columns).value({}) is True
        for clause, message in [
            ("length(b, 'foo')", 'invalid encoding name "foo"'),
            ("length(b, '')", 'invalid encoding name ""'),
            ("length(b, 'EUC_JP')", "length(bytea, name) in encoding EUC_JP is not supported"),
            ("length(b, 'shift-jis')", "in encoding SJIS is not supported"),
            ("length(b, t)", "supported with a constant encoding name"),
            ("length(t, 'UTF8')", "function length(text, unknown) does not exist"),
            ("length(b, 1)", "function length(bytea, integer) does not exist"),
            ("length('\\xff'::bytea, 'UTF8')", 'invalid byte sequence for encoding "UTF8": 0xff'),
        ]:
            with pytest.raises(WhereError, match=re.escape(message)):
                parse_where(f"{clause} > 0", {}, columns)
            try:
                conn.execute(f"SELECT 1 FROM d WHERE {clause} > 0")
            except psycopg.Error as e:  # (Postgres fails too: a 400 now, not at snapshot)
                assert e.sqlstate and e.sqlstate[:2] in ("22", "42"), (clause, e.sqlstate)
            else:
                assert "t)" in clause  # (only the non-constant name: Postgres reads it)

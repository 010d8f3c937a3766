"""Casts of columns whose type the engine reads as text: domains and inet.

A cast to text is the type's cast function where pg_cast has one (text(boolean) 'true',
text(bpchar) without its padding, text(inet) with its netmask), else its output function
(the column's text as the replication stream carries it). A domain's casts are its base
type's, and a domain over text has its base type's collatability (the domain's collation).
The engine read every such column's `::text` as its output text, and derived no collation
for a domain's: `db::text = 'true'` (a domain over boolean), `dc::text = 'ab'` (over
char(4)), `ip::text = '10.0.0.1/32'` (inet) did not match where Postgres does, and
`upper(dc::text)` of a domain over text COLLATE "C" mapped 'é' (Postgres leaves it).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo, load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.router import key_parser
from sync_engine.shapes.where import WhereError, parse_where

TABLE = r"""
CREATE DOMAIN dbool AS bool;
CREATE DOMAIN dch AS char(4);
CREATE DOMAIN dinet AS inet;
CREATE DOMAIN dtext AS text;
CREATE DOMAIN ddtext AS dtext;
CREATE DOMAIN dint AS int CHECK (VALUE > 0);
CREATE DOMAIN dc AS text COLLATE "C";
CREATE DOMAIN dicu AS text COLLATE "und-x-icu";
CREATE DOMAIN dddc AS dc;
CREATE DOMAIN darr AS int[];
CREATE TABLE x (id int PRIMARY KEY, ip inet, cd cidr, db dbool, dch dch, di dinet, dt dtext,
                ddt ddtext, dn dint, dc dc, du dicu, ddc dddc, t text, da darr, dba dbool[],
                ch "char");
INSERT INTO x VALUES
  (1, '10.0.0.1', '10.0.0.0/8', true, 'ab', '10.0.0.1/32', 'x', 'y', 5, 'é', 'é', 'é', 'é',
   '{1,2}', '{t,f}', 'a'),
  (2, '::1', '::/0', false, 'ab  ', '::ffff:1.2.3.4', 'É', 'é', 1, 'a', 'a', 'B', 'B',
   '{}', '{}', E'\\351'),
  (3, '10.0.0.1/8', '10.1.0.0/16', NULL, 'x', '10.0.0.0/8', '', NULL, NULL, 'B', 'B', 'a', 'a',
   NULL, '{NULL}', ''),
  (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""

AGREE = [
    "ip::text = '10.0.0.1/32'", "ip::text = '10.0.0.1'", "ip::varchar LIKE '%/128'",
    "ip::text IN ('10.0.0.1/8', '::1/128')", "cd::text = '10.0.0.0/8'",
    "db::text = 'true'", "db::text = 't'", "db::varchar = 'false'", "db::text::varchar < 'g'",
    "dch::text = 'ab'", "dch::varchar = 'ab'", "dch::text = 'ab  '", "(dch::text || '|') = 'x|'",
    "di::text = '10.0.0.1/32'", "di::text = '::ffff:1.2.3.4/128'", "dt::text = 'x'",
    "ddt::text = 'y'", "dn::text = '5'", "dt::text IS NULL", "upper(dc::text) = 'É'",
    "upper(ddc::text) = 'É'", "dc::text < 'b'", "lower(dt::text) = 'é'", "dc::text < t",
    "du::text = t", "du::text LIKE 'é%'", "da::text = '{1,2}'", "dba::text = '{t,f}'",
    "ch::text = 'a'", "ch::text LIKE '\\%'",
]  # fmt: skip
# refused where the engine does not reproduce the domain's collation (ICU), or mixes two
REFUSED = [
    ("upper(du::text) = 'É'", 'upper() is not supported under collation "ICU und"'),
    ("du::text < 'b'", 'text comparison < is not supported under collation "ICU und"'),
    ("dc::text < du::text", "could not determine which collation to use"),
]


def _columns(url: str) -> dict[str, ColumnInfo]:
    async def load() -> dict[str, ColumnInfo]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            info = await load_table(conn, "public", "x")
        assert info is not None
        return info.column_map

    return asyncio.run(load())


@pytest.fixture
def table(db_url: str) -> tuple[psycopg.Connection[Any], dict[str, ColumnInfo], dict[int, Any]]:
    url = with_display_settings(db_url)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(TABLE)
    columns = _columns(url)
    select = ", ".join(f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in columns)
    rows = {
        int(r[0]): dict(zip(columns, r, strict=True))
        for r in conn.execute(f"SELECT {select} FROM x")  # (names of this file's table)
    }
    return conn, columns, rows


def test_the_catalog_records_a_domains_base_type(table: Any) -> None:
    _conn, columns, _rows = table
    bases = {n: c.domain_base for n, c in columns.items()}
    assert bases == {
        "id": None, "ip": None, "cd": None, "db": "bool", "dch": "bpchar", "di": "inet",
        "dt": "text", "ddt": "text", "dn": "int4", "dc": "text", "du": "text", "ddc": "text",
        "t": None, "da": "_int4", "dba": "bool", "ch": None,
    }  # fmt: skip


def test_casts_to_text_equal_postgres(table: Any) -> None:
    conn, columns, rows = table
    for clause in AGREE:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM x WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, sorted(got ^ expected))
    for clause, message in REFUSED:
        with pytest.raises(WhereError, match=re.escape(message)):
            parse_where(clause, {}, columns)


def test_a_domain_described_without_its_base_type_is_refused(table: Any) -> None:
    """A table recorded by an engine that did not record domains' base types (a restored
    shape): a cast of such a domain is refused, not guessed."""
    _conn, columns, _rows = table
    old = {n: ColumnInfo(**{**_fields(c), "domain_base": None}) for n, c in columns.items()}
    with pytest.raises(WhereError, match="domain dbool is not supported here"):
        parse_where("db::text = 'true'", {}, old)
    parse_where("dba::text = '{t,f}' AND ip::text = '10.0.0.1/32'", {}, old)


def _fields(c: ColumnInfo) -> dict[str, Any]:
    return {f: getattr(c, f) for f in ColumnInfo.__slots__}


#: A domain over a type the engine evaluates reads as that type (operators and functions on
#: a domain are resolved on its base type): these were refused with "operator does not
#: exist: dint > integer", which Postgres has.
AGREE_AS_BASE = [
    "db", "NOT db", "db = true", "db IS NOT FALSE", "dn > 2", "dn + 1 = 6", "dn = '5'",
    "dn IN (1, 5)", "dn BETWEEN 1 AND 5", "dn::int8 = 5", "COALESCE(dn, 0) = 0",
    "dn = ANY(ARRAY[dn, 7])", "dn IS DISTINCT FROM 1", "dt = 'x'", "dt LIKE 'x%'",
    "upper(dt) = 'X'", "ddt || '!' = 'y!'", "dc < 'b'", "ddc >= 'a'", "dt = ANY('{x,É}')",
]  # fmt: skip


def test_a_domain_over_a_known_type_reads_as_its_base_type(table: Any) -> None:
    conn, columns, rows = table
    for clause in AGREE_AS_BASE:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM x WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, sorted(got ^ expected))
    # the router keys a change by the column's text (its parser for the column's own type,
    # a domain's being its text): a shape keyed by dn's int4 values was never found (the
    # rows it should get were lost: test_moves.py's `dm IN (1, 5)`), so it is not keyed
    assert parse_where("dn = 5", {}, columns).index is None
    parse = key_parser(columns["dn"])
    assert (parse or str)(rows[1]["dn"]) == "5"
    # ARRAY[dn] is dint[] in Postgres, which has no `dint[] = int4[]`; the engine would
    # read it as int4[]: refused (items of other types make it int4[], as in Postgres)
    with pytest.raises(WhereError, match="an ARRAY of domain dint values is not supported"):
        parse_where("ARRAY[dn] = ARRAY[5]", {}, columns)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT 1 FROM x WHERE ARRAY[dn] = ARRAY[5]")
    # ... and so is a COALESCE, GREATEST or LEAST of dn alone (select_common_type keeps the
    # one type all its inputs have): these were accepted, and the snapshot failed with
    # "undefined function (SQLSTATE 42883)"; with an input of another type (or NULLIF,
    # whose `=` takes int4) the array is int4[] in Postgres too
    for clause in ["ARRAY[COALESCE(dn, dn)] = ARRAY[1]", "ARRAY[GREATEST(dn, dn)] @> ARRAY[5]",
                   "ARRAY[LEAST(COALESCE(dn, dn), dn)] = ARRAY[5]"]:  # fmt: skip
        with pytest.raises(WhereError, match="an ARRAY of domain dint values is not supported"):
            parse_where(clause, {}, columns)
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute(f"SELECT 1 FROM x WHERE {clause}")
    for clause in ["ARRAY[COALESCE(dn, 1)] = ARRAY[5]", "ARRAY[NULLIF(dn, dn)] = ARRAY[1]",
                   "ARRAY[COALESCE(dn, NULL), 1] = ARRAY[5, 1]", "ARRAY[COALESCE(dn, dn), 1] = '{5,1}'"]:  # fmt: skip
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM x WHERE {where.sql}")}
        assert {i for i, row in rows.items() if where.matches(row)} == expected, clause
    # literals of arrays of domains stay refused: their elements compared as text
    # (`dba @> '{true}'` matched no row, Postgres the row holding {t,f})
    for clause in ["dba = '{t}'", "dba @> '{true}'"]:
        with pytest.raises(WhereError, match="unsupported type"):
            parse_where(clause, {}, columns)
    # a domain the engine does not read as its base type is named, with what works instead
    # (it said "unsupported type dinet")
    message = r"values of domain dinet \(over inet\) are not supported here, but for IS NULL"
    for clause in ["di = '10.0.0.1'", "di < '10.0.0.2'", "di IN ('::1', '10.0.0.1')"]:
        with pytest.raises(WhereError, match=message):
            parse_where(clause, {}, columns)


#: A domain over char(n) reads as char(n) (its values arrive padded to the domain's length,
#: as a char(n) column's): compared without the padding, LIKE / concat / octet_length with
#: it. It was refused ("unsupported type dch").
AGREE_CHAR_DOMAIN = [
    "dch = 'ab'", "dch = 'ab  '", "dch < 'b'", "dch IN ('ab', 'x')", "dch LIKE 'ab%'",
    "concat(dch, '|') = 'ab  |'", "length(dch) = 2", "octet_length(dch) = 4",
    "(dch || '|') = 'ab|'", "upper(dch) = 'AB'", "dch BETWEEN 'a' AND 'b'", "dch = t",
    "NULLIF(dch, 'x') IS NULL", "dch IS DISTINCT FROM 'x'", "dch::text = 'ab' OR dch IS NULL",
]  # fmt: skip


def test_a_domain_over_char_n_reads_as_char_n(table: Any) -> None:
    conn, columns, rows = table
    for clause in AGREE_CHAR_DOMAIN:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM x WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, sorted(got ^ expected))
    assert parse_where("dch = 'ab'", {}, columns).index is None  # (keys: see above)


#: A domain over an array (darr over int4[]) reads as its base array type: Postgres resolves
#: the anyarray operators and functions on it, subscripts it and prints it as the array.
#: These were 400s claiming "operator does not exist: darr @> unknown" (Postgres has it).
AGREE_ARRAY_DOMAIN = [
    "da @> '{1}'", "da = '{1,2}'", "da[1] = 1", "da[2:] = '{2}'", "(da || 5) = '{1,2,5}'",
    "array_ndims(da) = 1", "da && ARRAY[2]", "da IS NULL", "1 = ANY(da)", "da = ARRAY[1, 2]",
    "da IN ('{1,2}', '{}')", "COALESCE(da, '{}') = '{}'", "da <> da", "array_append(da, 3) = '{1,2,3}'",
    "da::text = '{1,2}'", "da IS DISTINCT FROM '{}'", "NULLIF(da, '{}') IS NULL",
]  # fmt: skip


def test_a_domain_over_an_array_reads_as_its_base_array_type(table: Any) -> None:
    conn, columns, rows = table
    for clause in AGREE_ARRAY_DOMAIN:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM x WHERE {where.sql}")}
        got = {i for i, row in rows.items() if where.matches(row)}
        assert got == expected, (clause, sorted(got ^ expected))
    assert parse_where("da = '{1,2}'", {}, columns).index is None  # (keys: see above)
    # ARRAY[da] is an array of the domain, which Postgres has no `=` for: still refused
    with pytest.raises(WhereError, match="an ARRAY of domain darr values is not supported"):
        parse_where("ARRAY[da] = ARRAY[ARRAY[1, 2]]", {}, columns)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT 1 FROM x WHERE ARRAY[da] = ARRAY[ARRAY[1, 2]]")

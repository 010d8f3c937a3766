"""Text semantics by collation: what the engine reproduces, what it refuses.

`upper`/`lower`/ILIKE follow LC_CTYPE and text `<` follows LC_COLLATE; the engine accepts
them only under collations it reproduces exactly (see `where/collation.py`). The test
cluster runs with `C.UTF-8` (scripts/dev-postgres); ICU and `C` collations come with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo, load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.collation import text_rules
from sync_engine.shapes.where.text import case_mapping


async def _columns(url: str, table: str) -> dict[str, ColumnInfo]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        info = await load_table(conn, "public", table)
    assert info is not None
    return info.column_map


def _cluster_ctype(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT datctype FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_case_mapping_equals_postgres_for_every_code_point(db_url: str) -> None:
    """upper() and lower() of every code point, engine vs the database (glibc C.UTF-8):
    one string of all 1.1 million code points each way."""
    chars = "".join(chr(i) for i in range(1, 0x110000) if not 0xD800 <= i < 0xE000)
    with psycopg.connect(db_url) as conn:
        if _cluster_ctype(conn) not in ("C.UTF-8", "C.utf8"):
            pytest.skip("the case-mapping table is the C.UTF-8 one")
        upper, lower = conn.execute("SELECT upper(%s), lower(%s)", (chars, chars)).fetchone()
        upper_c, lower_c = conn.execute(
            'SELECT upper(%s COLLATE "C"), lower(%s COLLATE "C")', (chars, chars)
        ).fetchone()
    for got, expected, what in [
        (case_mapping("unicode", "upper")(chars), upper, "upper"),
        (case_mapping("unicode", "lower")(chars), lower, "lower"),
        (case_mapping("ascii", "upper")(chars), upper_c, 'upper COLLATE "C"'),
        (case_mapping("ascii", "lower")(chars), lower_c, 'lower COLLATE "C"'),
    ]:
        if got != expected:
            diffs = [(hex(ord(a)), b, c) for a, b, c in zip(chars, got, expected, strict=True)
                     if b != c]  # fmt: skip
            raise AssertionError((what, len(diffs), diffs[:10]))


@pytest.fixture
def collated(db_url: str) -> tuple[psycopg.Connection[Any], str]:
    url = with_display_settings(db_url)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    )
    conn.execute('CREATE TABLE icu (id int PRIMARY KEY, t text COLLATE "und-x-icu")')
    conn.execute("CREATE TABLE nd (id int PRIMARY KEY, t text COLLATE ci)")
    conn.execute('CREATE TABLE c (id int PRIMARY KEY, t text COLLATE "C")')
    conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text, n int)")
    conn.execute('CREATE TABLE mixed (id int PRIMARY KEY, a text, b text COLLATE "und-x-icu")')
    return conn, url


def test_collations_are_read_from_the_catalog(collated: tuple[Any, str]) -> None:
    conn, url = collated
    ctype = _cluster_ctype(conn)
    assert asyncio.run(_columns(url, "d"))["t"].collation == f"c|{ctype}|{ctype}|t"
    assert asyncio.run(_columns(url, "d"))["n"].collation is None
    assert asyncio.run(_columns(url, "c"))["t"].collation == "c|C|C|t"
    assert asyncio.run(_columns(url, "icu"))["t"].collation == "i|und|und|t"
    assert asyncio.run(_columns(url, "nd"))["t"].collation == "i|und-u-ks-level2|und-u-ks-level2|f"


@pytest.mark.parametrize(
    ("table", "sql", "refused"),
    [
        ("icu", "t < 'b'", 'text comparison < is not supported under collation "ICU und"'),
        ("icu", "t BETWEEN 'a' AND 'b'", "text comparison >= is not supported"),
        ("icu", "greatest(t, 'x') = 'x'", "text comparison > is not supported"),
        ("icu", "upper(t) = 'A'", 'upper() is not supported under collation "ICU und"'),
        ("icu", "t ILIKE 'a%'", "ILIKE is not supported"),
        ("icu", "t = 'a' OR t LIKE 'a%' OR t IN ('x', 'y')", None),
        ("nd", "t = 'a'", "text = is not supported under collation"),
        ("nd", "t LIKE 'a%'", "text LIKE is not supported"),
        ("mixed", "a < 'b'", "text comparison < is not supported"),  # b's ICU collation
        ("c", "t < 'b' AND upper(t) = 'A' AND t ILIKE 'a%'", None),
        ("d", "t < 'b' AND upper(t) = 'A' AND lower(t) = 'a' AND t ILIKE 'a%'", None),
    ],
)
def test_refused_where_the_collation_is_not_reproduced(
    collated: tuple[Any, str], table: str, sql: str, refused: str | None
) -> None:
    _conn, url = collated
    columns = asyncio.run(_columns(url, table))
    if refused is None:
        parse_where(sql, {}, columns)
        return
    with pytest.raises(WhereError) as info:
        parse_where(sql, {}, columns)
    assert refused in str(info.value)
    assert "At location" in str(info.value)


def test_c_collation_maps_ascii_only_like_postgres(collated: tuple[Any, str]) -> None:
    conn, url = collated
    words = ["straße", "İstanbul", "istanbul", "ǅ", "Ω", "abc", "ABC"]
    for i, w in enumerate(words):
        conn.execute("INSERT INTO c VALUES (%s, %s)", (i, w))
    columns = asyncio.run(_columns(url, "c"))
    for sql in ["upper(t) = 'STRAßE'", "lower(t) = 'istanbul'", "upper(t) = 'ABC'",
                "t ILIKE 'ABC'", "lower(t) = 'ǅ'", "t < 'a'"]:  # fmt: skip
        where = parse_where(sql, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM c WHERE {where.sql}")}
        got = {i for i, w in enumerate(words) if where.matches({"id": str(i), "t": w})}
        assert got == expected, sql


def test_unknown_collation_refuses_case_mapping_and_ordering() -> None:
    """A column described without its collation (a shape restored from before collations
    were recorded): the case-dependent and order-dependent constructs are refused."""
    legacy = {"t": ColumnInfo("t", 1, 0, "text", None, "b", -1, 0, False, None)}
    assert text_rules(legacy.values()).case_map is None
    for sql in ["upper(t) = 'A'", "t < 'a'", "t = 'a'"]:
        with pytest.raises(WhereError, match="unknown collation"):
            parse_where(sql, {}, legacy)


def test_subset_queries_only_postgres_evaluates_are_not_refused(
    collated: tuple[Any, str],
) -> None:
    """A subset's where runs in Postgres only (`live=False`): nothing to reproduce."""
    conn, url = collated
    columns = asyncio.run(_columns(url, "icu"))
    where = parse_where("upper(t) = 'A' OR t < 'b' OR t ILIKE 'x%'", {}, columns, live=False)
    conn.execute(f"SELECT id FROM icu WHERE {where.sql}").fetchall()  # valid SQL
    with pytest.raises(WhereError):
        parse_where("upper(t) = 'A'", {}, columns)  # a shape's where: refused

"""Casts of a row's char(n) and text values to bytea, uuid and enums, as Postgres casts them.

Postgres casts a string to a type without a cast function of its own through the string's
output and the type's input function (CoerceViaIO). char(n)'s output is padded to n, and
the input functions of bytea, uuid and enums read the padding ('a'::char(3)::bytea is
\\x612020; 'ok'::char(3)::mood fails), where the engine keeps char(n) values trimmed: it
matched `ch::bytea = '\\x61'` and `ch::mood = 'ok'` on rows Postgres does not match or fails
on. And a text cast to an enum is checked against its labels (`t::mood IS NOT NULL` matched
every row, a label or not). Found by the out-of-tree differential fuzz (/work/where-fuzz).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import (
    VERDICT_FUNCTION,
    agrees,
    column_map,
    engine_verdict,
)

ROWS: list[tuple[str | None, str | None]] = [
    ("a", "a"), ("ok", "ok"), ("ab", "ab "), ("", ""), (None, None), ("sad", "sad"),
    ("nope", "happy"), ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "\\x61"), ("\\x6f6b", "OK"),
]  # fmt: skip

CLAUSES = [
    "ch::bytea = '\\x61'", "ch::bytea = '\\x6120202020'", "length(ch::bytea) = 5",
    "ch::bytea IS NOT NULL", "ch::mood IS NOT NULL", "ch::mood = 'ok'", "ch::mood < 'happy'",
    "t::mood IS NOT NULL", "t::mood = 'ok'", "t::mood > 'sad'", "t::mood IN ('sad', 'ok')",
    "t::bytea = '\\x6f6b'", "ch::int4 IS NULL", "ch::bool IS NULL", "ch::uuid IS NOT NULL",
    "u::uuid IS NOT NULL", "ch::text[] IS NOT NULL", "t::mood[] IS NOT NULL",
]  # fmt: skip


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text, ch char(5), u char(40), e mood)")
        conn.execute(VERDICT_FUNCTION)
        for i, (t, ch) in enumerate(ROWS):
            conn.execute("INSERT INTO d VALUES (%s, %s, %s, %s, NULL)", (i, t, ch, t))
        rows = {}
        # as the replication stream carries them: each type's output (char(n) padded)
        for rec in conn.execute("SELECT id, t, concat(ch, ''), concat(u, ''), e FROM d"):
            text = {"id": str(rec[0]), "t": rec[1], "e": rec[4]}
            text["ch"] = None if ROWS[rec[0]][1] is None else rec[2]
            text["u"] = None if ROWS[rec[0]][0] is None else rec[3]
            rows[rec[0]] = text
        yield conn, column_map(url), rows


def test_string_casts_are_postgres_verdict(
    table: tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]],
) -> None:
    conn, columns, rows = table
    wrong = []
    decided = 0
    for clause in CLAUSES:
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT id, verdict(%s, id) FROM d", (where.sql,)))
        for rid, row in rows.items():
            try:
                got = engine_verdict(where, row)
            except UnrepresentableValue:
                continue  # (Postgres is asked about the row)
            decided += 1
            pg = verdicts[rid]
            # a row the engine calls no match where Postgres fails is in no snapshot either
            if not agrees(got, pg) and not (got == "false" and pg == "error"):
                wrong.append((clause, row, pg, got))
    assert not wrong, "\n".join(map(repr, wrong))
    assert decided > len(CLAUSES) * len(ROWS) // 2, decided


@pytest.mark.parametrize(
    "clause",
    [
        "(ch::char(3))::bytea = '\\x61'",
        "COALESCE(ch, 'x')::bytea = '\\x61'",
        "('ab'::char(3))::mood IS NULL",
        "NULLIF(ch, 'x')::uuid IS NULL",
    ],
)
def test_char_n_expressions_cast_through_their_padding_are_refused(
    table: tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]], clause: str
) -> None:
    """Only a char(n) column's own text (padded as the row carries it) is cast: the padding
    of a computed char(n) value is not known to the engine."""
    _conn, columns, _rows = table
    with pytest.raises(WhereError, match="casting a char\\(n\\) expression to"):
        parse_where(clause, {}, columns)

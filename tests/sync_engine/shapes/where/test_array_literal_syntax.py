"""Array literals read as Postgres 15's array_in reads them (sync_engine/pg/values.py
parse_array), against a real Postgres.

wherefuzz's parser fuzz (/work/wherefuzz/pz.py, seed 1) found `t = SOME('{AND" "}')`
accepted: the engine's reader took `AND" "` for one element where Postgres says "malformed
array literal" (a quote may only open an element). A random comparison of the old reader
with `::text[]` then differed on 2,911 of 20,000 literals, in both directions:
- accepted what Postgres refuses: `{a"b"}`, `{{a},b}`, `{a,{b}}`, `{{a},{b,c}}`, `{{}}`,
  `{{{{{{{a}}}}}}}` (7 dimensions): a where holding one was a shape whose snapshot failed;
- read otherwise what Postgres reads: `{a\\ }` is 'a ' (an escaped space is kept, the old
  reader trimmed it), `{NU\\LL}` is the text 'NULL' (an item with an escape or a quote is
  never NULL; the old reader gave NULL), `{{a},{{b}}}` is Postgres 15's `{{{a}},{{b}}}` and
  `{{{a}},{b}}` its empty array (the old reader gave nested tuples of unequal depth): a
  row's text cast to an array (`(t::text[])[1] = 'a '`) matched live rows Postgres does not
  give, and missed rows it gives.
Now ArrayCount and ReadArrayStr are ported step for step: the seeded random comparison below
and every case found agree with Postgres.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import parse_array
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import column_map

#: Literals the old reader read otherwise than Postgres (found by the fuzz), and neighbours.
FOUND = [
    '{AND" "}', '{a"b"}', '{"a"b}', '{"a""b"}', '{NULL" "}', '{a"b,c}', '{\\\\x00","\\\\x61"}',
    "{a,{b}}", "{{a},b}", "{{a},{b,c}}", "{{}}", "{{},{}}", "{{a},{}}", "{ {}}",
    "{{{{{{{a}}}}}}}", "{{{{{{a}}}}}}", "{a\\ }", "{ \\ a}", "{NU\\LL}", '{"NULL"}', "{null}",
    "{ NULL }", "{NULLx}", "{{a},{{b}}}", "{{{a}},{b}}", '{"a" }', '{ "a"}', "{a b}",
    '{a\\"b}', '{"a"  ,b}', "{{a}, {b}}", "{{a} }", "{a}x", "{a}}", "{{a}", '{"}', "{\\}",
    "{a\\}", "{,}", '{"a",}', "{}", "{ }", '{"",""}', "[1:1]={a}", "{{a,b},{c,d}}",
]  # fmt: skip

_ALPHABET = ["{", "}", "{", "}", ",", ",", '"', '"', "\\", " ", "\t", "a", "b", "NULL", "ß"]
_ITEMS = ["a", '"a b"', "NULL", '"NULL"', "", '" "', " a ", "\\ a\\ ", 'a"b"', '"a"b', "b c"]


def _random_literal(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 14)))

    def level(depth: int) -> str:
        if depth == 0 or rng.random() < 0.4:
            return rng.choice(_ITEMS)
        return "{" + ",".join(level(depth - 1) for _ in range(rng.randint(0, 3))) + "}"

    text = "{" + ",".join(level(rng.randint(0, 3)) for _ in range(rng.randint(0, 3))) + "}"
    if rng.random() < 0.3:  # one character of noise
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(_ALPHABET) + text[at:]
    return text


def _as_lists(value: Any) -> Any:
    return [_as_lists(v) for v in value] if isinstance(value, tuple) else value


def _engine_reads(text: str) -> tuple[str, Any]:
    try:
        return "ok", _as_lists(parse_array(text, str))
    except ValueError:
        return "error", None


def _postgres_reads(conn: psycopg.Connection[Any], text: str) -> tuple[str, Any]:
    try:
        return "ok", conn.execute("SELECT %s::text::text[]", (text,)).fetchone()[0]  # type: ignore[index]
    except psycopg.Error:
        return "error", None


def test_array_literals_read_as_postgres_reads_them(db_url: str) -> None:
    rng = random.Random(20261206)
    literals = FOUND + [_random_literal(rng) for _ in range(1500)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        differ = [
            (text, _engine_reads(text), _postgres_reads(conn, text))
            for text in literals
            if _engine_reads(text) != _postgres_reads(conn, text)
        ]
    assert not differ, differ[:10]


#: Rows whose text Postgres reads as an array; each where reads it through `t::text[]`.
ROWS = {
    1: "{a\\ }",  # 'a '
    2: "{ \\ a}",  # ' a'
    3: "{NU\\LL}",  # the text 'NULL'
    4: "{null}",  # NULL
    5: "{{a},{{b}}}",  # Postgres 15: {{{a}},{{b}}}
    6: "{{{a}},{b}}",  # Postgres 15: {}
    7: "{a}",
}
WHERES = [
    "(t::text[])[1] = 'a '",
    "(t::text[])[1] = ' a'",
    "(t::text[])[1] = 'NULL'",
    "(t::text[])[1] IS NULL",
    "array_ndims(t::text[]) = 3",
    "t::text[] = '{}'",
    "t::text[] @> '{a}'",
]


async def test_live_rows_read_through_an_array_cast_as_postgres(engine: Engine) -> None:
    """Shapes made first, then the rows inserted: their live verdicts equal Postgres's."""
    engine.sql("CREATE TABLE arr (id int PRIMARY KEY, t text)")
    shapes = []
    for where in WHERES:
        params = {"table": "arr", "where": f"({where}) OR id = 0"}
        rows, handle, offset = await engine.sync(**params)
        assert rows == {}
        shapes.append((where, params, rows, handle, offset))
    for key, text in ROWS.items():
        engine.sql("INSERT INTO arr VALUES (%s, %s)", [key, text])
    engine.sql("INSERT INTO arr VALUES (0, NULL)")  # the marker every shape holds
    with psycopg.connect(with_display_settings(engine.db_url), autocommit=True) as conn:
        for where, params, rows, handle, offset in shapes:
            await engine.follow_live(rows, handle, offset, "0", **params)
            got = {int(r["id"]) for r in rows.values()} - {0}
            expected = {
                r[0] for r in conn.execute(f"SELECT id FROM arr WHERE ({where}) AND id <> 0")
            }
            assert got == expected, (where, got, expected)


@pytest.mark.parametrize("literal", ['{a"b"}', '{AND" "}', "{{a},b}", "{a,{b}}", "{{a},{b,c}}"])
def test_malformed_array_constants_are_a_400(db_url: str, literal: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ta text[], t text)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"SELECT id FROM d WHERE ta = '{literal}'")
    columns = column_map(url)
    for clause in [f"ta = '{literal}'", f"t = SOME('{literal}')", f"'{literal}'::int4[] IS NULL"]:
        with pytest.raises(WhereError, match="malformed array literal"):
            parse_where(clause, {}, columns)


async def test_malformed_array_constant_is_a_400_over_http(engine: Engine) -> None:
    engine.sql("CREATE TABLE arr (id int PRIMARY KEY, t text)")
    status, _h, body = await engine.get(table="arr", offset="-1", where="t = SOME('{AND\" \"}')")
    assert status == 400, body
    assert "malformed array literal" in body["errors"]["where"][0], body

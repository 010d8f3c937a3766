"""Parameters and literals built to break out of the where: Postgres's answer, or a 400.

A client's `params[n]` and the string constants of its where reach Postgres only as
constants the engine writes itself (`Where.sql`); nothing it typed is pasted into SQL. Here
a seeded generator builds values out of what breaks naive quoting (quotes, backslashes,
`$$` and `$tag$`, comments, semicolons, `E'`, `U&'`, unicode escapes, parentheses, `OR
true`, right-to-left marks, long runs) and puts them as parameters in typed and untyped
positions (`t = $1`, `$1::varchar(3)`, `upper($1)`, `t IN ($1, $2)`, `i = $1`, `$1 || t`,
`ta @> ARRAY[$1]`, LIKE patterns, ...) and as literals written with every quoting Postgres
reads (`'..'`, `E'..'`, `U&'..'`, `$q$..$q$`). Each accepted clause must select exactly the
rows Postgres selects for the client's own clause with the values bound as parameters
(PREPARE / EXECUTE, types inferred by Postgres), live and in the snapshot's SQL; the table
must be untouched afterwards. The engine may refuse a clause (a 400): on seeds 1-40
(2026-12-05) every refusal of a clause Postgres answers was a constant LIKE pattern ending
in its escape character, which Postgres fails on only the rows its matching reaches the end
with (a snapshot that would fail later: refused up front on purpose); WHERE_INJECTION_SHOW=1
prints them, WHERE_INJECTION_SEED explores further.
"""

from __future__ import annotations

import os
import random
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.columns import column_map

PIECES = [
    "'", "''", "\\", "\\'", "$$", "$q$", "$a$", "--", "/*", "*/", ";", "E'", "U&'", "\\0041",
    "\\u00e9", "\\x41", ")", "(", " OR true", " OR 1=1", "%", "_", "\n", "\t", "é", "😀",
    "\u200f", "\u200b", "a", "B", "1", "DROP TABLE d", '"', "\\\\", "!", "UESCAPE", "NULL",
]  # fmt: skip
VALUES = ["a", "B", "a'b", "a\\b", "$$", "--", ";", "é", "1", "NULL", "", " "]
TEMPLATES = [
    "t = $1", "t = $1::text", "t <> $1", "t = $1::varchar(3)", "upper(t) = upper($1)",
    "t IN ($1, $2)", "t = ANY(ARRAY[$1, $2])", "ta @> ARRAY[$1]", "t LIKE $1", "t ILIKE $1",
    "($1 || t) = ($2 || t)", "length($1) = length(t)", "i = $1", "i::text = $1",
    "t = $1 OR i = 1", "t = $1::char(2)", "t < $1", "concat(t, $1) = $2", "$1 = t AND $2 = t",
    "NOT (t = $1)", "t IS DISTINCT FROM $1", "coalesce(t, $1) = $2", "t LIKE $1 ESCAPE '!'",
]  # fmt: skip

TABLE = """
CREATE TABLE d (id int PRIMARY KEY, t text, i int, ta text[]);
"""


def _value(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(VALUES)
    out = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))
    return out * (200 if rng.random() < 0.02 else 1)  # (now and then a long one)


def _literals(value: str) -> list[str]:
    """`value` as SQL string constants written every way Postgres reads them."""
    plain = "'" + value.replace("'", "''") + "'"
    escaped = "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    unicode = "U&'" + "".join(f"\\{ord(c):04x}" if ord(c) < 0x10000 else f"\\+{ord(c):06x}"
                              for c in value) + "'"  # fmt: skip
    forms = [plain, escaped, unicode]
    if "$q$" not in value and not value.endswith("$"):
        forms.append("$q$" + value + "$q$")
    return forms


@pytest.fixture
def table(db_url: str) -> Any:
    url = with_display_settings(db_url)
    conn = psycopg.connect(url, autocommit=True)
    conn.prepare_threshold = None  # (its own prepared statements would meet DEALLOCATE ALL)
    conn.execute(TABLE)
    rng = random.Random(11)
    rows: list[tuple[int, str | None, int | None, list[str] | None]] = [
        (k, _value(rng), rng.choice([None, 1, 2]), [_value(rng)]) for k in range(40)
    ]
    rows += [(40 + k, v, k, [v]) for k, v in enumerate(VALUES)] + [(99, None, None, None)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO d VALUES (%s, %s, %s, %s)", rows)
    live = {
        r[0]: {"id": str(r[0]), "t": r[1], "i": r[2], "ta": r[3]}
        for r in conn.execute("SELECT id, t, i::text, ta::text FROM d")
    }
    yield conn, column_map(url), live
    conn.close()


def _bound(conn: psycopg.Connection[Any], clause: str, params: list[str]) -> set[int] | str:
    """Postgres's rows for the client's clause with `params` bound as parameters (types
    inferred from the clause by Postgres), or the SQLSTATE of its refusal."""
    conn.execute("DEALLOCATE ALL")
    try:
        conn.execute(f"PREPARE p AS SELECT id FROM d WHERE {clause}")
        args = pgsql.SQL(", ").join(pgsql.Literal(v) for v in params)
        query = pgsql.SQL("EXECUTE p({})").format(args) if params else pgsql.SQL("EXECUTE p")
        return {r[0] for r in conn.execute(query)}
    except psycopg.Error as e:
        return e.sqlstate or "?"


def test_parameters_and_literals_never_escape_and_equal_postgres(table: Any) -> None:
    conn, columns, live = table
    rng = random.Random(int(os.environ.get("WHERE_INJECTION_SEED", 20261205)))
    count = conn.execute("SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM d").fetchone()
    checked = refused = 0
    for _ in range(240):  # (every template ~10 times; WHERE_INJECTION_SEED explores further)
        template = rng.choice(TEMPLATES)
        values = [_value(rng), _value(rng)]
        n = template.count("$2") + 1 if "$1" in template else 0
        params = values[:n]
        cases: list[tuple[str, dict[str, str], list[str]]] = [
            (template, {str(k + 1): v for k, v in enumerate(params)}, params)
        ]
        # the same clause with the first value as a literal, written each way
        if "$1" in template and "$2" not in template:
            for literal in _literals(values[0]):
                cases.append((template.replace("$1", literal), {}, []))
        for clause, given, bound in cases:
            expected = _bound(conn, clause, bound)
            try:
                where = parse_where(clause, given, columns)
            except WhereError as e:
                if os.environ.get("WHERE_INJECTION_SHOW") and not isinstance(expected, str):
                    print("REFUSED, Postgres answers:", clause[:120], str(given)[:80], e)
                # refused: Postgres refuses the clause too, or cannot read a parameter as
                # the type it infers (22xxx), or the engine refuses what it cannot follow
                refused += 1
                continue
            assert not isinstance(expected, str) or expected == "42P18", (clause, given, expected)
            if isinstance(expected, str):
                continue  # ($1 alone: Postgres cannot infer its type; the engine reads text)
            got_sql = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
            got_live = {i for i, row in live.items() if where.matches(row)}
            assert got_sql == expected, (clause, given, where.sql)
            assert got_live == expected, (clause, given)
            checked += 1
    assert (
        conn.execute("SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM d").fetchone()
        == count
    )
    assert checked > 700, (checked, refused)
    print(
        f"param injection: {checked} clauses equal Postgres's bound parameters, {refused} refused"
    )

"""NULLIF's type is its first argument's where Postgres's `=` for the pair is an operator of
that type: NULLIF(name, varchar / char(n) / text / name) is name (`name = text`, `name =
name`), NULLIF(varchar[], varchar[]) is varchar[] (the array type's own `=`). The engine
typed them text and text[], so it accepted `ARRAY['a'] = ARRAY[NULLIF(nm, v)]` (text[] =
name[]), which Postgres refuses: the shape's snapshot failed after the engine had said yes
(found by the collation fuzz, /work/wherefuzz/collfz.py seeds 10-12). Checked here for
every pair of the string and string-array types: the engine accepts exactly what Postgres
accepts, and answers as Postgres does where both accept.
"""

from __future__ import annotations

import itertools

import psycopg

from sync_engine.pg.session import with_display_settings
from tests.sync_engine.shapes.where.test_collation import _engine_columns, _verdict

COLUMNS = {"nm": "name", "v": "varchar(5)", "ch": "char(3)", "t": "text",
           "na": "name[]", "va": "varchar[]", "ta": "text[]"}  # fmt: skip
ROWS = [
    ("a", "a", "a", "a", "{a}", "{a}", "{a}"),
    ("ab", "ab ", "ab", "ab", "{ab,NULL}", "{ab}", "{b}"),
    ("x", "y", "x", "x", "{x}", "{x}", "{x}"),
    (None, "a", None, "", None, "{}", "{}"),
]


def test_nullif_takes_its_first_argument_s_type_as_postgres(db_url: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE n (id int PRIMARY KEY, "
            + ", ".join(f"{c} {t}" for c, t in COLUMNS.items())
            + ")"
        )
        for i, row in enumerate(ROWS):
            conn.execute(f"INSERT INTO n VALUES (%s{', %s' * len(row)})", (i, *row))
        # (the values' text as pgoutput sends it: char(n) padded, arrays as array_out)
        names = ["id", *COLUMNS]
        select = ", ".join(
            f"CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END" for c in names
        )
        rows = {
            int(r[0]): dict(zip(names, r, strict=True))
            for r in conn.execute(f"SELECT {select} FROM n")
        }
        columns = _engine_columns(url, "n")
        verdicts: dict[str, int] = {}
        for a, b in itertools.product(COLUMNS, repeat=2):
            for clause in [f"ARRAY[NULLIF({a}, {b})] = ARRAY[{a}]",
                           f"ARRAY[NULLIF({a}, {b})] = ARRAY[{b}]",
                           f"NULLIF({a}, {b}) = {a}", f"NULLIF({a}, {b}) IS NULL"]:  # fmt: skip
                # (raises where the engine accepts what Postgres refuses, or answers otherwise)
                verdict = _verdict(conn, "n", columns, rows, clause)
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
        assert verdicts.get("agrees", 0) >= 50, verdicts
        # (char(n) beside varchar is refused on purpose, the rest is evaluated)
        for clause in ["ARRAY[NULLIF(nm, v)] = ARRAY[nm]", "ARRAY[NULLIF(nm, ch)] = ARRAY[nm]",
                       "ARRAY[NULLIF(va, va)] = ARRAY[va]", "ARRAY[NULLIF(na, na)] = ARRAY[na]",
                       "NULLIF(nm, t) = nm"]:  # fmt: skip
            assert _verdict(conn, "n", columns, rows, clause) == "agrees", clause
        for clause in ["ARRAY[NULLIF(nm, v)] = ARRAY['a']", "ARRAY[NULLIF(va, va)] = ARRAY[t]"]:
            assert _verdict(conn, "n", columns, rows, clause) == "refused as Postgres", clause

"""Seeded random rows through NULL handling and the small types, against Postgres.

test_value_fuzz.py covers numbers, dates and intervals; this covers what it does not: bool,
bytea, uuid, char(n) (padded as pgoutput sends it), varchar(n), name, `"char"`, arrays of
them with NULL elements, and the constructs where NULL decides (`||`, concat, IS [NOT]
DISTINCT FROM, IN / NOT IN lists holding NULL, ANY / ALL over arrays with NULLs, three-valued
AND / OR, IS UNKNOWN), plus integer overflow and division by zero on the row. Each check is
`Where.matches` on the row as Postgres prints it against Postgres's own `(expr)::text` for
that row: `(expr)::text = '<Postgres's text>'` must be true, and where Postgres fails on the
row the engine must say so (`ClauseFails`: the shape is retired, see test_failing_rows.py).
Out of tree (/work/wherefuzz/vfz2.py) 189 templates x 300 rows agreed in full.
`WHERE_SMALL_TYPES_SEED` explores other seeds.
"""

from __future__ import annotations

import os
import random

import psycopg

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import parse_where
from tests.sync_engine.shapes.where.test_value_fuzz import _columns, _engine_verdict, _quote

SEED = int(os.environ.get("WHERE_SMALL_TYPES_SEED", 20261206))

COLUMNS = [
    ("b", "bool"), ("b2", "bool"), ("by", "bytea"), ("by2", "bytea"), ("u", "uuid"),
    ("u2", "uuid"), ("t", "text"), ("t2", "text"), ("ch", "char(3)"), ("vc", "varchar(4)"),
    ("nm", "name"), ("qc", '"char"'), ("i2", "int2"), ("i4", "int4"), ("j4", "int4"),
    ("i8", "int8"), ("ia", "int4[]"), ("ia2", "int4[]"), ("ta", "text[]"), ("ba", "bool[]"),
    ("ua", "uuid[]"), ("n", "numeric"), ("f8", "float8"),
]  # fmt: skip

EXPRESSIONS = [
    # NULL handling
    "t || t2", "t || NULL", "concat(t, NULL, t2)", "concat(b, by, u, ch, nm, qc, ia)",
    "t || i4", "ch || t", "ch || ch", "nm || t", "vc || ch", "ta || t", "ia || i4",
    "ia || ia2", "t IS DISTINCT FROM t2", "t IS NOT DISTINCT FROM NULL",
    "b IS DISTINCT FROM b2", "u IS NOT DISTINCT FROM u2", "by IS DISTINCT FROM by2",
    "ia IS DISTINCT FROM ia2", "nm IS DISTINCT FROM t", "i4 IS DISTINCT FROM i8",
    "n IS DISTINCT FROM f8", "qc IS DISTINCT FROM 'a'", "i4 IN (j4, NULL)",
    "i4 NOT IN (j4, NULL)", "i4 NOT IN (1, NULL)", "t IN (t2, NULL, 'a')",
    "t NOT IN ('a', t2)", "NULL::int NOT IN (i4, j4)", "b IN (b2, true)", "b NOT IN (b2)",
    "u IN (u2, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')", "by IN (by2, '\\x41')",
    "ch IN ('ab', t)", "nm IN (t, 'a')", "i2 IN (i4, i8, n)", "n IN (f8, i4)",
    "ia IN (ia2, '{1,2}')", "i4 = ANY(ia)", "i4 <> ALL(ia)", "i4 < ANY(ia2)",
    "i4 >= ALL(ia)", "t = ANY(ta)", "t <> ALL(ta)", "b = ANY(ba)", "u = ANY(ua)",
    "t LIKE ANY(ta)", "ia @> ia2", "ia <@ ia2", "ia && ia2", "ta @> ARRAY[t]", "ia = ia2",
    # bool
    "b < b2", "b >= b2", "b AND b2", "b OR b2", "NOT b", "b IS TRUE", "b IS NOT FALSE",
    "b IS UNKNOWN", "greatest(b, b2)", "least(b, b2, NULL)", "b::int4", "i4::bool",
    "t::bool", "coalesce(b, b2, false)", "NULLIF(b, b2)", "(b AND i4 > 0) OR b2",
    # bytea, uuid
    "by < by2", "by >= by2", "length(by)", "by::text", "t::bytea", "greatest(by, by2)",
    "NULLIF(by, by2)", "u < u2", "u >= u2", "u::text", "t::uuid", "least(u, u2)",
    # char(n), varchar(n), name, "char"
    "ch = t", "ch::text", "ch::varchar", "length(ch)", "octet_length(ch)", "ch = 'ab '",
    "ch LIKE 'a%'", "ch LIKE '%  '", "ch < t", "coalesce(ch, t)", "ch::char(1)",
    "ch::char(5)", "t::char(2)", "vc::char(3)", "ch BETWEEN 'a' AND t", "qc = 'a'",
    "qc::text", "qc < 'b'", "qc IN ('a', 'b')", "nm = t", "nm < t", "nm::text", "length(nm)",
    "nm LIKE 'a%'", "greatest(nm, t)", "vc = t", "vc::varchar(2)", "t::varchar(2)",
    # integers at their edges, division by zero
    "i2 + i2", "i2 * i2", "i2 - i2", "i2 / i2", "i2 % i2", "-i2", "@ i2", "i2 / -1",
    "i2 % -1", "i4 / -1", "i8 / -1", "i8 % -1", "i4 * j4", "i8 * 2", "i8 + i8", "-i8",
    "abs(i8)", "abs(i2)", "i2 << 15", "i4 << 31", "i8 << 63", "i8 << 64", "~ i8",
    "i4 + 2147483647", "i8 - (-9223372036854775807 - 1)", "i8::int2", "i4::int2",
    "n::int8", "f8::int4", "n::int2", "i4 % 0", "n / 0", "f8 / 0", "i4 / (i4 - i4)",
]  # fmt: skip

UUIDS = [
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
    "80000000-0000-0000-0000-000000000000", "7fffffff-ffff-ffff-ffff-ffffffffffff",
]  # fmt: skip
TEXTS = [
    "", " ", "a", "A", "ab", "ab ", "yes", "on", "off", "1", " t ", "TRUE", "FaLsE", "of",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
    "\\x41", "\\x", "\\x4g", "\\\\", "\\101", "abc\\", "é", "ß", "12", "a%", "NULL", "\t",
]  # fmt: skip


def _row(rng: random.Random) -> list[str | None]:
    def integer(bits: int) -> str:
        lim = 2 ** (bits - 1)
        k = rng.random()
        if k < 0.3:
            return str(rng.choice([lim - 1, -lim, 0, 1, -1, lim // 2, -lim + 1]))
        return str(rng.randint(-5, 5) if k < 0.6 else rng.randint(-lim, lim - 1))

    def array(item: str) -> str:
        return "{" + ",".join(rng.choice([item, "NULL"]) for _ in range(rng.randint(0, 3))) + "}"

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def one(name: str) -> str:
        if name in ("b", "b2"):
            return rng.choice(["t", "f"])
        if name in ("by", "by2"):
            return "\\x" + bytes(rng.choice([0, 0x41, 0x80, 0xFF, rng.randrange(256)])
                                 for _ in range(rng.randint(0, 3))).hex()  # fmt: skip
        if name in ("u", "u2"):
            return rng.choice(UUIDS)
        if name in ("t", "t2"):
            return rng.choice(TEXTS)
        if name == "ch":
            return rng.choice(["", "a", "ab", "ab ", "abc", " a", "é"])
        if name == "vc":
            return rng.choice(["", "a", "ab", "ab ", "abcd", "é"])
        if name == "nm":
            return rng.choice(["", "a", "ab", "B", "é", "x" * 63])
        if name == "qc":
            return rng.choice(["a", "b", "", "é", " "])
        if name in ("i2", "i4", "j4", "i8"):
            return integer({"i2": 16, "i8": 64}.get(name, 32))
        if name in ("ia", "ia2"):
            return array(str(rng.randint(-2, 3)))
        if name == "ta":
            return array(quoted(rng.choice(TEXTS)))
        if name == "ba":
            return array(rng.choice(["t", "f"]))
        if name == "ua":
            return array(rng.choice(UUIDS))
        if name == "n":
            return rng.choice(
                ["0", "1", "-1", "2.5", "NaN", "1e20", "32767", "9223372036854775807"]
            )
        return rng.choice(["0", "-0", "2.5", "NaN", "Infinity", "1e300", "2147483647.5"])

    return [None if rng.random() < 0.2 else one(name) for name, _ in COLUMNS]


#: Postgres's `(expr)::text` for row `rid`, 'V' + text (or 'N' for NULL), or 'E' where the
#: expression fails on that row.
EVALUATE = (
    "CREATE FUNCTION ev(expr text, rid int) RETURNS text AS $$ "
    "DECLARE res text; BEGIN "
    "EXECUTE 'SELECT (' || expr || ')::text FROM sv WHERE id = $1' INTO res USING rid; "
    "RETURN CASE WHEN res IS NULL THEN 'N' ELSE 'V' || res END; "
    "EXCEPTION WHEN others THEN RETURN 'E'; END $$ LANGUAGE plpgsql"
)


def test_small_types_and_nulls_as_postgres(db_url: str) -> None:
    url = with_display_settings(db_url)
    rng = random.Random(SEED)
    names = ["id"] + [c for c, _ in COLUMNS]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE sv (id int PRIMARY KEY, "
            + ", ".join(f"{c} {t}" for c, t in COLUMNS)
            + ")"
        )
        conn.execute(EVALUATE)
        for key in range(24):
            conn.execute(
                f"INSERT INTO sv VALUES (%s, {', '.join(f'%s::text::{t}' for _, t in COLUMNS)})",
                [key, *_row(rng)],
            )
        # the values' text as pgoutput sends it (each type's output function: bpchar padded)
        select = ", ".join(
            f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in names
        )
        rows = [dict(zip(names, r, strict=True)) for r in conn.execute(f"SELECT {select} FROM sv")]
        columns = _columns(url, "sv")
        differ = []
        verdicts: dict[str, int] = {}
        for expr in EXPRESSIONS:
            pg: dict[str, str] = dict(
                conn.execute("SELECT id::text, ev(%s, id) FROM sv", (expr,)).fetchall()
            )
            for row in rows:
                answer = pg[row["id"]]
                clause = (
                    f"({expr})::text = {_quote(answer[1:])}"
                    if answer.startswith("V")
                    else f"({expr}) IS NULL"
                )
                where = parse_where(clause, {}, columns)  # (every expression is supported)
                verdict = _engine_verdict(where, row)
                if verdict is None:
                    continue
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                if verdict != ("error" if answer == "E" else "true"):
                    differ.append(
                        (expr, answer, verdict, {c: row[c] for c in where.referenced_columns})
                    )
    assert not differ, differ[:10]
    # (rows on which Postgres fails do occur, and most verdicts are values)
    assert verdicts.get("true", 0) > 2000 and verdicts.get("error", 0) > 50, verdicts

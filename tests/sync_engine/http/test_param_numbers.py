"""Numbers bound to `$n` (`params[n]`, `subset__params`, a POST body's `params`) select the
rows Postgres selects for the number sent, or are a 400 where Postgres refuses them.

Big numerics (123456789012345678901234567890.000000000000000000001), `1e400`, `NaN`,
`Infinity`, `-0` against int2/int4/int8/float4/float8/numeric columns. Where the engine
evaluates the clause itself (a shape's live rows), its verdict per row is Postgres's: first
for every (type, operator, value) with the engine's own evaluator (`parse_where`, as a live
change meets it), then through the engine's live path for a few. A subset is run by
Postgres, with the param's text: a JSON number must be that text as written, where a
double's nearest value (`1.2345678901234568e+29`) selected other rows than those asked for,
and a number past a double's range (`1` and 5,000 zeros, `1e400`) was 'params must be
valid JSON' (Electric's Jason reads such an integer; `1e400` it refuses, as `NaN`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import column_map, disagreements

TYPES = ("int2", "int4", "int8", "float4", "float8", "numeric")
BIG = "123456789012345678901234567890"
BIG_FRACTION = BIG + ".000000000000000000001"
HUGE = "1" + "0" * 5000
#: Row values, each stored in every column whose type takes it.
ROWS = ("0", "-0", "1", "-1", "5", "1.5", "2.5", "0.1", "32767", "2147483647",
        "9223372036854775807", "-9223372036854775808", "NaN", "Infinity", "-Infinity", BIG,
        BIG_FRACTION, "1e308", "3.4e38", "1e-300", "1e400", "-1e400", "1e-20")  # fmt: skip
#: Param values, as a client sends them.
PARAMS = (BIG_FRACTION, BIG, "1e400", "-1e400", "1e-400", "NaN", "nan", "-NaN", "Infinity",
          "-Infinity", "inf", "+Infinity", " -Infinity", "-0", "+0", "0", "-0.0", "1e308",
          "1e309", "3.4e38", "3.5e38", "1.4e-45", "1e-46", "1e-324", "9223372036854775807",
          "9223372036854775808", "-9223372036854775809", "2147483648", "32768", "1.5", "2.5",
          " 5 ", ".5", "5.", "00001", "1e2", "0x10", "1_000", HUGE, "0." + "0" * 1000 + "1",
          "1e131071", "1e131072", "1e-16383", "1e-16384", "1e", "", "+-1")  # fmt: skip
OPERATORS = ("=", "<", ">", "<>")


def _create(conn: psycopg.Connection[Any], table: str) -> None:
    columns = ", ".join(f"c_{t} {t}" for t in TYPES)
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, {columns})")


def _insert(conn: psycopg.Connection[Any], table: str) -> None:
    """Each of `ROWS` in every column that takes it, a row (and a transaction) each."""
    rid = 0
    for value in ROWS:
        for typ in TYPES:
            rid += 1
            try:
                with conn.transaction():
                    conn.execute(
                        f"INSERT INTO {table} (id, c_{typ}) VALUES (%s, %s::{typ})", (rid, value)
                    )
            except psycopg.DataError:
                pass  # (out of this type's range, or not a number to it)


def _postgres_takes(conn: psycopg.Connection[Any], value: str, typ: str) -> bool:
    try:
        conn.execute(f"SELECT %s::{typ}", (value,))
    except psycopg.DataError:
        return False
    return True


def test_live_verdicts_on_number_params_are_postgres(db_url: str) -> None:
    """Every (type, operator, value): the engine refuses the clause, or its verdict on every
    row is Postgres's for the same clause and value."""
    url = with_display_settings(db_url)
    compared = refused = 0
    wrong = []
    with psycopg.connect(url, autocommit=True) as conn:
        _create(conn, "nums")
        _insert(conn, "nums")
        names = ["id", *(f"c_{t}" for t in TYPES)]
        rows = {
            int(r[0]): dict(zip(names, r, strict=True))
            for r in conn.execute("SELECT " + ", ".join(f"{n}::text" for n in names) + " FROM nums")
        }
        columns = column_map(url, "nums")
        for typ in TYPES:
            for op in OPERATORS:
                for value in PARAMS:
                    try:
                        where = parse_where(f"c_{typ} {op} $1", {"1": value}, columns)
                    except WhereError:
                        refused += 1
                        continue
                    # (accepted: Postgres must take the value as the column's type too)
                    assert _postgres_takes(conn, value, typ), (typ, value[:40], where.sql[:80])
                    expected = {
                        r[0] for r in conn.execute(f"SELECT id FROM nums WHERE {where.sql}")
                    }
                    differ = disagreements(where, rows, expected)
                    if differ:
                        wrong.append((typ, op, value[:40], differ))
                    compared += 1
    assert not wrong, wrong[:10]
    # (what is compared: most values, of every type; NaN, Infinity, -0 and BIG among them)
    assert compared >= 400 and refused >= 300, (compared, refused)


#: (column type, operator, value) followed live through the engine.
LIVE_CASES = [
    ("numeric", "=", BIG_FRACTION), ("numeric", "=", BIG), ("numeric", ">", "1e400"),
    ("numeric", "<", "NaN"), ("numeric", ">", "Infinity"), ("numeric", "=", "-0"),
    ("float8", "=", "-0"), ("float8", ">", "Infinity"), ("float8", "=", "NaN"),
    ("float4", "=", "3.4e38"), ("int8", "<", "-9223372036854775807"), ("int2", "<>", "-0"),
]  # fmt: skip
#: Cases no row but the marker meets (a value past every row).
NONE_EXPECTED = {("numeric", ">")}


async def test_live_rows_of_number_params_are_postgres_rows(engine: Engine) -> None:
    """Shapes made while the table is empty: every row comes live, filtered by the engine;
    the rows each shape holds are those Postgres selects for its clause."""
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        _create(conn, "nums")
    follows = []
    for typ, op, value in LIVE_CASES:
        params = {"table": "nums", "where": f"c_{typ} {op} $1 OR id = 0", "params[1]": value}
        rows, handle, offset = await engine.sync(**params)
        assert rows == {}, (typ, op, value)
        follows.append((params, handle, offset))
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        _insert(conn, "nums")
        conn.execute("INSERT INTO nums (id) VALUES (0)")  # (the marker: every shape's)
        for (typ, op, value), (params, handle, offset) in zip(LIVE_CASES, follows, strict=True):
            rows = {}
            await engine.follow_live(rows, handle, offset, "0", **params)
            expected = conn.execute(
                f"SELECT id FROM nums WHERE c_{typ} {op} %s::{typ} OR id = 0", (value,)
            ).fetchall()
            got = sorted(int(r["id"]) for r in rows.values())
            assert got == sorted(r[0] for r in expected), (typ, op, value[:40])
            assert len(got) > 1 or (typ, op) in NONE_EXPECTED, (typ, op, value[:40])


#: (column type, operator, a JSON number as sent, Postgres's refusal or None).
SUBSET_CASES = [
    ("numeric", "=", BIG_FRACTION, None), ("numeric", "=", BIG, None),
    ("numeric", ">", HUGE, None), ("numeric", "<", "-" + HUGE, None),
    ("numeric", "<", "1e400", None), ("numeric", "=", "1.50", None), ("float8", "=", "-0.0", None),
    ("float8", ">", "1e400", '"1e400" is out of range for type double precision'),
    ("int4", "=", "1e400", 'invalid input syntax for type integer: "1e400"'),
    ("int8", "<", "-9223372036854775809", "out of range for type bigint"),
]  # fmt: skip


@pytest.mark.parametrize("form", ["url", "body", "body-string"])
async def test_subset_json_numbers_are_bound_as_written(engine: Engine, form: str) -> None:
    """A subset's JSON number selects what Postgres selects for it as written, or is
    Postgres's refusal; NaN and Infinity are not JSON (Electric's Jason refuses them)."""
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        _create(conn, "nums")
        _insert(conn, "nums")
    _, handle, _ = await engine.sync(table="nums")
    shape = {"table": "nums", "offset": "-1", "handle": handle}
    for typ, op, number, refusal in [*SUBSET_CASES, ("numeric", "=", "NaN", "JSON"),
                                     ("float8", "<", "-Infinity", "JSON")]:  # fmt: skip
        where = f"c_{typ} {op} $1"
        params_json = '{"1":' + number + "}"
        if form == "url":
            resp = await engine.client.get(
                "/v1/shape", params={**shape, "subset__where": where, "subset__params": params_json}
            )
        else:
            params = params_json if form == "body" else '"' + params_json.replace('"', '\\"') + '"'
            body = '{"where":"' + where + '","params":' + params + "}"
            resp = await engine.client.post(
                "/v1/shape", params=shape, data=body, headers={"content-type": "application/json"}
            )
        answer = await resp.json()
        case = (typ, op, number[:40])
        if refusal == "JSON" and form == "body":  # (the body itself is not JSON)
            assert resp.status == 400, (case, answer)
            assert answer["error"] == "Invalid JSON in request body", (case, answer)
            continue
        if refusal == "JSON":
            assert resp.status == 400, (case, answer)
            assert answer["errors"] == {"subset": {"params": ["params must be valid JSON"]}}
            continue
        if refusal is not None:
            assert resp.status == 400, (case, answer)
            assert refusal in answer["errors"]["subset"]["where"][0], (case, answer)
            continue
        assert resp.status == 200, (case, answer)
        got = sorted(int(m["value"]["id"]) for m in answer["data"])
        expected = engine.sql(f"SELECT id FROM nums WHERE c_{typ} {op} %s::{typ}", (number,))
        assert got == sorted(r[0] for r in expected), case
        assert got or op == ">", case  # (each selects some rows, but past the largest)

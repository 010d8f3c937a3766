"""Numbers cast to float4 are rounded once, as Postgres rounds them (strtof, C's (float)).

The engine read a text or numeric as the nearest double and rounded that to float4: two
roundings, wrong where the double lands on the midpoint between two float4s that the
number itself is not on. '1.000000059604644775390625000001'::float4 is 1.0000001 in
Postgres, 1 by way of the double, so `num::float4 = 1` matched live a row Postgres does not
match (and `num::float4 > 1` missed one); likewise an int8 past 2^53 (C's (float) of an
int64 rounds once) and the numbers at the edges of float4's range (just past the largest
float4's midpoint: out of range, or not; just past half the smallest: 1e-45 or an
underflow error). Found by hand after the differential fuzz (/work/where-fuzz).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal, getcontext
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import parse_where
from tests.sync_engine.shapes.where.columns import (
    VERDICT_FUNCTION,
    agrees,
    column_map,
    engine_verdict,
)


def _midpoints() -> list[Decimal]:
    """Midpoints between adjacent float4s at several magnitudes, exactly."""
    getcontext().prec = 200
    out = []
    for low, ulp in [
        (Decimal(1), Decimal(2) ** -23),  # 1 and 1 + 2^-23
        (Decimal(2) ** 33, Decimal(2) ** 10),
        (Decimal(2) ** -100, Decimal(2) ** -123),
        (Decimal(2) ** 128 - Decimal(2) ** 104, Decimal(2) ** 104),  # past FLT_MAX
        (Decimal(0), Decimal(2) ** -149),  # 0 and the smallest subnormal
        (Decimal(2) ** -126 - Decimal(2) ** -149, Decimal(2) ** -149),  # subnormal / normal
        (Decimal("0.1") - Decimal("0.1") % (Decimal(2) ** -27), Decimal(2) ** -27),
    ]:
        out.append(low + ulp / 2)
        out.append(low + ulp + ulp / 2)  # (a midpoint above an odd and an even mantissa)
    return out


def _texts() -> list[str]:
    texts = []
    for m in _midpoints():
        tiny = m.copy_abs() * Decimal("1e-35") or Decimal("1e-80")
        for v in (m, m + tiny, m - tiny):
            for sign in ("", "-"):
                texts.append(sign + format(v.normalize(), "f"))
    return texts


#: int8s on and beside float4 midpoints past 2^53 (where a double cannot hold them)
INTS = [2**60 + 2**36 + d for d in (-1, 0, 1)] + [2**62 + 3 * 2**38 + d for d in (-1, 0, 1)]


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, dict[str, Any]]]]:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text, num numeric, i8 int8)")
        conn.execute(VERDICT_FUNCTION)
        rows: dict[int, dict[str, Any]] = {}
        values: list[tuple[str | None, str | None]] = [(t, None) for t in _texts()]
        values += [(None, str(sign * i)) for i in INTS for sign in (1, -1)]
        for i, (t, i8) in enumerate(values):
            conn.execute("INSERT INTO d VALUES (%s, %s, %s::numeric, %s)", (i, t, t, i8))
            rows[i] = {"id": str(i), "t": t, "num": t, "i8": i8}
        yield conn, column_map(url), rows


CLAUSES = [
    "t::float4 = 1", "num::float4 = 1", "num::float4 > 1", "t::float4 > 0",
    "t::float4::float8 = t::float8", "num::float4::text LIKE '%e-45'", "num::float4 = 0",
    "t::float4 IS NOT NULL", "num::float4 IS NOT NULL", "i8::float4 > 1152921573326323712",
    "i8::float4 < -1152921573326323712", "i8::float4 = i8::float8",
    "i8::float4::text LIKE '%69e+18'", "t::float4 = '3.4028235e38'",
    "num::float4 < -1.7014118e38", "(t::float4 = 1) IS NOT TRUE",
]  # fmt: skip


def test_float4_casts_round_once_as_postgres(
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
                continue
            decided += 1
            if not agrees(got, verdicts[rid]):
                wrong.append((clause, row["t"] or row["i8"], verdicts[rid], got))
    assert not wrong, "\n".join(map(repr, wrong))
    assert decided >= len(CLAUSES) * len(rows) * 9 // 10, decided

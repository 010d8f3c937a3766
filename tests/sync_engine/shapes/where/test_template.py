"""A clause built from a template (shapes/where/template.py) equals the full parse of it.

`parse_where` builds a clause whose form it has seen (the same parse tree but for integer
literals) from that form's template; `full_parse` is the long way. For the differential
grammar's clauses and variants of them with other integers, both must give the same SQL,
index, columns and value on every row, or the same error, word for word (with its location).
test_differential.py checks such variants against Postgres.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import Where, WhereError, parse_where
from sync_engine.shapes.where.clause import TEMPLATES, full_parse

from .test_differential import COLUMNS as D_COLUMNS
from .test_differential import SEED, _row, clauses, integer_variant

C_UTF8 = "c|C.UTF-8|C.UTF-8|t"


def _col(
    name: str, type_name: str, elem: str | None = None, kind: str = "b", mod: int = -1
) -> ColumnInfo:
    collation = C_UTF8 if (elem or type_name) in ("text", "varchar", "bpchar") else None
    return ColumnInfo(
        name, 1, 0, type_name, elem, kind, mod, 1 if elem else 0, False, None, False, collation
    )


#: Table `d` of test_differential.py as the catalog describes it.
TYPES = {
    "id": _col("id", "int4"), "i2": _col("i2", "int2"), "i4": _col("i4", "int4"),
    "i8": _col("i8", "int8"), "num": _col("num", "numeric"), "f4": _col("f4", "float4"),
    "f8": _col("f8", "float8"), "t": _col("t", "text"), "vc": _col("vc", "varchar", mod=44),
    "ch": _col("ch", "bpchar", mod=8), "b": _col("b", "bool"), "d": _col("d", "date"),
    "ts": _col("ts", "timestamp"), "tz": _col("tz", "timestamptz"),
    "iv": _col("iv", "interval"), "tm": _col("tm", "time"), "u": _col("u", "uuid"),
    "ia": _col("ia", "_int4", "int4"), "ta": _col("ta", "_text", "text"),
    "e": _col("e", "mood", kind="e"),
}  # fmt: skip
assert list(TYPES) == [n for n, _ in D_COLUMNS]

ROWS = [
    dict(zip(TYPES, _row(rng, i), strict=True)) for rng in [random.Random(SEED)] for i in range(40)
]


def outcome(parse: Callable[[], Where]) -> object:
    """Everything a caller sees of a parse: the Where's parts and its value on every row, or
    the error."""
    try:
        where = parse()
    except WhereError as e:
        return ("error", str(e))
    values: list[object] = []
    for row in ROWS:
        try:
            values.append(where.value(row))
        except UnrepresentableValue as e:
            values.append(("unrepresentable", str(e)))
        except Exception as e:
            values.append(("error", type(e).__name__))
    return (where.sql, where.source, where.index, where.referenced_columns, values)


def same(sql: str, columns: dict[str, ColumnInfo] = TYPES) -> None:
    assert outcome(lambda: parse_where(sql, {}, columns)) == outcome(
        lambda: full_parse(sql, {}, columns)
    ), sql


def test_variants_of_the_differential_clauses_equal_their_full_parse() -> None:
    rng = random.Random(SEED + 2)
    hits = TEMPLATES.hits
    variants = 0
    for clause in clauses(SEED, 260):
        same(clause)  # leaves the template when accepted
        for _ in range(3):
            variant = integer_variant(clause, rng)
            if variant != clause:
                variants += 1
                same(variant)
    assert variants > 150
    assert TEMPLATES.hits - hits > variants // 3  # the template path did run


@pytest.mark.parametrize(
    "first, then",
    [
        ("i4 = 5", ["i4 = 6", "i4 = 0", "i4 = 2147483647", "i4=17 /* comment */", "(i4 = 8)"]),
        ("i4 = -5", ["i4 = -6", "i4 = - 7", "i4 = -0", "i4 = 5"]),
        ("i4 IN (1, 2, 3)", ["i4 IN (4, 5, 6)", "i4 IN (0, 0, 0)", "i4 IN (1, 2)"]),
        ("ia[1] = 2", ["ia[3] = 4", "ia[0] = 0", "ia[2147483647] = 1"]),
        ("vc::varchar(3) = 'abc'", ["vc::varchar(2) = 'abc'", "vc::varchar(3) = 'ab'"]),
        ("ch::char(2) = 'a'", ["ch::char(1) = 'a'", "ch::char(3) = 'a'"]),
        ("iv < interval '1' day", ["iv < interval '2' day", "iv < interval '2' hour"]),
        ("i2 = 1", ["i2 = 32767", "i2 = 32768", "i2 = 99999"]),
        ("i4 + 2 * 3 = 1", ["i4 + 2147483647 * 2 = 1", "i4 + 7 * 8 = 9"]),
        ("i4 = 1 OR i4 = 1 / 2", ["i4 = 100000 OR i4 = 1 / 0", "i4 = 1 OR i4 = 100 / 0"]),
        ("i4 << 3 > 0", ["i4 << 31 > 0", "i4 << 64 > 0"]),
        ("i8 = 5", ["i8 = 2147483648", "i8 = 9223372036854775807", "i8 = 6"]),
        ("d + 1 > '2024-01-01'", ["d + 999999 > '2024-01-01'", "d + 3 > '2024-01-01'"]),
        ("b AND i4 = 1", ["b AND i4 = 2", "NOT b AND i4 = 2"]),
        ("i4 BETWEEN 1 AND 10", ["i4 BETWEEN 10 AND 1", "i4 BETWEEN SYMMETRIC 10 AND 1"]),
        ("substr(t, 1, 2) = 'ab'", ["substr(t, 0, 2) = 'ab'", "substr(t, 2, 0) = 'ab'"]),
    ],
)
def test_forms_whose_integers_change_equal_their_full_parse(first: str, then: list[str]) -> None:
    same(first)
    for sql in then:
        same(sql)


def test_the_same_clause_on_columns_of_other_types_is_compiled_for_them() -> None:
    """The template key holds the columns: `x = 5` on an int4, an int8, a numeric and a
    text column are four compiles (the last an error), never one shared result."""
    tables = [
        {"x": _col("x", t), "id": _col("id", "int4")} for t in ("int4", "int8", "numeric", "text")
    ]
    for n, table in enumerate(tables):
        same(f"x = {5 + n}", table)
        same(f"x = {50 + n}", table)
    keys = [parse_where("x = 7", {}, table).index for table in tables[:3]]
    assert [(k[0], sorted(map(repr, k[1]))) if k else None for k in keys] == [
        ("x", ["7"]),
        ("x", ["7"]),
        ("x", ["Decimal('7')"]),
    ]
    with pytest.raises(WhereError, match="integer"):
        parse_where("x = 7", {}, tables[3])


def test_parameters_take_the_full_path() -> None:
    same("i4 = 1")
    hits = TEMPLATES.hits
    a = parse_where("i4 = $1", {"1": "7"}, TYPES)
    b = parse_where("i4 = $1", {"1": "8"}, TYPES)
    assert (a.sql, b.sql) == ("i4 = CAST('7' AS int4)", "i4 = CAST('8' AS int4)")
    assert TEMPLATES.hits == hits


def test_a_nul_byte_is_never_served_from_a_template() -> None:
    """libpg_query reads a NUL as the end of the text, so `b\\0` had the skeleton of `b`:
    once `b`'s template existed (its second parse), `b\\0` was accepted as `b`, where the
    full path refuses it (as Postgres does: 0x00 is no UTF-8 text). Found by wherefuzz's
    parser fuzz (/work/wherefuzz/pz.py seed 3). The engine's HTTP layer refuses a NUL in
    any parameter before this, so the same clause only ever got one answer there."""
    for _ in range(3):  # (pending, then template, then a hit)
        parse_where("b", {}, TYPES)
    for sql in ["b\0", "b\0 OR true", "i4 = 1\0"]:
        with pytest.raises(WhereError, match="0x00"):
            parse_where(sql, {}, TYPES)

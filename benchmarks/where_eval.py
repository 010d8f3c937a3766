"""Where-clause evaluation cost per replication row (`Where.matches`).

Targets: under 2 µs for `id = 5` on a 5-column row, under 10 µs for a 3-conjunct clause.
Run: `.venv/bin/python benchmarks/where_eval.py`.
"""

from __future__ import annotations

import timeit

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.shapes.where import Where, parse_where


def _col(name: str, type_name: str, attnum: int) -> ColumnInfo:
    collation = "c|C.UTF-8|C.UTF-8|t" if type_name == "text" else None  # as load_table reads it
    return ColumnInfo(name, attnum, 0, type_name, None, "b", -1, 0, False, None, False, collation)


COLUMNS = {
    c.name: c
    for c in [
        _col("id", "int4", 1),
        _col("title", "text", 2),
        _col("done", "bool", 3),
        _col("created", "timestamptz", 4),
        _col("price", "numeric", 5),
    ]
}

ROW = {
    "id": "5",
    "title": "buy milk",
    "done": "f",
    "created": "2024-01-01 12:00:00+00",
    "price": "10.50",
}

CASES = [
    ("id = 5", 2.0),
    ("id = 5 AND title LIKE 'buy%' AND NOT done", 10.0),
    ("id > 1 AND created > '2023-06-01' AND price < 100", 10.0),
    ("id IN (1, 2, 3, 4, 5) OR title ILIKE '%MILK%'", 10.0),
]


def main() -> None:
    for sql, target in CASES:
        where = parse_where(sql, {}, COLUMNS)
        assert where.matches(ROW)
        n = 200_000

        def matches(w: Where = where) -> bool:
            return w.matches(ROW)

        best = min(timeit.repeat(matches, number=n, repeat=5)) / n * 1e6
        status = "ok" if best < target else "SLOW"
        print(f"{best:6.2f} µs  (target < {target:4.1f} µs, {status})  {sql}")
    parse = min(timeit.repeat(lambda: parse_where(CASES[1][0], {}, COLUMNS), number=200,
                              repeat=3)) / 200 * 1e6  # fmt: skip
    print(f"{parse:6.1f} µs  parse_where (3-conjunct clause, once per shape)")


if __name__ == "__main__":
    main()

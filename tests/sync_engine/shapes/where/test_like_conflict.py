"""LIKE between two different implicit collations, with a pattern Postgres's planner makes
a constant.

LIKE itself needs no collation, so `a LIKE b` of a "C" and a "POSIX" column runs. But the
planner estimates `a LIKE <constant>` from a's statistics, comparing the pattern's fixed
prefix under the operation's collation, which a conflict leaves unset: once the table is
analyzed, `a LIKE coalesce('w1', b)` (the planner folds the coalesce to its constant) fails
with "could not determine which collation to use for string comparison", though it ran
before ANALYZE. The engine accepted it: a shape made before autovacuum's ANALYZE served
live rows, a new client of the same shape got a failed snapshot (collation fuzz, seed 12:
`nd LIKE coalesce(lower(upper('i\u0307')), ucs) ESCAPE '!'`). Now such a LIKE is refused
unless its pattern is a column; `a LIKE b` is still evaluated.
"""

from __future__ import annotations

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.shapes.where.test_collation import _engine_columns, _verdict


@pytest.mark.parametrize("analyzed", [False, True])
def test_like_under_a_conflict_is_refused_unless_the_pattern_is_a_column(
    db_url: str, analyzed: bool
) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE cq (id int PRIMARY KEY, a text COLLATE "C", b text COLLATE "POSIX")'
        )
        conn.execute(
            "INSERT INTO cq SELECT i, 'w' || (i % 37), 'v' || i FROM generate_series(1, 500) i"
        )
        if analyzed:
            conn.execute("ANALYZE cq")
        rows = {
            int(r[0]): {"id": str(r[0]), "a": r[1], "b": r[2]}
            for r in conn.execute("SELECT id, a, b FROM cq")
        }
        columns = _engine_columns(url, "cq")
        # (raises where the engine accepts what Postgres fails on, or answers otherwise)
        for clause in ["a LIKE coalesce('w1', b)", "a LIKE ANY(ARRAY[coalesce('w1', b)])",
                       "a LIKE coalesce('w1%', b)", "a NOT LIKE coalesce('w1', b) ESCAPE '!'",
                       "(a || '') LIKE coalesce('w1', b)"]:  # fmt: skip
            assert _verdict(conn, "cq", columns, rows, clause).startswith("refused"), clause
        with pytest.raises(WhereError, match="could not determine which collation to use"):
            parse_where("a LIKE coalesce('w1', b)", {}, columns)
        for clause in ["a LIKE b", "a NOT LIKE b", "b LIKE a", "a LIKE 'w1%'", "a LIKE ANY(ARRAY[b])",
                       "a LIKE coalesce('w1', b) COLLATE \"C\""]:  # fmt: skip
            assert _verdict(conn, "cq", columns, rows, clause) == "agrees", clause

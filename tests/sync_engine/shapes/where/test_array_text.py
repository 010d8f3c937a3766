"""Array text the engine's parser reads otherwise than Postgres: non-ASCII whitespace and a
trailing comma.

Postgres trims only ASCII whitespace around an unquoted array element (array_isspace), and
prints an element holding an NBSP or an em space unquoted (`{ a}` for ARRAY[U&'\\00A0a']);
the engine's parser trimmed every Unicode space, so such a row's element read 'a':
`ta @> '{a}'` matched it, and `ta @> ARRAY[U&'\\00A0a']` did not. Such a row is now one the
engine cannot read (UnrepresentableValue: the replicator asks Postgres), such a literal a
400, and such keys are not used by the router. `{1,2,}` is malformed in Postgres (the engine
read {1,2}): an error for a row's text cast, a 400 for a literal.
"""

from __future__ import annotations

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.pg.values import UnrepresentableValue
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.clause import ClauseFails
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.shapes.where.columns import column_map

NBSP, EM = "\u00a0", "\u2003"


def test_rows_and_literals_with_unicode_space_or_a_trailing_comma(db_url: str) -> None:
    url = with_display_settings(db_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, ta text[], t text)")
        conn.execute(
            "INSERT INTO d VALUES (1, %s, '{1,2,}'), (2, '{a}', '{1,2}'), (3, %s, %s)",
            ([NBSP + "a"], ["b" + EM], "{" + NBSP + "1}"),
        )
        rows = {
            r[0]: {"id": str(r[0]), "ta": r[1], "t": r[2]}
            for r in conn.execute("SELECT id, ta::text, t FROM d")
        }
        assert rows[1]["ta"] == "{" + NBSP + "a}"  # (unquoted: Postgres sees no space)
        columns = column_map(url)
        where = parse_where("ta @> '{a}'", {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        assert expected == {2}
        assert where.matches(rows[2])
        for i in (1, 3):  # the engine cannot read them: Postgres is asked
            with pytest.raises(UnrepresentableValue):
                where.matches(rows[i])
        # the cast of '{1,2,}' fails in Postgres (not {1,2}): so does the engine
        with pytest.raises(ClauseFails):
            parse_where("t::int4[] = '{1,2}'", {}, columns).matches(rows[1])
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("SELECT '{1,2,}'::int4[]")
        for literal in ["'{1,2,}'", "'{a,}'"]:
            with pytest.raises(WhereError, match="malformed array literal"):
                parse_where(f"ta = {literal}", {}, columns)
        with pytest.raises(WhereError, match="non-ASCII whitespace"):
            parse_where("ta = '{" + NBSP + "a}'", {}, columns)
        where = parse_where("ta IN (ARRAY[U&'\\00A0a'], '{x}')", {}, columns)
        assert where.index is None  # (the router would read the row's element as 'a')


async def test_an_element_with_unicode_space_arrives_live_as_postgres_says(
    engine: Engine,
) -> None:
    """Live: the shape `ta @> '{a}'` gets the row '{a}' but not the row [NBSP + 'a'] (the
    engine trimmed it and sent it), and `ta IN (ARRAY[NBSP + 'a'], '{x}')` gets that one."""
    engine.sql("CREATE TABLE d (id int PRIMARY KEY, ta text[])")
    for where, want in [
        ("ta @> '{a}' OR id = 99", ["2", "99"]),
        ("ta IN (ARRAY[U&'\\00A0a'], '{x}') OR id = 99", ["1", "99"]),
    ]:
        engine.sql("DELETE FROM d")
        rows, handle, offset = await engine.sync(table="d", where=where)
        engine.sql("INSERT INTO d VALUES (1, %s), (2, '{a}'), (99, NULL)", ([NBSP + "a"],))
        await engine.follow_live(rows, handle, offset, "99", table="d", where=where)
        assert sorted(r["id"] for r in rows.values()) == want, where

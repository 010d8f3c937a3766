"""`v::varchar(n)` / `v::char(n)` of a type with a cast of a user's to text only: Postgres
converts through the type's output function (no cast to varchar or bpchar exists, so its
coercion is an I/O conversion), not through the user's function. The engine refused these
as a cast to text (1dd4ef93); now it evaluates them, and a live row is judged as Postgres
judges it (differential: each clause's live rows against `SELECT ... WHERE`). A cast to
text itself, and a cast of the user's to varchar, stay refused.

Real path: the in-process engine over HTTP, rows inserted after the snapshot, live.
"""

from __future__ import annotations

import pytest

from tests.sync_engine.engine_harness import Engine

CLAUSES = [
    "v::varchar(5) = 'happy'",
    "v::varchar(3) = 'hap'",
    "v::character varying(2) = 'sa'",
    "CAST(v AS varchar(4)) = 'happ' OR v::char(2) = 'sa'",
    "v::char(10) = 'sad'",
]


@pytest.mark.parametrize("where", CLAUSES)
async def test_a_cut_cast_of_a_type_with_its_own_text_cast_is_postgres_s(
    engine: Engine, where: str
) -> None:
    engine.sql("CREATE TYPE mood AS ENUM ('happy', 'sad', 'hapless')")
    engine.sql(
        "CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE sql IMMUTABLE"
        " AS $$ SELECT 'X' || concat($1, '') $$"
    )
    engine.sql("CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood)")
    engine.sql("CREATE TABLE m (id int PRIMARY KEY, v mood)")
    engine.sql("INSERT INTO m VALUES (1, 'happy'), (2, 'sad')")
    marker = f"({where}) OR id = 99"
    rows, handle, offset = await engine.sync(table="m", where=marker)
    engine.sql("INSERT INTO m VALUES (3, 'happy'), (4, 'sad'), (5, 'hapless'), (6, NULL)")
    engine.sql("INSERT INTO m VALUES (99, NULL)")
    await engine.follow_live(rows, handle, offset, "99", table="m", where=marker)
    expected = sorted(str(r[0]) for r in engine.sql(f"SELECT id FROM m WHERE {marker}"))
    assert sorted(r["id"] for r in rows.values()) == expected, where


async def test_the_cast_to_text_itself_and_a_user_s_cast_to_varchar_stay_refused(
    engine: Engine,
) -> None:
    engine.sql("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    engine.sql(
        "CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE sql IMMUTABLE"
        " AS $$ SELECT 'X' || concat($1, '') $$"
    )
    engine.sql("CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood)")
    engine.sql(
        "CREATE FUNCTION mood_vc(mood) RETURNS varchar LANGUAGE sql IMMUTABLE"
        " AS $$ SELECT 'Y' || concat($1, '') $$"
    )
    engine.sql("CREATE TABLE m (id int PRIMARY KEY, v mood)")
    status, _h, body = await engine.get(table="m", offset="-1", where="v::text = 'Xhappy'")
    assert status == 400 and "its own cast from mood to text" in body["errors"]["where"][0]
    engine.sql("CREATE CAST (mood AS varchar) WITH FUNCTION mood_vc(mood)")
    status, _h, body = await engine.get(table="m", offset="-1", where="v::varchar(3) = 'Yha'")
    assert status == 400, body
    assert "its own cast from mood to varchar" in body["errors"]["where"][0], body

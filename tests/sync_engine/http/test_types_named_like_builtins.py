"""A type anyone can create may carry a built-in type's name (`CREATE TYPE public.uuid AS
ENUM ...`) and a cast to text its owner made. The snapshot decided by the type's *name*
whether `col::text` was Postgres's output text, so such a type's cast ran in the snapshot
(values and keys), while pgoutput sends the output function's text (review HIGH,
the name-only half of fidelity 08:40). The same for an array of a type someone made, or of a
domain, which its owner may give a cast to text too, and for a domain over such a type.
Values and keys must be the output function's text whatever casts exist.
"""

from __future__ import annotations

from tests.sync_engine.engine_harness import Engine


async def test_a_type_named_like_a_builtin_keeps_its_output_text(engine: Engine) -> None:
    engine.sql("CREATE TYPE public.uuid AS ENUM ('happy', 'sad')")
    engine.sql("CREATE TYPE public.int4 AS (a integer, b text)")
    engine.sql("CREATE DOMAIN dmood AS public.uuid")
    engine.sql("CREATE TYPE tag AS ENUM ('red', 'blue')")
    for t in ("public.uuid", "public.int4", "tag[]"):
        fn = t.replace("public.", "").replace("[]", "_arr") + "_txt"
        engine.sql(
            f"CREATE FUNCTION public.{fn}({t}) RETURNS text LANGUAGE sql IMMUTABLE"
            " AS $$ SELECT 'CAST' $$"
        )
        engine.sql(f"CREATE CAST ({t} AS text) WITH FUNCTION public.{fn}({t})")
    engine.sql(
        "CREATE TABLE cu (id public.uuid PRIMARY KEY, p public.int4, d dmood, tags tag[], n int)"
    )
    engine.sql("INSERT INTO cu VALUES ('happy', ROW(1, 'x'), 'sad', '{red,blue}', 0)")
    # (Postgres: `::text` runs the owner's cast; the output function does not)
    assert engine.sql("SELECT id::text, tags::text FROM cu") == [("CAST", "CAST")]

    rows, handle, offset = await engine.sync(table="cu", replica="full")
    engine.sql("UPDATE cu SET n = 1")
    status, _, body = await engine.get(
        table="cu", replica="full", offset=offset, handle=handle, live="true"
    )
    assert status == 200, body
    (live,) = [m for m in body if "key" in m]
    want = {"id": "happy", "p": "(1,x)", "d": "sad", "tags": "{red,blue}"}
    assert list(rows) == ['"public"."cu"/"happy"'], rows
    assert rows['"public"."cu"/"happy"'] == {**want, "n": "0"}, rows
    assert live["key"] == '"public"."cu"/"happy"', live
    assert live["value"] == {**want, "n": "1"}, live

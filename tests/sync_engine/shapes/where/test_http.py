"""Where clauses through the engine's HTTP API: live filtering equals the snapshot's, and
refused or malformed clauses are 400s with Electric's error body.

The live half is the user-visible form of the differential test: with the shape
`upper(owner) = 'STRASSE'` (a policy filter `upper(owner) = upper({{sub}})` for the user
`strasse`), the row of user `straße` must not arrive live, as Postgres does not return it
in a snapshot either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from tests.sync_engine.engine_harness import Engine, apply


async def _live_rows(engine: Engine, where: str, inserts: list[str]) -> set[str]:
    """Sync the shape, insert one row per owner, return the owners the client ends with."""
    engine.sql("DELETE FROM docs")
    rows, handle, offset = await engine.sync(table="docs", where=where)
    assert rows == {}
    for i, owner in enumerate(inserts):
        engine.sql("INSERT INTO docs VALUES (%s, %s)", (100 + i, owner))
    engine.sql("INSERT INTO docs VALUES (999, 'marker')")  # matches every shape below
    for _ in range(50):
        status, h, body = await engine.get(
            table="docs", where=where, offset=offset, handle=handle, live="true"
        )
        assert status == 200, body
        apply(rows, body)
        offset = h["electric-offset"]
        if any(r["owner"] == "marker" for r in rows.values()):
            break
    snapshot = {r[0] for r in engine.sql(f"SELECT owner FROM docs WHERE {where}")}
    live = {r["owner"] for r in rows.values()}
    assert live == snapshot, (where, live, snapshot)
    return live - {"marker"}


async def test_live_rows_equal_the_snapshot_for_case_mapping(engine: Engine) -> None:
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    owners = ["straße", "STRASSE", "strasse", "İstanbul", "istanbul", "ǅemal", "ﬁsh", "FISH"]
    got = await _live_rows(engine, "upper(owner) = 'STRASSE' OR owner = 'marker'", owners)
    assert got == {"STRASSE", "strasse"}  # not "straße": Postgres maps ß to itself
    got = await _live_rows(engine, "lower(owner) = 'istanbul' OR owner = 'marker'", owners)
    assert got == {"İstanbul", "istanbul"}
    got = await _live_rows(engine, "owner ILIKE 'fi%' OR owner = 'marker'", owners)
    assert got == {"FISH"}  # the ligature ﬁ lowers to itself
    got = await _live_rows(engine, "owner || NULL IS NULL", owners)
    assert got == set(owners)


async def _error(engine: Engine, **params: Any) -> dict[str, Any]:
    status, _h, body = await engine.get(table="docs", offset="-1", **params)
    assert status == 400, body
    return dict(body)


async def test_syntax_error_body_is_electrics(engine: Engine) -> None:
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    body = await _error(engine, where="1 x 1")
    assert body == {
        "message": "Invalid request",
        "errors": {"where": ['At location 17: syntax error at or near "x"']},
    }


async def test_subquery_in_a_shape_where_is_refused_as_not_supported_yet(engine: Engine) -> None:
    """Not as "not allowed in subsets": the shape's where is not a subset."""
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    engine.sql("CREATE TABLE allowed (id int PRIMARY KEY)")
    body = await _error(engine, where="id IN (SELECT id FROM allowed)")
    assert body["message"] == "Invalid request"
    (message,) = body["errors"]["where"]
    assert message.startswith("At location 3: subqueries are not supported yet"), message


async def test_deep_and_huge_clauses_are_400s_naming_the_limit(engine: Engine) -> None:
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    for where in ["- " * 500 + "id = 1", "NOT " * 500 + "true", "id" + "+1" * 500 + " = 1"]:
        body = await _error(engine, where=where)
        assert "nested too deeply (more than 100 levels)" in body["errors"]["where"][0]


async def test_refused_construct_is_named(engine: Engine) -> None:
    engine.sql('CREATE TABLE docs (id int PRIMARY KEY, owner text COLLATE "und-x-icu")')
    body = await _error(engine, where="upper(owner) = 'A'")
    assert 'upper() is not supported under collation "ICU und"' in body["errors"]["where"][0]
    body = await _error(engine, where="owner < 'b'")
    assert "text comparison < is not supported" in body["errors"]["where"][0]
    body = await _error(engine, where="id::numeric ^ 2 = 4")
    assert "operator ^ on numeric is valid in Postgres" in body["errors"]["where"][0]
    status, _h, _b = await engine.get(table="docs", offset="-1", where="owner = 'a'")
    assert status == 200  # equality does not depend on the (deterministic) collation


async def test_char_n_through_casts_live_equals_the_snapshot(engine: Engine) -> None:
    """char(n) compared as itself, as text, and as text cast again (the router's index and
    the live filter both): a row arriving live matches exactly where Postgres says."""
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner char(6))")
    for where in ["owner = 'ß'", "owner::text = 'ß'", "owner::text::varchar = 'ß'",
                  "owner::text::varchar IN ('ß', 'x')", "(owner::text::varchar || '|') = 'ß|'"]:  # fmt: skip
        live = await _live_rows(engine, f"({where}) OR owner = 'marker'", ["ß", "ß ", "ßß", " ß"])
        assert live == {"ß     "}, where


async def test_a_malformed_enum_array_literal_is_a_400(engine: Engine) -> None:
    """`e = ANY('x')` raised a ValueError past the where checks (a 500)."""
    engine.sql("CREATE TYPE mood AS ENUM ('sad', 'ok')")
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text, m mood)")
    for where in ["m = ANY('x')", "m::text = ANY('x')", "COALESCE(m, 'x')::text = 'x'"]:
        body = await _error(engine, where=where)
        assert body["message"] == "Invalid request", body


async def test_collations_derived_per_operation(engine: Engine) -> None:
    """Each operation uses the collation Postgres derives for it: a column's own ("C":
    ASCII-only case mapping) over a literal's default, an explicit COLLATE over both; two
    columns of different collations meeting where one is needed are a 400, as Postgres
    fails on them ("could not determine which collation to use")."""
    engine.sql(
        'CREATE TABLE docs (id int PRIMARY KEY, owner text COLLATE "C", other text COLLATE "POSIX")'
    )
    body = await _error(engine, where="owner < other")
    (message,) = body["errors"]["where"]
    assert "could not determine which collation to use for string comparison" in message
    body = await _error(engine, where='owner COLLATE "C" = other COLLATE "POSIX"')
    (message,) = body["errors"]["where"]
    assert 'collation mismatch between explicit collations "C" and "POSIX"' in message
    words = ["äb", "ÄB", "Ab", "b"]
    live = await _live_rows(engine, "upper(owner) = 'äB' OR owner < 'B' OR owner = 'marker'", words)
    assert live == {"äb", "Ab"}
    where = "upper(owner COLLATE \"default\") = 'ÄB' OR owner = 'marker'"  # (C.UTF-8 here)
    assert await _live_rows(engine, where, words) == {"äb", "ÄB"}


async def _live_ids(engine: Engine, table: str, where: str, inserts: list[str]) -> set[str]:
    """Sync the shape of `table` (empty), run the `inserts` (the matching row of the
    highest id written last), follow it live until that row arrives; the ids the client
    then has, checked equal to Postgres's."""
    rows, handle, offset = await engine.sync(table=table, where=where)
    assert rows == {}
    for sql in inserts:
        engine.sql(sql)
    expected = {str(r[0]) for r in engine.sql(f"SELECT id FROM {table} WHERE {where}")}
    last = str(max(int(r[0]) for r in engine.sql(f"SELECT id FROM {table} WHERE {where}")))
    await engine.follow_live(rows, handle, offset, last, table=table, where=where)
    assert {r["id"] for r in rows.values()} == expected
    return expected


async def test_a_table_without_text_columns_filters_text_by_the_database_default(
    engine: Engine,
) -> None:
    """`n::text < '5'` on a table with no text column: the text takes the database default
    collation (C.UTF-8 in the test cluster), which the engine now learns from the catalog;
    it was a 400 ("the database default collation (unknown here)"). Live rows equal
    Postgres's."""
    engine.sql("CREATE TABLE nums (id int PRIMARY KEY, n int)")
    where = "n::text < '5' OR upper(n::text || 'é') = '7É'"
    values = [-3, 0, 4, 5, 7, 10, 45, 49, 50, 123, None, 6, 1]
    inserts = [f"INSERT INTO nums VALUES ({i}, {'NULL' if n is None else n})"
               for i, n in enumerate(values)]  # fmt: skip
    got = await _live_ids(engine, "nums", where, inserts)
    assert got == {"0", "1", "2", "4", "5", "6", "7", "9", "12"}


async def test_casts_of_domains_and_inet_to_text_live_equal_postgres(engine: Engine) -> None:
    """A cast to text is the type's cast function (a domain's: its base type's): 'true' for
    a domain over boolean, the netmask for inet. The engine matched no row live where
    Postgres's snapshot has them (it read the output text, 't' and '10.0.0.1')."""
    engine.sql("CREATE DOMAIN dbool AS bool")
    engine.sql("CREATE TABLE d (id int PRIMARY KEY, db dbool, ip inet)")
    where = "db::text = 'true' OR ip::text = '10.0.0.1/32'"
    inserts = [
        "INSERT INTO d VALUES (1, true, NULL), (2, false, '10.0.0.1'), (3, NULL, '10.0.0.2')",
        "INSERT INTO d VALUES (4, false, '10.0.0.1/8'), (5, true, '::1')",
    ]
    assert await _live_ids(engine, "d", where, inserts) == {"1", "2", "5"}


async def test_a_where_on_a_generated_column_is_a_400(engine: Engine) -> None:
    """PostgreSQL 15 does not replicate generated columns: a change never carries the value
    such a where reads, and the shape was rotated (a 409 to its clients) on every change to
    its table, so it never stayed up to date."""
    engine.sql(
        "CREATE TABLE g (id int PRIMARY KEY, i int, g int GENERATED ALWAYS AS (i * 2) STORED)"
    )
    engine.sql("INSERT INTO g (id, i) VALUES (1, 1), (2, 5)")
    status, _h, body = await engine.get(table="g", columns="id,i", offset="-1", where="g > 4")
    assert status == 400, body
    (message,) = body["errors"]["where"]
    assert "column g is a generated column, which PostgreSQL 15 does not replicate" in message
    rows, _handle, _offset = await engine.sync(table="g", columns="id,i", where="i > 0")
    assert len(rows) == 2


async def _subset(engine: Engine, **params: str) -> tuple[int, Any]:
    resp = await engine.client.get("/v1/shape", params=params)
    raw = await resp.read()
    return resp.status, orjson.loads(raw) if raw else None


async def test_a_subset_cannot_escape_the_shape_where_under_standard_conforming_strings_off(
    engine: Engine,
) -> None:
    """A database (or role) may set standard_conforming_strings = off, and then Postgres
    reads a backslash in a plain '...' as an escape. The deparse of the subset parameter
    `\\' AS text)) OR true) OR true --` closed its string early there, and the subset query
    ran `OR true` outside the shape's where: every row of the table (Alice's, for a shape
    of Bob's, as a policy's where is behind the proxy). String constants holding a
    backslash are now written as escape strings (E'...'), the same under either setting."""
    dbname = conninfo_to_dict(engine.db_url)["dbname"]
    engine.sql(
        pgsql.SQL("ALTER DATABASE {} SET standard_conforming_strings = off").format(
            pgsql.Identifier(str(dbname))
        )
    )
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    engine.sql("INSERT INTO docs VALUES (1, 'alice'), (2, 'bob'), (3, %s)", ("b\\'ob",))
    _rows, handle, offset = await engine.sync(table="docs", where="owner = 'bob'")
    base = {"table": "docs", "where": "owner = 'bob'", "handle": handle, "offset": offset}
    for payload in ["\\' AS text)) OR true) OR true --", "b\\'ob", "\\", "bob"]:
        status, body = await _subset(
            engine, **base, subset__where="owner = $1", **{"subset__params[1]": payload}
        )
        assert status == 200, body
        want = ['"public"."docs"/"2"'] if payload == "bob" else []
        assert [m["key"] for m in body["data"]] == want, payload
    # a literal in the clause itself, and one in the shape's own where (its snapshot)
    status, body = await _subset(engine, **base, subset__where="owner <> 'x\\' OR true --'")
    assert status == 200 and [m["key"] for m in body["data"]] == ['"public"."docs"/"2"']
    rows, _h, _o = await engine.sync(table="docs", where="owner = 'b\\''ob'")
    assert [r["id"] for r in rows.values()] == ["3"]


async def test_a_subset_ordered_by_a_column_without_ordering_is_a_400_for_order_by(
    engine: Engine,
) -> None:
    """ORDER BY a json or point column fails in Postgres ("could not identify an ordering
    operator for type json"): a 400 naming order_by, not the where (which was blamed)."""
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, j json, p point, jb jsonb)")
    engine.sql("INSERT INTO docs VALUES (1, '{}', '(1,1)', '{}'), (2, '[]', '(0,0)', '[]')")
    _rows, handle, offset = await engine.sync(table="docs")
    base = {"table": "docs", "handle": handle, "offset": offset, "subset__limit": "1"}
    for column, typ in [("j", "json"), ("p", "point")]:
        status, body = await _subset(engine, **base, subset__order_by=column)
        assert status == 400, body
        assert body["errors"] == {
            "subset": {"order_by": [f"could not identify an ordering operator for type {typ}"]}
        }
    status, body = await _subset(engine, **base, subset__order_by="jb DESC")
    assert status == 200 and [m["key"] for m in body["data"]] == ['"public"."docs"/"1"']


async def test_a_subset_may_name_table_columns_outside_the_shapes_columns(
    engine: Engine,
) -> None:
    """Electric checks a subset's where and order_by against every column of the table
    (`Shape.Subset.new`), not only the shape's `columns`: with `columns=id,title`,
    `subset__where=n > 5` and `subset__order_by=n DESC` are answered (they were a 400,
    "unknown reference n"), with rows carrying only id and title. A column missing from
    the table is still a 400 in Electric's words."""
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, title text, n int)")
    engine.sql("INSERT INTO docs VALUES (1, 'a', 9), (2, 'b', 3), (3, 'c', 7), (4, 'd', 6)")
    _rows, handle, offset = await engine.sync(table="docs", columns="id,title")
    base = {"table": "docs", "columns": "id,title", "handle": handle, "offset": offset}
    status, body = await _subset(
        engine,
        **base,
        subset__where="n > $1",
        subset__order_by="n DESC",
        subset__limit="2",
        **{"subset__params[1]": "5"},
    )
    assert status == 200, body
    assert [m["value"] for m in body["data"]] == [
        {"id": "1", "title": "a"},
        {"id": "3", "title": "c"},
    ]
    for field, value, message in [
        ("where", "nope > 5", "At location 0: unknown reference nope"),
        ("order_by", "nope", "At location 0: unknown reference nope"),
    ]:
        status, body = await _subset(engine, **base, **{f"subset__{field}": value})
        assert status == 400, body
        assert body["errors"] == {"subset": {field: [message]}}, body


async def test_a_param_beside_a_bare_boolean_param_live_and_snapshot_equal_postgres(
    engine: Engine,
) -> None:
    """`where=$1 AND org_id = $2` was a 400 ("undefined parameter"): the `$2` beside the bare
    `$1` was never substituted in the snapshot's SQL. The proxy's guard for a client where
    `$1` has this form, so every such member failed. Snapshot and live rows equal Postgres's
    for the same clause with the same values bound."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, org_id text, x bool)")
    engine.sql("INSERT INTO items VALUES (1, 'org-a', true), (2, 'org-b', NULL), (3, NULL, false)")
    cases = [
        ("$1 AND org_id = $2", {"1": "true", "2": "org-a"}),
        ("org_id = $2 AND $1", {"1": "true", "2": "org-a"}),
        ("COALESCE(org_id = $2, $1) OR id = 999", {"1": "false", "2": "org-b"}),
        ("COALESCE(x AND org_id <> $2, $1) OR id = 999", {"1": "true", "2": "org-b"}),
        ("id IN (999, $3, id * $3) AND $1 AND org_id <> $2", {"1": "true", "2": "x", "3": "1"}),
        ("(org_id = $2) AND COALESCE(NULLIF((org_id = $2) IS TRUE, TRUE), ($1))",
         {"1": "true", "2": "org-a"}),
    ]  # fmt: skip
    for n, (where, values) in enumerate(cases):
        bound = {f"p{k}": v == "true" if v in ("true", "false") else v for k, v in values.items()}
        pg_where = where.replace("$1", "%(p1)s::bool").replace("$2", "%(p2)s::text")
        pg_where = pg_where.replace("$3", "%(p3)s::int")
        query = f"SELECT id FROM items WHERE {pg_where}"
        shape = {"table": "items", "where": where} | {f"params[{k}]": v for k, v in values.items()}
        rows, handle, offset = await engine.sync(**shape)
        assert {r["id"] for r in rows.values()} == {str(r[0]) for r in engine.sql(query, bound)}
        base = 10 * (n + 1)
        engine.sql(
            "INSERT INTO items VALUES (%s, 'org-a', true), (%s, 'org-b', false), (%s, NULL, NULL),"
            " (%s, 'org-a', NULL)",
            (base, base + 1, base + 2, base + 3),
        )
        engine.sql("INSERT INTO items VALUES (999, 'org-a', true) ON CONFLICT (id) DO NOTHING")
        for _ in range(50):
            status, h, body = await engine.get(**shape, offset=offset, handle=handle, live="true")
            assert status == 200, body
            apply(rows, body)
            offset = h["electric-offset"]
            if "999" in {r["id"] for r in rows.values()}:
                break
        live = {r["id"] for r in rows.values()}
        assert live == {str(r[0]) for r in engine.sql(query, bound)}, where
        engine.sql("DELETE FROM items WHERE id = 999")


async def test_lengths_in_a_shape_and_a_subset_equal_postgres(engine: Engine) -> None:
    """`LENGTH(<col>)`, as @electric-sql/client's expression compiler writes it for a
    subset's `whereExpr`, was a 400 ("unknown or unsupported function length/1"). Live rows
    of a shape and a subset's rows equal Postgres's: characters, not bytes; char(n) without
    its padding in length(), with it in octet_length(); bytea's bytes."""
    engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text, code char(4), raw bytea)")
    where = (
        "LENGTH(title) > 2 OR char_length(code) = 1 OR octet_length(code) = 5"
        " OR length(raw) = 2 OR octet_length(title) = 3"
    )
    inserts = [
        "INSERT INTO items VALUES (1, 'ab', 'ab', NULL), (2, 'abc', NULL, NULL)",
        "INSERT INTO items VALUES (3, 'éé', 'x', '\\x00'), (4, 'é', 'éb', NULL)",
        "INSERT INTO items VALUES (5, '', '', '\\x0102'), (6, NULL, ' ', '\\x'), (7, 'x ', 'a ', NULL)",
        "INSERT INTO items VALUES (8, '😀', NULL, NULL), (9, 'e\u0301', 'ab c', '\\xffff')",
        "INSERT INTO items VALUES (100, 'last', NULL, NULL)",
    ]
    got = await _live_ids(engine, "items", where, inserts)
    assert got == {"2", "3", "4", "5", "7", "9", "100"}
    _rows, handle, offset = await engine.sync(table="items")
    base = {"table": "items", "handle": handle, "offset": offset}
    for subset, value, pg_where in [
        ("LENGTH(title) > $1", "1", "LENGTH(title) > %(p)s::int"),
        ("length(code) = 0 OR octet_length(raw) > 1", None, None),
        ("LENGTH(title) = LENGTH($1)", "é ", "LENGTH(title) = LENGTH(%(p)s::text)"),
    ]:
        params = {} if value is None else {"subset__params[1]": value}
        status, body = await _subset(engine, **base, subset__where=subset, **params)
        assert status == 200, body
        query = f"SELECT id FROM items WHERE {pg_where or subset}"
        want = {str(r[0]) for r in engine.sql(query, {"p": value})}
        assert want and {m["value"]["id"] for m in body["data"]} == want, subset
    status, body = await _subset(engine, **base, subset__where="length(id) > 1")
    assert status == 400, body
    assert "function length(integer) does not exist" in str(body)


#: Hostile where strings and params: each a 400 for `where` (or `params`), in Electric's
#: words where it has some, answered at once (the request is time-bound).
HOSTILE = [
    ({"where": "(" * 3000 + "id = 1" + ")" * 3000}, "nested too deeply"),
    ({"where": "owner = 'abc"}, "At location 23: unterminated quoted string"),
    ({"where": "owner = 'a' /* x"}, "unterminated /* comment"),
    ({"where": "owner = $t$abc"}, "unterminated dollar-quoted string"),
    ({"where": "owner = E'\\xff'"}, 'invalid byte sequence for encoding "UTF8": 0xff'),
    ({"where": "owner = U&'\\D800'"}, "invalid Unicode surrogate pair"),
    ({"where": "id = $1"}, "At location 5: parameter $1 was not provided"),
    ({"where": "id = $0", "params[1]": "1"}, "parameter $0 was not provided"),
    # params given but not used: Electric's parser refuses them (the engine had ignored them)
    ({"where": "id = 1", "params[1]": "5"}, "At location 0: parameter value for $1 was not used"),
    (
        {"where": "id = $2", "params[1]": "1", "params[2]": "2"},
        "At location 0: parameter value for $1 was not used",
    ),
    ({"where": "id = " + "9" * 5000}, None),  # a numeric literal: fine (no rows match)
    ({"where": "id = 1e999999"}, "value overflows numeric format"),
    ({"where": "id::numeric = '1e1000000000'"}, "value overflows numeric format"),
    ({"where": "id = $1", "params[1]": "9" * 5000}, "is out of range for type integer"),
    ({"where": "id = 1; DROP TABLE docs"}, 'unescaped ";" causing statement split'),
    ({"where": "owner = repeat('a', 1000000000)"}, "unknown or unsupported function repeat/2"),
]


async def test_hostile_where_strings_are_quick_400s_in_electrics_words(engine: Engine) -> None:
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, owner text)")
    for params, message in HOSTILE:
        status, _h, body = await asyncio.wait_for(
            engine.get(table="docs", offset="-1", **params), timeout=10
        )
        if message is None:
            assert status == 200, (params, body)
            continue
        assert status == 400, (str(params)[:80], body)
        assert body["message"] == "Invalid request", body
        (text,) = body["errors"].get("where") or body["errors"]["params"]
        assert message in text, (str(params)[:80], text[:200])


async def test_subsets_answer_as_postgres_reads_the_shape_and_the_subset(engine: Engine) -> None:
    """A subset's rows are Postgres's for `(shape) AND (subset)`, the subset's clause never
    evaluated outside the shape's rows (behind a proxy the shape holds the policy). Three
    ways that guard once answered otherwise (one engine for the three: each table its own):

    1. Its guard must read the shape's where at the query's own level. Inside a sub-select
       (`EXISTS (SELECT WHERE <shape>)`, tried once) the columns are outer references, and
       Postgres types an IN list of them with its constants together: `i8 NOT IN (i4, f8,
       4611686018427387905)` compares all as float8 there (4611686018427387904 equals the
       constant), as int8 / float8 pairs at the top: the subset lost rows (seed 48021).
    2. The shape `((- i2) > 0 AND b) OR b` is `b` to Postgres's planner: its snapshot never
       computes `- i2`, which overflows on -32768. The guard read the shape's where as an
       expression, where `- i2` runs first: a 400 "Postgres could not evaluate the query"
       (seed 45058). Now the query is asked again with the guard as a WHERE of its own (the
       subset's clause still never evaluated outside the shape's rows: its 1 / 0 on row 1),
       and an IN list in the shape keeps its typing there.
    3. Postgres reads the subset's clause as a WHERE too: a conjunct that is NULL ends a row
       as false does (`i4 > 0` on a NULL i4, so `f4 * 1.1::float4` never overflows there),
       and an AND the planner makes a constant NULL (`x NOT IN (i4, NULL, i2)`) is false
       unevaluated (so `d - d` never fails on an infinite date). The guard evaluated the
       clause as an expression: a 400 where Postgres answers (seeds 75034 and 75037)."""

    async def subset(table: str, where: str, clause: str) -> tuple[int, Any, list[str]]:
        rows, handle, offset = await engine.sync(table=table, where=where)
        base = {"table": table, "where": where, "handle": handle, "offset": offset}
        status, body = await _subset(engine, **base, subset__where=clause)
        ids = sorted(m["value"]["id"] for m in body["data"]) if status == 200 else []
        return status, body, ids

    # 1.
    engine.sql("CREATE TABLE docs1 (id int PRIMARY KEY, i8 int8, i4 int4, f8 float8, t text)")
    engine.sql(
        "INSERT INTO docs1 VALUES (1, 4611686018427387904, 1, 1.5, 'a'), (2, 5, 1, 1.5, 'b')"
    )
    where = "i8 NOT IN (i4, f8, 4611686018427387905, 2.5)"
    status, body, ids = await subset("docs1", where, "t IS NOT NULL")
    assert (status, ids) == (200, ["1", "2"]), body
    # 2.
    engine.sql(
        "CREATE TABLE docs2 (id int PRIMARY KEY, i2 int2, b bool, t text, i8 int8, i4 int4,"
        " f8 float8)"
    )
    engine.sql(
        "INSERT INTO docs2 VALUES (1, -32768, false, 'x', 1, 1, 1),"
        " (2, 5, true, 'y', 4611686018427387904, 1, 1.5), (3, -32768, true, 'z', 5, 1, 1.5)"
    )
    where = "((((- i2) > 0 AND b) OR b) AND i8 NOT IN (i4, f8, 4611686018427387905, 2.5))"
    status, body, ids = await subset("docs2", where, "t <> 'z'")
    assert (status, ids) == (200, ["2"]), body
    assert engine.sql(f"SELECT id FROM docs2 WHERE ({where}) AND (t <> 'z')") == [(2,)]
    # (fails on row 1 alone, outside the shape: never evaluated there)
    status, body, ids = await subset("docs2", where, "1 / (id - 1) >= 0")
    assert (status, ids) == (200, ["2", "3"]), body
    # A subset clause that fails on a row of the shape is still Postgres's failure.
    status, body, _ids = await subset("docs2", where, "1 / (id - 3) >= 0")
    assert status == 400 and "division by zero" in str(body), body
    # 3.
    engine.sql(
        "CREATE TABLE docs3 (id int PRIMARY KEY, b bool, d date, i2 int2, i4 int4, f4 float4)"
    )
    engine.sql(
        "INSERT INTO docs3 VALUES (1, true, 'infinity', 1, NULL, 3.4e38),"
        " (2, true, '2020-01-01', 5, 5, 1), (3, false, '2020-01-01', 5, 5, 1)"
    )
    for clause, expected in [
        ("i4 > 0 AND f4 * 1.1::float4 > 0", ["2"]),
        ("(d - d) NOT IN (i4, NULL, i2)", []),
        ("(d - d) NOT IN (i4, i2)", None),  # (evaluated on row 1: Postgres fails too)
    ]:
        try:
            pg = [str(r[0]) for r in engine.sql(f"SELECT id FROM docs3 WHERE b AND ({clause})")]
        except psycopg.DataError:
            pg = None
        assert pg == expected, clause
        status, body, ids = await subset("docs3", "b", clause)
        if expected is None:
            assert status == 400 and "22008" in str(body), (clause, body)
        else:
            assert (status, ids) == (200, expected), (clause, body)
    # (a conflict of implicit collations is raised only where a comparison runs: never in
    # `a NOT IN (b, NULL)`, a constant false to the planner; family live fuzz 93413)
    engine.sql(
        'CREATE TABLE docs4 (id int PRIMARY KEY, b bool, x text COLLATE "C",'
        ' y text COLLATE "POSIX")'
    )
    engine.sql("INSERT INTO docs4 VALUES (1, true, 'a', 'b'), (2, false, 'a', 'a')")
    assert engine.sql("SELECT id FROM docs4 WHERE b AND (x NOT IN (y, NULL))") == []
    status, body, ids = await subset("docs4", "b", "x NOT IN (y, NULL)")
    assert (status, ids) == (200, []), body
    status, body, ids = await subset("docs4", "b", "x NOT IN (y, 'z')")
    assert status == 400 and "indeterminate collation" in str(body), body

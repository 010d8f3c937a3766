"""The snapshot query's rows are byte for byte what `row_to_json` of the text-cast columns
gives, though it builds them by concatenation (snapshot/query.py `_value_json`)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from sync_engine.pg.catalog import load_table
from sync_engine.pg.session import with_display_settings
from sync_engine.snapshot.query import row_json_sql, text_expr

TABLE = """
CREATE TABLE tt (id int PRIMARY KEY, "Weird Name" text, "it's" text, t text, b bool,
  f4 float4, f8 float8, nm numeric, ts timestamptz, tsn timestamp, d date, tm time, tz timetz,
  u uuid, j jsonb, arr int[], ch char(5), ine inet, iv interval, bb bytea,
  nn int NOT NULL DEFAULT 3, nt text NOT NULL DEFAULT 'x"')
"""
ROWS = r"""
INSERT INTO tt VALUES
 (1, 'x"y\z', 'q', E'line\nbreak\ttab "q" \\ é ☃ \u0001', true, 1.5, -2.5e300, 'NaN', now(),
  '2024-01-01 10:00', '0001-01-01 BC', '10:00', '10:00+02', gen_random_uuid(),
  '{"a": [1, "x"]}', '{1,NULL,3}', 'ab', '10.0.0.1/8', '1 day 2 hours', '\x00ff', 4, 'a\b'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, 5, ''),
 (3, '', '', '', false, 'Infinity', '-Infinity', 1e-20, 'infinity', '-infinity', 'infinity',
  '24:00', '00:00-12', NULL, 'null', '{}', '     ', '::1', '-1 mons', '', 6, 'é')
"""


def copy_rows(conn: psycopg.Connection, query: sql.Composable) -> list[bytes]:
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        return b"".join(bytes(x) for x in copy).splitlines()


async def test_values_match_row_to_json(db_url: str) -> None:
    url = with_display_settings(db_url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
        await aconn.execute(TABLE)
        await aconn.execute(ROWS)
        await aconn.execute('CREATE TABLE "odd\\name" ("a""b" int PRIMARY KEY, "c\\d" text)')
        await aconn.execute("""INSERT INTO "odd\\name" VALUES (1, 'x'), (2, NULL)""")
        tables = [await load_table(aconn, "public", n) for n in ("tt", "odd\\name")]
    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables:
            assert table is not None
            for columns in (table.columns, table.columns[:4]):
                relation = sql.SQL("{}.{}").format(
                    sql.Identifier(table.schema), sql.Identifier(table.name)
                )
                reference = sql.SQL(
                    "SELECT row_to_json(r)::text FROM (SELECT {cols} FROM {rel}) r"
                ).format(
                    cols=sql.SQL(", ").join(
                        sql.SQL("{} AS {}").format(text_expr(c), sql.Identifier(c.name))
                        for c in columns
                    ),
                    rel=relation,
                )
                query = row_json_sql(table, columns, table.pk, None)
                ours = [line.split(b"\t", 1)[1] for line in copy_rows(conn, query.sql)]
                assert ours == copy_rows(conn, reference)
                assert len(ours) in (2, 3)

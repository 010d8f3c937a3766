"""Values are Postgres text, identical whether a row arrives in the snapshot or live."""

from __future__ import annotations

from tests.sync_engine.engine_harness import Engine

COLUMNS = """
  id int PRIMARY KEY,
  b bool, i2 int2, i8 int8, num numeric(10,3), f8 float8, f4 float4,
  t text, vc varchar(20), ch char(5), u uuid, d date, ts timestamp, tstz timestamptz,
  iv interval, js jsonb, j json, by bytea, ia int4[], ta text[], mood mood, ip inet, tm time
"""
VALUES = """
  true, 7, 9007199254740993, 12.5, 0.1, 1.5,
  'hé "quoted" \\ back/slash', 'v', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '2024-01-02 03:04:05.123', '2024-01-02 03:04:05+02', '1 day 2 hours',
  '{"a": [1, 2], "b": null}', '{"x" : 1}', '\\x00ff', '{1,NULL,3}', '{"a b","c,d",NULL}',
  'happy', '10.1.2.3', '12:34:56'
"""


async def test_snapshot_and_live_values_agree_and_match_postgres(engine: Engine) -> None:
    engine.sql("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    engine.sql(f"CREATE TABLE t ({COLUMNS})")
    engine.sql(f"INSERT INTO t VALUES (1, {VALUES})")
    engine.sql("INSERT INTO t (id) VALUES (3)")
    rows, handle, offset = await engine.sync(table="t")
    engine.sql(f"INSERT INTO t VALUES (2, {VALUES})")
    engine.sql("INSERT INTO t (id) VALUES (4)")
    live: dict[str, dict[str, str | None]] = {}
    for _ in range(5):
        _, h, body = await engine.get(table="t", offset=offset, handle=handle, live="true")
        for m in body:
            if "key" in m:
                live[m["key"]] = m["value"]
        offset = h["electric-offset"]
        if len(live) == 2:
            break
    snap_row = {k: v for k, v in rows['"public"."t"/"1"'].items() if k != "id"}
    live_row = {k: v for k, v in live['"public"."t"/"2"'].items() if k != "id"}
    assert snap_row == live_row
    null_snap = {k: v for k, v in rows['"public"."t"/"3"'].items() if k != "id"}
    null_live = {k: v for k, v in live['"public"."t"/"4"'].items() if k != "id"}
    assert null_snap == null_live and set(null_snap.values()) == {None}
    # and both are what Postgres itself prints under the engine's display settings
    cols = [c for c in snap_row]
    select = ", ".join(f"concat({c}, '')" for c in cols)
    import psycopg

    with psycopg.connect(engine.db_url) as conn:
        for setting in (
            "DateStyle='ISO, DMY'",
            "TimeZone='UTC'",
            "IntervalStyle='iso_8601'",
            "bytea_output='hex'",
            "extra_float_digits=1",
        ):
            conn.execute(f"SET {setting}")
        pg = conn.execute(f"SELECT {select} FROM t WHERE id = 1").fetchone()
    assert pg is not None
    assert dict(zip(cols, pg, strict=True)) == snap_row
    assert snap_row["b"] == "t" and snap_row["ch"] == "ab   " and snap_row["ip"] == "10.1.2.3"
    assert snap_row["tstz"] == "2024-01-02 01:04:05+00" and snap_row["iv"] == "P1DT2H"

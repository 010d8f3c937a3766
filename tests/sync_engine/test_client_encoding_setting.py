"""A database (or role) that sets `client_encoding` must not change the bytes the engine
reads: `ALTER DATABASE app SET client_encoding = 'LATIN1'` made Postgres send the engine's
sessions LATIN1 text, and the engine served it as it came: a 200 whose body held the byte
0xE9 for 'é' (not UTF-8: not JSON), a 400 blaming the where for a '€' ("untranslatable
character"), and a replication stream that stopped following the database (503
stream_not_ready). The same with PGCLIENTENCODING in the engine's environment.
(wherefuzz 20:30, bugs-for-engine.md: the fix is sync_engine/pg/session.py's.)
"""

from __future__ import annotations

import orjson
import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from tests.sync_engine.engine_harness import Engine


@pytest.mark.xfail(
    strict=True,
    reason="the engine's sessions take the database's client_encoding (bugs-for-engine.md,"
    " wherefuzz 20:30)",
)
async def test_a_database_s_client_encoding_changes_no_byte(engine: Engine) -> None:
    dbname = str(conninfo_to_dict(engine.db_url)["dbname"])
    engine.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")
    engine.sql("INSERT INTO t VALUES (1, 'éx'), (2, 'ab €')")
    with psycopg.connect(engine.db_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("ALTER DATABASE {} SET client_encoding = 'LATIN1'").format(
                pgsql.Identifier(dbname)
            )
        )
    resp = await engine.client.get("/v1/shape", params={"table": "t", "offset": "-1"})
    raw = await resp.read()
    assert resp.status == 200, raw
    values = {m["value"]["id"]: m["value"]["v"] for m in orjson.loads(raw) if "value" in m}
    assert values == {"1": "éx", "2": "ab €"}
    engine.sql("INSERT INTO t VALUES (3, 'éa')")
    params = {
        "table": "t",
        "offset": resp.headers["electric-offset"],
        "handle": resp.headers["electric-handle"],
        "live": "true",
    }
    for _ in range(10):
        resp = await engine.client.get("/v1/shape", params=params)
        raw = await resp.read()
        assert resp.status == 200, raw
        messages = orjson.loads(raw)
        live = {m["value"]["id"]: m["value"]["v"] for m in messages if "value" in m}
        if live:
            assert live == {"3": "éa"}
            return
        params["offset"] = resp.headers["electric-offset"]
    raise AssertionError("the live row never came")

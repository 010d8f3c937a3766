"""A database (or role) that sets `client_encoding` must not change the bytes the engine
reads: `ALTER DATABASE app SET client_encoding = 'LATIN1'` made Postgres send the engine's
sessions LATIN1 text, and the engine served it as it came: a 200 whose body held the byte
0xE9 for 'é' (not UTF-8: not JSON), a 400 blaming the where for a '€' ("untranslatable
character"), and a replication stream that stopped following the database (503
stream_not_ready). The same with PGCLIENTENCODING in the engine's environment.
(wherefuzz 20:30, bugs-for-engine.md: the fix is sync_engine/pg/session.py's.)
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from sync_engine.app import SOURCES, build_app
from tests.support.databases import drop_database
from tests.support.engine_process import EngineProcess
from tests.sync_engine.engine_harness import SETTINGS, Engine, stopped_within


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


async def test_an_sql_ascii_database_is_refused_in_process(
    aiohttp_client: Any, pg_server_url: str, tmp_path: Path
) -> None:
    """An SQL_ASCII database (text stored as the client sent it, here UTF-8) was served by
    the in-process engine, and one value that is not UTF-8 then stopped its replication at
    every retry. The source's start refuses it now (`Tables`: however a source is added),
    and every request, a subset's description before the start included, is a 503 naming
    the encoding (no where clause is ever judged by an SQL_ASCII catalog)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'"
            ).format(pgsql.Identifier(name))
        )
    url = pg_server_url.rpartition("/")[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True, client_encoding="UTF8") as conn:
            conn.execute("CREATE TABLE x (id int PRIMARY KEY, t text)")
            conn.execute("INSERT INTO x VALUES (1, 'é'), (2, 'Σ'), (3, 'ab')")
        settings = replace(SETTINGS, database_url=url, data_dir=tmp_path / "data")
        client = await aiohttp_client(build_app(settings))
        try:
            engine = Engine(client, url, tmp_path / "data")
            asked = [
                {"table": "x", "offset": "-1", "where": "t LIKE '__'"},
                {"table": "x", "offset": "-1", "subset__where": "t LIKE '__'"},
            ]
            for params in asked:
                status, _h, body = await engine.get(**params)
                assert status == 503, (params, body)
                assert "encoding is SQL_ASCII" in body["message"], (params, body)
            source = client.app[SOURCES]["default"]
            assert source.error is not None and "ENCODING 'UTF8'" in source.error
            assert not source.ready.is_set()
        finally:
            await stopped_within(client.close(), "the in-process engine")
    finally:
        drop_database(pg_server_url, name)


def test_the_engine_process_refuses_an_sql_ascii_database_by_name(
    pg_server_url: str, tmp_path: Path
) -> None:
    """The CLI's preflight read `SHOW wal_level` as bytes in an SQL_ASCII database and
    refused with "wal_level is b'logical', not logical" (fidelity 08:33). Started, one
    non-UTF-8 byte there stops the stream for every shape (fidelity 08:39): the CLI refuses
    such a database, naming its encoding."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'"
            ).format(pgsql.Identifier(name))
        )
    url = pg_server_url.rpartition("/")[0] + "/" + name
    engine = EngineProcess(url, tmp_path / "data")
    try:
        engine.spawn()
        assert engine.proc is not None
        assert engine.proc.wait(60) != 0
        said = engine.log_tail()
        assert "encoding is SQL_ASCII" in said and "wal_level" not in said, said
    finally:
        engine.stop()
        drop_database(pg_server_url, name)

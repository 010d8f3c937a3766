"""Two engines serving two databases of one Postgres cluster need distinct slot names."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from sync_engine.app import SOURCES, build_app
from tests.support.databases import create_database, drop_database
from tests.sync_engine.engine_harness import SETTINGS, Engine


async def test_engines_with_their_own_stream_ids_share_a_cluster(
    aiohttp_client: Any, pg_server_url: str, tmp_path: Path
) -> None:
    made = [create_database(pg_server_url) for _ in range(2)]
    try:
        engines = []
        for i, (_, url) in enumerate(made):
            settings = replace(
                SETTINGS,
                database_url=url,
                data_dir=tmp_path / f"data{i}",
                replication_stream_id=f"app{i}",
            )
            client = await aiohttp_client(build_app(settings))
            await client.app[SOURCES]["default"].ready.wait()
            engine = Engine(client, url, tmp_path / f"data{i}")
            engine.sql("CREATE TABLE items (id int PRIMARY KEY, title text)")
            engine.sql("INSERT INTO items VALUES (1, %s)", (f"from db {i}",))
            engines.append(engine)
        for i, engine in enumerate(engines):
            rows, _, _ = await engine.sync(table="items")
            assert [r["title"] for r in rows.values()] == [f"from db {i}"]
        with psycopg.connect(pg_server_url) as conn:
            slots = {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")}
        assert {"shapegate_slot_app0", "shapegate_slot_app1"} <= slots
        for engine in engines:
            await engine.client.close()
    finally:
        for dbname, _ in made:
            drop_database(pg_server_url, dbname)


def test_a_stream_id_postgres_would_refuse_is_a_clear_startup_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sync_engine", "--database-url", "postgresql://x/y",
         "--replication-stream-id", "My-App"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--replication-stream-id may use only a-z, 0-9 and _" in out.stderr

"""A table whose row-level security applies to the engine's own role is refused, not served
half filtered.

The engine's role owns its tables, so their policies skip it unless the table has FORCE
ROW LEVEL SECURITY; then its snapshot (a SELECT) was filtered by them while the replication
stream, which no policy filters, brought every row's changes: a shape held rows its own
snapshot hid, and lost them again at a refetch (wherefuzz 08:23). The engine's sessions
now run with `row_security = off`: Postgres refuses such a query, and the shape is a 400
naming the table and what to do.

Real path: a private cluster, the engine as a process logged in as a non-superuser owner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.engine_process import EngineProcess
from tests.sync_engine.tenants.harness import PGBIN, Cluster, sql

ROLE, DBNAME = "rlsowner_q3", "rlsdb_q3"


@pytest.fixture
def owner_cluster() -> Iterator[Cluster]:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = Cluster("logical")
    cluster.start()
    try:
        cluster.sql(f"CREATE ROLE {ROLE} LOGIN REPLICATION")
        cluster.sql(f"CREATE DATABASE {DBNAME} OWNER {ROLE}")
        yield cluster
    finally:
        cluster.stop()


async def test_a_table_whose_policies_apply_to_the_engine_is_a_400(
    owner_cluster: Cluster, tmp_path: Path
) -> None:
    url = f"postgresql://{ROLE}@127.0.0.1:{owner_cluster.port}/{DBNAME}"
    for statement in (
        "CREATE TABLE rls (id int PRIMARY KEY, v int)",
        "CREATE TABLE open (id int PRIMARY KEY, v int)",
        "INSERT INTO rls VALUES (1, 1), (2, -2)",
        "INSERT INTO open VALUES (1, 1), (2, -2)",
        "ALTER TABLE rls ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE rls FORCE ROW LEVEL SECURITY",
        "CREATE POLICY p ON rls USING (v > 0)",
        # (policies without FORCE skip the owner: served whole, as before)
        "ALTER TABLE open ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY p ON open USING (v > 0)",
    ):
        sql(url, statement)
    engine = EngineProcess(url, tmp_path / "data", "--long-poll-timeout", "2")
    engine.start()
    try:
        async with aiohttp.ClientSession() as session:
            shape = f"{engine.url}/v1/shape?offset=-1&where=id > 0&table="
            async with session.get(shape + "rls") as r:
                body = await r.json()
                assert r.status == 400, body
                said = body["errors"]["table"][0]
                assert "FORCE ROW LEVEL SECURITY" in said and '"public"."rls"' in said, body
            async with session.get(shape + "open") as r:
                rows = [m for m in await r.json() if "key" in m]
                assert r.status == 200
                assert sorted(m["value"]["id"] for m in rows) == ["1", "2"]
    finally:
        engine.stop()

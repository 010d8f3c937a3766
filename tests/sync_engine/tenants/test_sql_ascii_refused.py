"""An SQL_ASCII database is refused however its source is added, naming the encoding.

The CLI refused one (bbbea2b9); a source registered through the admin API was taken, and
one byte that is not UTF-8 then stopped its replication at every retry (the walsender
converts each change to the engine's UTF8). Now registration answers a 400 naming the
encoding and the fix, and a source that reaches its start anyway (its database unreachable
when it was registered, or registered before this check) is refused there, in state error
with code `encoding`, its shape requests 503 saying why by kind.

Real path: an engine's admin API and /v1/shape over HTTP, a real SQL_ASCII database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql as pgsql

from sync_engine.tenants import manager as manager_module
from tests.support.databases import drop_database
from tests.sync_engine.tenants.harness import MultiEngine


@pytest.fixture
def sql_ascii_url(pg_server_url: str) -> Iterator[str]:
    """The URL of a new SQL_ASCII database holding an `items` table."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'"
            ).format(pgsql.Identifier(name))
        )
    url = pg_server_url.rpartition("/")[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items VALUES (1, 'a')")
    try:
        yield url
    finally:
        drop_database(pg_server_url, name)


async def test_the_admin_api_refuses_an_sql_ascii_database_by_name(
    engines: Callable[..., MultiEngine], sql_ascii_url: str, make_db: Callable[[], str]
) -> None:
    engine = await engines().start()
    status, body = await engine.api(
        "POST", "/api/sources", {"name": "ascii", "database_url": sql_ascii_url}
    )
    assert status == 400, body
    assert body["error"] == "invalid_request" and body["field"] == "database_url", body
    assert "encoding is SQL_ASCII" in body["message"] and "ENCODING 'UTF8'" in body["message"]
    status, listed = await engine.api("GET", "/api/sources")
    assert status == 200 and listed["sources"] == [], listed
    # (a UTF8 database is still registered, and the name was not taken)
    made = await engine.add("ascii", make_db())
    await engine.wait_state(made["source_id"], "active")


async def test_a_source_that_reaches_its_start_on_sql_ascii_is_refused_there(
    engines: Callable[..., MultiEngine],
    sql_ascii_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registered while the database did not answer (as registration's check sees it):
    its start refuses it, and says so."""

    async def unreachable(url: str) -> None:
        return None

    monkeypatch.setattr(manager_module, "refused_encoding", unreachable, raising=False)
    engine = await engines().start()
    made = await engine.add("ascii", sql_ascii_url)
    shown = await engine.wait_state(made["source_id"], "error", code="encoding")
    assert "encoding is SQL_ASCII" in shown["error"], shown
    status, _h, body = await engine.get(
        made["source_id"], made["secret"], table="items", offset="-1"
    )
    assert status == 503, body
    assert "encoding is SQL_ASCII" in body["message"], body

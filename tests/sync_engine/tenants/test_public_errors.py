"""What a source's database errors show to the public: their kind, never their text.

A shape request of a source that cannot reach or use its database is answered 503; its
message used to carry the error's text (`Source is not ready: ...`, `Stack not ready: ...
(<reason>)`), which is libpq's and Postgres's: `connection to server at "127.0.0.1", port
N failed: FATAL: password authentication failed for user "<role>"`, the database's name too.
The engine's answers reach browsers through the proxy: that told anyone the database's
host, port, role and name. Now the message names the kind only ("the database refused the
engine's credentials", "the database is unreachable"); the text is in the engine's log
(without the password) and, behind the admin token, in the admin API.

Real path: a private Postgres cluster with password authentication, sources registered
through the admin API of an engine served over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN, Cluster, MultiEngine, free_port, sql

ROLE, DBNAME = "leakrole_x7", "leakdb_x7"
PASSWORD, WRONG, NEW = "right-pw-Q4z", "wrong-pw-K8m", "new-pw-J2v"


@pytest.fixture
def pw_cluster() -> Iterator[Cluster]:
    """A cluster where `ROLE` logs in with a password over TCP, owning `DBNAME` (with an
    `items` table)."""
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = Cluster("logical")
    hba = cluster.dir / "data" / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cluster.start()
    try:
        cluster.sql(f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{PASSWORD}'")
        cluster.sql(f"CREATE DATABASE {DBNAME} OWNER {ROLE}")
        owner_url = cluster.url.rsplit("/", 1)[0] + f"/{DBNAME}"
        sql(owner_url, "CREATE TABLE items (id int PRIMARY KEY)")
        sql(owner_url, f"ALTER TABLE items OWNER TO {ROLE}")
        sql(owner_url, "INSERT INTO items VALUES (1)")
        yield cluster
    finally:
        cluster.stop()


def _url(port: int, password: str) -> str:
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{DBNAME}"


def _assert_tells_nothing(body: Any, *secrets: str) -> str:
    """The 503's message, checked to name no host, port, role, database or password."""
    text = repr(body)
    for word in (ROLE, DBNAME, "127.0.0.1", PASSWORD, WRONG, NEW, "PID", *secrets):
        assert word not in text, (word, body)
    message = body["message"]
    assert isinstance(message, str)
    return message


@pytest.mark.usefixtures("quick_retries")
async def test_a_source_that_cannot_log_in_or_reach_its_database_says_so_by_kind_only(
    engines: Callable[..., MultiEngine], pw_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await engines().start()
    unused = free_port()
    refused = await engine.add("refused", _url(pw_cluster.port, WRONG))
    nowhere = await engine.add("nowhere", _url(unused, WRONG))
    await engine.wait_state(refused["source_id"], "error", code="auth_failed")
    await engine.wait_state(nowhere["source_id"], "error", code="unreachable")

    for source, port, kind in (
        (refused, pw_cluster.port, "the database refused the engine's credentials"),
        (nowhere, unused, "the database is unreachable"),
    ):
        status, headers, body = await engine.get(
            source["source_id"], source["secret"], table="items", offset="-1"
        )
        assert status == 503 and int(headers["retry-after"]) > 0, body
        message = _assert_tells_nothing(body, str(port))
        assert kind in message, message
        # The operator's view (behind the admin token) keeps the detail.
        status, admin = await engine.api("GET", f"/api/sources/{source['source_id']}")
        assert status == 200 and f"127.0.0.1:{port}" in admin["error"], admin

    # The log says what happened, without the password.
    assert "password authentication failed" in caplog.text
    assert WRONG not in caplog.text and PASSWORD not in caplog.text


@pytest.mark.usefixtures("quick_retries")
async def test_a_lost_replication_stream_says_why_by_kind_only(
    engines: Callable[..., MultiEngine], pw_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A running source whose role's password changed: its replication stream, cut, cannot
    log in again; a live request at the tip gets the 503 `stream_not_ready`."""
    engine = await engines().start()
    source = await engine.add("moved", _url(pw_cluster.port, PASSWORD))
    sid, secret = source["source_id"], source["secret"]
    await engine.wait_state(sid, "active")
    rows, handle, offset = await engine.sync(sid, secret, table="items")
    assert set(rows) == {'"public"."items"/"1"'}

    pw_cluster.sql(f"ALTER ROLE {ROLE} PASSWORD '{NEW}'")
    pw_cluster.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE usename = '{ROLE}' AND backend_type = 'walsender'"
    )
    await wait_until_async(
        lambda: "password authentication failed" in caplog.text,
        timeout=30,
        message="the stream fails to log in again",
    )
    status, headers, body = await engine.get(
        sid, secret, table="items", offset=offset, handle=handle, live="true"
    )
    assert status == 503 and body.get("code") == "stream_not_ready", body
    message = _assert_tells_nothing(body, str(pw_cluster.port))
    assert "the database refused the engine's credentials" in message, message
    assert NEW not in caplog.text and PASSWORD not in caplog.text

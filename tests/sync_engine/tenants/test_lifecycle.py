"""Sources paused, deleted or changed while their clients are connected, on real Postgres."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sync_engine.source import MADE_FILE
from sync_engine.tenants import auth as auth_module
from sync_engine.tenants import manager as manager_module
from sync_engine.tenants.managed import ManagedSource
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import UNAUTHORIZED, Cluster, MultiEngine, make_items, sql


async def _sse(
    engine: MultiEngine, source_id: str, secret: str, **params: Any
) -> tuple[int, bytes]:
    assert engine.client is not None
    q = {k: str(v) for k, v in params.items()}
    q |= {"source_id": source_id, "secret": secret, "live": "true", "live_sse": "true"}
    resp = await engine.client.get("/v1/shape", params=q)
    return resp.status, await resp.read()


async def test_delete_while_clients_wait_ends_them_and_cleans_postgres(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """Deleting a source with a long-poll and an SSE stream held: the long-poll gets a 409,
    the stream ends, their refetch gets 401, and the slot and publication are dropped.
    (The woken long-poll used to make a new shape on the source being stopped, whose
    connection closed under it; the deletion then could not connect to drop the slot and
    publication, left them behind with a warning, and the long-poll sometimes got a 500.)
    Another source keeps streaming meanwhile."""
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1"])
    make_items(url_b, ["b1"])
    # held requests must still be held when the deletion comes, however loaded the machine
    engine = await engines(long_poll_timeout=60.0, sse_timeout=60.0).start()
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    await engine.wait_state(a["source_id"], "active")
    await engine.wait_state(b["source_id"], "active")
    _, handle_a, offset_a = await engine.sync(a["source_id"], a["secret"], table="items")
    rows_b, handle_b, offset_b = await engine.sync(b["source_id"], b["secret"], table="items")
    status, info = await engine.api("GET", f"/api/sources/{a['source_id']}")
    slot, pub = info["slot_name"], info["publication_name"]
    assert sql(url_a, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))

    long_poll = asyncio.create_task(engine.get(a["source_id"], a["secret"], table="items",
                                               offset=offset_a, handle=handle_a, live="true"))  # fmt: skip
    stream = asyncio.create_task(_sse(engine, a["source_id"], a["secret"], table="items",
                                      offset=offset_a, handle=handle_a))  # fmt: skip
    await engine.until_parked(a["source_id"], 2)

    status, body = await engine.api("DELETE", f"/api/sources/{a['source_id']}")
    assert status == 200 and body["deleted"] is True, body
    assert body["warnings"] == [], body["warnings"]

    status, headers, got = await long_poll
    assert (status, got) == (409, [{"headers": {"control": "must-refetch"}}]), (status, got)
    status, raw = await stream
    assert status == 200 and b"b1" not in raw and b"a1" not in raw, raw
    # the client's refetch (with or without the handle the 409 named)
    refetch = {"handle": headers["electric-handle"]} if "electric-handle" in headers else {}
    status, _, got = await engine.get(a["source_id"], a["secret"], table="items", offset="-1",
                                      **refetch)  # fmt: skip
    assert (status, got) == (401, UNAUTHORIZED)
    assert sql(url_a, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == []
    assert sql(url_a, "SELECT 1 FROM pg_publication WHERE pubname = %s", (pub,)) == []
    assert not (engine.data_dir / "sources" / a["source_id"]).exists()

    # The other source is unaffected: a live request sees a new row.
    live = asyncio.create_task(engine.follow(b["source_id"], b["secret"], handle_b, offset_b,
                                             rows_b, table="items"))  # fmt: skip
    await engine.until_parked(b["source_id"])
    sql(url_b, "INSERT INTO items VALUES (2, 'b2')")
    await live
    assert sorted(r["name"] for r in rows_b.values()) == ["b1", "b2"]


async def test_clients_of_the_last_deleted_source_never_reach_the_single_database(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """The engine also serves one database of its own (`--database-url`, here without a
    secret). Once the last registered source was deleted, its clients' requests (source_id
    and secret) used to go to that database and get its rows; they get the 401, also after
    a restart."""
    url_default, url_a = make_db(), make_db()
    make_items(url_default, ["not-yours"])
    make_items(url_a, ["a1"])
    engine = await engines(database_url=url_default).start()
    a = await engine.add("alpha", url_a)
    await engine.wait_state(a["source_id"], "active")
    rows, _, _ = await engine.sync(a["source_id"], a["secret"], table="items")
    assert [r["name"] for r in rows.values()] == ["a1"]

    status, body = await engine.api("DELETE", f"/api/sources/{a['source_id']}")
    assert status == 200, body
    for _ in range(2):
        for sid in (a["source_id"], "00000000-0000-4000-8000-000000000000", "junk"):
            status, _, got = await engine.get(sid, a["secret"], table="items", offset="-1")
            assert (status, got) == (401, UNAUTHORIZED), (sid, status, got)
        # without a source_id a request is for the engine's own database, as before
        rows, _, _ = await engine.sync(None, "", table="items")
        assert [r["name"] for r in rows.values()] == ["not-yours"]
        await engine.close()
        engine = await engines(engine.data_dir, database_url=url_default).start()


async def _outcome(task: asyncio.Task[Any]) -> object:
    """What a request task came to: (status, headers, body), or its exception's type name
    (the connection was cut)."""
    try:
        return await task
    except Exception as exc:  # aiohttp.ClientPayloadError, ServerDisconnectedError, ...
        return type(exc).__name__


async def test_requests_made_with_a_revoked_secret_end_when_it_stops_working(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """A long-poll or SSE stream opened with a secret goes on no longer than the secret
    works: rotated without a grace period, at once; with one, when it ends. They used to
    stay open (up to the long-poll or SSE timeout) and deliver the changes made after; then
    they were cut with no answer (the long-poll's client saw the connection drop, the
    stream ended mid-chunk). Each ends with a whole answer: the long-poll's is its
    timeout's (200, up-to-date, nothing new, its own offset), the stream's a clean end."""
    url = make_db()
    make_items(url, ["x1"])
    engine = await engines(long_poll_timeout=60.0, sse_timeout=60.0).start()
    src = await engine.add("rotating", url)
    sid, first = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    rows, handle, offset = await engine.sync(sid, first, table="items")
    at = {"table": "items", "offset": offset, "handle": handle}

    def long_poll(secret: str) -> asyncio.Task[Any]:
        return asyncio.create_task(engine.get(sid, secret, live="true", **at))

    def stream(secret: str) -> asyncio.Task[Any]:
        return asyncio.create_task(_sse(engine, sid, secret, **at))

    # Rotated with a grace period: requests made with the old secret during it end with it.
    old_lp, old_sse = long_poll(first), stream(first)
    await engine.until_parked(sid, 2)
    status, body = await engine.api("POST", f"/api/sources/{sid}/rotate-secret",
                                    {"grace_period_seconds": 4})  # fmt: skip
    assert status == 200, body
    second = body["secret"]
    assert second != first and body["previous_secret_expires_at"] is not None
    in_grace_lp = long_poll(first)  # opened with the old secret, during the grace period
    new_lp = long_poll(second)
    await engine.until_parked(sid, 4)  # all four held: the grace period is not over
    await wait_until_async(lambda: old_lp.done() and old_sse.done() and in_grace_lp.done(),
                           timeout=20, message="old-secret requests end with the grace")  # fmt: skip
    assert engine.manager.running[sid].parked_requests == 1  # the new secret's long-poll
    sql(url, "INSERT INTO items VALUES (2, 'x2')")
    status, _, got = await new_lp
    assert status == 200 and any(m.get("value", {}).get("name") == "x2" for m in got), got
    for task in (old_lp, in_grace_lp):
        _ended_as_at_timeout(await _outcome(task), offset)
    _ended_cleanly(await _outcome(old_sse))
    status, _, got = await engine.get(sid, first, table="items", offset="-1")
    assert (status, got) == (401, UNAUTHORIZED)
    status, body = await engine.api("GET", f"/api/sources/{sid}")
    assert body["previous_secret_expires_at"] is None

    # Rotated without one: the requests made with the old secret end at once.
    _, handle, offset = await engine.sync(sid, second, table="items")
    at = {"table": "items", "offset": offset, "handle": handle}
    lp, sse = long_poll(second), stream(second)
    await engine.until_parked(sid, 2)
    status, body = await engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
    assert status == 200, body
    await wait_until_async(lambda: lp.done() and sse.done(), timeout=20,
                           message="requests end when their secret is rotated")  # fmt: skip
    assert (await engine.get(sid, second, table="items", offset="-1"))[0] == 401
    assert (await engine.get(sid, body["secret"], table="items", offset="-1"))[0] == 200
    sql(url, "INSERT INTO items VALUES (3, 'x3')")
    _ended_as_at_timeout(await _outcome(lp), offset)
    _ended_cleanly(await _outcome(sse))


def _ended_as_at_timeout(outcome: object, offset: str) -> None:
    """A held long-poll's answer as at its timeout: 200, up-to-date, no change, and the
    offset it asked from (its next request resumes there: nothing skipped)."""
    assert isinstance(outcome, tuple), outcome  # (not a dropped connection)
    status, headers, body = outcome
    assert status == 200, outcome
    assert "electric-up-to-date" in headers and headers["electric-offset"] == offset, headers
    assert [m["headers"].get("control") for m in body] == ["up-to-date"], body


def _ended_cleanly(outcome: object) -> None:
    """An SSE stream that ended whole (no `ClientPayloadError`) and sent no change."""
    assert isinstance(outcome, tuple), outcome
    status, raw = outcome
    assert status == 200 and b'"value"' not in raw, outcome
    assert raw == b"" or raw.endswith(b"\n\n"), raw


def _slots(url: str) -> set[str]:
    return {r[0] for r in sql(url, "SELECT slot_name FROM pg_replication_slots")}


def _pubs(url: str) -> set[str]:
    return {r[0] for r in sql(url, "SELECT pubname FROM pg_publication")}


@pytest.mark.usefixtures("quick_retries")
async def test_a_source_deleted_while_its_database_is_down_is_cleaned_up_when_it_is_back(
    engines: Callable[..., MultiEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a source whose Postgres is down cannot drop its slot then; the engine used to
    give up with a warning, and the slot made Postgres keep WAL forever. It retries until the
    database is back, also after a restart (the deletion is recorded before the cleanup, so
    a crash mid-deletion leaves a cleanup to finish, never a source half there)."""
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_FIRST", 0.5)  # (5 s: the wait here)
    cluster = Cluster("logical")
    try:
        cluster.start()
        url = cluster.url
        make_items(url, ["x1"])
        engine = await engines().start()
        a = await engine.add("alpha", url)
        c = await engine.add("gamma", url)
        await engine.wait_state(a["source_id"], "active")
        await engine.wait_state(c["source_id"], "active")
        await engine.sync(a["source_id"], a["secret"], table="items")
        await engine.sync(c["source_id"], c["secret"], table="items")
        names = {}
        for src in (a, c):
            _, info = await engine.api("GET", f"/api/sources/{src['source_id']}")
            names[src["source_id"]] = (info["slot_name"], info["publication_name"])
        assert {s for s, _ in names.values()} <= _slots(url)

        # While the engine runs: deleted while down, cleaned up once the database is back.
        cluster.stop_server()
        status, body = await engine.api("DELETE", f"/api/sources/{a['source_id']}")
        assert status == 200 and body["deleted"] and body["warnings"], body
        cluster.start()
        slot, pub = names[a["source_id"]]
        await wait_until_async(lambda: slot not in _slots(url) and pub not in _pubs(url),
                               timeout=60, interval=0.5, message="the slot dropped")  # fmt: skip
        await engine.wait_state(c["source_id"], "active", timeout=60)

        # Across a restart: deleted while down, cleaned up when the engine starts again.
        cluster.stop_server()
        status, body = await engine.api("DELETE", f"/api/sources/{c['source_id']}")
        assert status == 200 and body["deleted"] and body["warnings"], body
        await engine.close()
        cluster.start()
        engine = await engines(engine.data_dir).start()
        slot, pub = names[c["source_id"]]
        await wait_until_async(lambda: slot not in _slots(url) and pub not in _pubs(url),
                               timeout=60, interval=0.5, message="the slot dropped")  # fmt: skip
        status, _ = await engine.api("GET", f"/api/sources/{c['source_id']}")
        assert status == 404
        status, _, got = await engine.get(c["source_id"], c["secret"], table="items", offset="-1")
        assert (status, got) == (401, UNAUTHORIZED)
        assert not (engine.data_dir / "sources" / c["source_id"]).exists()
        assert not (engine.data_dir / "sources" / a["source_id"]).exists()
    finally:
        cluster.stop()


async def test_deleting_a_source_does_not_make_the_others_verify_their_secrets_again(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    scrypt_secrets: None,
) -> None:
    """A verified secret is remembered, so its requests skip the (deliberately slow, two at a
    time) scrypt check. Deleting one source used to forget every source's, sending all their
    clients through scrypt at once, queued behind each other."""
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1"])
    make_items(url_b, ["b1"])
    engine = await engines().start()
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    await engine.wait_state(a["source_id"], "active")
    await engine.wait_state(b["source_id"], "active")
    checks: list[int] = []
    real = auth_module._verify_all

    def counted(secret: str, hashes: list[str]) -> list[bool]:
        checks.append(len(hashes))
        return real(secret, hashes)

    monkeypatch.setattr(auth_module, "_verify_all", counted)
    for _ in range(2):
        status, _, _ = await engine.get(b["source_id"], b["secret"], table="items", offset="-1")
        assert status == 200
    assert len(checks) == 1  # verified once, then remembered
    status, body = await engine.api("DELETE", f"/api/sources/{a['source_id']}")
    assert status == 200, body
    status, _, _ = await engine.get(b["source_id"], b["secret"], table="items", offset="-1")
    assert status == 200
    assert len(checks) == 1
    status, _, got = await engine.get(a["source_id"], a["secret"], table="items", offset="-1")
    assert (status, got) == (401, UNAUTHORIZED)


async def test_a_secret_rotated_away_while_it_is_being_checked_is_refused(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    scrypt_secrets: None,
) -> None:
    """The scrypt check runs in a thread; a rotation without grace period may land meanwhile.
    The request used to be let in with the secret that had just stopped working."""
    url = make_db()
    make_items(url, ["x1"])
    engine = await engines().start()
    src = await engine.add("racy", url)
    sid, old = src["source_id"], src["secret"]
    await engine.wait_state(sid, "active")
    entered, gate = threading.Event(), threading.Event()
    real = auth_module._verify_all

    def held(secret: str, hashes: list[str]) -> list[bool]:
        if secret == old:
            entered.set()
            gate.wait(30)
        return real(secret, hashes)

    monkeypatch.setattr(auth_module, "_verify_all", held)
    request = asyncio.create_task(engine.get(sid, old, table="items", offset="-1"))
    await wait_until_async(entered.is_set, message="the secret is being checked")
    status, body = await engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
    assert status == 200, body
    gate.set()
    status, _, got = await request
    assert (status, got) == (401, UNAUTHORIZED)
    assert (await engine.get(sid, body["secret"], table="items", offset="-1"))[0] == 200


SLOTS = "SELECT slot_name FROM pg_replication_slots WHERE database = %s"


async def test_a_cleanup_that_keeps_failing_says_so_once(
    engines: Callable[..., MultiEngine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A source deleted while its database cannot be reached is retried until it can, but
    its "could not drop" line was logged at every retry, every five minutes for as long as
    the engine ran (attack, LOW). Now once, and again only when the reason changes. (Here
    one that never connected, noted as if it had made its slot before its database went
    away: one that never did has nothing to drop, see the next test.)"""
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_FIRST", 0.05)
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_MAX", 0.1)
    tries = [0]
    destroy = ManagedSource.destroy

    async def counted(self: Any, **kwargs: Any) -> list[str]:
        tries[0] += 1
        return await destroy(self, **kwargs)

    monkeypatch.setattr(ManagedSource, "destroy", counted)
    engine = await engines().start()
    src = await engine.add("nowhere", "postgresql://shapegate@127.0.0.1:1/none")
    source_dir = engine.data_dir / "sources" / src["source_id"]
    source_dir.mkdir(parents=True, exist_ok=True)
    (source_dir / MADE_FILE).touch()
    caplog.set_level("INFO", logger="sync_engine.tenants.manager")
    status, body = await engine.api("DELETE", f"/api/sources/{src['source_id']}")
    assert status == 200 and body["deleted"] and body["warnings"], body
    await wait_until_async(lambda: tries[0] >= 6, timeout=30, message="six tries")
    said = [r for r in caplog.records if r.levelname == "INFO" and "(retrying)" in r.message]
    assert len(said) == 1, [r.message for r in said]
    await engine.close()


async def test_a_source_deleted_before_it_ever_connected_warns_of_nothing(
    engines: Callable[..., MultiEngine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A source that never reached its database never made a slot or publication there:
    its deletion warned "could not drop replication slot ..." with SQL to run by hand, and
    logged its retries for as long as the engine ran (LOW). Now no warning, and its retries
    (a data dir lost shows nothing either: the next test) are quiet."""
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_FIRST", 0.05)
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_MAX", 0.1)
    engine = await engines().start()
    src = await engine.add("nowhere", "postgresql://shapegate@127.0.0.1:1/none")
    caplog.set_level("INFO", logger="sync_engine.tenants.manager")
    status, body = await engine.api("DELETE", f"/api/sources/{src['source_id']}")
    assert status == 200 and body["deleted"] and body["warnings"] == [], body
    await asyncio.sleep(0.5)  # (several retries)
    said = [r.message for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in said if "(retrying)" in m or "could not drop" in m], said
    assert not (engine.data_dir / "sources" / src["source_id"]).exists()
    await engine.close()


async def test_a_deleted_source_whose_data_dir_was_lost_still_drops_its_slot(
    engines: Callable[..., MultiEngine],
    make_db: Any,
    pg_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """review 17:01: a source that made its slot, whose data dir was then lost (a volume
    replaced, a backup from before its first connection restored), deleted while its
    database cannot be reached: the slot is dropped once it can be (it kept WAL for good)."""
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_FIRST", 0.05)
    monkeypatch.setattr(manager_module, "CLEANUP_RETRY_MAX", 0.2)
    url = make_db()
    dbname = conninfo_to_dict(url)["dbname"]
    engine = await engines().start()
    src = await engine.add("real", url)
    await engine.wait_state(src["source_id"], "active")
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        assert len(conn.execute(SLOTS, (dbname,)).fetchall()) == 1
    await engine.close()
    shutil.rmtree(engine.data_dir / "sources" / src["source_id"])  # (sources.db kept)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
    try:
        again = await engines(engine.data_dir).start()
        status, body = await again.api("DELETE", f"/api/sources/{src['source_id']}")
        assert status == 200 and body["deleted"], body
        await asyncio.sleep(0.5)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')

    def slots() -> list[Any]:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            return conn.execute(SLOTS, (dbname,)).fetchall()

    try:
        await wait_until_async(lambda: not slots(), timeout=10, message="its slot dropped")
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:  # (so make_db can drop it)
            for (name,) in conn.execute(SLOTS, (dbname,)).fetchall():
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        await again.close()

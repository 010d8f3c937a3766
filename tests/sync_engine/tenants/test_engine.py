"""Registered sources end to end, on real Postgres: isolation, auth, rotation, restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import UNAUTHORIZED, MultiEngine, make_items, sql


async def test_two_databases_isolated_and_delete(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1", "a2"])
    make_items(url_b, ["b1", "b2", "b3"])
    engine = await engines().start()
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    assert a["source_id"] != b["source_id"] and a["secret"] != b["secret"]
    assert len(a["secret"]) >= 43
    await engine.wait_state(a["source_id"], "active")
    await engine.wait_state(b["source_id"], "active")

    rows_a, _, _ = await engine.sync(a["source_id"], a["secret"], table="items")
    rows_b, handle_b, offset_b = await engine.sync(b["source_id"], b["secret"], table="items")
    assert sorted(r["name"] for r in rows_a.values()) == ["a1", "a2"]
    assert sorted(r["name"] for r in rows_b.values()) == ["b1", "b2", "b3"]

    # A's secret cannot read B, and every kind of bad credential looks the same.
    bad = [
        (b["source_id"], a["secret"]),
        (b["source_id"], None),
        (b["source_id"], ""),
        (None, b["secret"]),
        ("00000000-0000-4000-8000-000000000000", b["secret"]),
        ("not-a-uuid", b["secret"]),
    ]
    for sid, secret in bad:
        status, headers, body = await engine.get(sid, secret, table="items", offset="-1")
        assert (status, body) == (401, UNAUTHORIZED), (sid, secret)
        assert "access-control-allow-origin" not in headers
    # the older parameter name works too
    assert engine.client is not None
    resp = await engine.client.get("/v1/shape", params={
        "table": "items", "offset": "-1", "source_id": b["source_id"],
        "source_secret": b["secret"]})  # fmt: skip
    assert resp.status == 200

    # Delete A: its credentials stop working, its slot, publication and logs are gone.
    a_dir = engine.data_dir / "sources" / a["source_id"]
    assert a_dir.exists()
    status, body = await engine.api("DELETE", f"/api/sources/{a['source_id']}")
    assert status == 200 and body["deleted"] is True and body["warnings"] == [], body
    status, _, body = await engine.get(a["source_id"], a["secret"], table="items", offset="-1")
    assert (status, body) == (401, UNAUTHORIZED)
    assert not a_dir.exists()
    assert sql(url_a, "SELECT slot_name FROM pg_replication_slots WHERE database ="
                      " current_database()") == []  # fmt: skip
    assert sql(url_a, "SELECT pubname FROM pg_publication") == []
    status, body = await engine.api("GET", f"/api/sources/{a['source_id']}")
    assert status == 404

    # B keeps syncing: a live request sees a new row.
    live = asyncio.create_task(engine.follow(b["source_id"], b["secret"], handle_b, offset_b,
                                             rows_b, table="items"))  # fmt: skip
    await engine.until_parked(b["source_id"])
    sql(url_b, "INSERT INTO items VALUES (4, 'b4')")
    await live
    assert sorted(r["name"] for r in rows_b.values()) == ["b1", "b2", "b3", "b4"]
    status, body = await engine.api("GET", "/api/sources")
    assert [s["name"] for s in body["sources"]] == ["beta"]
    assert body["sources"][0]["shape_count"] == 1


async def test_restart_keeps_sources_states_and_shapes(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url_a, url_b = make_db(), make_db()
    make_items(url_a, ["a1"])
    make_items(url_b, ["b1"])
    engine = await engines().start()
    a = await engine.add("alpha", url_a)
    b = await engine.add("beta", url_b)
    await engine.wait_state(a["source_id"], "active")
    await engine.wait_state(b["source_id"], "active")
    rows, handle, offset = await engine.sync(a["source_id"], a["secret"], table="items")
    status, body = await engine.api("POST", f"/api/sources/{b['source_id']}/pause")
    assert status == 200 and body["state"] == "paused" and body["paused"] is True
    status, headers, body = await engine.get(b["source_id"], b["secret"], table="items",
                                             offset="-1")  # fmt: skip
    assert status == 503 and body["code"] == "source_paused" and headers["retry-after"]
    await engine.close()

    sql(url_a, "INSERT INTO items VALUES (2, 'a2')")  # while the engine is down
    engine = await engines(engine.data_dir).start()
    status, body = await engine.api("GET", "/api/sources")
    by_name = {s["name"]: s for s in body["sources"]}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["beta"]["state"] == "paused"
    assert by_name["alpha"]["shape_count"] == 1
    await engine.wait_state(a["source_id"], "active")
    # same shape handle, and the change made while down arrives from the old offset
    status, h, body = await engine.get(a["source_id"], a["secret"], table="items",
                                       offset=offset, handle=handle)  # fmt: skip
    assert status == 200, body
    from tests.sync_engine.tenants.harness import apply

    apply(rows, body)
    if "electric-up-to-date" not in h or len(rows) < 2:
        offset = await engine.follow(a["source_id"], a["secret"], handle, h["electric-offset"],
                                     rows, table="items")  # fmt: skip
    assert sorted(r["name"] for r in rows.values()) == ["a1", "a2"]
    # the paused source stays paused until resumed, then syncs
    assert (await engine.get(b["source_id"], b["secret"], table="items", offset="-1"))[0] == 503
    status, body = await engine.api("POST", f"/api/sources/{b['source_id']}/resume")
    assert status == 200
    await engine.wait_state(b["source_id"], "active")
    rows_b, _, _ = await engine.sync(b["source_id"], b["secret"], table="items")
    assert [r["name"] for r in rows_b.values()] == ["b1"]


async def test_bad_input_is_4xx_and_changes_nothing(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url = make_db()
    engine = await engines().start()
    src = await engine.add("only", url)
    sid = src["source_id"]
    await engine.wait_state(sid, "active")
    db_file = engine.data_dir / "sources.db"

    def snapshot() -> tuple[Any, ...]:
        import sqlite3

        con = sqlite3.connect(db_file)
        try:
            return tuple(con.execute("SELECT source_id, name, database_url, secret_hash,"
                                     " previous_secret_hash, paused FROM sources ORDER BY 1"))  # fmt: skip
        finally:
            con.close()

    before = snapshot()
    cases: list[tuple[str, str, Any, bytes | None, int, str]] = [
        (
            "POST",
            "/api/sources",
            {"name": "x", "database_url": "not a url"},
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "x", "database_url": "mysql://u@h/db"},
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "x", "database_url": "postgresql://h:99999/d"},
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "x", "database_url": "postgresql://h/d?bogus=1"},
            None,
            400,
            "invalid_request",
        ),
        (  # an unencoded @ in the password: libpq's host would be its tail (attack 08:12)
            "POST",
            "/api/sources",
            {"name": "x", "database_url": "postgresql://postgres:pw9x8@zz@127.0.0.1:5432/d"},
            None,
            400,
            "invalid_request",
        ),
        ("POST", "/api/sources", {"name": "x"}, None, 400, "invalid_request"),
        ("POST", "/api/sources", {"name": "", "database_url": url}, None, 400, "invalid_request"),
        (
            "POST",
            "/api/sources",
            {"name": "ONLY", "database_url": url},
            None,
            409,
            "duplicate_name",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "only", "database_url": url},
            None,
            409,
            "duplicate_name",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "y", "database_url": url, "colour": "red"},
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/api/sources",
            {"name": "y", "database_url": url, "max_shapes": -1},
            None,
            400,
            "invalid_request",
        ),
        ("POST", "/api/sources", None, b'{"name": "y", "database_url": ', 400, "invalid_request"),
        ("POST", "/api/sources", None, b"[1, 2]", 400, "invalid_request"),
        ("POST", "/api/sources", None, b"\xff\xfe", 400, "invalid_request"),
        # nested deeper than the JSON parser goes (was a 500)
        ("POST", "/api/sources", None, b"[" * 60000, 400, "invalid_request"),
        (
            "POST",
            "/api/sources",
            None,
            b'{"a":' * 10000 + b"1" + b"}" * 10000,
            400,
            "invalid_request",
        ),
        (
            "POST",
            f"/api/sources/{sid}/rotate-secret",
            None,
            b'{"grace_period_seconds":' + b'{"a":' * 9000 + b"1" + b"}" * 9001,
            400,
            "invalid_request",
        ),
        # a NUL no connection could be made with (was registered, then failed forever)
        (
            "POST",
            "/api/sources",
            {"name": "nul", "database_url": url + "\x00x"},
            None,
            400,
            "invalid_request",
        ),
        ("GET", "/api/sources/00000000-0000-4000-8000-000000000000", None, None, 404, "not_found"),
        ("GET", "/api/sources/nonsense", None, None, 404, "not_found"),
        (
            "DELETE",
            "/api/sources/00000000-0000-4000-8000-000000000000",
            None,
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sources/00000000-0000-4000-8000-000000000000/rotate-secret",
            {},
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/sources/00000000-0000-4000-8000-000000000000/pause",
            None,
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            f"/api/sources/{sid}/rotate-secret",
            {"grace_period_seconds": -5},
            None,
            400,
            "invalid_request",
        ),
        (
            "POST",
            f"/api/sources/{sid}/rotate-secret",
            {"grace_period_seconds": "soon"},
            None,
            400,
            "invalid_request",
        ),
        ("POST", f"/api/sources/{sid}/rotate-secret", None, b"{nope", 400, "invalid_request"),
        ("PUT", "/api/sources", {}, None, 405, "method_not_allowed"),
    ]
    for method, path, body, raw, want_status, want_code in cases:
        status, got = await engine.api(method, path, body, raw=raw)
        assert status == want_status, (method, path, body, raw, got)
        assert got["error"] == want_code and got["message"], got
        assert "password" not in str(got).lower() or "password@" in str(got)
    for token in (None, "wrong-token-wrong-token", ""):
        status, got = await engine.api("GET", "/api/sources", token=token)
        assert status == 401 and got["error"] == "unauthorized"
        status, got = await engine.api("POST", "/api/sources",
                                       {"name": "z", "database_url": url}, token=token)  # fmt: skip
        assert status == 401
    assert snapshot() == before
    status, got = await engine.api("GET", "/api/sources")
    assert [s["name"] for s in got["sources"]] == ["only"]


async def test_passwords_are_never_shown(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url = make_db().replace("postgres@", "postgres:hunter2-secret@")
    engine = await engines().start()
    src = await engine.add("pw", url)
    assert "hunter2" not in str(src) and ":****@" in src["database_url"]
    for path in ("/api/sources", f"/api/sources/{src['source_id']}"):
        status, body = await engine.api("GET", path)
        assert "hunter2" not in str(body) and src["secret"] not in str(body)


async def test_secret_connection_parameters_never_reach_the_log(
    engines: Callable[..., MultiEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """A source that cannot connect is logged with its connection string (so the operator
    sees which one): the client key's passphrase and an OAuth client secret are left out,
    like the password."""
    engine = await engines().start()
    port = free_port()  # nothing listens there
    url = (f"postgresql://u:pw-hunter2@127.0.0.1:{port}/d"
           "?sslpassword=ssl-hunter3&oauth_client_secret=oauth-hunter4")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        src = await engine.add("unreachable", url)
        await engine.wait_state(src["source_id"], "error")
        await wait_until_async(lambda: "not ready" in caplog.text, message="logged")
    assert "not ready" in caplog.text and str(port) in caplog.text
    for secret in ("pw-hunter2", "ssl-hunter3", "oauth-hunter4"):
        assert secret not in caplog.text


async def test_single_database_mode_next_to_registered_sources(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    url_default, url_reg = make_db(), make_db()
    make_items(url_default, ["default-row"])
    make_items(url_reg, ["registered-row"])
    engine = engines(database_url=url_default, secret="engine-wide-secret")
    await engine.start()
    assert engine.client is not None
    from sync_engine.app import SOURCES

    await engine.client.app[SOURCES]["default"].ready.wait()
    # nothing registered: exactly the single-database mode (a source_id is ignored)
    rows, _, _ = await engine.sync("whatever", "engine-wide-secret", table="items")
    assert [r["name"] for r in rows.values()] == ["default-row"]
    assert (await engine.get(None, "wrong", table="items", offset="-1"))[0] == 401

    src = await engine.add("reg", url_reg)
    await engine.wait_state(src["source_id"], "active")
    rows, _, _ = await engine.sync(None, "engine-wide-secret", table="items")
    assert [r["name"] for r in rows.values()] == ["default-row"]
    rows, _, _ = await engine.sync(src["source_id"], src["secret"], table="items")
    assert [r["name"] for r in rows.values()] == ["registered-row"]
    status, _, body = await engine.get(src["source_id"], "engine-wide-secret", table="items",
                                       offset="-1")  # fmt: skip
    assert (status, body) == (401, UNAUTHORIZED)
    status, body = await engine.api("GET", "/api/sources")
    assert [s["name"] for s in body["sources"]] == ["reg"]

"""One user's handle, offsets or cursor in another user's request never bring the first
user's rows: real proxy (response cache and collapsing on), real engine and Postgres.

A member of org-a syncs `items` to up-to-date; then a member of org-b sends the very same
URLs (same query string, so a cache keyed by the client's URL would hand over org-a's
answers), and the same URLs with org-a's handle and every offset and cursor org-a saw, live
too; a member also replays an admin's handle. Each answer must be a 409 or rows of the
caller's own org with the caller's own columns, private to the caller (`Vary:
Authorization`, never `public`). A guard: nothing here failed on the code it was written
against.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " 't' || i, i * 100 FROM generate_series(1, 40) i",
    )


def _rows(reply: Any) -> list[dict[str, Any]]:
    body = reply.json()
    messages = body["data"] if isinstance(body, dict) else body
    return [m["value"] for m in messages if "value" in m]


def _check(reply: Any, org: str, seen: list[str]) -> None:
    """A 409, or rows of `org` only, member columns only; private either way."""
    assert reply.status in (200, 409), (reply.status, reply.body)
    cache_control = reply.headers.get("Cache-Control", "")
    assert "public" not in cache_control, cache_control
    assert "Authorization" in reply.headers.get("Vary", ""), reply.headers
    if reply.status == 200:
        for row in _rows(reply):
            assert row.get("org_id", org) == org and "salary" not in row, row
            seen.append(row["id"])


async def test_another_users_handle_offsets_and_cursor_bring_only_the_callers_rows(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    alice = proxy.tokens.make(sub="alice", org_id="org-a")
    bob = proxy.tokens.make(sub="bob", org_id="org-b")
    admin = proxy.tokens.make(sub="root", role="admin")

    # Alice syncs to up-to-date, then waits for one change (a live answer with a cursor).
    urls = ["/v1/shape?table=items&offset=-1"]
    reply = await proxy.get(urls[0], token=alice)
    handle = reply.headers["electric-handle"]
    while "electric-up-to-date" not in reply.headers:
        url = f"/v1/shape?table=items&handle={handle}&offset={reply.headers['electric-offset']}"
        urls.append(url)
        reply = await proxy.get(url, token=alice)
    tip = reply.headers["electric-offset"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE items SET title = 'changed' WHERE id = 1")
    live = f"/v1/shape?table=items&handle={handle}&offset={tip}&live=true"
    reply = await proxy.get(live, token=alice)
    assert reply.status == 200 and [r["id"] for r in _rows(reply)] == ["1"], reply.body
    cursor = reply.headers["electric-cursor"]
    urls += [live, f"{live}&cursor={cursor}", f"/v1/shape?table=items&handle={handle}&offset=-1"]

    # Bob replays every one of Alice's URLs: his rows or a 409, never hers.
    seen: list[str] = []
    for url in urls:
        _check(await proxy.get(url, token=bob), "org-b", seen)
    assert seen, "Bob's own snapshot came through"
    assert all(int(i) % 2 == 0 for i in seen), seen

    # A member replays the admin's handle: the member's rows and columns, or a 409.
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=admin)
    admin_handle = reply.headers["electric-handle"]
    assert any("salary" in row for row in _rows(reply))
    seen = []
    for offset in ("-1", "0_0", reply.headers["electric-offset"]):
        url = f"/v1/shape?table=items&handle={admin_handle}&offset={offset}"
        _check(await proxy.get(url, token=alice), "org-a", seen)
    assert all(int(i) % 2 == 1 for i in seen), seen

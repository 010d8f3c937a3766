"""Exactly the columns a rule shows, whatever the change: real proxy, engine and Postgres.

A member whose rule shows `id, org_id, title` (not `salary`) and allows `replica=full` follows
the table through inserts, updates of shown and hidden columns, rows moving in and out of the
member's org, and deletes. No message may carry `salary`, in `value` or in `old_value`;
`electric-schema` names only the shown columns; an update of hidden columns alone sends
nothing; a row moving out is a delete naming only its key. A guard: nothing here failed on the
code it was written against.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

SHOWN = {"id", "org_id", "title"}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " 't' || i, i * 100 FROM generate_series(1, 10) i",
    )


@pytest.mark.parametrize("replica", ["full", "default"])
async def test_no_change_carries_a_hidden_column(
    engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    replica: str,
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    member_rule = config["tables"]["items"]["allow"][1]
    assert member_rule["name"] == "member"
    member_rule["replica_full"] = True
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    base = f"/v1/shape?table=items&replica={replica}"

    messages: list[dict[str, Any]] = []
    reply = await proxy.get(f"{base}&offset=-1", token=member)
    assert reply.status == 200, reply.body
    assert set(json.loads(reply.headers["electric-schema"])) == SHOWN
    messages += reply.json()
    handle = reply.headers["electric-handle"]
    while "electric-up-to-date" not in reply.headers:
        offset = reply.headers["electric-offset"]
        reply = await proxy.get(f"{base}&handle={handle}&offset={offset}", token=member)
        messages += reply.json()
    offset = reply.headers["electric-offset"]

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE items SET salary = salary + 1 WHERE id = 1")  # hidden only
        conn.execute("UPDATE items SET salary = 0, title = 'both' WHERE id = 3")
        conn.execute("UPDATE items SET org_id = 'org-b', salary = 7 WHERE id = 5")  # moves out
        conn.execute("UPDATE items SET org_id = 'org-a', salary = 8 WHERE id = 2")  # moves in
        conn.execute("INSERT INTO items VALUES (11, 'org-a', 'new', 999)")
        conn.execute("DELETE FROM items WHERE id = 7")
        conn.execute("UPDATE items SET title = 'last' WHERE id = 9")
    changes: list[dict[str, Any]] = []
    for _ in range(20):
        reply = await proxy.get(f"{base}&handle={handle}&offset={offset}&live=true", token=member)
        assert reply.status == 200, reply.body
        changes += [m for m in reply.json() if "key" in m]
        offset = reply.headers["electric-offset"]
        if any(m["value"].get("title") == "last" for m in changes):
            break
    else:
        raise AssertionError(f"the last change never came: {changes}")

    for message in messages + changes:
        for part in ("value", "old_value"):
            assert set(message.get(part, {})) <= SHOWN, message
    by_id: dict[str, list[str]] = {}
    for message in changes:
        by_id.setdefault(message["value"]["id"], []).append(message["headers"]["operation"])
    assert "1" not in by_id, changes  # (its shown columns did not change)
    assert by_id == {
        "3": ["update"], "5": ["delete"], "2": ["insert"], "11": ["insert"], "7": ["delete"],
        "9": ["update"],
    }, changes  # fmt: skip
    moved_out = next(m for m in changes if m["value"]["id"] == "5")
    assert set(moved_out["value"]) <= SHOWN and "org-b" not in json.dumps(moved_out)

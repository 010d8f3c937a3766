"""A table pattern does not reach around a stricter rule through partitions or inheritance
children: real proxy, engine and Postgres.

`items` (members: their org's rows, some columns) is partitioned by org; `notes` (each
owner's own rows) has an inheritance child; `public.*` serves every other table of the schema
whole. A partition's rows are its parent's rows, and a parent's rows include its children's:
served by the pattern, `items_b` would hand a member of org-a every org-b row, and
`notes_archive` every archived note. The proxy has no catalog of its own, so a table reached
only through a pattern is served only when no listed table shows the caller less; a table the
operator lists by name gets its own rule. Failed on the old code (`items_b` and
`notes_archive` answered 200 with the hidden rows).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "DROP TABLE IF EXISTS items",
        "CREATE TABLE items (id int, org_id text NOT NULL, title text, salary int,"
        " PRIMARY KEY (id, org_id)) PARTITION BY LIST (org_id)",
        "CREATE TABLE items_a PARTITION OF items FOR VALUES IN ('org-a')",
        "CREATE TABLE items_b PARTITION OF items FOR VALUES IN ('org-b')",
        "INSERT INTO items VALUES (1, 'org-a', 'mine', 10), (2, 'org-b', 'theirs', 20)",
        "CREATE TABLE notes (id int PRIMARY KEY, owner text NOT NULL, body text)",
        "CREATE TABLE notes_archive () INHERITS (notes)",
        "INSERT INTO notes VALUES (1, 'u-1', 'own note')",
        "INSERT INTO notes_archive VALUES (2, 'u-2', 'someone else''s archived note')",
        "CREATE TABLE posts (id int PRIMARY KEY, title text)",
        "INSERT INTO posts VALUES (1, 'hello')",
        "CREATE SCHEMA archive",
        "CREATE TABLE events (id int, org_id text NOT NULL, body text, PRIMARY KEY (id, org_id))"
        " PARTITION BY LIST (org_id)",
        "CREATE TABLE archive.events_a PARTITION OF events FOR VALUES IN ('org-a')",
        "CREATE TABLE archive.events_b PARTITION OF events FOR VALUES IN ('org-b')",
        "INSERT INTO events VALUES (1, 'org-a', 'our event'), (2, 'org-b', 'their event')",
    )


async def test_a_pattern_does_not_serve_a_partition_or_child_of_a_stricter_table(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    config["tables"]["public.*"] = {"allow": [{"name": "catch-all", "all_rows": True}]}
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(sub="u-1", role="member", org_id="org-a")

    for table in ("items_b", "items_a", "notes_archive", "posts"):
        reply = await proxy.get(f"/v1/shape?table={table}&offset=-1", token=member)
        assert reply.status == 403, (table, reply.body)
        assert reply.json()["code"] == "pattern_not_safe", reply.body
        assert b"org-b" not in reply.body and b"archived" not in reply.body
    # The parent itself keeps its rule.
    reply = await proxy.get("/v1/shape?table=items&offset=-1", token=member)
    assert reply.status == 200, reply.body
    rows = [m["value"] for m in reply.json() if "value" in m]
    assert rows == [{"id": "1", "org_id": "org-a", "title": "mine"}]

    # Listed by name, a table gets its own rule (the operator says what it is).
    listed = copy.deepcopy(config)
    listed["tables"]["posts"] = {"allow": [{"name": "posts", "all_rows": True}]}
    proxy = await make_proxy(build_config(listed, environ))
    reply = await proxy.get("/v1/shape?table=posts&offset=-1", token=member)
    assert reply.status == 200, reply.body
    assert [m["value"]["title"] for m in reply.json() if "value" in m] == ["hello"]

    # A caller every listed table shows whole (all rows, all columns) is served by the
    # pattern: nothing it reaches can be more than that caller may see anyway.
    open_config = copy.deepcopy(config)
    open_config["tables"]["notes"]["allow"].insert(
        0, {"name": "admin", "when": {"role": "admin"}, "all_rows": True}
    )
    proxy = await make_proxy(build_config(open_config, environ))
    admin = proxy.tokens.make(sub="a-1", role="admin")
    reply = await proxy.get("/v1/shape?table=items_b&offset=-1", token=admin)
    assert reply.status == 200, reply.body
    assert "theirs" in json.dumps(reply.json())


async def test_a_pattern_does_not_serve_a_partition_of_a_table_only_a_named_shape_lists(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`events` is served only as the named shape `my-events` (a member's org's rows); its
    partitions live in schema `archive`, which `archive.*` opens to every member. The check
    looked at `tables:` only: `archive.events_b` handed a member of org-a every org-b event
    (failed on the old code). A named shape lists its table too: a caller may see of it what
    its most open listing shows, and when that is all of it the pattern serves as before."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    config["tables"] = {"archive.*": {"allow": [{"name": "archive", "all_rows": True}]}}
    shape = {"table": "events", "allow": [{"where": "org_id = {{org_id}}"}]}
    config["shapes"] = {"my-events": shape}
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(sub="u-1", role="member", org_id="org-a")
    for table in ("archive.events_b", "archive.events_a"):
        reply = await proxy.get(f"/v1/shape?table={table}&offset=-1", token=member)
        assert b"their event" not in reply.body
        assert (reply.status, reply.json()["code"]) == (403, "pattern_not_safe"), reply.body
    reply = await proxy.get("/shapes/my-events?offset=-1", token=member)
    assert [m["value"]["body"] for m in reply.json() if "value" in m] == ["our event"]

    # A named shape showing the whole table (beside a filtered one): the pattern serves.
    config["shapes"]["all-events"] = {"table": "events", "allow": [{"all_rows": True}]}
    proxy = await make_proxy(build_config(config, environ))
    reply = await proxy.get("/v1/shape?table=archive.events_b&offset=-1", token=member)
    assert reply.status == 200, reply.body
    assert [m["value"]["body"] for m in reply.json() if "value" in m] == ["their event"]

"""A subset snapshot (GET `subset__*` and POST) or a snapshot in flight at a reload that narrows
its rule is not answered under the old rule (attack round 8, 00:02, HIGH): the engine's answer,
read after the reload, is dropped and the request is authorised again under the new config
(`upstream.forward.Reauthorise`). Test by attack (r8b), taken by proxy: the reload is made
directly (no poll), collapsing on and off, and a new shape's snapshot added.

Real path: proxy -> `sync-engine` -> Postgres; a real config file rewritten (atomic rename) and
reloaded by the poll. A Postgres transaction holds ACCESS EXCLUSIVE on `items`, so the engine's
subset queries wait (as a slow query on a big table does); a member's GET and POST subsets are
authorised under the member rule (columns id, org_id, title), reach the engine and wait there;
the reload narrows the rule to (id, title); the lock is released. On w-lead df85dfc both answers
came 200 with `org_id`, the column the new rule hides. Nothing is timed: the requests are
waited for in Postgres, the answers for as long as they take."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import yaml

import proxy.http.fastlane as fastlane
from proxy.config.loader import load_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async


def _config(engine: EngineProcess, idp_server: Any, collapse: bool) -> dict[str, Any]:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=600)
    if not collapse:
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
    return config


def _waiting_on_lock(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE '%items%'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("mode", ["collapsed", "direct", "fast"])
async def test_a_subset_in_flight_at_a_narrowing_reload_gets_no_hidden_column(
    mode: str,
    monkeypatch: pytest.MonkeyPatch,
    start_engine: Any,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    tmp_path: Path,
) -> None:
    engine = start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1'), (3, 'org-a', 'a3')",
        args=("--no-fsync",),
    )
    path = tmp_path / "proxy.yaml"
    config = _config(engine, idp_server, mode == "collapsed")
    path.write_text(yaml.safe_dump(config))
    proxy = await make_proxy(
        load_config(path, environ), config_path=path, environ=environ, fast_lane=mode == "fast"
    )
    taken: list[str] = []
    start = fastlane.start

    def spy(app: Any, request: Any, client: Any) -> Any:
        answer = start(app, request, client)
        if answer is not None:
            taken.append(request.raw_path)
        return answer

    monkeypatch.setattr(fastlane, "start", spy)
    token = proxy.tokens.make()
    rows, handle, offset = await sync_through(proxy, token)
    assert all("org_id" in row for row in rows.values())  # the member rule's columns, for now
    base = f"/v1/shape?table=items&handle={handle}&offset={offset}"
    auth = {"Authorization": f"Bearer {token}"}
    where = quote("title <> 'none'")

    async def get_subset() -> tuple[int, bytes]:
        url = f"{base}&subset__where={where}&subset__order_by=id&subset__limit=10"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    async def post_subset() -> tuple[int, bytes]:
        body = {"where": "title <> 'none'", "order_by": "id", "limit": 10}
        async with proxy.client.post(base, headers=auth, json=body) as resp:
            return resp.status, await resp.read()

    async def new_shape() -> tuple[int, bytes]:
        url = f"/v1/shape?table=items&offset=-1&where={where}"
        async with proxy.client.get(url, headers=auth) as resp:
            return resp.status, await resp.read()

    if mode == "fast":  # (the fast lane takes a request authorised before)
        assert (await get_subset())[0] == 200
    lock = psycopg.connect(db_url)
    tasks: list[asyncio.Task[tuple[int, bytes]]] = []
    try:
        lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        tasks = [asyncio.create_task(f()) for f in (get_subset, post_subset, new_shape)]
        # All are authorised and wait in the engine's queries, behind the lock.
        await wait_until_async(
            lambda: _waiting_on_lock(db_url) >= 3, timeout=120, message="all three wait"
        )
        member = config["tables"]["items"]["allow"][1]
        member["columns"] = ["id", "title"]
        path.with_suffix(".next").write_text(yaml.safe_dump(config))
        os.replace(path.with_suffix(".next"), path)
        assert proxy.app.holder.reload()
    finally:
        lock.rollback()
        lock.close()
    answers = await asyncio.gather(*tasks)
    assert len(taken) == (1 if mode == "fast" else 0), taken  # (the GET subset's second time)
    # The subsets name the old shape's handle: under the new rule (another shape) the engine
    # answers 409 must-refetch, as to any request made after the reload; the new shape's
    # snapshot is the new rule's.
    assert [status for status, _ in answers] == [409, 409, 200], answers
    for _, body in answers[2:]:
        answer = json.loads(body)
        items = answer["data"] if isinstance(answer, dict) else answer
        values = [item["value"] for item in items if "value" in item]
        assert values, body  # (the rows, under the new rule)
        assert all("org_id" not in value for value in values), body

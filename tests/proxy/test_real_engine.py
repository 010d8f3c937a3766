"""Real path: client -> proxy -> `sync-engine` (its CLI, a subprocess) -> real PostgreSQL.

Two users whose tokens carry different `org_id` claims sync the same table through the proxy;
each sees only their organisation's rows, including a live change, and an admin sees all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages, sync_through
from tests.support.waiting import wait_until_async


@pytest.fixture
def real_engine(db_url: str, tmp_path: Path, engine_secret: str) -> Iterator[EngineProcess]:
    """`sync-engine` started through its CLI against a fresh database."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)")
        conn.execute(
            "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-a', 'a2'), (3, 'org-b', 'b1')"
        )
    engine = EngineProcess(
        db_url, tmp_path / "data",
        "--secret", engine_secret, "--long-poll-timeout", "3", "--no-fsync",
    )  # fmt: skip
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


async def test_two_orgs_and_admin_through_proxy_and_real_engine(
    real_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    engine_secret: str,
) -> None:
    config = base_config(real_engine.url, str(idp_server.make_url("/jwks.json")))
    # The first-byte timeout must exceed the engine's long-poll hold (3 s here).
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    alice = proxy.tokens.make(sub="alice", org_id="org-a")
    bob = proxy.tokens.make(sub="bob", org_id="org-b")
    admin = proxy.tokens.make(sub="root", role="admin")

    a_rows, a_handle, a_offset = await sync_through(proxy, alice)
    b_rows, b_handle, b_offset = await sync_through(proxy, bob)
    admin_rows, _, _ = await sync_through(proxy, admin)
    assert sorted(r["title"] for r in a_rows.values()) == ["a1", "a2"]
    assert sorted(r["title"] for r in b_rows.values()) == ["b1"]
    assert sorted(r["title"] for r in admin_rows.values()) == ["a1", "a2", "b1"]
    assert a_handle != b_handle  # different filters are different shapes upstream
    assert set(next(iter(a_rows.values()))) == {"id", "org_id", "title"}

    async def live(token: str, handle: str, offset: str) -> Any:
        return await proxy.get(
            f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor=",
            token=token,
        )

    a_live = asyncio.create_task(live(alice, a_handle, a_offset))
    b_live = asyncio.create_task(live(bob, b_handle, b_offset))
    await real_engine.until_parked(2)  # both held by the engine (two shapes: not collapsed)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (4, 'org-a', 'a3')")
    a_reply, b_reply = await asyncio.gather(a_live, b_live)
    assert a_reply.status == 200 and b_reply.status == 200
    apply_messages(a_rows, a_reply.json())
    apply_messages(b_rows, b_reply.json())
    assert sorted(r["title"] for r in a_rows.values()) == ["a1", "a2", "a3"]
    assert sorted(r["title"] for r in b_rows.values()) == ["b1"]
    assert b_reply.headers["electric-has-data"] == "false"  # bob's poll timed out empty
    assert a_reply.headers["Cache-Control"].startswith("private")

    # The engine really checks the secret the proxy adds: without it, nothing.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{real_engine.url}/v1/shape?table=items&offset=-1") as resp:
            assert resp.status == 401


def _counter(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} counter")


def _upstream_requests(metrics_text: str) -> float:
    return _counter(metrics_text, "shape_proxy_upstream_requests")


def _collapsed_requests(metrics_text: str) -> float:
    return _counter(metrics_text, "shape_proxy_collapsed_requests")


async def test_twenty_live_clients_share_one_engine_request_per_write(
    real_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
) -> None:
    """Collapsing on the real path: one insert reaches 20 long-polling clients of one shape
    (two users with the same org, so the same enforced filter) for at most 2 engine requests."""
    config = base_config(real_engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    tokens = [proxy.tokens.make(sub=f"user-{i % 2}", org_id="org-a") for i in range(20)]
    _, handle, offset = await sync_through(proxy, tokens[0])
    path = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor="
    metrics = (await proxy.get("/metrics")).body.decode()
    before, collapsed_before = _upstream_requests(metrics), _collapsed_requests(metrics)
    polls = [asyncio.create_task(proxy.get(path, token=t)) for t in tokens]

    async def all_twenty_held() -> bool:
        """Every client's request is at the proxy (it started an engine request or joined
        one) and each engine request it sent is parked in the engine."""
        metrics = (await proxy.get("/metrics")).body.decode()
        sent = _upstream_requests(metrics) - before
        joined = _collapsed_requests(metrics) - collapsed_before
        return sent + joined >= 20 and await real_engine.parked_requests() >= sent

    await wait_until_async(all_twenty_held, timeout=30, message="20 long-polls held")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (10, 'org-a', 'fan-out')")
    replies = await asyncio.gather(*polls)
    after = _upstream_requests((await proxy.get("/metrics")).body.decode())
    for reply in replies:
        assert reply.status == 200
        rows: dict[str, dict[str, Any]] = {}
        apply_messages(rows, reply.json())
        assert [r["title"] for r in rows.values()] == ["fan-out"]
    assert len({r.headers["X-Request-Id"] for r in replies}) == 20
    assert after - before <= 2, f"the engine saw {after - before} requests for one write"

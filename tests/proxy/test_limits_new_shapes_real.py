"""The new-shape budget and the client address behind a load balancer, on the real path.

Client -> proxy (its own server, on a socket) -> `sync-engine` (its CLI, a subprocess, with
`--max-shapes`) -> real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.databases import create_database, drop_database
from tests.support.engine_process import EngineProcess, sync_through

HOLD = 4  # the engine's long-poll hold, seconds
MAX_SHAPES = 10


@pytest.fixture(scope="module")
def engine_secret() -> str:
    """One engine secret for the module: its tests share one engine (`real_engine`)."""
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def real_engine(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[str]:
    """One engine for the module's tests, each with its own proxy. They make at most
    `MAX_SHAPES` shapes between them, in any order, unless the proxy lets alice through."""
    dbname, db_url = create_database(pg_server_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)")
        conn.execute(
            "INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-a' ELSE 'org-b' END, "
            "'item ' || i FROM generate_series(1, 30) i"
        )
    engine = EngineProcess(
        db_url, tmp_path_factory.mktemp("new-shapes-engine") / "data",
        "--secret", engine_secret, "--no-fsync",
        "--long-poll-timeout", str(HOLD), "--max-shapes", str(MAX_SHAPES),
    )  # fmt: skip
    engine.start()
    try:
        yield engine.url
    finally:
        engine.stop()
        drop_database(pg_server_url, dbname)


def _config(engine_url: str, idp: Any) -> dict[str, Any]:
    config = base_config(engine_url, str(idp.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=HOLD + 10)
    return config


async def test_one_user_making_new_shapes_fast_is_refused_and_evicts_nobody(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """Alice (an admin, who may name any `where`) asks for shape after shape: past her burst
    of new shapes she gets 429 `too_many_new_shapes`, before the engine makes them, and
    bob's shape stays. (Under the old code the engine made every one: past `--max-shapes`
    it evicted bob's idle shape, his next request a 409, until its shapes got a minimum idle
    age; since, the engine fills up and other users' new shapes are 503s.)"""
    config = _config(real_engine, idp_server)
    config["limits"] = {"new_shape_rate": 0.05, "new_shape_burst": 3}
    proxy = await make_proxy(build_config(config, environ))
    alice = proxy.tokens.make(sub="alice", role="admin")
    bob = proxy.tokens.make(sub="bob", org_id="org-a")
    carol = proxy.tokens.make(sub="carol", org_id="org-b")
    rows, handle, offset = await sync_through(proxy, bob)  # bob's shape: the engine's 1st
    assert len(rows) == 15

    statuses = []
    for k in range(1, 9):
        reply = await proxy.get(f"/v1/shape?table=items&offset=-1&where=id+%3D+{k}", token=alice)
        statuses.append(reply.status)
        if reply.status == 429:
            assert reply.json()["code"] == "too_many_new_shapes", reply.body
            # a new shape every 20 s: the seconds left of it when refused (a second or more
            # may pass between the bucket's emptying and a refusal on a loaded machine)
            assert 16 <= int(reply.headers["Retry-After"]) <= 20, reply.headers["Retry-After"]
            assert reply.headers["Content-Type"].startswith("application/json")
            assert reply.headers["Cache-Control"] == "no-store"
    assert statuses == [200] * 3 + [429] * 5
    # Naming a shape with some handle and offset makes it too (the engine creates it, then
    # answers 409): charged the same.
    reply = await proxy.get(
        "/v1/shape?table=items&offset=0_0&handle=12345-67890&where=id+%3D+30", token=alice
    )
    assert (reply.status, reply.json().get("code")) == (429, "too_many_new_shapes")
    # Her shapes already made stay free, from the start or not.
    again = await proxy.get(
        "/v1/shape?table=items&offset=-1&where=id+%3D+2&cache-buster=1", token=alice
    )
    assert again.status == 200 and b'"id":"2"' in again.body
    # Another user has a budget of their own.
    assert (await proxy.get("/v1/shape?table=items&offset=-1", token=carol)).status == 200

    # Bob's shape was kept: his next request is served from where he was.
    reply = await proxy.get(f"/v1/shape?table=items&offset={offset}&handle={handle}", token=bob)
    assert reply.status == 200, reply.body
    assert reply.headers["electric-handle"] == handle


async def test_anonymous_clients_behind_a_trusted_balancer_have_budgets_of_their_own(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """Behind a load balancer every peer is the balancer: with it in `trusted_proxies`, two
    anonymous clients hold a live request each under `max_held: 1` (each is charged to the
    address the balancer forwarded); a peer that is not trusted is one client whatever its
    `X-Forwarded-For` says (under the old code both were, trusted or not)."""
    config = _config(real_engine, idp_server)
    config["tables"]["items"]["allow"].append(
        {"name": "public", "anonymous": True, "all_rows": True}
    )
    config["limits"] = {"max_held": 1}

    async def through(trusted: list[str]) -> tuple[int, int, int]:
        """(the status of ann's second live request, of a request from the /64 of one
        held, how many live requests are held)."""
        config["server"] = {"trusted_proxies": trusted}
        proxy = await make_proxy(build_config(config, environ))
        first = await proxy.get("/v1/shape?table=items&offset=now")
        assert first.status == 200 and "electric-up-to-date" in first.headers
        live = (
            f"/v1/shape?table=items&offset={first.headers['electric-offset']}"
            f"&handle={first.headers['electric-handle']}&live=true&cache-buster="
        )
        ann = {"X-Forwarded-For": "198.51.100.1"}
        others = [{"Forwarded": "for=198.51.100.2;proto=https"}, {"X-Forwarded-For": "2001:db8::9"}]
        held = [asyncio.create_task(proxy.get(f"{live}a", headers=ann))]
        await _until(lambda: _held(proxy) == 1)
        # A second one of ann's, the left of its header spoofed: no one else's budget.
        again = await proxy.get(f"{live}b", headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.1"})
        for n, headers in enumerate(others):
            held.append(asyncio.create_task(proxy.get(f"{live}{n}", headers=headers)))
        await asyncio.sleep(0.3)  # (a refusal comes at once; a held request stays)
        # Another address of the same IPv6 /64: the same subscriber, over its 1.
        neighbour = await proxy.get(f"{live}n", headers={"X-Forwarded-For": "2001:db8::a"})
        count = _held(proxy)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        return again.status, neighbour.status, count

    # Trusted: ann is over her 1; two other clients each hold theirs.
    assert await through(["127.0.0.0/8"]) == (429, 429, 3)
    # Not trusted (the balancer is elsewhere): every request is 127.0.0.1's, over its 1.
    assert await through(["10.0.0.0/8", "::1/128"]) == (429, 429, 1)


def _held(proxy: Any) -> int:
    from proxy.http.handlers import ADMISSION

    admission = proxy.app[ADMISSION]
    return sum(s.held for s in admission._states.values())


async def _until(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_one_user_keeping_many_shapes_fresh_is_held_to_its_share(
    real_engine: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    """`max_shapes`: the shapes a principal asked for within `shape_window` (which the
    engine's `--max-shapes` will not evict) are bounded: past it a 429 `too_many_shapes`,
    while those it keeps asking for stay free. (Under the old code one principal re-asking
    its shapes kept the whole engine to itself: others' new shapes were 503s.)"""
    config = _config(real_engine, idp_server)
    config["limits"] = {"max_shapes": 2, "shape_window": 60}
    proxy = await make_proxy(build_config(config, environ))
    dave = proxy.tokens.make(sub="dave", role="admin")
    shape = "/v1/shape?table=items&offset=-1&where=id+%3D+{}&cache-buster={}"
    assert [(await proxy.get(shape.format(k, 0), token=dave)).status for k in (11, 12)] == [
        200,
        200,
    ]
    refused = await proxy.get(shape.format(13, 0), token=dave)
    assert (refused.status, refused.json()["code"]) == (429, "too_many_shapes")
    assert 58 <= int(refused.headers["Retry-After"]) <= 60  # when id = 11 leaves the window
    assert "limit 2" in refused.json()["message"]
    for n, k in enumerate((11, 12, 11)):  # (cache-busters: each one an engine request)
        reply = await proxy.get(shape.format(k, n + 1), token=dave)
        assert reply.status == 200, reply.body
    # Another principal keeps its own share.
    erin = proxy.tokens.make(sub="erin", role="admin")
    assert (await proxy.get(shape.format(13, 0), token=erin)).status == 200

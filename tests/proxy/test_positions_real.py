"""Live followers through the real engine and Postgres: a follower's requests, each at the
engine's next offset and cursor, answered from the prepared decision's template
(`proxy.http.positions`) on the fast lane, get what a proxy without a prepared cache (every
request authorised and its engine URL built from scratch) gets; and two users following the
same shape with the same offsets each get their own rows.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.config.loader import build_config
from tests.proxy.engines import engine_on_a_new_database
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_fastlane_real import _normal, _request
from tests.proxy.test_positions import _ask
from tests.support.engine_process import EngineProcess, apply_messages, sync_through


@pytest.fixture(scope="module")
def engine_secret() -> str:
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def real_engine(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[EngineProcess]:
    with engine_on_a_new_database(
        pg_server_url,
        tmp_path_factory.mktemp("positions") / "data",
        engine_secret,
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
        "INSERT INTO items SELECT i, 'org-' || (i % 2), 't' || i FROM generate_series(1, 40) i",
        args=("--long-poll-timeout", "3", "--no-fsync"),
    ) as engine:
        yield engine


async def _pair(
    real_engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> tuple[Any, Any]:
    """The proxy as shipped (prepared cache, templates, fast lane) and one with no prepared
    cache (`token_cache_size: 0`), both straight to the engine."""
    proxies = []
    for size in (10_000, 0):
        config = base_config(real_engine.url, str(idp_server.make_url("/jwks.json")))
        config["upstream"].update(first_byte_timeout=10)
        config["collapse"] = False
        config["cache"] = {"max_bytes": 0}
        config["server"] = {"token_cache_size": size}
        proxies.append(await make_proxy(build_config(config, environ)))
    return proxies[0], proxies[1]


def _headers(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return {
        name.lower(): value
        for name, _, value in (line.partition(": ") for line in head.split("\r\n")[1:])
    }


async def test_a_live_follower_gets_what_the_general_path_answers_at_every_offset(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    ours, general = await _pair(real_engine, idp_server, environ, make_proxy)
    alice = ours.tokens.make(sub="alice", org_id="org-1")
    rows, handle, offset = await sync_through(ours, alice)
    assert len(rows) == 20
    auth = f"Authorization: Bearer {alice}"
    cursor = ""
    offsets = [offset]
    with psycopg.connect(real_engine.db_url, autocommit=True) as conn:
        for i in range(8):
            # The client's live request (sorted, as Electric's client sends it), to both at
            # once; then a write each is answered with.
            target = (
                f"/v1/shape?cursor={cursor}&handle={handle}&live=true&offset={offset}&table=items"
            )
            head = _request(target, auth, "X-Request-Id: positions-real-0001")
            both = asyncio.gather(_ask(ours, head), _ask(general, head))
            await asyncio.sleep(0.3)
            if i % 2:  # (a write alice cannot see first: her long-poll goes on)
                conn.execute("INSERT INTO items VALUES (%s, 'org-0', 'x')", (200 + i,))
            conn.execute("INSERT INTO items VALUES (%s, 'org-1', %s)", (100 + i, f"n{i}"))
            answer, expected = await both
            assert _normal(answer) == _normal(expected), i
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            headers = _headers(answer)
            offset = headers["electric-offset"]
            cursor = headers["electric-cursor"]
            offsets.append(offset)
            apply_messages(rows, json.loads(answer.split(b"\r\n\r\n", 1)[1]))
    assert len(set(offsets)) == len(offsets)  # each a new offset
    assert len(rows) == 20 + 8  # her org's new rows, not the others'
    # Catch-ups from each offset the engine gave (a client resuming), and odd spellings.
    targets = [f"/v1/shape?table=items&offset={o}&handle={handle}" for o in offsets]
    targets += [
        f"/v1/shape?table=items&offset={offsets[1]}&handle={handle}&offset={offsets[2]}",
        f"/v1/shape?table=items&offset=0{offsets[1]}&handle={handle}",
        f"/v1/shape?table=items&offset={offsets[1]}&handle=",
        f"/v1/shape?table=items&offset=-1&live=true&handle={handle}",
        f"/v1/shape?table=items&offset=now&live=true&handle={handle}",
        f"/v1/shape?table=items&offset=now&handle={handle}",
        f"/v1/shape?table=items&offset={offsets[1]}&handle=1-2",
        f"/v1/shape?table=items&%6Fffset={offsets[1]}&handle={handle}&offset=-1",
    ]
    for target in targets:
        head = _request(target, auth, "X-Request-Id: positions-real-0001")
        for _ in range(2):  # (the repeat: authorised before)
            answer, expected = await _ask(ours, head), await _ask(general, head)
            assert _normal(answer) == _normal(expected), target
    # The live requests after the first, and the catch-ups after their first kind, took the
    # fast lane from a template: each at an offset never asked before.
    live = [path for path in fast_lane_taken if "live=true" in path and "cursor=" in path]
    assert len(live) >= 7
    assert len(ours.app.lane[0].current.prepared) <= 12


async def test_two_users_following_with_the_same_offsets_each_get_their_own_rows(
    real_engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    ours, _ = await _pair(real_engine, idp_server, environ, make_proxy)
    users = {
        "org-1": ours.tokens.make(sub="alice", org_id="org-1"),
        "org-0": ours.tokens.make(sub="bob", org_id="org-0"),
    }
    handles = {}
    for org, token in users.items():
        rows, handle, offset = await sync_through(ours, token)
        assert {row["org_id"] for row in rows.values()} == {org}
        handles[org] = handle
    # The same catch-up queries in turn, alice's and bob's (each its own shape handle): each
    # answer holds its own org's rows only.
    for i in range(6):
        for org, token in users.items():
            reply = await ours.get(
                f"/v1/shape?table=items&offset=-1&handle={handles[org]}&cursor={i}", token=token
            )
            assert reply.status == 200
            rows = {}
            apply_messages(rows, reply.json())
            assert rows and {row["org_id"] for row in rows.values()} == {org}, (org, i)
    assert len([p for p in fast_lane_taken if "cursor=" in p]) == 10

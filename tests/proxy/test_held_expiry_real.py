"""Held answers end no later than the caller's token `exp`, and when a reload revokes access:
long-polls (collapsed, straight through, and on the fast lane) and SSE passed straight
through (collapsing off). Real path: proxy -> `sync-engine` (20 s long-polls) -> Postgres.

A long-poll the proxy ends is answered 200 with its own handle and offset, a fresh cursor and
no rows, but not up-to-date (the engine says that only at its tip, and the request's offset may
lie inside a transaction: `held.ended_long_poll`): the client's next request, with a
fresh token, gets the change written meanwhile (nothing lost), with the expired token a 401,
after a reload that withdrew the rule a 403. An SSE stream ends cleanly. On the old code each
was held until the engine answered: a change written after `exp` (or after the reload) was
served to the caller.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.proxy.proxy_fakes import now
from tests.proxy.real_proxies import by_mode, items_config
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async

#: Bound for an answer the proxy should end at once (at `exp`, or on the reload); on the old
#: code none comes before the engine's 20 s, and a change is then written to show the leak.
ENDED_WITHIN = 12.0


def _config(engine: EngineProcess, idp_server: Any, collapse: bool, **more: Any) -> dict[str, Any]:
    """The config of each way through the proxy (`real_proxies.by_mode`): the member rule's
    SSE on, leeway 0 (a held answer ends at `exp` itself)."""
    return items_config(engine, idp_server, collapse=collapse, sse=True, leeway=0, **more)


async def _get(proxy: Any, path: str, token: str, **headers: str) -> tuple[int, Any, bytes]:
    async with proxy.client.get(
        path, headers={"Authorization": f"Bearer {token}", **headers}
    ) as resp:
        return resp.status, resp.headers, await resp.read()


def _ids(body: bytes) -> list[str]:
    return [m["key"] for m in json.loads(body) if "key" in m]


def _sse_ids(body: bytes) -> list[str]:
    ids = []
    for line in body.decode().splitlines():
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if "key" in message:
                ids.append(message["key"])
    return ids


def _insert(db_url: str, *ids: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for id_ in ids:
            conn.execute("INSERT INTO items VALUES (%s, 'org-a', 'new')", (id_,))


async def _ended(tasks: list[asyncio.Task[Any]], db_url: str, leak_id: int) -> None:
    """Wait for the held answers to end; those still held after `ENDED_WITHIN` (the old
    code) get a change written now, which they then serve (the assertions show it)."""
    _, pending = await asyncio.wait(tasks, timeout=ENDED_WITHIN)
    if pending:
        _insert(db_url, leak_id)
        await asyncio.wait(pending, timeout=30)
    assert all(task.done() for task in tasks), "held on after the hold ended"


def _check_ended(reply: tuple[int, Any, bytes], handle: str, offset: str) -> str:
    """A held answer the proxy ended: no rows, the same place, no up-to-date; its cursor."""
    status, headers, body = reply
    assert status == 200, (status, body)
    assert _ids(body) == [], body  # nothing served past the end of the hold
    assert headers["electric-handle"] == handle
    assert headers["electric-offset"] == offset
    assert "electric-up-to-date" not in headers
    assert json.loads(body) == []
    assert int(headers["electric-cursor"]) > 0
    return headers["electric-cursor"]


async def _sse_stream(proxy: Any, path: str, token: str) -> bytes:
    """An SSE response's body, read to its (clean) end."""
    async with proxy.client.get(
        path, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    ) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        return await resp.read()  # (a clean end, else this raises)


async def _prime_fast_lane(fast: Any, live: str, token: str) -> None:
    """The fast lane takes a (token, query) authorised before, on an idle engine connection:
    authorise `live` (the client leaves at once), then leave a connection idle."""
    with pytest.raises(asyncio.TimeoutError):
        async with fast.client.get(
            live,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ) as resp:
            await resp.read()
    assert (await _get(fast, "/v1/shape?table=items&offset=-1", token))[0] == 200


async def test_held_answers_end_at_the_tokens_expiry(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    proxies = await by_mode(reloadable_proxy, partial(_config, items_engine, idp_server))
    lasting = proxies["collapsed"].tokens.make(sub="lasting")
    _, handle, offset = await sync_through(proxies["collapsed"], lasting)
    exp = now() + 3
    short = proxies["collapsed"].tokens.make(sub="short", exp=exp)
    live = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&cursor=5"
    await _prime_fast_lane(proxies["fast"], live, short)
    sse = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true"
    polls = {mode: asyncio.create_task(_get(proxy, live, short)) for mode, proxy in proxies.items()}
    stream = asyncio.create_task(_sse_stream(proxies["direct"], sse, short))
    await _ended([*polls.values(), stream], db_url, 1000)
    assert fast_lane_taken == [live]
    assert _sse_ids(stream.result()) == []  # ended with no change past `exp`
    cursors = {mode: _check_ended(task.result(), handle, offset) for mode, task in polls.items()}
    assert all(int(c) != 5 for c in cursors.values())

    # Its place kept: the next request with a fresh token gets the change written meanwhile.
    _insert(db_url, 1001)
    fresh = proxies["collapsed"].tokens.make(sub="short")
    for mode, proxy in proxies.items():
        after = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true"
        status, _, body = await _get(proxy, f"{after}&cursor={cursors[mode]}", fresh)
        assert (status, _ids(body)) == (200, ['"public"."items"/"1001"']), (mode, body)
        # The expired token, the usual 401.
        assert time.time() > exp
        status, _, body = await _get(proxy, f"{after}&cursor={cursors[mode]}", short)
        assert status == 401, (mode, status, body)


async def test_held_answers_end_when_a_reload_revokes_access(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    configs = partial(_config, items_engine, idp_server, reload_interval=0.05)
    proxies = await by_mode(reloadable_proxy, configs)
    token = proxies["collapsed"].tokens.make()
    _, handle, offset = await sync_through(proxies["collapsed"], token)
    live = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&cursor=5"
    await _prime_fast_lane(proxies["fast"], live, token)
    sse = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true"
    polls = {mode: asyncio.create_task(_get(proxy, live, token)) for mode, proxy in proxies.items()}
    stream = asyncio.create_task(_sse_stream(proxies["direct"], sse, token))
    # Every request is held by the engine (it answers at 20 s): one of each reached it.
    await wait_until_async(lambda: engine_held(proxies) == 4, message="4 held requests")
    for proxy in proxies.values():  # (each reloaded by its poll)
        proxy.withdraw("member")
        proxy.write_config()
    await _ended([*polls.values(), stream], db_url, 1000)
    assert fast_lane_taken == [live]
    assert _sse_ids(stream.result()) == []
    for mode, task in polls.items():
        cursor = _check_ended(task.result(), handle, offset)
        status, _, _ = await _get(proxies[mode], f"{live[:-1]}{cursor}", token)
        assert status == 403, mode  # its rule withdrawn


def engine_held(proxies: dict[str, Any]) -> int:
    """Engine requests the proxies have sent and not had answered (held long-polls, streams)."""
    held = 0
    for proxy in proxies.values():
        pool = proxy.app.forwarder.pool
        held += pool.open_connections - pool.idle_connections
    return held


async def test_a_stream_authorised_before_a_revocation_it_missed_ends_at_once(
    items_engine: EngineProcess,
    idp_server: Any,
    reloadable_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload revoking access while an SSE request's engine request is on its way (its
    hold not yet begun) ends the stream as soon as it begins: it was authorised under the
    config the reload replaced. On the old code the hold, begun after the revocation, never
    heard of it: the stream went on under the withdrawn rule (seen as a flake of the reload
    test above under load)."""
    proxy = await reloadable_proxy(_config(items_engine, idp_server, False), fast_lane=False)
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    forwarder = proxy.app.forwarder
    opened = forwarder._open

    async def open_then_revoke(*args: Any, **kwargs: Any) -> Any:
        upstream = await opened(*args, **kwargs)
        forwarder.end_streams()  # (a reload landing between authorisation and the hold)
        return upstream

    monkeypatch.setattr(forwarder, "_open", open_then_revoke)
    sse = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true"
    async with proxy.client.get(
        sse, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    ) as resp:
        assert resp.status == 200
        body = await asyncio.wait_for(resp.read(), ENDED_WITHIN)  # (a clean end)
    assert _sse_ids(body) == []


async def test_a_shared_stream_revoked_before_its_headers_opens_no_other_stream(
    items_engine: EngineProcess,
    db_url: str,
    idp_server: Any,
    reloadable_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Collapsing on (SSE clients share one engine stream per shape): a reload revoking
    access while the shared stream's engine request is on its way ends that stream before
    its headers came, and its client was sent to join the next one (RETRY), opened from
    the request authorised under the old config: a 200 stream that went on under the
    withdrawn rule, serving a change written after the reload, until the engine ended it
    (attack 23:27, HIGH; measured with the engine SIGSTOPped across a reload). Now no
    stream is opened or joined for a request authorised before a revocation: it is
    authorised again under the new config (`forward.Reauthorise`), here a 403."""
    proxy = await reloadable_proxy(_config(items_engine, idp_server, True))
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    forwarder = proxy.app.forwarder
    opened = forwarder._open_shared
    revoked: list[bool] = []

    async def open_then_revoke(*args: Any, **kwargs: Any) -> Any:
        upstream = await opened(*args, **kwargs)
        if not revoked:
            revoked.append(True)
            # (a reload withdrawing the rule lands before the stream's headers are read)
            proxy.withdraw("member")
            proxy.reload()
        return upstream

    monkeypatch.setattr(forwarder, "_open_shared", open_then_revoke)
    sse = f"/v1/shape?table=items&handle={handle}&offset={offset}&live=true&live_sse=true"

    async def sse_stream() -> tuple[int, bytes]:
        async with proxy.client.get(
            sse, headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        ) as resp:
            return resp.status, await resp.read()  # (a clean end, else this raises)

    stream = asyncio.create_task(sse_stream())
    await _ended([stream], db_url, 1000)
    assert revoked
    status, body = stream.result()
    assert status == 403 and json.loads(body)["code"] == "no_matching_rule", (status, body)

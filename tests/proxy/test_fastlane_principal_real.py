"""The fast lane charges a request to the principal the general path charges it to.

- Anonymous requests: the fast lane charged the raw peer address (attack 05:25), where the
  general path charges the client's address (behind `server.trusted_proxies`, the forwarded
  one; an IPv6 client by its /64). Behind a trusted front, every anonymous client's fast-lane
  requests shared the front's budget *besides* its own: with `max_held: 3`, five live
  long-polls of one forwarded client were held.
- An empty `Authorization:` header shared the anonymous entry of the prepared-request cache:
  a 401 `invalid_token` until an anonymous client had asked the same URL, then the anonymous
  answer (attack 05:24). A present header is a token, always.

Real engine, real proxy with collapsing and the response cache off (where the fast lane runs).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config.loader import build_config
from tests.proxy.real_proxies import ITEMS_SQL, items_config
from tests.support.engine_process import EngineProcess

FORWARDED = {"X-Forwarded-For": "10.0.0.1"}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    # (live requests held 60 s: every one is still held while the test counts them)
    return start_engine(*ITEMS_SQL, args=("--no-fsync", "--long-poll-timeout", "60"))


def _config(engine: EngineProcess, idp_server: Any) -> dict[str, Any]:
    config = items_config(engine, idp_server, collapse=False, first_byte_timeout=90)
    config["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
    config["tables"]["items"]["allow"].insert(
        0, {"name": "public", "anonymous": True, "all_rows": True, "limits": {"max_held": 3}}
    )
    return config


async def test_an_anonymous_client_behind_a_trusted_front_has_one_budget_on_the_fast_lane(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    fast_lane_taken: list[str],
) -> None:
    proxy = await make_proxy(build_config(_config(engine, idp_server), environ))
    first = await proxy.get("/v1/shape?table=items&offset=-1", headers=FORWARDED)
    assert first.status == 200, first.body
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    live = f"/v1/shape?table=items&offset={offset}&handle={handle}&live=true&cursor=1"
    # idle engine connections for the fast lane to take (it never opens one itself)
    warm = "/v1/shape?table=items&offset=-1"
    await asyncio.gather(*(proxy.get(warm, headers=FORWARDED) for _ in range(8)))
    # the front's own request (no X-Forwarded-For: charged to the front's address), held
    front = asyncio.create_task(proxy.get(live))
    held = [asyncio.create_task(proxy.get(live, headers=FORWARDED))]  # (authorised, cached)
    await engine.until_parked(2)
    answers = []
    for _ in range(4):
        task = asyncio.create_task(proxy.get(live, headers=FORWARDED))
        done, _ = await asyncio.wait({task}, timeout=5)  # (a 429 comes at once)
        if done:
            answers.append(task.result())
        else:
            held.append(task)
    assert fast_lane_taken, "the fast lane was not taken: the test shows nothing"
    # the client's: 3 held (the rule's max_held), the others refused: one budget, whichever
    # way its requests went (the fast lane charged the front's address: 5 were held)
    assert len(held) == 3, [(a.status, a.body[:80]) for a in answers]
    assert [a.status for a in answers] == [429, 429]
    for task in (*held, front):
        task.cancel()


async def test_an_empty_authorization_header_is_a_401_whatever_was_asked_before(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
) -> None:
    proxy = await make_proxy(build_config(_config(engine, idp_server), environ))
    url = "/v1/shape?table=items&offset=-1&cache-buster=q"
    server = proxy.client.server

    async def with_empty_header() -> bytes:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            f"GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: \r\nConnection: close\r\n\r\n"
            .encode()
        )  # fmt: skip
        raw = await reader.read()
        writer.close()
        return raw

    for _ in range(2):
        raw = await with_empty_header()
        assert raw.startswith(b"HTTP/1.1 401") and b'"code":"invalid_token"' in raw, raw[:200]
        assert (await proxy.get(url)).status == 200  # an anonymous client, the same URL

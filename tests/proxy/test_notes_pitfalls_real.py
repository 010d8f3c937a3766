"""Pitfalls from the auth-proxy notes (shared/reference/auth-proxy-notes.md) that no other test
held through the real proxy and a real engine.

- An unknown `crit` header extension (RFC 7515 §4.1.11, pyjwt >= 2.12) is refused, whatever
  the signature: a verifier that does not understand an extension the issuer marked critical
  must not accept the token.
- aiohttp's `TCPConnector` allows 100 connections unless told otherwise: behind such a pool,
  live request 101 waits, unseen, until one of the first hundred ends (the notes' "Bun 256
  fetch cap" trap). More than a hundred live requests on distinct shapes are all held by the
  engine at once, and one write answers them all.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
from jwt.algorithms import RSAAlgorithm

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import AUDIENCE, ISSUER, now
from tests.proxy.real_proxies import ITEMS_SQL, items_config
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"
POOL_SIZE = 4096  # (the default; 100 shows the test catching aiohttp's cap)


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    # (long-polls held 100 s: every one is still held when the last one arrives)
    return start_engine(*ITEMS_SQL, args=("--no-fsync", "--long-poll-timeout", "100"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(key: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An RS256 token over exactly this header (pyjwt's encoder would refuse some of them)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{_b64(signature)}"


async def test_a_critical_header_extension_the_proxy_does_not_know_is_refused(
    engine: EngineProcess, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    proxy = await make_proxy(build_config(items_config(engine, idp_server), environ))
    key = proxy.tokens.key
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now(),
        "exp": now() + 600,
        "role": "member",
        "org_id": "org-a",
    }
    plain = {"alg": "RS256", "kid": key.kid}
    token = _signed(key, plain, claims)
    proxy.tokens.issued.append(token)
    assert (await proxy.get(SHAPE, token=token)).status == 200
    extras: tuple[dict[str, Any], ...] = (
        {"crit": ["exp"], "exp": 1},  # an extension named like a claim is still unknown here
        {"crit": ["http://example.com/policy"], "http://example.com/policy": "strict"},
        {"crit": ["b64"], "b64": False},  # understood by pyjwt, but a detached payload
        {"crit": []},  # RFC 7515: the list must not be empty
        {"crit": "exp"},  # not a list
    )
    for extra in extras:
        token = _signed(key, {**plain, **extra}, claims)
        proxy.tokens.issued.append(token)
        reply = await proxy.get(SHAPE, token=token)
        assert (reply.status, reply.json()["code"]) == (401, "invalid_token"), extra
        assert reply.headers["Cache-Control"] == "no-store"


async def test_more_than_a_hundred_live_requests_are_all_held_by_the_engine(
    engine: EngineProcess,
    idp_server: Any,
    environ: dict[str, str],
    make_proxy: Any,
    db_url: str,
) -> None:
    count = 120
    config = items_config(engine, idp_server, collapse=False, first_byte_timeout=110)
    config["upstream"]["pool_size"] = POOL_SIZE
    proxy = await make_proxy(build_config(config, environ))
    server = proxy.client.server
    base = f"http://{server.host}:{server.port}/v1/shape?table=items"
    # (the test's own client pool must not be the one capped at 100)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def follow(i: int) -> tuple[int, list[Any]]:
            token = proxy.tokens.make(sub=f"user-{i}", role="admin", mfa=True)
            headers = {"Authorization": f"Bearer {token}"}
            shape = f"{base}&where={quote(f'id > {-i}')}"  # one shape each: nothing collapses
            async with session.get(f"{shape}&offset=-1", headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
                handle, offset = resp.headers["electric-handle"], resp.headers["electric-offset"]
            live = f"{shape}&offset={offset}&handle={handle}&live=true&cursor="
            async with session.get(live, headers=headers) as resp:
                return resp.status, await resp.json()

        tasks = [asyncio.create_task(follow(i)) for i in range(count)]
        try:
            # all held at once (with a pool of 100 it would stay at 100); a failure shows here
            assert await engine.until_parked(count, timeout=60) >= count
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("INSERT INTO items VALUES (4, 'org-b', 'b4')")
            answers = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    assert [status for status, _ in answers] == [200] * count
    for _, messages in answers:
        assert [m["value"]["title"] for m in messages if "value" in m] == ["b4"]

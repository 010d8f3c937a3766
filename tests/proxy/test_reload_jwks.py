"""Hot reload of the config file, and JWKS rotation / outage, through the running app."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import load_config
from proxy.http.handlers import CONFIG_ERROR_HIDDEN
from tests.proxy.proxy_fakes import FakeIdp, KeyPair

SHAPE = "/v1/shape?table=items&offset=-1"


async def _eventually(check: Any, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)  # atomic, as an editor or a config manager would


async def test_file_change_reloads_and_bad_file_keeps_last_good(
    tmp_path: Path, config_data: dict[str, Any], environ: dict[str, str], make_proxy: Any
) -> None:
    path = tmp_path / "proxy.yaml"
    config_data["server"] = {"reload_interval": 0.05}
    _write(path, config_data)
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    token = proxy.tokens.make(role="guest")
    assert (await proxy.get(SHAPE, token=token)).status == 403

    config_data["tables"]["items"]["allow"].append(
        {"name": "guest", "when": {"role": "guest"}, "where": "public = true"}
    )
    _write(path, config_data)

    async def guest_allowed() -> bool:
        return (await proxy.get(SHAPE, token=token)).status == 200

    await _eventually(guest_allowed)
    assert proxy.engine.requests[-1].url.query["where"] == "public = true"

    # A broken file: the last good policy keeps serving, /healthz says why.
    path.write_text("tables: {items: {allow: [{where: 'x = {{'}]}}\nupstream: 3\n")

    async def error_reported() -> bool:
        return (await proxy.get("/healthz")).json()["config_error"] is not None

    await _eventually(error_reported)
    health = (await proxy.get("/healthz")).json()
    assert "upstream" in health["config_error"]
    assert proxy.secret not in health["config_error"]
    # A caller that may not read /metrics (here: through a forwarding proxy) reads that a
    # reload failed, not the file's path nor the policy's names (attack 07:45).
    public = await proxy.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
    assert public.json()["config_error"] == CONFIG_ERROR_HIDDEN
    assert str(tmp_path) not in public.body.decode() and "upstream" not in public.body.decode()
    assert (await proxy.get(SHAPE, token=token)).status == 200


async def test_sighup_reloads(
    tmp_path: Path, config_data: dict[str, Any], environ: dict[str, str], make_proxy: Any
) -> None:
    path = tmp_path / "proxy.yaml"
    config_data["server"] = {"reload_interval": 3600}  # only SIGHUP can reload in time
    _write(path, config_data)
    proxy = await make_proxy(
        load_config(path, environ), config_path=path, environ=environ, sighup=True
    )
    token = proxy.tokens.make(role="admin")
    assert (await proxy.get(SHAPE, token=token)).status == 200
    del config_data["tables"]["items"]["allow"][0]  # drop the admin rule
    _write(path, config_data)
    os.kill(os.getpid(), signal.SIGHUP)

    async def admin_refused() -> bool:
        return (await proxy.get(SHAPE, token=token)).status == 403

    await _eventually(admin_refused)


async def test_jwks_rotation(proxy: Any, idp: FakeIdp, other_key: KeyPair) -> None:
    assert (await proxy.get(SHAPE, token=proxy.tokens.make())).status == 200
    assert idp.fetches == 1
    # The IdP rotates to a new key; a token with the new kid triggers one refetch.
    idp.keys = [other_key]
    new_token = proxy.tokens.make(key=other_key)
    assert (await proxy.get(SHAPE, token=new_token)).status == 200
    assert idp.fetches == 2
    # Unknown kids are rate limited: a burst costs at most one more fetch per cooldown.
    stranger = KeyPair.generate("key-x")
    for _ in range(5):
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(key=stranger))
        assert reply.status == 401 and reply.json()["code"] == "unknown_key"
    assert idp.fetches <= 3


async def test_jwks_outage_keeps_last_good_keys(proxy: Any, idp: FakeIdp) -> None:
    assert (await proxy.get(SHAPE, token=proxy.tokens.make())).status == 200
    idp.down = True
    stranger = KeyPair.generate("key-y")
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(key=stranger))  # forces a refetch
    assert reply.status == 401
    # The failed refetch did not drop the cached key: a fresh token with it still verifies.
    assert (await proxy.get(SHAPE, token=proxy.tokens.make(sub="other"))).status == 200


async def test_jwks_never_reachable_is_503(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    from proxy.config.loader import build_config

    config_data["issuers"][0]["jwks_url"] = "http://127.0.0.1:9/jwks.json"
    proxy = await make_proxy(build_config(config_data, environ))
    reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert reply.status == 503 and reply.json()["code"] == "keys_unavailable"
    assert reply.headers["Retry-After"] == "5"
    assert proxy.engine.requests == []


async def test_a_key_dropped_from_the_jwks_stops_working_once_fetched(
    proxy: Any, idp: FakeIdp, signing_key: KeyPair, other_key: KeyPair
) -> None:
    """Verified tokens (and the requests prepared from them) are remembered for minutes; a key
    the issuer drops must stop working as soon as the proxy has the new key set, not when
    those caches expire. Tokens of the keys still published keep working."""
    idp.keys = [signing_key, other_key]
    dropped = proxy.tokens.make()
    kept = proxy.tokens.make(key=other_key, sub="user-2")
    for _ in range(2):  # the second round is answered from the caches
        assert (await proxy.get(SHAPE, token=dropped)).status == 200
        assert (await proxy.get(SHAPE, token=kept)).status == 200
    fetches = idp.fetches
    idp.keys = [other_key]
    # A token with a kid the proxy does not know makes it fetch the key set now.
    stranger = proxy.tokens.make(key=KeyPair.generate("key-z"))
    assert (await proxy.get(SHAPE, token=stranger)).status == 401
    assert idp.fetches == fetches + 1
    reply = await proxy.get(SHAPE, token=dropped)
    assert reply.status == 401 and reply.json()["code"] == "unknown_key"
    assert (await proxy.get(SHAPE, token=kept)).status == 200
    assert (await proxy.get("/v1/shape?table=items&offset=0_0&handle=h1", token=kept)).status == 200


async def _short_ttl_proxy(make_proxy: Any, config_data: dict[str, Any], environ: Any) -> Any:
    from proxy.config.loader import build_config

    config_data["issuers"][0]["jwks_ttl"] = 0.3
    return await make_proxy(build_config(config_data, environ))


async def test_a_dropped_key_stops_working_while_every_request_is_a_cache_hit(
    make_proxy: Any,
    config_data: dict[str, Any],
    environ: dict[str, str],
    idp: FakeIdp,
    other_key: KeyPair,
) -> None:
    """No new token needs verifying, so nothing would refetch the keys on demand: the key set
    is refreshed in the background once its TTL is over."""
    proxy = await _short_ttl_proxy(make_proxy, config_data, environ)
    dropped = proxy.tokens.make()
    assert (await proxy.get(SHAPE, token=dropped)).status == 200
    idp.keys = [other_key]

    async def refused() -> bool:
        return (await proxy.get(SHAPE, token=dropped)).status == 401

    await _eventually(refused)
    assert (await proxy.get(SHAPE, token=proxy.tokens.make(key=other_key))).status == 200


async def test_a_key_replaced_under_the_same_kid_stops_working(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str], idp: FakeIdp
) -> None:
    proxy = await _short_ttl_proxy(make_proxy, config_data, environ)
    old = proxy.tokens.make()
    assert (await proxy.get(SHAPE, token=old)).status == 200
    replacement = KeyPair.generate("key-1")  # same kid, new material
    idp.keys = [replacement]

    async def refused() -> bool:
        reply = await proxy.get(SHAPE, token=old)
        return reply.status == 401 and reply.json()["code"] == "invalid_signature"

    await _eventually(refused)
    assert (await proxy.get(SHAPE, token=proxy.tokens.make(key=replacement))).status == 200


async def test_an_issuer_emptying_its_key_set_stops_its_old_keys(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str], idp: FakeIdp
) -> None:
    """`{"keys": []}` is the issuer's word that no key is good any more. It was taken for a
    failed fetch, so the last key set stayed in use for ever (stale-if-error) and tokens of
    the withdrawn keys kept working."""
    proxy = await _short_ttl_proxy(make_proxy, config_data, environ)
    token = proxy.tokens.make()
    assert (await proxy.get(SHAPE, token=token)).status == 200
    idp.keys = []

    async def refused() -> bool:
        reply = await proxy.get(SHAPE, token=token)
        return reply.status == 401 and reply.json()["code"] == "unknown_key"

    await _eventually(refused)


async def test_stale_keys_are_served_for_a_day_at_most(
    idp: FakeIdp, idp_server: Any, signing_key: KeyPair
) -> None:
    """While the issuer's JWKS cannot be fetched the last good keys keep working (a short
    outage must not lock every user out), but not for ever: the issuer may have revoked them
    meanwhile. Past a day (`MAX_STALE`) the issuer is unavailable (503) until it answers."""
    import aiohttp

    from proxy.auth.jwks import JwksCache
    from proxy.errors import ServiceUnavailable

    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        cache = JwksCache(
            str(idp_server.make_url("/jwks.json")), session, ttl=300, clock=lambda: now[0]
        )
        assert (await cache.get_key("key-1", "RS256")) is not None
        idp.down = True
        now[0] += 24 * 3600 - 1
        assert (await cache.get_key("key-1", "RS256")) is not None  # stale, still served
        now[0] += 2
        with pytest.raises(ServiceUnavailable):
            await cache.get_key("key-1", "RS256")
        idp.down = False
        now[0] += 20  # past the error backoff: the next call fetches again
        assert (await cache.get_key("key-1", "RS256")) is not None

"""`GET /metrics` is not for anyone on the public port.

Its counters show when and how many users are live and write (the engine keeps its own
`/metrics` behind its secret for that reason); the proxy's answered anyone. Now: with
`metrics.token_env` set, `Authorization: Bearer <token>` is enough; with `metrics.allow_loopback`,
a client on a loopback address, not through a forwarding proxy (a scraper on the host, `curl
localhost`); neither: no one (a same-host front adds no forwarding header: attack 14:58,
tests/proxy/test_metrics_same_host_front_real.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.loader import ConfigError, build_config
from proxy.metrics import metrics_refusal

TOKEN = "m" * 24


LOCAL = True  # (`metrics.allow_loopback`)


@pytest.mark.parametrize(
    ("remote", "headers", "token", "loopback", "allowed"),
    [
        ("127.0.0.1", {}, None, LOCAL, True),
        ("::1", {}, None, LOCAL, True),
        ("::ffff:127.0.0.1", {}, None, LOCAL, True),
        ("203.0.113.5", {}, None, LOCAL, False),  # a browser on the network
        ("10.0.0.7", {}, None, LOCAL, False),
        ("::ffff:10.0.0.7", {}, None, LOCAL, False),
        (None, {}, None, LOCAL, False),
        ("127.0.0.1", {"X-Forwarded-For": "203.0.113.5"}, None, LOCAL, False),  # same-host proxy
        ("127.0.0.1", {"Forwarded": "for=203.0.113.5"}, None, LOCAL, False),
        ("127.0.0.1", {}, None, False, False),  # neither configured: no one
        ("::1", {}, None, False, False),
        ("127.0.0.1", {}, TOKEN, False, False),  # a token, once configured, is asked of everyone
        ("127.0.0.1", {}, TOKEN, LOCAL, True),  # ... but for loopback, when allowed too
        ("203.0.113.5", {}, TOKEN, LOCAL, False),
        ("203.0.113.5", {"Authorization": "Bearer wrong"}, TOKEN, False, False),
        ("203.0.113.5", {"Authorization": f"Basic {TOKEN}"}, TOKEN, False, False),
        ("203.0.113.5", {"Authorization": f"Bearer {TOKEN}"}, TOKEN, False, True),
        ("203.0.113.5", {"Authorization": f"bearer  {TOKEN} "}, TOKEN, False, True),
        ("203.0.113.5", {"Authorization": f"Bearer {TOKEN}"}, TOKEN, LOCAL, True),
    ],
)
def test_who_may_read_metrics(
    remote: str | None, headers: dict[str, str], token: str | None, loopback: bool, allowed: bool
) -> None:
    refusal = metrics_refusal(remote, headers, token, allow_loopback=loopback)
    assert (refusal is None) is allowed


async def test_a_configured_token_is_required_and_enough(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    loaded = build_config(
        {**config_data, "metrics": {"token_env": "METRICS_TOKEN"}},
        {**environ, "METRICS_TOKEN": TOKEN},
    )
    proxy = await make_proxy(loaded)
    refused = await proxy.get("/metrics")
    assert refused.status == 401 and TOKEN not in refused.body.decode()
    assert (await proxy.get("/metrics", headers={"Authorization": "Bearer no"})).status == 401
    # (a user's token is no metrics token either)
    assert (await proxy.get("/metrics", token=proxy.tokens.make())).status == 401
    ok = await proxy.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200 and b"shape_proxy_requests_total" in ok.body


async def test_without_a_token_a_forwarded_request_is_refused(proxy: Any) -> None:
    assert proxy.app.holder.current.loaded.config.metrics.allow_loopback  # (base_config's)
    reply = await proxy.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"})
    assert reply.status == 401
    assert (await proxy.get("/metrics")).status == 200  # (the test client is on loopback)


@pytest.mark.parametrize(
    ("env", "words"),
    [({}, "METRICS_TOKEN is not set"), ({"METRICS_TOKEN": "short"}, "at least 16 bytes")],
)
def test_a_missing_or_short_metrics_token_is_a_config_error(
    config_data: dict[str, Any], environ: dict[str, str], env: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        build_config({**config_data, "metrics": {"token_env": "METRICS_TOKEN"}}, {**environ, **env})


def test_the_exposure_line_reads_as_written_through_the_log_redaction() -> None:
    """The start-up line said "answers to a bearer of the metrics token", and the log
    redaction took "of" for a bearer token: "a bearer [REDACTED] the metrics token", which
    reads like a caught leak (attack 05:3x, LOW)."""
    import io
    import logging

    from proxy.logs import JsonFormatter
    from proxy.metrics import metrics_exposure

    text = metrics_exposure("METRICS_TOKEN", False)
    handler = logging.StreamHandler(out := io.StringIO())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.exposure")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("%s", text)
    finally:
        log.removeHandler(handler)
    assert "REDACTED" not in out.getvalue() and "metrics.token_env METRICS_TOKEN" in out.getvalue()

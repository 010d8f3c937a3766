"""The proxy's forwarding behaviour against the fake engine: what goes up, what comes back."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import ORIGIN
from tests.proxy.test_upstream_client import RawServer, read_request

SHAPE = "/v1/shape?table=items&offset=-1"


async def test_upstream_request_built_by_proxy(proxy: Any) -> None:
    reply = await proxy.get(
        SHAPE + "&secret=client-guess&source_id=evil&foo=bar&cache-buster=7",
        token=proxy.tokens.make(),
        headers={
            "Cookie": "session=abc",
            "X-Forwarded-For": "6.6.6.6",
            "Origin": ORIGIN,
            "traceparent": "00-abc-def-01",
        },
    )
    assert reply.status == 200
    (seen,) = proxy.engine.requests
    q = seen.url.query
    assert seen.url.path == "/v1/shape"
    assert q.getall("secret") == [proxy.secret] and q.getall("source_id") == ["src-1"]
    assert q["where"] == "org_id = $1" and q["params[1]"] == "org-a"
    assert q["cache-buster"] == "7" and "foo" not in q
    assert "Authorization" not in seen.headers and "Cookie" not in seen.headers
    assert "Origin" not in seen.headers and "X-Forwarded-For" not in seen.headers
    # (a request others may join carries no client's own trace context: only a client's
    # own engine request does, with collapsing off; test_collapse_cache.py)
    assert "traceparent" not in seen.headers
    assert seen.headers["x-request-id"] == reply.headers["X-Request-Id"]


async def test_response_headers_made_safe(proxy: Any) -> None:
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(), headers={"Origin": ORIGIN})
    h = reply.headers
    assert h["electric-handle"] == "h-1" and h["electric-schema"]
    assert h["Cache-Control"] == "private, max-age=60, stale-while-revalidate=60"
    vary = [v.strip().lower() for v in h["Vary"].split(",")]
    assert vary == ["accept-encoding", "authorization", "origin"]
    assert h["Access-Control-Allow-Origin"] == ORIGIN
    assert "electric-offset" in h["Access-Control-Expose-Headers"]
    assert h.getall("Access-Control-Allow-Origin") == [ORIGIN]  # upstream's "*" dropped
    assert "electric-server" in h


async def test_preflight_without_token(proxy: Any) -> None:
    reply = await proxy.request(
        "OPTIONS",
        SHAPE,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert reply.status == 204
    assert "authorization" in reply.headers["Access-Control-Allow-Headers"].lower()
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert proxy.engine.requests == []


async def test_gzip_passed_through_untouched(proxy: Any) -> None:
    proxy.engine.gzip_body = True
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(), headers={"Accept-Encoding": "gzip"})
    assert reply.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(reply.body))[-1]["headers"]["control"] == "up-to-date"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert proxy.engine.requests[0].headers["Accept-Encoding"] == "gzip"


async def test_409_passed_through(proxy: Any) -> None:
    proxy.engine.status = 409
    reply = await proxy.get(
        "/v1/shape?table=items&offset=0_0&handle=old", token=proxy.tokens.make()
    )
    assert reply.status == 409 and reply.headers["electric-handle"] == "h-1"
    assert reply.json() == [{"headers": {"control": "must-refetch"}}]
    assert reply.headers["Cache-Control"] == "private, max-age=60, must-revalidate"


async def test_upstream_503_passed_through_with_retry_after(proxy: Any) -> None:
    proxy.engine.status = 503
    reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert reply.status == 503 and reply.headers["Retry-After"] == "5"
    assert reply.headers["Cache-Control"] == "no-store"


async def test_long_poll_streams(proxy: Any) -> None:
    proxy.engine.hold = 0.3
    path = "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&cursor=1"
    started = time.monotonic()
    reply = await proxy.get(path, token=proxy.tokens.make())
    assert reply.status == 200 and time.monotonic() - started >= 0.3
    assert reply.headers["electric-cursor"] == "123"
    assert reply.headers["Cache-Control"] == "private, max-age=5, stale-while-revalidate=5"


async def test_sse_events_arrive_before_stream_ends(proxy: Any) -> None:
    """The first event reaches the client while the engine holds the others back (until
    the client has it): not buffered until the end. By order, not by time (a bound of
    0.25 s could fail under a loaded CI)."""
    proxy.engine.hold = 0.3
    proxy.engine.sse_gate = gate = asyncio.Event()
    path = "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&live_sse=true&cursor=1"
    headers = {"Authorization": f"Bearer {proxy.tokens.make()}"}
    async with proxy.client.get(path, headers=headers) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 60)
        assert first == b'data: {"n":0}\n\n'
        gate.set()  # (only now does the engine write the other two)
        rest = await resp.read()
    assert rest.count(b"data:") == 2


async def test_post_subset_forwards_clean_body(proxy: Any) -> None:
    reply = await proxy.request(
        "POST",
        "/v1/shape?table=items&offset=0_0&handle=h",
        token=proxy.tokens.make(),
        data=b'{"where":"title = $1","params":{"1":"x"},"limit":5,"order_by":"id"}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 200
    (seen,) = proxy.engine.requests
    assert seen.method == "POST"
    assert json.loads(seen.body) == {
        "where": "title = $1",
        "params": {"1": "x"},
        "limit": 5,
        "order_by": "id",
    }
    assert seen.url.query["where"] == "org_id = $1"


async def test_upstream_down_is_502_json(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    with socket.socket() as s:
        # Bound, never listening: connections to it are refused, and no other test process
        # (pytest-xdist) can take the port meanwhile, as it could once it was let go.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        config_data["upstream"]["url"] = f"http://127.0.0.1:{port}"
        proxy = await make_proxy(build_config(config_data, environ))
        started = time.monotonic()
        reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert time.monotonic() - started < 4.5  # (refused at once: no wait for a timeout)
    assert reply.status == 502 and reply.json()["code"] == "upstream_unreachable"
    assert reply.headers["Retry-After"] == "2" and reply.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(("tier_status", "status", "code"), [
    (502, 502, "upstream_unreachable"), (503, 502, "upstream_unreachable"),
    (504, 504, "upstream_timeout"),
])  # fmt: skip
async def test_a_tiers_html_failure_is_said_as_the_proxys_own_json(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str],
    tier_status: int, status: int, code: str,
) -> None:  # fmt: skip
    """nginx between proxy and engine, the engine gone: its HTML 502/504 was relayed as is
    (text/html, `private, no-cache`, no Retry-After), which Electric's client cannot read.
    Now the proxy's JSON, as when it cannot reach the engine itself (attack 05:03)."""
    page = b"<html><center>nginx</center></html>"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 %d Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
            % (tier_status, len(page), page)
        )
        await writer.drain()

    async with RawServer(serve) as tier:
        config_data["upstream"]["url"] = str(tier.url("").with_query(None))
        proxy = await make_proxy(build_config(config_data, environ))
        reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert reply.status == status and reply.json()["code"] == code
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Retry-After"] == "2" and reply.headers["Cache-Control"] == "no-store"
    assert b"nginx" not in reply.body


async def test_upstream_slow_is_504_json(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    config_data["upstream"]["first_byte_timeout"] = 0.5
    proxy = await make_proxy(build_config(config_data, environ))
    proxy.engine.delay_headers = 5
    started = time.monotonic()
    reply = await proxy.get(SHAPE, token=proxy.tokens.make())
    assert time.monotonic() - started < 4.5  # (the 0.5 s timeout, not the engine's 5 s)
    assert reply.status == 504 and reply.json()["code"] == "upstream_timeout"
    assert reply.headers["Retry-After"] == "2"


async def test_client_disconnect_cancels_upstream_long_poll(proxy: Any) -> None:
    proxy.engine.hold = 30
    path = "/v1/shape?table=items&offset=0_0&handle=h-1&live=true&cursor=1"
    headers = {"Authorization": f"Bearer {proxy.tokens.make()}"}
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.get(proxy.client.make_url(path), headers=headers))
    await asyncio.wait_for(proxy.engine.started.wait(), 5)
    task.cancel()
    await session.close()
    for _ in range(100):
        if proxy.engine.cancelled:
            break
        await asyncio.sleep(0.05)
    assert len(proxy.engine.cancelled) == 1


async def test_healthz_and_metrics(proxy: Any) -> None:
    await proxy.get(SHAPE, token=proxy.tokens.make())
    await proxy.get(SHAPE)
    await proxy.get(SHAPE, token=proxy.tokens.make())
    health = await proxy.get("/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    metrics = (await proxy.get("/metrics")).body.decode()
    assert 'shape_proxy_requests_total{outcome="refused",reason="missing_token"} 1.0' in metrics
    # Same claims, same shape: the second 200 came from the response cache.
    assert 'shape_proxy_upstream_responses_total{status="200"} 1.0' in metrics
    assert 'shape_proxy_response_cache_total{result="hit"} 1.0' in metrics
    assert 'shape_proxy_jwks_fetches_total{result="ok"} 1.0' in metrics
    assert 'shape_proxy_token_cache_total{result="miss"}' in metrics


async def test_token_cache_hit(proxy: Any) -> None:
    token = proxy.tokens.make()
    for _ in range(3):
        assert (await proxy.get(SHAPE, token=token)).status == 200
    metrics = (await proxy.get("/metrics")).body.decode()
    assert 'shape_proxy_token_cache_total{result="hit"} 2.0' in metrics


async def test_repeated_request_not_served_past_token_expiry(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    """A repeated GET reuses its authorised decision, but never after the token expired."""
    config_data["issuers"][0]["leeway"] = 0
    proxy = await make_proxy(build_config(config_data, environ))
    token = proxy.tokens.make(exp=int(time.time()) + 2)
    assert (await proxy.get(SHAPE, token=token)).status == 200
    assert (await proxy.get(SHAPE, token=token)).status == 200  # reused decision
    await asyncio.sleep(max(0.0, int(time.time()) + 3 - time.time()))  # past `exp`
    sent = len(proxy.engine.requests)
    reply = await proxy.get(SHAPE, token=token)
    assert reply.status == 401
    assert reply.json()["code"] == "token_expired"
    assert len(proxy.engine.requests) == sent  # neither forwarded nor served from a cache


async def test_access_log_is_json_with_request_id(proxy: Any, caplog: Any) -> None:
    from proxy.logs import JsonFormatter

    reply = await proxy.get(SHAPE + "&secret=client-secret-x", token=proxy.tokens.make())
    records = [r for r in caplog.records if r.name == "proxy.access"]
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["request_id"] == reply.headers["X-Request-Id"]
    assert line["status"] == 200 and line["subject"] == "user-1" and line["rule"] == "member"
    assert "client-secret-x" not in json.dumps(line) and "secret=[REDACTED]" in line["query"]


async def test_an_empty_cursor_is_forwarded_as_sent(proxy: Any) -> None:
    """A stream's refresh before its first live answer is a non-live request with `cursor=`:
    the proxy dropped the empty value (as Electric drops empty parameters), so upstream it
    was the stream's catch-up URL, which a cache between the proxy and the engine (nginx's
    tier) had kept: the refresh got an old up-to-date. Found by suites (pglite-sync's
    syncShapesToTables). Other empty parameters are still dropped."""
    token = proxy.tokens.make()
    reply = await proxy.get(
        "/v1/shape?table=items&offset=0_inf&handle=h-1&cursor=&log=full&cache-buster=",
        token=token,
    )
    assert reply.status == 200
    [seen] = proxy.engine.requests
    assert seen.url.query.getall("cursor") == [""]
    assert "cache-buster" not in seen.url.query
    assert "cursor=&" in seen.url.raw_query_string + "&"

"""`/metrics` is not public behind a reverse proxy on the same host (attack 14:58).

nginx's plain `proxy_pass` adds no Forwarded/X-Forwarded-For/X-Real-IP/Via header and
connects from loopback, so the old rule (without `metrics.token_env`, any loopback client
without a forwarding header) let anyone on the internet read the counters through such an
edge. A request through it cannot be told from a local scraper's, so now the operator says:
without `metrics.token_env` or `metrics.allow_loopback: true`, `/metrics` answers no one
(and `/healthz` hides a failed reload's text). With `allow_loopback` the old rule applies.

Real path: a real nginx (plain `proxy_pass`) -> the proxy's own server. On the old code
`test_a_same_host_front_without_forwarding_headers_reads_nothing` failed: 200 through nginx.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import build_config
from proxy.metrics import metrics_exposure
from tests.support.ports import free_port
from tests.support.waiting import wait_until_async

TOKEN = "m" * 24
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONF = """\
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://127.0.0.1:{upstream}; }}
    }}
}}
"""


@asynccontextmanager
async def _nginx(upstream: int) -> AsyncIterator[str]:
    """A same-host edge: nginx with a plain `proxy_pass` to `upstream`; yields its base URL."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx-light")
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-nginx-metrics-"))
    port = free_port()
    conf = scratch / "nginx.conf"
    conf.write_text(CONF.format(d=scratch, port=port, upstream=upstream))
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(scratch), "-e", str(scratch / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                assert proc.poll() is None, (scratch / "error.log").read_text()
                try:
                    async with session.get(f"{base}/v1/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until_async(up, message="nginx up")
        yield base
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        shutil.rmtree(scratch, ignore_errors=True)


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return resp.status, await resp.read()


@pytest.fixture
def start(
    make_proxy: Any, config_data: dict[str, Any], environ: dict[str, str]
) -> Callable[..., Any]:
    async def start(metrics: dict[str, Any] | None) -> Any:
        data = {key: value for key, value in config_data.items() if key != "metrics"}
        if metrics is not None:
            data["metrics"] = metrics
        return await make_proxy(build_config(data, {**environ, "METRICS_TOKEN": TOKEN}))

    return start


async def test_a_same_host_front_without_forwarding_headers_reads_nothing(
    start: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.runtime")
    proxy = await start(None)  # (no `metrics:` section: the default)
    assert metrics_exposure(None, False) in caplog.messages  # (said at start)
    async with _nginx(proxy.client.server.port) as edge:
        status, body = await _get(f"{edge}/metrics")
        assert status == 401, body[:200]
        assert b"shape_proxy" not in body and b'"metrics_off"' in body
        # (the proxy's own port, from this host, the same: nothing tells the two apart)
        direct = await proxy.get("/metrics")
        assert direct.status == 401 and b"metrics.allow_loopback" in direct.body


async def test_allow_loopback_is_the_old_rule_and_the_token_works_through_the_front(
    start: Callable[..., Any],
) -> None:
    proxy = await start({"allow_loopback": True})
    ok = await proxy.get("/metrics")
    assert ok.status == 200 and b"shape_proxy_requests_total" in ok.body
    forwarded = await proxy.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"})
    assert forwarded.status == 401

    proxy = await start({"token_env": "METRICS_TOKEN"})
    async with _nginx(proxy.client.server.port) as edge:
        assert (await _get(f"{edge}/metrics"))[0] == 401
        status, body = await _get(f"{edge}/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"shape_proxy_requests_total" in body
    assert (await proxy.get("/metrics")).status == 401  # (a token asked of loopback too)


def test_the_start_says_how_metrics_is_exposed() -> None:
    assert "off" in metrics_exposure(None, False)
    assert "metrics.allow_loopback" in metrics_exposure(None, False)
    assert "loopback" in metrics_exposure(None, True)
    assert "METRICS_TOKEN" in metrics_exposure("METRICS_TOKEN", False)

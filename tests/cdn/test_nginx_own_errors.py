"""The nginx tier's own failures are said as the proxy says its own (attack, LOW).

    client -> nginx (config/nginx, real) -> engine down / engine silent

While the engine behind it was down (or silent past `proxy_read_timeout`), the tier answered
nginx's own HTML 502/504 (`text/html`, no CORS headers, so a browser client could not even
read its status), which Electric's client cannot read. Now it answers the JSON the proxy gives
for its own upstream failures: `{"message": ..., "code": "upstream_unreachable" |
"upstream_timeout"}`, `application/json`, `no-store`, `Retry-After`, and the engine's CORS
headers (the Origin echoed, or `*`), on every location (catch-up, live, SSE, others); never
cached: the next request, the engine back, is the engine's answer.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sync_engine.http.headers import ALLOW_METHODS_SHAPE, EXPOSE_HEADERS
from tests.cdn.processes import nginx_binary, running
from tests.cdn.test_nginx import RENDER, SECRET, _scratch_dir
from tests.support.ports import free_port

ORIGIN = "https://app.example"
UNREACHABLE = {"message": "the sync engine is unreachable", "code": "upstream_unreachable"}
TIMEOUT = {"message": "the sync engine did not answer in time", "code": "upstream_timeout"}

PATHS = {
    "catch-up": f"/v1/shape?table=items&offset=-1&secret={SECRET}",
    "live": f"/v1/shape?table=items&offset=0_0&handle=1-2&live=true&cursor=1&secret={SECRET}",
    "sse": f"/v1/shape?table=items&offset=0_0&handle=1-2&live=true&live_sse=true&secret={SECRET}",
    "other": "/v1/health",
}


def _nginx(scratch: Path, port: int, engine: int, read_timeout: str | None = None) -> list[str]:
    """The command running the shipped tier (rendered by render.py) on `port`, in front of
    `engine`; `read_timeout`: its `proxy_read_timeout` (90 s) shortened, to see a 504."""
    directory = scratch / "nginx"
    subprocess.run(
        [sys.executable, str(RENDER), "--dir", str(directory),
         "--listen", f"127.0.0.1:{port}", "--engine", f"127.0.0.1:{engine}"],
        check=True, capture_output=True,
    )  # fmt: skip
    if read_timeout is not None:
        conf = directory / "shapegate.conf"
        text = conf.read_text()
        assert "proxy_read_timeout 90s;" in text
        conf.write_text(
            text.replace("proxy_read_timeout 90s;", f"proxy_read_timeout {read_timeout};")
        )
    nginx = nginx_binary()
    err = str(directory / "startup.log")
    subprocess.run([nginx, "-t", "-q", "-c", str(directory / "nginx.conf"), "-e", err], check=True)
    return [nginx, "-c", str(directory / "nginx.conf"), "-e", err]


async def _up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until nginx answers on `port` (anything: the engine behind it is down)."""
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                async with s.get(f"http://127.0.0.1:{port}/v1/health") as r:
                    if r.headers.get("Server", "").startswith("nginx"):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("nginx never answered")


def _check(status: int, headers: Any, body: bytes, want: int, said: dict[str, str],
           origin: str | None, path: str) -> None:  # fmt: skip
    assert status == want, (path, status, body)
    assert headers["Content-Type"].startswith("application/json"), (path, dict(headers))
    assert json.loads(body) == said, (path, body)
    assert headers["Cache-Control"] == "no-store", (path, dict(headers))
    assert headers["Retry-After"] == "2", (path, dict(headers))
    assert headers["Access-Control-Allow-Origin"] == (origin or "*"), (path, dict(headers))
    assert headers["Access-Control-Expose-Headers"] == EXPOSE_HEADERS, (path, dict(headers))
    methods = ALLOW_METHODS_SHAPE if path.startswith("/v1/shape") else "GET, HEAD"
    assert headers["Access-Control-Allow-Methods"] == methods, (path, dict(headers))
    assert len(headers["X-Request-Id"]) == 32, (path, dict(headers))
    assert b"nginx" not in body and SECRET.encode() not in body


async def test_an_unreachable_engine_is_the_proxys_json_502_never_cached(tmp_path: Path) -> None:
    nginx_port, engine_port = free_port(), free_port()
    scratch = _scratch_dir()
    log = tmp_path / "nginx.log"
    try:
        command = _nginx(scratch, nginx_port, engine_port)
        with running(command, stdout=log.open("ab"), stderr=subprocess.STDOUT) as proc:
            await _up(nginx_port, proc, log)
            async with aiohttp.ClientSession() as s:
                for path in PATHS.values():
                    for origin in (None, ORIGIN):
                        headers = {"Origin": origin} if origin else {}
                        url = f"http://127.0.0.1:{nginx_port}{path}"
                        async with s.get(url, headers=headers) as r:
                            _check(r.status, r.headers, await r.read(), 502, UNREACHABLE,
                                   origin, path)  # fmt: skip
                        async with s.head(url, headers=headers) as r:
                            assert r.status == 502 and r.headers["Cache-Control"] == "no-store"
                # The engine back (a stand-in answering its catch-up, public for an hour):
                # its answer, not a stored 502.
                app = web.Application()

                async def shape(request: web.Request) -> web.Response:
                    return web.json_response([], headers={"cache-control": "public, max-age=3600"})

                app.router.add_get("/v1/shape", shape)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", engine_port).start()
                try:
                    url = f"http://127.0.0.1:{nginx_port}{PATHS['catch-up']}"
                    async with s.get(url) as r:
                        assert r.status == 200 and await r.json() == []
                finally:
                    await runner.cleanup()
        assert SECRET not in log.read_text(errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("route", ["catch-up", "live", "sse"])
async def test_a_silent_engine_is_the_proxys_json_504(tmp_path: Path, route: str) -> None:
    nginx_port, engine_port = free_port(), free_port()
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered

    server = await asyncio.start_server(silent, "127.0.0.1", engine_port)
    scratch = _scratch_dir()
    log = tmp_path / "nginx.log"
    try:
        command = _nginx(scratch, nginx_port, engine_port, read_timeout="1s")
        with running(command, stdout=log.open("ab"), stderr=subprocess.STDOUT) as proc:
            await _wait_http_any(nginx_port, proc, log)
            path = PATHS[route]
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{nginx_port}{path}"
                async with s.get(url, headers={"Origin": ORIGIN}) as r:
                    _check(r.status, r.headers, await r.read(), 504, TIMEOUT, ORIGIN, path)
    finally:
        server.close()
        for writer in held:
            writer.close()
        shutil.rmtree(scratch, ignore_errors=True)


async def _wait_http_any(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until nginx listens (its health check would wait on the silent engine)."""
    for _ in range(300):
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise AssertionError("nginx never listened")

"""A subset snapshot slower than the front's read timeout is the proxy's answer, not the
front's 504; with the proxy gone, a subset's 502 is the front's JSON as any request's.

    client -> the TLS front (config/front, real nginx) -> a shape-proxy stand-in answering late

The engine sends a subset's answer only once its query has ended, up to its
`--snapshot-timeout` (300 s), and shape-proxy waits up to 310 s for it; the front cut every
answer at its `proxy_read_timeout` (90 s). Subsets (a POST, a GET with `subset__*`) now go to
a location that waits 320 s. Here the general read timeout is shortened to 1 s and the
stand-in answers 3 s late: a catch-up is the front's 504 JSON (the timeout holds), a subset
the stand-in's 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.browser.test_h2_front import _certificate, _render_module, _stop
from tests.cdn.processes import assert_subsets_wait
from tests.support.ports import free_port

LATE = 3  # seconds the stand-in takes (past the 1 s read timeout the test gives the front)


@dataclass
class SlowFront:
    """The front (real nginx, its general read timeout shortened to 1 s) before a stand-in
    that answers `/v1/shape` `LATE` seconds late: a request the front routes as a subset gets
    the stand-in's 200, any other the front's 504."""

    session: aiohttp.ClientSession
    base: str  # https://127.0.0.1:<port>
    runner: web.AppRunner


@contextlib.asynccontextmanager
async def slow_front(tmp_path: Path) -> AsyncIterator[SlowFront]:
    front_port, proxy_port = free_port(), free_port()

    async def shape(request: web.Request) -> web.Response:
        body = await request.read() if request.method == "POST" else b""
        await asyncio.sleep(LATE)
        return web.json_response({"asked": request.method, "body": body.decode()})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "active"})

    app = web.Application()
    app.router.add_route("*", "/v1/shape", shape)
    app.router.add_get("/v1/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", proxy_port).start()
    # Not under tmp_path (0700): started as root, nginx's workers run as render.py's account.
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-front-"))
    scratch.chmod(0o755)
    certificate = _certificate(scratch)
    log = tmp_path / "front.log"
    nginx_conf = _render_module().render(
        scratch / "nginx", listen=f"127.0.0.1:{front_port}", server_name="localhost",
        cert=certificate.cert, key=certificate.key, proxy=f"127.0.0.1:{proxy_port}",
    )  # fmt: skip
    front_conf = nginx_conf.parent / "front.conf"
    text = front_conf.read_text()
    assert text.count("proxy_read_timeout 90s;") == 1
    front_conf.write_text(text.replace("proxy_read_timeout 90s;", "proxy_read_timeout 1s;"))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    front = subprocess.Popen(
        [nginx, "-c", str(nginx_conf)], stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    tls = ssl.create_default_context(cafile=str(certificate.cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as s:

            async def up() -> bool:
                assert front.poll() is None, log.read_text()[-3000:]
                try:
                    async with s.get(f"https://127.0.0.1:{front_port}/v1/health") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(100):
                if await up():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the front never answered: {log.read_text()[-3000:]}")
            yield SlowFront(s, f"https://127.0.0.1:{front_port}", runner)
    finally:
        _stop(front)
        await runner.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


async def test_a_slow_subset_gets_through_the_front_a_slow_catch_up_is_its_504(
    tmp_path: Path,
) -> None:
    async with slow_front(tmp_path) as front:
        s, runner = front.session, front.runner
        base = f"{front.base}/v1/shape?table=items"
        async with s.get(f"{base}&offset=-1") as r:
            assert (await r.json())["code"] == "upstream_timeout"
        subset = await assert_subsets_wait(s, base)
        body = b'{"where":"id > 1"}'
        # The proxy gone: a subset's 502 is the front's JSON with CORS, as any other
        # request's (without recursive_error_pages it was nginx's HTML page).
        await runner.cleanup()
        origin = {"Origin": "https://app.example"}
        for method, url, data in (
            ("GET", f"{base}&offset=-1", None),
            ("GET", subset, None),
            ("POST", f"{base}&offset=0_0&handle=1-2", body),
        ):
            async with s.request(method, url, data=data, headers=origin) as r:
                assert r.status == 502, (method, url)
                assert r.headers["access-control-allow-origin"] == "https://app.example"
                assert (await r.json())["code"] == "upstream_unreachable", (method, url)

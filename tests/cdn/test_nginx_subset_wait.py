"""A subset snapshot slower than the tier's read timeout is the engine's answer, not nginx's
504 (carried-over LOW, as for shape-proxy's own first-byte timeout: d4dedaf2).

    client -> nginx (config/nginx, real) -> an engine stand-in answering subsets late

The engine sends a subset's answer only once its query has ended, after up to its
`--snapshot-timeout` (300 s by default); the tier cut every answer at `proxy_read_timeout`
(90 s). Subsets (a POST, a GET with `subset__*`) now go to a location that waits 310 s.
Here the general `proxy_read_timeout` is shortened to 1 s and the stand-in answers 3 s
late: a catch-up is the tier's 504 (the timeout holds), a subset the engine's 200.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.cdn.processes import assert_subsets_wait, running
from tests.cdn.test_front_encoded_subset import EXPECTED, routes
from tests.cdn.test_nginx import SECRET, _scratch_dir
from tests.cdn.test_nginx_own_errors import _nginx, _wait_http_any
from tests.support.ports import free_port

LATE = 3  # seconds the stand-in takes (past the 1 s read timeout the test gives nginx)


async def test_a_slow_subset_is_the_engines_answer_a_slow_catch_up_the_tiers_504(
    tmp_path: Path,
) -> None:
    nginx_port, engine_port = free_port(), free_port()

    async def shape(request: web.Request) -> web.Response:
        body = await request.read() if request.method == "POST" else b""
        await asyncio.sleep(LATE)
        return web.json_response(
            {"data": [], "asked": request.method, "body": body.decode()},
            headers={"cache-control": "no-store"},
        )

    app = web.Application()
    app.router.add_route("*", "/v1/shape", shape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", engine_port).start()
    scratch = _scratch_dir()
    log = tmp_path / "nginx.log"
    base = f"http://127.0.0.1:{nginx_port}/v1/shape?table=items&secret={SECRET}"
    try:
        command = _nginx(scratch, nginx_port, engine_port, read_timeout="1s")
        with running(command, stdout=log.open("ab"), stderr=subprocess.STDOUT) as proc:
            await _wait_http_any(nginx_port, proc, log)
            async with aiohttp.ClientSession() as s:
                await assert_subsets_wait(s, base)
                # (a name percent-encoded in part, which the engine decodes, alike)
                assert await routes(s, base) == EXPECTED
    finally:
        await runner.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)

"""The shipped nginx tier (config/nginx) takes every request head the engine takes.

    client -> shape-proxy -> nginx (config/nginx, real) -> engine

The proxy forwards a request line and headers up to the engine's own limits (10,000 bytes
each, Electric's); nginx's defaults (`large_client_header_buffers 4 8k`) refused a request
line or header line over ~8 KB, and a head over 32 KB, with an HTML 414/400 of its own.
So a shape whose `where` or params hold ~1,500 non-ASCII characters (each is 6 bytes once
percent-encoded: names in Cyrillic or CJK), or a long User-Agent, worked against the engine
and failed through the tier, as a text/html error the client cannot read. Found by attack
(/work/attack/s7/nginx_limits.py through a policy proxy in front of nginx).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import aiohttp
from yarl import URL

from proxy.upstream.url import encode_query
from tests.cdn.test_nginx import (
    SECRET,
    _scratch_dir,
    _start_engine,
    _start_nginx,
    _stop,
    _wait_http,
)
from tests.support.ports import free_port

_NAMES = ("User-Agent", "Accept", "If-None-Match", "traceparent", "tracestate", "X-Request-Id")


async def test_nginx_takes_every_request_head_the_engine_takes(db_url: str, tmp_path: Path) -> None:
    engine_port, nginx_port = free_port(), free_port()
    engine_log, nginx_log = tmp_path / "engine.log", tmp_path / "nginx.log"
    engine = _start_engine(db_url, engine_port, tmp_path / "data", engine_log, {})
    scratch = _scratch_dir()
    nginx = _start_nginx(scratch, nginx_port, engine_port, nginx_log)
    where = "title <> '" + "é" * 1500 + "'"  # a ~9.1 KB request line, under the engine's 10,000
    # As the proxy writes a where (`encode_query`: only `&+%#?`, controls and non-ASCII
    # escaped), every character it leaves raw in a literal and as operators, ~9.5 KB.
    odd = "title <> '!$''()*,/:;<=>@[\\]^`{|}\"?#&+% é' AND id<>0"
    raw = "&" + encode_query(
        [("where", odd + "".join(f" AND id<>{i}" for i in range(10**5, 10**5 + 640)))]
    )
    assert 8_500 < len(raw) < 9_800
    cases = {
        "long request line": ("&where=" + quote(where, safe=""), {}),
        "raw characters": (raw, {}),
        "9 KB header line": ("", {"User-Agent": "a" * 9000}),
        "40 KB of headers": ("", {name: "a" * 7000 for name in _NAMES}),
    }
    try:
        await _wait_http(f"http://127.0.0.1:{engine_port}/v1/health", engine, engine_log)
        await _wait_http(
            f"http://127.0.0.1:{nginx_port}/v1/health", nginx, nginx_log, server="nginx"
        )
        answers = {}
        async with aiohttp.ClientSession(
            # (aiohttp's own client limits are not what is tested)
            max_line_size=65536,
            max_field_size=65536,
        ) as s:
            for label, (query, headers) in cases.items():
                path = f"/v1/shape?table=items&offset=-1&secret={SECRET}{query}"
                for port in (engine_port, nginx_port):
                    url = URL(f"http://127.0.0.1:{port}{path}", encoded=True)
                    async with s.get(url, headers=headers) as r:
                        answers[label, port] = (r.status, r.content_type, len(await r.read()))
        for label in cases:
            direct, tier = answers[label, engine_port], answers[label, nginx_port]
            assert direct[:2] == (200, "application/json"), (label, direct)
            assert direct[2] > 100, (label, direct)  # (rows, not an empty answer)
            assert tier == direct, (label, "through nginx", tier, "engine", direct)
    finally:
        _stop(nginx)
        _stop(engine)
        shutil.rmtree(scratch, ignore_errors=True)

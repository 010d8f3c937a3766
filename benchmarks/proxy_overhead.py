"""Proxy overhead: the same requests sent straight to the upstream and through `shape-proxy`.

Run: `.venv/bin/python benchmarks/proxy_overhead.py [--database-url URL] [--held N]`

Three processes: the upstream (a fake Electric-like engine, or with `--database-url` the real
`sync-engine` over a table this script creates), the real proxy (`python -m proxy --config
...`), and this load generator. Each round sends identical shape requests both ways,
alternating, so both sides see the same machine state. Reported, as figures and ratios from one run:

- throughput (requests/s at a fixed concurrency): proxy / direct (target >= 0.75);
- median latency at concurrency 1, and the median added by the proxy;
- memory per held long-poll: proxy RSS growth while N live requests are held open upstream,
  divided by N (target < 20 KB).

The direct requests carry exactly the URL the proxy builds (policy filter, params, secret),
so the upstream does the same work either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.http.params import parse_shape_query  # noqa: E402
from proxy.policy.evaluate import evaluate  # noqa: E402
from proxy.policy.loader import build_config  # noqa: E402
from proxy.upstream.url import build_upstream_url  # noqa: E402

ENGINE_SECRET = "bench-engine-secret-0123456789abcdef"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
ISSUER = "https://bench.test/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fake upstream (runs in its own process) ---------------------------------------------


def run_fake_upstream(port: int, rows: int, hold: float) -> None:
    body = json.dumps(
        [
            {"key": f'"public"."items"/"{i}"', "value": {"id": str(i), "org_id": "org-a",
             "title": f"title {i}"}, "headers": {"operation": "insert"}}
            for i in range(rows)
        ] + [{"headers": {"control": "up-to-date"}}]
    ).encode()  # fmt: skip
    headers = {
        "electric-handle": "1-1", "electric-offset": "0_inf", "electric-schema": "{}",
        "electric-up-to-date": "", "content-type": "application/json",
        "cache-control": "public, max-age=60, stale-while-revalidate=300",
    }  # fmt: skip

    async def shape(request: web.Request) -> web.Response:
        if request.query.get("secret") != ENGINE_SECRET:
            return web.Response(status=401)
        if request.query.get("live") == "true":
            await asyncio.sleep(hold)
            return web.Response(body=b"[]", headers={**headers, "electric-cursor": "1"})
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/shape", shape)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- helpers ------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def throughput(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int, concurrency: int
) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


async def latencies(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
        out.append(time.perf_counter() - started)
    return out


async def held_long_polls(
    url: str, headers: dict[str, str], proxy_pid: int, n: int, settle: float
) -> tuple[float, int]:
    """KB of proxy RSS per held long-poll, measured with `n` concurrently held requests."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up: one held round of a few requests so lazy allocations are not counted.
        warm = [asyncio.create_task(session.get(url, headers=headers)) for _ in range(20)]
        for r in await asyncio.gather(*warm):
            r.release()
        before = rss_kb(proxy_pid)
        tasks = [asyncio.create_task(session.get(url, headers=headers)) for _ in range(n)]
        await asyncio.sleep(settle)  # all requests are now held upstream
        during = rss_kb(proxy_pid)
        responses = await asyncio.gather(*tasks)
        ok = sum(r.status == 200 for r in responses)
        for r in responses:
            r.release()
    return (during - before) / n, ok


# --- main ---------------------------------------------------------------------------------


def start_processes(
    args: argparse.Namespace, tmp: Path
) -> tuple[list[subprocess.Popen[bytes]], str, int, dict[str, object]]:
    """Start the upstream (fake or real engine) and the proxy; return them and the config."""
    procs: list[subprocess.Popen[bytes]] = []
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    if args.database_url:
        import psycopg

        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {args.table}")
            conn.execute(f"CREATE TABLE {args.table} (id int PRIMARY KEY, org_id text, title text)")
            conn.execute(
                f"INSERT INTO {args.table} SELECT i, CASE WHEN i %% 2 = 0 THEN 'org-a' "
                "ELSE 'org-b' END, 'title ' || i FROM generate_series(1, %s) i",
                (args.rows * 2,),
            )
        cmd = [sys.executable, "-m", "sync_engine", "--database-url", args.database_url,
               "--port", str(upstream_port), "--secret", ENGINE_SECRET, "--no-fsync",
               "--data-dir", str(tmp / "engine-data"), "--long-poll-timeout", str(args.hold),
               "--log-level", "WARNING"]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--serve-upstream", str(upstream_port),
               "--rows", str(args.rows), "--hold", str(args.hold)]  # fmt: skip
    procs.append(subprocess.Popen(cmd, cwd=ROOT))
    proxy_port = free_port()
    config: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": proxy_port},
        "upstream": {"url": upstream_url, "secret_env": "ENGINE_SECRET", "pool_size": 8192},
        "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                     "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
        "tables": {args.table: {"allow": [{"where": "org_id = {{org_id}}",
                                           "columns": ["id", "org_id", "title"]}]}},
    }  # fmt: skip
    path = tmp / "proxy.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(path), "--log-level", "WARNING"],
            env=env,
            cwd=ROOT,
        )
    )
    return procs, upstream_url, proxy_port, config


async def catch_up(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    """Follow the shape to up-to-date; return the query suffix of a live request at the tip."""
    query = "offset=-1"
    for _ in range(1000):
        async with session.get(f"{url}&{query}", headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
            handle, offset = resp.headers["electric-handle"], resp.headers["electric-offset"]
            query = f"offset={offset}&handle={handle}"
            if "electric-up-to-date" in resp.headers:
                return query + "&live=true&cursor=1"
    raise RuntimeError("never up to date")


async def measure(
    args: argparse.Namespace, upstream_url: str, proxy_port: int, proxy_pid: int,
    config: dict[str, object],
) -> None:  # fmt: skip
    await wait_http(upstream_url + "/v1/shape")
    await wait_http(f"http://127.0.0.1:{proxy_port}/healthz")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "bench", "sub": "u1", "org_id": "org-a", "iat": now,
              "exp": now + 3600}  # fmt: skip
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    auth = {"Authorization": f"Bearer {token}"}
    env = {"ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    decision = evaluate(
        build_config(config, env).policy, claims,
        parse_shape_query([("table", args.table), ("offset", "-1")]),
    )  # fmt: skip
    direct_url = str(
        build_upstream_url(upstream_url, decision, source_id=None, secret=ENGINE_SECRET)
    )
    proxy_base = f"http://127.0.0.1:{proxy_port}/v1/shape?table={args.table}"
    proxy_url = proxy_base + "&offset=-1"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        live_query = await catch_up(session, proxy_base, auth)
        await throughput(session, direct_url, {}, 200, args.concurrency)  # warm-up
        await throughput(session, proxy_url, auth, 200, args.concurrency)
        direct_rps, proxy_rps = [], []
        for _ in range(args.rounds):
            direct_rps.append(
                await throughput(session, direct_url, {}, args.requests, args.concurrency)
            )
            proxy_rps.append(
                await throughput(session, proxy_url, auth, args.requests, args.concurrency)
            )
        d_lat = await latencies(session, direct_url, {}, args.latency_requests)
        p_lat = await latencies(session, proxy_url, auth, args.latency_requests)
    per_poll_kb, held_ok = await held_long_polls(
        f"{proxy_base}&{live_query}", auth, proxy_pid, args.held, settle=args.hold / 2
    )
    d, p = statistics.median(direct_rps), statistics.median(proxy_rps)
    dm, pm = statistics.median(d_lat) * 1000, statistics.median(p_lat) * 1000
    what = "real sync-engine + Postgres" if args.database_url else "fake engine"
    print(f"upstream: {what}, {args.rows} rows per response")
    print(f"throughput at concurrency {args.concurrency}, median of {args.rounds} rounds x "
          f"{args.requests} requests:")  # fmt: skip
    print(f"  direct {d:8.0f} req/s   proxy {p:8.0f} req/s   "
          f"ratio proxy/direct {p / d:.2f} (target >= 0.75)")  # fmt: skip
    print(f"latency at concurrency 1, median of {args.latency_requests}:")
    print(f"  direct {dm:.2f} ms   proxy {pm:.2f} ms   added {pm - dm:.2f} ms")
    print(f"held long-polls: {args.held} concurrent through the proxy ({held_ok} answered 200)")
    print(f"  proxy RSS per held long-poll {per_poll_kb:.1f} KB (target < 20 KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--held", type=int, default=2000, help="concurrent held long-polls")
    parser.add_argument("--hold", type=float, default=8.0, help="upstream long-poll hold, s")
    parser.add_argument("--rows", type=int, default=50, help="rows per response")
    parser.add_argument("--table", default="items")
    parser.add_argument(
        "--database-url", help="run the real sync-engine against this database (table replaced)"
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        run_fake_upstream(args.serve_upstream, args.rows, args.hold)
        return
    with tempfile.TemporaryDirectory() as tmp:
        procs, upstream_url, proxy_port, config = start_processes(args, Path(tmp))
        try:
            asyncio.run(measure(args, upstream_url, proxy_port, procs[-1].pid, config))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=15)


if __name__ == "__main__":
    main()

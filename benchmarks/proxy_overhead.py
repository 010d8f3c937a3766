"""Proxy overhead: the same requests sent straight to the upstream and through `shape-proxy`.

Run: `.venv/bin/python benchmarks/proxy_overhead.py [--database-url URL | --real] [--held N]
[--fanout 200,1000]`

Processes: the upstream (a fake Electric-like engine, or with `--database-url`/`--real` the
real `sync-engine` over a table this script creates; `--real` starts a throwaway Postgres),
two real proxies (`python -m proxy --config ...`): one with collapsing and the response cache
switched off, one with both on (the defaults), and this load generator. Each round sends
identical shape requests to the three arms in turn, so all see the same machine state.
Reported, as figures and ratios from one run:

- throughput (requests/s at a fixed concurrency, the same URL over and over): each proxy arm /
  direct (target >= 0.75). The "on" arm answers repeats from its cache, so its ratio shows
  what a repeated request costs, not what forwarding costs: the "off" arm is the honest
  forwarding overhead;
- median latency at concurrency 1, and the median added by each proxy arm;
- memory per held long-poll: proxy RSS growth while N live requests for one shape are held,
  divided by N (target < 20 KB), for each arm;
- live fan-out (real engine only): N clients long-polling one shape through the proxy, one
  insert per second: engine requests per write (counted by the proxy's
  `shape_proxy_upstream_requests_total`, i.e. what the engine received) and p50/p99
  commit-to-client latency, with collapsing on (and off for the smallest N).

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

from _common import UNLIMITED, Postgres, machine  # noqa: E402

from proxy.config.loader import build_config  # noqa: E402
from proxy.http.params import parse_shape_query  # noqa: E402
from proxy.policy.evaluate import evaluate  # noqa: E402
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
        # Like the engine: an ETag naming the handle, and a 304 when the client has it.
        etag = f'"1-1:{request.query.get("offset")}:0_inf"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={**headers, "etag": etag})
        return web.Response(body=body, headers={**headers, "etag": etag})

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
) -> tuple[list[subprocess.Popen[bytes]], str, dict[str, int], dict[str, object]]:
    """Start the upstream (fake or real engine) and the two proxies (off, on)."""
    procs: list[subprocess.Popen[bytes]] = []
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    upstream_env = dict(os.environ)
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
        # (the URL and the secret by environment: a dev-postgres URL holds its password)
        upstream_env["SYNC_ENGINE_DATABASE_URL"] = args.database_url
        upstream_env["SYNC_ENGINE_SECRET"] = ENGINE_SECRET
        cmd = [sys.executable, "-m", "sync_engine",
               "--port", str(upstream_port), "--no-fsync",
               "--data-dir", str(tmp / "engine-data"), "--long-poll-timeout", str(args.hold),
               "--log-level", "WARNING"]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--serve-upstream", str(upstream_port),
               "--rows", str(args.rows), "--hold", str(args.hold)]  # fmt: skip
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=upstream_env))
    base: dict[str, object] = {
        "upstream": {"url": upstream_url, "secret_env": "ENGINE_SECRET", "pool_size": 8192,
                     "first_byte_timeout": args.hold + 30},
        "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                     "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
        "tables": {args.table: {"allow": [{"where": "org_id = {{org_id}}",
                                           "columns": ["id", "org_id", "title"]}]}},
        # One load generator token stands for many users: per-principal limits out of the way.
        "limits": UNLIMITED,
        "metrics": {"allow_loopback": True},  # (read below)
    }  # fmt: skip
    ports: dict[str, int] = {}
    env = {**os.environ, "ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    for arm, python, root in arms(args):
        extra = ARMS[arm.split("@")[0]]
        port = free_port()
        ports[arm] = port
        config = {**base, "server": {"host": "127.0.0.1", "port": port}, **extra}
        path = tmp / f"proxy-{arm}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        procs.append(
            subprocess.Popen(
                [python, "-m", "proxy", "--config", str(path), "--log-level", "WARNING"],
                env=env,
                cwd=root,
            )
        )
    return procs, upstream_url, ports, base


#: Proxy arms: extra config per arm.
ARMS: dict[str, dict[str, object]] = {
    "off": {"collapse": False, "cache": {"max_bytes": 0}},
    "on": {"collapse": True, "cache": {"max_bytes": 256 * 1024 * 1024}},
}


def arms(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    """(arm, python, checkout) per proxy: this checkout's, and `--baseline`'s as `<arm>@base`
    (its own .venv) for a before/after measured side by side in one run."""
    out = [(arm, sys.executable, ROOT) for arm in ARMS]
    if args.baseline is not None:
        python = str(args.baseline / ".venv" / "bin" / "python")
        out += [(f"{arm}@base", python, args.baseline) for arm in ARMS]
    return out


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


async def upstream_requests(session: aiohttp.ClientSession, proxy: str) -> float:
    """The proxy's count of requests it sent to the engine."""
    async with session.get(f"{proxy}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("shape_proxy_upstream_requests_total "):
            return float(line.split()[1])
    return 0.0


async def fanout(
    args: argparse.Namespace, proxy: str, auth: dict[str, str], n: int, first_id: int
) -> dict[str, float]:
    """N live clients on one shape, one insert per second: engine requests per write, latency."""
    import orjson
    import psycopg

    base = f"{proxy}/v1/shape?table={args.table}"
    commits: dict[str, float] = {}
    received: list[tuple[str, float]] = []
    errors = 0
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=args.hold + 40)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start_query = await catch_up(session, base, auth)

        async def client() -> None:
            nonlocal errors
            query = start_query
            while not stop.is_set():
                try:
                    async with session.get(f"{base}&{query}", headers=auth) as resp:
                        body = await resp.read()
                        now = time.time()
                        if resp.status != 200:
                            errors += 1
                            await asyncio.sleep(0.2)
                            continue
                        h = resp.headers
                        query = (f"offset={h['electric-offset']}&handle={h['electric-handle']}"
                                 f"&live=true&cursor={h.get('electric-cursor', '')}")  # fmt: skip
                except aiohttp.ClientError:
                    errors += 1
                    await asyncio.sleep(0.2)
                    continue
                for message in orjson.loads(body):
                    if "key" in message and message["headers"].get("operation") == "insert":
                        received.append((message["value"]["id"], now))

        tasks = [asyncio.create_task(client()) for _ in range(n)]
        await asyncio.sleep(2.0)  # every client is now holding a live request
        before = await upstream_requests(session, proxy)
        async with await psycopg.AsyncConnection.connect(
            args.database_url, autocommit=True
        ) as conn:
            for i in range(args.writes):
                row = first_id + i
                await conn.execute(
                    f"INSERT INTO {args.table} VALUES (%s, 'org-a', 'fan-out')", (row,)
                )
                commits[str(row)] = time.time()
                await asyncio.sleep(1.0)
        await asyncio.sleep(1.0)  # let the last write arrive everywhere
        after = await upstream_requests(session, proxy)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(t - commits[row] for row, t in received if row in commits)
    expected = n * args.writes
    return {
        "requests_per_write": (after - before) / args.writes,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "delivered": len(lat) / expected if expected else 0.0,
        "errors": float(errors),
    }


async def measure(
    args: argparse.Namespace, upstream_url: str, ports: dict[str, int], pids: dict[str, int],
    config: dict[str, object],
) -> None:  # fmt: skip
    await wait_http(upstream_url + "/v1/shape")
    proxies = {arm: f"http://127.0.0.1:{port}" for arm, port in ports.items()}
    for url in proxies.values():
        await wait_http(f"{url}/healthz")
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
    targets: dict[str, tuple[str, dict[str, str]]] = {"direct": (direct_url, {})} | {
        arm: (f"{url}/v1/shape?table={args.table}&offset=-1", auth) for arm, url in proxies.items()
    }
    rps: dict[str, list[float]] = {name: [] for name in targets}
    lat: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        live_query = await catch_up(session, f"{proxies['off']}/v1/shape?table={args.table}", auth)
        for url, headers in targets.values():  # warm-up
            await throughput(session, url, headers, 300, args.concurrency)
        for _ in range(args.rounds):
            for name, (url, headers) in targets.items():
                rps[name].append(
                    await throughput(session, url, headers, args.requests, args.concurrency)
                )
        for name, (url, headers) in targets.items():
            lat[name] = await latencies(session, url, headers, args.latency_requests)
    held: dict[str, tuple[float, int]] = {}
    for arm, url in proxies.items():
        held[arm] = await held_long_polls(
            f"{url}/v1/shape?table={args.table}&{live_query}", auth, pids[arm], args.held,
            settle=args.hold / 2,
        )  # fmt: skip
    fan: list[tuple[str, int, dict[str, float]]] = []
    if args.database_url and args.fanout:
        sizes = [int(x) for x in args.fanout.split(",")]
        first_id = 10_000_000
        for n in sizes:
            fan.append(("on", n, await fanout(args, proxies["on"], auth, n, first_id)))
            first_id += 1000
        if not args.no_fanout_off:
            n = sizes[0]
            fan.append(("off", n, await fanout(args, proxies["off"], auth, n, first_id)))

    what = "real sync-engine + Postgres" if args.database_url else "fake engine"
    print(f"machine: {machine()}")
    print(f"upstream: {what}, {args.rows} rows per response; proxy arms: off = collapse and "
          "cache off, on = both on")  # fmt: skip
    d = statistics.median(rps["direct"])
    print(f"throughput, same URL repeated, concurrency {args.concurrency}, median of "
          f"{args.rounds} rounds x {args.requests} requests:")  # fmt: skip
    print(f"  {'arm':<8}{'req/s':>10}{'ratio':>8}   median latency (c=1)   added")
    dm = statistics.median(lat["direct"]) * 1000
    for name in targets:
        r = statistics.median(rps[name])
        m = statistics.median(lat[name]) * 1000
        label = {"direct": "direct", "off": "proxy (collapse+cache off)",
                 "on": "proxy (collapse+cache on; repeats are cache hits)"
                 }.get(name, "baseline checkout")  # fmt: skip
        print(f"  {name:<8}{r:>10.0f}{r / d:>8.2f}   {m:>8.2f} ms{'':>11}{m - dm:>6.2f} ms"
              f"   {label}")  # fmt: skip
    print("  target: proxy/direct >= 0.75")
    for arm, (kb, ok) in held.items():
        print(f"held long-polls, arm {arm}: {args.held} concurrent on one shape ({ok} answered "
              f"200): proxy RSS per held long-poll {kb:.1f} KB (target < 20 KB)")  # fmt: skip
    for arm, n, result in fan:
        print(f"live fan-out, arm {arm}, N={n}, {args.writes} writes at 1/s: engine requests "
              f"per write {result['requests_per_write']:.2f} (target <= 2), commit-to-client "
              f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, delivered "
              f"{result['delivered'] * 100:.1f}%, errors {result['errors']:.0f}")  # fmt: skip


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
    parser.add_argument(
        "--real", action="store_true", help="start a throwaway Postgres and use the real engine"
    )
    parser.add_argument("--fanout", default="200,1000", help="fan-out client counts ('' skips)")
    parser.add_argument("--writes", type=int, default=10, help="fan-out writes (1 per second)")
    parser.add_argument("--no-fanout-off", action="store_true", help="skip the uncollapsed arm")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose proxies run beside (arms @base)"
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        run_fake_upstream(args.serve_upstream, args.rows, args.hold)
        return
    pg = None
    if args.real and not args.database_url:
        pg = Postgres()
        args.database_url = pg.url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            procs, upstream_url, ports, config = start_processes(args, Path(tmp))
            names = [arm for arm, _, _ in arms(args)]
            pids = {arm: proc.pid for arm, proc in zip(names, procs[1:], strict=True)}
            try:
                asyncio.run(measure(args, upstream_url, ports, pids, config))
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=15)
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()

"""S3: initial sync of 1M narrow rows: engine cold and warm against Postgres's own COPY as JSON.

Run alone: `.venv/bin/python benchmarks/initial_sync.py [--rows N] [--quick]`.

Arms, measured side by side in one run on the same database:
- `COPY (SELECT row_to_json(t) FROM big t) TO STDOUT`, read by a client (the floor: Postgres
  producing the same rows as JSON);
- engine cold: a new shape, from `offset=-1` to up-to-date over HTTP, bodies read fully;
- engine warm: a second client of the same shape (the shape log exists);
- proxy: a third client through the proxy (collapsing and cache off: the forwarding cost);
- nginx hit: the shipped nginx tier, second pass (the first pass fills its cache).
COPY and cold alternate three times (one time with `--quick`) and report their medians and
range; the other arms run once on the last cold engine.
Targets (../shared/design.md): cold <= 1.5x COPY; warm >= 5x faster than cold.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import psycopg
from _common import (
    EngineProcess,
    NginxProcess,
    Postgres,
    ProxyProcess,
    Row,
    Stack,
    fmt,
    follow,
    token,
    verdict,
)

TABLES = {"big": {"allow": [{"all_rows": True}]}}


def copy_json_seconds(url: str) -> tuple[float, int]:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        n = 0
        with conn.cursor().copy("COPY (SELECT row_to_json(t) FROM big t) TO STDOUT") as copy:
            for data in copy:
                n += len(data)
        return time.perf_counter() - t0, n


async def sync_seconds(url: str, headers: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Follow `url` (offset=-1) to up-to-date: (seconds, bytes, requests)."""
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        t0 = time.perf_counter()
        nbytes, requests, _, _, _ = await follow(s, url, headers)
        return time.perf_counter() - t0, nbytes, requests


async def run(quick: bool, rows_n: int | None = None) -> list[Row]:
    rows_n = rows_n or (200_000 if quick else 1_000_000)
    rounds = 1 if quick else 3
    stack = Stack()
    out: list[Row] = []
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, title text, n int)")
            conn.execute(
                "INSERT INTO big SELECT g, 'title ' || g, g %% 1000 FROM generate_series(1, %s) g",
                (rows_n,),
            )
            conn.execute("VACUUM ANALYZE big")
        copy_json_seconds(pg.url)  # warm Postgres's buffers for every arm
        pairs = [("table", "big"), ("offset", "-1")]
        # COPY and cold sync alternate for `rounds` rounds and each reports its median: a
        # single ~1 s sample of either moves by 10-15% on this shared machine. Every cold
        # round is a fresh engine (a new data directory, so a new shape and snapshot).
        copy_times: list[float] = []
        cold_times: list[float] = []
        for _ in range(rounds - 1):
            copy_times.append(copy_json_seconds(pg.url)[0])
            spare = EngineProcess(pg.url)
            try:
                await spare.wait_ready()
                url = ProxyProcess.build_direct_url(TABLES, spare.url, {"sub": "u1"}, pairs)
                cold_times.append((await sync_seconds(url))[0])
            finally:
                spare.stop()
        copy_s, copy_bytes = copy_json_seconds(pg.url)
        copy_times.append(copy_s)
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        proxy = stack.add(ProxyProcess(engine.url, TABLES, collapse=False, cache_bytes=0))
        nginx = stack.add(NginxProcess(engine.port, cache=True))
        await proxy.wait_ready()
        await nginx.wait_ready()
        direct = proxy.direct_url(engine.url, {"sub": "u1"}, pairs)
        e0, pg0 = engine.cpu(), pg.cpu()
        cold_s, cold_bytes, cold_req = await sync_seconds(direct)
        cold_cpu, cold_pg_cpu, cold_rss = engine.cpu() - e0, pg.cpu() - pg0, engine.rss()
        cold_times.append(cold_s)
        copy_s, cold_s = statistics.median(copy_times), statistics.median(cold_times)
        e0 = engine.cpu()
        warm_s, _, _ = await sync_seconds(direct)
        warm_cpu = engine.cpu() - e0
        auth = {"Authorization": f"Bearer {token()}"}
        proxy_s, _, _ = await sync_seconds(f"{proxy.url}/v1/shape?table=big&offset=-1", auth)
        via = direct.replace(engine.url, nginx.url)
        fill_s, _, _ = await sync_seconds(via)
        hit_s, _, _ = await sync_seconds(via)
        label = f"S3 initial sync {rows_n:,} rows"
        arms = [("COPY json", fmt(copy_s, "s")), ("engine cold", fmt(cold_s, "s")),
                ("warm", fmt(warm_s, "s")), ("proxy (warm)", fmt(proxy_s, "s")),
                ("nginx miss", fmt(fill_s, "s")), ("nginx hit", fmt(hit_s, "s"))]  # fmt: skip
        spread = (f"; median of {rounds}: COPY {fmt(min(copy_times), 's')}-"
                  f"{fmt(max(copy_times), 's')}, cold {fmt(min(cold_times), 's')}-"
                  f"{fmt(max(cold_times), 's')}") if rounds > 1 else ""  # fmt: skip
        out.append(Row(label, f"wall time to up-to-date ({cold_bytes / 1e6:.0f} MB, "
                              f"{cold_req} requests{spread})", arms,
                       f"cold/COPY {cold_s / copy_s:.2f}", "<= 1.5 (design)",
                       verdict(cold_s / copy_s <= 1.5)))  # fmt: skip
        out.append(Row(label, "warm vs cold",
                       [("cold", fmt(cold_s, "s")), ("warm", fmt(warm_s, "s"))],
                       f"cold/warm {cold_s / warm_s:.1f}x", ">= 5x (design)",
                       verdict(cold_s / warm_s >= 5)))  # fmt: skip
        out.append(Row(label, "front tiers vs warm direct",
                       [("warm", fmt(warm_s, "s")), ("proxy", fmt(proxy_s, "s")),
                        ("nginx hit", fmt(hit_s, "s"))],
                       f"warm/proxy {warm_s / proxy_s:.2f}, warm/nginx-hit {warm_s / hit_s:.2f}",
                       "proxy >= 0.8x direct (anchors S3)",
                       verdict(warm_s / proxy_s >= 0.8)))  # fmt: skip
        out.append(Row(label, "engine CPU s (Postgres CPU s), peak engine RSS",
                       [("cold", f"{fmt(cold_cpu)} ({fmt(cold_pg_cpu)}) s, {fmt(cold_rss)} MiB"),
                        ("warm", f"{fmt(warm_cpu)} s"),
                        ("rows/s cold", fmt(rows_n / cold_s)),
                        ("COPY json MB", fmt(copy_bytes / 1e6))], "", "", ""))  # fmt: skip
    finally:
        stack.close()
    return out


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print(machine())
    print(table(asyncio.run(run(a.quick, a.rows))))

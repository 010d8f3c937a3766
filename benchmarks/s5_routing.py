"""S5: one write among many shapes: indexed `=` against `ILIKE` (evaluated per shape).

Run alone: `.venv/bin/python benchmarks/s5_routing.py [--quick] [--sizes 100,1000]`.

One engine; for each S two empty tables of their own: `t_eq_<S>` gets S shapes
`name = 'k<i>x'`, `t_like_<S>` gets S shapes `name ILIKE 'k<i>x%'` (created over HTTP,
`offset=-1` each, before the measurement). A change is routed only among its own table's
shapes, so separate tables keep the arms and the sizes from evaluating each other's shapes,
and every shape is created on an empty table: on one table growing by each size's writes
(10,000 rows), each of the 18,000 snapshot queries of the larger sizes was a sequential
scan, and creating the shapes took most of the scenario's time. For each S and arm: one client
long-polls the last shape directly on the engine; a writer inserts one row matching only that
shape, 5 writes/s; latency = client has the row - INSERT returned. Engine CPU per change is
the engine's CPU over the writes / writes (it includes answering the one long-poll).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import psycopg
from _common import (
    ENGINE_SECRET,
    SYNC_COMMIT,
    EngineProcess,
    Postgres,
    Row,
    Stack,
    fmt,
    follow,
    pct,
    tree,
    verdict,
)


def engine_cpu(engine: EngineProcess) -> float:
    """CPU seconds of the engine's threads, in ns resolution (`/proc/<pid>/task/*/schedstat`).

    `engine.cpu()` counts clock ticks (10 ms): over 2,000 changes that is 5 µs per change,
    as coarse as the 10 µs target itself. Threads that exited are not counted (the engine's
    executor threads live on).
    """
    total = 0
    for pid in tree(engine.pid):
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def shape_url(engine: EngineProcess, table: str, i: int) -> str:
    where = f"name = 'k{i}x'" if table.startswith("t_eq") else f"name ILIKE 'k{i}x%'"
    return (f"{engine.url}/v1/shape?table={table}&where={quote(where)}"
            f"&secret={ENGINE_SECRET}&offset=-1")  # fmt: skip


async def create_shapes(engine: EngineProcess, table: str, lo: int, hi: int) -> float:
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(i: int) -> None:
            async with sem:
                async with s.get(shape_url(engine, table, i)) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(one(i) for i in range(lo, hi)))
    return time.perf_counter() - t0


async def measure(pg: Postgres, engine: EngineProcess, table: str, target: int, writes: int,
                  first_id: int, nomatch: int) -> tuple[list[float], float]:  # fmt: skip
    received: dict[int, float] = {}
    commits: dict[int, float] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as s:
        url = shape_url(engine, table, target)
        _, _, handle, offset, _ = await follow(s, url)
        base = url.replace("&offset=-1", "")

        async def client() -> None:
            nonlocal offset
            cursor = "0"
            while not stop.is_set():
                q = f"{base}&offset={offset}&handle={handle}&live=true&cursor={cursor}"
                async with s.get(q) as r:
                    body = await r.json()
                    now = time.time()
                    offset = r.headers["electric-offset"]
                    cursor = r.headers.get("electric-cursor", "0")
                for m in body:
                    if "key" in m:
                        received[int(m["value"]["id"])] = now

        task = asyncio.create_task(client())
        await asyncio.sleep(0.5)
        async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
            await conn.execute(SYNC_COMMIT)
            for i in range(writes):
                commits[first_id + i] = time.time()  # sent (see s2_fanout)
                await conn.execute(f"INSERT INTO {table} VALUES (%s, %s)",
                                   (first_id + i, f"k{target}x"))  # fmt: skip
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        # CPU per change: `nomatch` one-row transactions matching no shape, then one sentinel
        # matching the target; the engine is done when the client has the sentinel.
        sentinel = first_id + writes + nomatch
        e0 = engine_cpu(engine)
        with psycopg.connect(pg.url, autocommit=True) as sync_conn:
            sync_conn.execute(f"CALL gen_{table}(%s, %s)", (first_id + writes, nomatch))
            sync_conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (sentinel, f"k{target}x"))
        deadline = time.monotonic() + 120
        while sentinel not in received and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        cpu = engine_cpu(engine) - e0
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lat = [(received[k] - t) * 1000 for k, t in commits.items() if k in received]
    return lat, cpu / (nomatch + 1) * 1e6


def create_tables(pg: Postgres, n: int) -> dict[str, str]:
    """The two empty tables of size `n` (and their no-match generators): arm -> table."""
    tables = {"=": f"t_eq_{n}", "ILIKE": f"t_like_{n}"}
    with psycopg.connect(pg.url, autocommit=True) as conn:
        for t in tables.values():
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text)")
            conn.execute(f"""CREATE PROCEDURE gen_{t}(first int, n int) LANGUAGE plpgsql AS $$
                BEGIN FOR i IN first .. first + n - 1 LOOP
                  INSERT INTO {t} VALUES (i, 'no shape has this'); COMMIT;
                END LOOP; END $$""")
    return tables


async def run(quick: bool, sizes: list[int] | None = None) -> list[Row]:
    sizes = sizes or ([100, 1000] if quick else [100, 1000, 10000])
    writes = 15 if quick else 30
    nomatch = 2000 if quick else 10000
    stack = Stack()
    rows: list[Row] = []
    try:
        pg = stack.add(Postgres())
        engine = stack.add(EngineProcess(pg.url, "--max-initial-syncs", "0"))
        await engine.wait_ready()
        first_id = 1
        create_s: dict[int, float] = {}
        for n in sizes:
            tables = create_tables(pg, n)
            create_s[n] = 0.0
            for t in tables.values():
                create_s[n] += await create_shapes(engine, t, 0, n)
            res = {}
            for arm, t in tables.items():
                # ILIKE costs ~1-2 µs per shape per change: bound its transaction count
                k = nomatch if arm == "=" else max(200, min(nomatch, 2_000_000 // n))
                res[arm] = await measure(pg, engine, t, n - 1, writes, first_id, k)
                first_id += writes + nomatch + 1
            (eq_lat, eq_cpu), (like_lat, like_cpu) = res["="], res["ILIKE"]
            label = f"S5 1 write among {n:,} shapes"
            ratio = pct(like_lat, 0.5) / pct(eq_lat, 0.5)
            rows.append(Row(label, "commit→client p50 / p99",
                            [("=", f"{fmt(pct(eq_lat, 0.5))} / {fmt(pct(eq_lat, 0.99), 'ms')}"),
                             ("ILIKE",
                              f"{fmt(pct(like_lat, 0.5))} / {fmt(pct(like_lat, 0.99), 'ms')}")],
                            f"ILIKE/= p50 {ratio:.1f}x", "", ""))  # fmt: skip
            rows.append(Row(label, "engine CPU µs per change matching none",
                            [("=", fmt(eq_cpu)), ("ILIKE", fmt(like_cpu)),
                             ("ILIKE per shape", fmt(like_cpu / n, "µs"))],
                            f"ILIKE/= {like_cpu / max(eq_cpu, 1e-9):.1f}x",
                            "= <= 10 µs, flat in S (design)",
                            verdict(eq_cpu <= 10)))  # fmt: skip
            print(f"    S5 S={n}: created {2 * n} shapes in {create_s[n]:.1f} s; "
                  f"= p50 {pct(eq_lat, 0.5):.1f} ms, ILIKE p50 {pct(like_lat, 0.5):.1f} ms, "
                  f"CPU {eq_cpu:.0f} / {like_cpu:.0f} µs", flush=True)  # fmt: skip
        rows.append(Row("S5 shape creation over HTTP", "shapes/s on an empty table (setup)",
                        [(f"S={n:,}", fmt(2 * n / max(create_s[n], 1e-9))) for n in sizes],
                        "", "", ""))  # fmt: skip
    finally:
        stack.close()
    return rows


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="")
    a = ap.parse_args()
    print(machine())
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else None
    print(table(asyncio.run(run(a.quick, sizes))))

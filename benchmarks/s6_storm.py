"""S6: a storm of N new shapes requested at once: distinct against identical.

Run alone: `.venv/bin/python benchmarks/s6_storm.py [--quick] [--n 1000]`.

Table `storm` with (N + 1) x 500 rows and an index on `bucket`; Postgres with
pg_stat_statements, so snapshot queries are counted in Postgres (statements on `storm`).
N clients each follow one shape from `offset=-1` to up-to-date, all started at once; a 503
is retried after its Retry-After, as Electric's client does. Arms (engines in turn, each with
a fresh data directory so every shape is new):
- `distinct`: N shapes `bucket = i`, engine defaults (`--max-initial-syncs 32`);
- `distinct, no limit`: the same with `--max-initial-syncs 0` (no 503s); that flag limits
  registered sources only, so in this single-database setup both arms run the same engine
  (their difference is run-to-run noise, and the second arm starts right after the first
  arm's data directory was deleted);
- `identical`: N clients asking for the same new shape `bucket = N`.
Time = start of the storm until the last client is up-to-date.

Storms 10x larger (issue 13, bar 3): `S6 storm of N small shapes`, N = 1,000 and 10,000
distinct shapes of 100 rows each (table `storm100`), the same clients but each connected
(one `/v1/health` request) before the storm, so the engine's listen backlog (128) does not
turn 10,000 simultaneous connects into SYN retries. Targets: 1,000 in < 1 s, 10,000 in
< 10 s, engine CPU per shape flat from 1,000 to 10,000. `--baseline DIR` runs the same arms
with the engine of another checkout (e.g. a worktree at the session's base commit) in turn
with this one, so before and after are measured side by side in one run.

The N clients are `_common.RawHTTP` connections (one keep-alive connection each), not
aiohttp's client: on this 2-core machine the load generator shares the cores with the
engine and Postgres, and aiohttp's client cost ~0.7 ms of CPU per shape here (two
requests) against ~0.45 ms for RawHTTP, a quarter of all the CPU a storm uses. Client CPU
is reported with the engine's and Postgres's.

`--profile DIR` attaches py-spy (`pip install py-spy`) to each engine for the storm only
(from the first request to the last client up-to-date), writing one raw (collapsed-stack)
file per storm into DIR: `py-spy record --nonblocking` (Python frames only, idle ones left
out, the engine not paused); sum the lines under a function for its share of the engine's
busy CPU. `S6_PROFILE_ARGS` adds py-spy flags (e.g. `--gil`: only samples holding the GIL,
which tells CPU from waiting for the GIL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common
import aiohttp
import psycopg
from _common import (
    ENGINE_SECRET,
    EngineProcess,
    Postgres,
    RawHTTP,
    Row,
    Stack,
    fmt,
    follow,
    pct,
    verdict,
)

#: Set by `--profile`: the directory py-spy's collapsed stacks are written to.
PROFILE_DIR: Path | None = None


async def follow_raw(port: int, path: str, client: RawHTTP | None = None) -> int:
    """GET `path` (an `offset=-1` request) and follow it to up-to-date on one connection
    (`client`'s if given, then closed).

    Returns the number of 503s, each retried after its Retry-After as Electric's client does.
    """
    client = client or RawHTTP("127.0.0.1", port)
    unavailable = 0
    query = "offset=-1"
    base = path.replace("offset=-1", "").rstrip("&")
    try:
        while True:
            status, headers, body = await client.get(f"{base}&{query}")
            if status == 503:
                unavailable += 1
                await asyncio.sleep(float(headers.get("retry-after", "1")))
                continue
            if status != 200:
                raise RuntimeError(f"{status} from {base[:80]}: {body[:300]!r}")
            query = f"offset={headers['electric-offset']}&handle={headers['electric-handle']}"
            if "electric-up-to-date" in headers:
                return unavailable
    finally:
        client.close()


def start_profile(engine: EngineProcess, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording `engine` into PROFILE_DIR (None when not profiling)."""
    if PROFILE_DIR is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{name}-{engine.pid}.txt"
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(engine.pid), "--rate", "1000", "--nonblocking",
         "--format", "raw", "--output", str(out),
         *os.environ.get("S6_PROFILE_ARGS", "").split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attaches before the storm starts
    return proc


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


async def storm(
    pg: Postgres,
    engine: EngineProcess,
    buckets: list[int],
    table: str = "storm",
    connect_first: bool = False,
) -> dict[str, float]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    times: list[float] = []
    unavailable = 0
    clients: list[RawHTTP | None] = [None] * len(buckets)
    if connect_first:
        sem = asyncio.Semaphore(100)

        async def connect(i: int) -> None:
            async with sem:
                client = RawHTTP("127.0.0.1", engine.port)
                await client.get("/v1/health")
                clients[i] = client

        await asyncio.gather(*(connect(i) for i in range(len(buckets))))
    spy = start_profile(engine, f"{table}-{len(buckets)}")
    e0, p0, c0 = engine.cpu(), pg.cpu(), time.process_time()
    t0 = time.perf_counter()

    async def one(i: int, b: int) -> None:
        nonlocal unavailable
        path = f"/v1/shape?table={table}&where=bucket%20%3D%20{b}&secret={ENGINE_SECRET}&offset=-1"
        refused = await follow_raw(engine.port, path, clients[i])
        unavailable += refused  # (not `+= await`: that reads the total before awaiting)
        times.append(time.perf_counter() - t0)

    await asyncio.wait_for(asyncio.gather(*(one(i, b) for i, b in enumerate(buckets))), 300)
    total = time.perf_counter() - t0
    client_cpu = time.process_time() - c0
    engine_cpu = engine.cpu() - e0
    stop_profile(spy)
    with psycopg.connect(pg.url, autocommit=True) as conn:
        snapshots = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ILIKE "
            f"'%{table}%' AND query NOT ILIKE '%pg_stat_statements%'"
        ).fetchone()[0]  # type: ignore[index]
    return {"total": total, "mean": sum(times) / len(times), "p99": pct(times, 0.99),
            "snapshots": float(snapshots), "503": float(unavailable),
            "engine_cpu": engine_cpu, "pg_cpu": pg.cpu() - p0,
            "client_cpu": client_cpu, "rss": engine.rss()}  # fmt: skip


async def classic(stack: Stack, quick: bool, n: int | None) -> list[Row]:
    """The first bar's storm: N shapes of 500 rows, distinct against identical."""
    n = n or (300 if quick else 1000)
    rows: list[Row] = []
    res: dict[str, dict[str, float]] = {}
    pg = stack.add(Postgres(stat_statements=True))
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE storm (id int PRIMARY KEY, bucket int, payload text)")
        conn.execute("INSERT INTO storm SELECT i, i / 500, 'payload ' || md5(i::text) "
                     "FROM generate_series(0, %s) i", ((n + 1) * 500 - 1,))  # fmt: skip
        conn.execute("CREATE INDEX ON storm (bucket)")
        conn.execute("ALTER TABLE storm REPLICA IDENTITY FULL")
        conn.execute("VACUUM ANALYZE storm")
    arms = {
        "distinct": ([], list(range(n))),
        "distinct, no limit": (["--max-initial-syncs", "0"], list(range(n))),
        "identical": ([], [n] * n),
    }
    for name, (extra, buckets) in arms.items():
        engine = EngineProcess(pg.url, *extra)
        try:
            await engine.wait_ready()
            # Publish the table first (one shape on it): a storm on a table not yet in
            # the publication can deadlock the engine (docs/benchmarks.md, S6), and the
            # first publication of a table is a one-off, not what this scenario measures.
            async with aiohttp.ClientSession() as s:
                await follow(s, f"{engine.url}/v1/shape?table=storm&where=bucket%20%3D%20-1"
                                f"&secret={ENGINE_SECRET}&offset=-1")  # fmt: skip
            res[name] = await storm(pg, engine, buckets)
        finally:
            engine.stop()
        r = res[name]
        print(f"    S6 {name}: {r['total']:.2f} s, {r['snapshots']:.0f} snapshot queries, "
              f"{r['503']:.0f} 503s", flush=True)  # fmt: skip
    label = f"S6 storm of {n:,} new shapes (500 rows each)"
    d, i = res["distinct"], res["identical"]
    target = n == 1000
    rows.append(Row(label, "time until all synced (mean / p99 per client)",
                    [(a, f"{fmt(r['total'], 's')} ({fmt(r['mean'])} / {fmt(r['p99'])})")
                     for a, r in res.items()],
                    f"identical/distinct {i['total'] / d['total']:.2f}",
                    "distinct < 2 s at N=1,000 (design)" if target else "",
                    verdict(d["total"] < 2) if target else ""))  # fmt: skip
    rows.append(Row(label, "snapshot queries in Postgres (503s retried)",
                    [(a, f"{r['snapshots']:.0f} ({r['503']:.0f})") for a, r in res.items()],
                    "", "identical: 1 query (anchors S6)",
                    verdict(i["snapshots"] <= 1)))  # fmt: skip
    rows.append(Row(label, "CPU s engine / Postgres / client, engine RSS MiB",
                    [(a, f"{fmt(r['engine_cpu'])} / {fmt(r['pg_cpu'])} / "
                         f"{fmt(r['client_cpu'])}, {fmt(r['rss'])}")
                     for a, r in res.items()], "", "", ""))  # fmt: skip
    return rows


#: Rows per shape in the storms of small shapes.
SMALL_ROWS = 100


def engine_at(root: str | None, url: str, *extra: str, fsync: bool = False) -> EngineProcess:
    """An engine run from checkout `root` (None: this one)."""
    if root is None:
        return EngineProcess(url, *extra, fsync=fsync)
    saved = _common.ROOT
    _common.ROOT = Path(root).resolve()
    try:
        return EngineProcess(url, *extra, fsync=fsync)
    finally:
        _common.ROOT = saved


async def small_storms(
    stack: Stack, sizes: list[int], baseline: str | None, fsync: bool = False
) -> list[Row]:
    """Storms of N distinct 100-row shapes, this engine and (`baseline`) another in turn
    (`fsync`: the engine's default durability; the other benchmarks run `--no-fsync`)."""
    rows: list[Row] = []
    pg = stack.add(Postgres(stat_statements=True))
    top = max(sizes)
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE storm100 (id int PRIMARY KEY, bucket int, payload text)")
        conn.execute(
            "INSERT INTO storm100 SELECT i, i / %s, 'payload ' || md5(i::text) "
            "FROM generate_series(0, %s) i",
            (SMALL_ROWS, (top + 1) * SMALL_ROWS - 1),
        )
        conn.execute("CREATE INDEX ON storm100 (bucket)")
        conn.execute("ALTER TABLE storm100 REPLICA IDENTITY FULL")
        conn.execute("VACUUM ANALYZE storm100")
    engines = {"after": None} if baseline is None else {"before": baseline, "after": None}
    res: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        res[n] = {}
        for name, root in engines.items():
            engine = engine_at(root, pg.url, fsync=fsync)
            try:
                await engine.wait_ready()
                async with aiohttp.ClientSession() as s:  # publish the table first (see above)
                    await follow(
                        s,
                        f"{engine.url}/v1/shape?table=storm100&where=bucket%20%3D%20-1"
                        f"&secret={ENGINE_SECRET}&offset=-1",
                    )
                r = res[n][name] = await storm(pg, engine, list(range(n)), "storm100", True)
            finally:
                engine.stop()
            print(
                f"    S6 {n:,} small, {name}: {r['total']:.2f} s, engine "
                f"{r['engine_cpu'] / n * 1e6:.0f} µs/shape",
                flush=True,
            )
        label = f"S6 storm of {n:,} new shapes ({SMALL_ROWS} rows each{', fsync' if fsync else ''})"
        limit = 1.0 if n <= 1000 else 10.0
        after = res[n]["after"]
        ratio = cpu_ratio = ""
        if "before" in res[n]:
            before = res[n]["before"]
            ratio = f"after/before {after['total'] / before['total']:.2f}"
            cpu_ratio = f"after/before {after['engine_cpu'] / before['engine_cpu']:.2f}"
        rows.append(
            Row(
                label,
                "time until all synced (mean / p99 per client)",
                [
                    (a, f"{fmt(r['total'], 's')} ({fmt(r['mean'])} / {fmt(r['p99'])})")
                    for a, r in res[n].items()
                ],
                ratio,
                f"< {limit:.0f} s (issue 13)",
                verdict(after["total"] < limit),
            )
        )
        rows.append(
            Row(
                label,
                "engine CPU per shape µs; CPU s engine / Postgres / client; RSS MiB",
                [
                    (
                        a,
                        f"{r['engine_cpu'] / n * 1e6:.0f}; {fmt(r['engine_cpu'])} / "
                        f"{fmt(r['pg_cpu'])} / {fmt(r['client_cpu'])}; {fmt(r['rss'])}",
                    )
                    for a, r in res[n].items()
                ],
                cpu_ratio,
                "",
                "",
            )
        )
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        per = {
            a: (res[hi][a]["engine_cpu"] / hi) / (res[lo][a]["engine_cpu"] / lo) for a in engines
        }
        rows.append(
            Row(
                f"S6 storms of {lo:,} and {hi:,} new shapes ({SMALL_ROWS} rows each)",
                f"engine CPU per shape, {hi:,} / {lo:,}",
                [(a, f"{v:.2f}") for a, v in per.items()],
                "",
                "flat (<= 1.2) (issue 13)",
                verdict(per["after"] <= 1.2),
            )
        )
    return rows


async def run(
    quick: bool,
    n: int | None = None,
    baseline: str | None = None,
    only_small: bool = False,
    fsync: bool = False,
    sizes: list[int] | None = None,
) -> list[Row]:
    stack = Stack()
    try:
        rows = [] if only_small else await classic(stack, quick, n)
        sizes = sizes or ([1000] if quick else [1000, 10_000])
        return rows + await small_storms(stack, sizes, baseline, fsync)
    finally:
        stack.close()


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--baseline", help="another checkout whose engine runs side by side")
    ap.add_argument("--only-small", action="store_true", help="only the 100-row storms")
    ap.add_argument("--fsync", action="store_true", help="100-row storms with fsync on")
    ap.add_argument("--sizes", help="100-row storm sizes, e.g. 1000,10000")
    ap.add_argument("--profile", help="directory for py-spy profiles of each storm's engine")
    a = ap.parse_args()
    if a.profile:
        PROFILE_DIR = Path(os.path.abspath(a.profile))
    print(machine())
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else None
    print(table(asyncio.run(run(a.quick, a.n, a.baseline, a.only_small, a.fsync, sizes))))

"""S1: what sits in front of the engine: direct, the proxy, nginx, for three kinds of answer.

Run alone: `.venv/bin/python benchmarks/s1_front.py [--quick]`.

One engine on a throwaway Postgres, and in front of it, all at once:
- direct: the engine URL exactly as the proxy would build it (policy filter, columns, secret);
- proxy: `python -m proxy` with collapsing and its cache off (the forwarding cost);
- proxy+cache: the proxy with both on (repeats are answered from its cache);
- nginx: the shipped config/nginx tier with `proxy_cache off` (forwarding only);
- nginx+cache: the shipped config as is (repeats are cache hits);
- floor: `floor_forwarder.py`, a bare forwarder on the proxy's stack (uvloop, httptools both
  ways, kept-alive engine connections, the engine request the proxy sends) doing nothing
  else: what a Python forwarder costs before any auth, policy, logging or metrics (issue 13,
  bar 4). Sent the engine URL, as nginx is; not run for the 10 MiB chunk.
Answers: a small live answer (one row, `live=true` behind the tip: answered at once), a ~1 KiB
catch-up (non-live, a few rows), and a 10 MiB snapshot chunk (the second chunk of a ~15 MB
table; the first is the engine's 1 MiB `FIRST_CHUNK`, which this row measured until 2026-12-06).
Each arm gets the same fixed number of requests at a fixed concurrency (arms in turn, best of
the rounds), then a median latency at concurrency 1. CPU per request is read from /proc for
the front process (proxy or nginx master + workers) and the engine; the CPU row's ratios are
proxy/nginx, floor/nginx and proxy/floor.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import _common
import aiohttp
import psycopg
from _common import (
    EngineProcess,
    NginxProcess,
    Postgres,
    Process,
    ProxyProcess,
    RawHTTP,
    Row,
    Stack,
    fmt,
    follow,
    free_port,
    rss_mib,
    token,
    verdict,
)
from initial_sync import _Response

TABLES = {
    "items": {"allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "org_id", "title"]}]},
    "blob": {"allow": [{"all_rows": True}]},
}
CLAIMS = {"org_id": "org-a"}


def _split(url: str) -> tuple[str, int, str]:
    parsed = urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 80, f"{parsed.path}?{parsed.query}"


async def _get(client: RawHTTP, path: str, headers: dict[str, str]) -> int:
    """One GET on a kept-alive connection; returns the body's size."""
    status, hdrs, _ = await client.request(path, headers)
    size = 0
    async for piece in client.chunks(hdrs):
        size += len(piece)
    assert status == 200, status
    return size


async def _get_big(conn: _Response, host: str, port: int, path: str,
                   headers: dict[str, str]) -> int:  # fmt: skip
    """One GET of a large answer, its body counted into a reused buffer (S3's client): for a
    10 MiB body `RawHTTP`'s `readexactly` cost the load generator ~19 ms per answer on the
    same two cores, which then bounded every arm alike (~200 MB/s)."""
    await conn.get(path, headers, f"{host}:{port}")
    assert conn.status == 200, conn.status
    return conn.nbytes


#: In a follower arm's URL: replaced per request by a number never sent before (`cursor`),
#: and by one of the follower's offsets in turn (`FOLLOWER_OFFSETS`).
CURSOR_MARK, OFFSET_MARK = "CURSORMARK", "OFFSETMARK"
FOLLOWER_OFFSETS: list[str] = []
_SENT = itertools.count(10_000_000)


def _follower_path(path: str) -> str:
    """`path` with this request's cursor and offset, as a live follower's next request."""
    n = next(_SENT)
    offset = FOLLOWER_OFFSETS[n % len(FOLLOWER_OFFSETS)]
    return path.replace(CURSOR_MARK, str(n)).replace(OFFSET_MARK, offset)


async def load(url: str, headers: dict[str, str], n: int, concurrency: int,
               max_s: float, big: bool = False) -> tuple[float, int, int]:  # fmt: skip
    """n GETs at `concurrency` (one kept-alive connection each), stopping early after max_s:
    (requests/s, requests, bytes). The client is `RawHTTP`: several times cheaper per
    request than aiohttp's, so less of the two cores goes to the load generator. A URL with
    `CURSOR_MARK` is a follower's: each request at a new cursor (`_follower_path`)."""
    host, port, path = _split(url)
    follower = CURSOR_MARK in path
    counter = iter(range(n))
    done = nbytes = 0
    t0 = time.perf_counter()
    deadline = t0 + max_s

    async def worker() -> None:
        nonlocal done, nbytes
        client = RawHTTP(host, port)
        transport = conn = None
        if big:
            loop = asyncio.get_running_loop()
            transport, conn = await loop.create_connection(_Response, host, port)
        try:
            for _ in counter:
                if time.perf_counter() > deadline:
                    return
                if conn is not None:
                    size = await _get_big(conn, host, port, path, headers)
                else:
                    asked = _follower_path(path) if follower else path
                    size = await _get(client, asked, headers)  # (not `nbytes += await`: the
                nbytes += size  # read of nbytes before the await would lose other workers' adds)
                done += 1
        finally:
            client.close()
            if transport is not None:
                transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0), done, nbytes


async def median_latency(url: str, headers: dict[str, str], n: int, big: bool = False) -> float:
    host, port, path = _split(url)
    client = RawHTTP(host, port)
    transport = conn = None
    if big:
        transport, conn = await asyncio.get_running_loop().create_connection(_Response, host, port)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            if conn is not None:
                await _get_big(conn, host, port, path, headers)
            else:
                await _get(client, _follower_path(path) if CURSOR_MARK in path else path, headers)
            out.append(time.perf_counter() - t0)
    finally:
        client.close()
        if transport is not None:
            transport.close()
    return statistics.median(out) * 1000


async def prepare(pg: Postgres, proxy: ProxyProcess, auth: dict[str, str]) -> dict[str, list]:
    """Build the three answers; returns {kind: [(proxy query pairs)]}."""
    async with aiohttp.ClientSession() as s:
        base = f"{proxy.url}/v1/shape?table=items&offset=-1"
        _, _, handle, t0, _ = await follow(s, base, auth)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("INSERT INTO items SELECT i, 'org-a', repeat('c', 150) "
                         "FROM generate_series(1000001, 1000005) i")  # fmt: skip
        live_q = f"{proxy.url}/v1/shape?table=items&offset={t0}&handle={handle}&live=true"
        async with s.get(live_q, headers=auth) as r:
            await r.read()
            t1 = r.headers["electric-offset"]
            cursor = r.headers.get("electric-cursor", "1")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1000006, 'org-a', 'one live row')")
        live_q = f"{proxy.url}/v1/shape?table=items&offset={t1}&handle={handle}&live=true"
        async with s.get(live_q, headers=auth) as r:
            await r.read()
        await follow(s, f"{proxy.url}/v1/shape?table=blob&offset=-1", auth)
        # The second chunk: the first is at most 1 MiB (the engine's FIRST_CHUNK, for time to
        # first byte), so asking offset=-1 measured a ~1 MB answer under this row's name.
        async with s.get(f"{proxy.url}/v1/shape?table=blob&offset=-1", headers=auth) as r:
            await r.read()
            big = [("table", "blob"), ("offset", r.headers["electric-offset"]),
                   ("handle", r.headers["electric-handle"])]  # fmt: skip
    FOLLOWER_OFFSETS[:] = [t0, t1]
    return {
        "small live answer": [("table", "items"), ("offset", t1), ("handle", handle),
                              ("live", "true"), ("cursor", cursor)],
        # A live follower's requests: each names a new position (here a cursor never sent
        # before, and the follower's two real offsets behind the tip in turn, so each is
        # answered at once), as no two requests of a real follower are the same URL.
        "follower (new cursor each request)": [
            ("table", "items"), ("offset", OFFSET_MARK), ("handle", handle), ("live", "true"),
            ("cursor", CURSOR_MARK)],
        "1 KiB catch-up": [("table", "items"), ("offset", t0), ("handle", handle)],
        "10 MiB chunk": big,
    }  # fmt: skip


class FloorProcess(Process):
    """`floor_forwarder.py` in front of the engine at `engine_port`."""

    def __init__(self, engine_port: int) -> None:
        self.port = free_port()
        self.log = Path(f"/tmp/shapegate-bench-floor-{self.port}.log")
        script = Path(__file__).resolve().parent / "floor_forwarder.py"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.port), f"127.0.0.1:{engine_port}"],
                stdout=out, stderr=out,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        await self.wait_http("/v1/health")

    def stop(self) -> None:
        super().stop()
        self.log.unlink(missing_ok=True)


def baseline_proxy(root: Path, upstream: str) -> ProxyProcess:
    """The proxy of another checkout (its own .venv), same settings as the "proxy" arm: for
    a before/after measured side by side in one run."""
    saved = sys.executable, _common.ROOT
    sys.executable, _common.ROOT = str(root / ".venv" / "bin" / "python"), root
    try:
        return ProxyProcess(upstream, TABLES, collapse=False, cache_bytes=0)
    finally:
        sys.executable, _common.ROOT = saved


async def run(quick: bool, baseline: Path | None = None, only: str | None = None) -> list[Row]:
    stack = Stack()
    rows: list[Row] = []
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text, title text)")
            conn.execute("INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'org-a' ELSE "
                         "'org-b' END, 'title ' || i FROM generate_series(1, 100) i")  # fmt: skip
            conn.execute("CREATE TABLE blob (id int PRIMARY KEY, payload text)")
            conn.execute("INSERT INTO blob SELECT i, repeat(md5(i::text), 3) "
                         "FROM generate_series(1, 120000) i")  # fmt: skip
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        proxy = stack.add(ProxyProcess(engine.url, TABLES, collapse=False, cache_bytes=0))
        proxy_c = stack.add(ProxyProcess(engine.url, TABLES, collapse=True,
                                         cache_bytes=256 * 1024 * 1024))  # fmt: skip
        nginx = stack.add(NginxProcess(engine.port, cache=False))
        nginx_c = stack.add(NginxProcess(engine.port, cache=True))
        floor = stack.add(FloorProcess(engine.port))
        base = stack.add(baseline_proxy(baseline, engine.url)) if baseline else None
        for p in (proxy, proxy_c, nginx, nginx_c, floor, *((base,) if base else ())):
            await p.wait_ready()
        auth = {"Authorization": f"Bearer {token(**CLAIMS)}"}
        kinds = await prepare(pg, proxy, auth)
        fronts = {"direct": None, "proxy": proxy, "proxy+cache": proxy_c, "nginx": nginx,
                  "nginx+cache": nginx_c, "floor": floor}  # fmt: skip
        if base is not None:
            fronts["proxy@base"] = base
        for kind, pairs in kinds.items():
            if only is not None and not any(word in kind for word in only.split(",")):
                continue
            big = kind.startswith("10 MiB")
            follower = any(value == CURSOR_MARK for _, value in pairs)
            rss_before = {a: rss_mib(f.proc.pid) for a, f in fronts.items()
                          if isinstance(f, ProxyProcess)}  # fmt: skip
            direct = proxy.direct_url(engine.url, {"sub": "u1", **CLAIMS}, pairs)
            query = "&".join(f"{k}={v}" for k, v in pairs)
            targets = {
                "direct": (direct, {}),
                "proxy": (f"{proxy.url}/v1/shape?{query}", auth),
                "proxy+cache": (f"{proxy_c.url}/v1/shape?{query}", auth),
                "nginx": (direct.replace(engine.url, nginx.url), {}),
                "nginx+cache": (direct.replace(engine.url, nginx_c.url), {}),
            }
            if not big:
                targets["floor"] = (direct.replace(engine.url, floor.url), {})
            if base is not None:
                targets["proxy@base"] = (f"{base.url}/v1/shape?{query}", auth)
            if big:
                n, conc, rounds, lat_n = (12, 2, 1, 5) if quick else (40, 2, 2, 15)
            else:
                n, conc, rounds, lat_n = (1500, 32, 1, 150) if quick else (4000, 32, 3, 400)
            for url, headers in targets.values():  # warm-up (and fill the caches)
                await load(url, headers, 3 if big else 100, 2, 30, big)
            rps: dict[str, list[float]] = {a: [] for a in targets}
            mbs: dict[str, list[float]] = {a: [] for a in targets}
            front_cpu: dict[str, float] = {a: 0.0 for a in targets}
            eng_cpu: dict[str, float] = {a: 0.0 for a in targets}
            gen_cpu: dict[str, float] = {a: 0.0 for a in targets}
            count: dict[str, int] = {a: 0 for a in targets}
            for _ in range(rounds):
                for arm, (url, headers) in targets.items():
                    front = fronts[arm]
                    f0 = front.cpu() if front else 0.0
                    e0 = engine.cpu()
                    g0 = time.process_time()
                    t0 = time.perf_counter()
                    r, done, nbytes = await load(url, headers, n, conc, 60, big)
                    dt = time.perf_counter() - t0
                    front_cpu[arm] += (front.cpu() if front else 0.0) - f0
                    eng_cpu[arm] += engine.cpu() - e0
                    gen_cpu[arm] += time.process_time() - g0
                    count[arm] += done
                    rps[arm].append(r)
                    mbs[arm].append(nbytes / dt / 1e6)
            lat = {a: await median_latency(u, h, lat_n, big) for a, (u, h) in targets.items()}
            best = {a: max(v) for a, v in rps.items()}
            best_mb = {a: max(v) for a, v in mbs.items()}
            ratio = best["proxy"] / best["direct"]
            label = f"S1 {kind}"
            if big:
                rows.append(Row(label, f"MB/s (c={conc})",
                                [(a, fmt(v)) for a, v in best_mb.items()],
                                f"proxy/direct {ratio:.2f}", ">= 0.8 (anchors S1)",
                                verdict(ratio >= 0.8)))  # fmt: skip
            else:
                rows.append(Row(label, f"req/s (c={conc})",
                                [(a, fmt(v)) for a, v in best.items()],
                                f"proxy/direct {ratio:.2f}", ">= 0.75 (design)",
                                verdict(ratio >= 0.75)))  # fmt: skip
            rows.append(Row(label, "median latency c=1",
                            [(a, fmt(v, "ms")) for a, v in lat.items()],
                            f"proxy adds {lat['proxy'] - lat['direct']:+.2f} ms",
                            "<= 1 ms added (anchors S1)" if not big else "",
                            verdict(lat["proxy"] - lat["direct"] <= 1.0)
                            if not big else ""))  # fmt: skip
            per = {a: front_cpu[a] / max(count[a], 1) * 1e6 for a in targets if fronts[a]}
            eng = {a: eng_cpu[a] / max(count[a], 1) * 1e6 for a in targets}
            gen = {a: gen_cpu[a] / max(count[a], 1) * 1e6 for a in targets}
            # (a few large answers can leave nginx's CPU below the clock tick: no ratio then)
            measured = per["nginx"] > 0
            versus = per["proxy"] / per["nginx"] if measured else float("inf")
            note = f"proxy/nginx {versus:.2f}x" if measured else "nginx CPU below the tick"
            if "floor" in per and measured and per["floor"] > 0:
                note += (f", floor/nginx {per['floor'] / per['nginx']:.2f}x, "
                         f"proxy/floor {per['proxy'] / per['floor']:.2f}x")  # fmt: skip
            if "proxy@base" in per and measured:
                note += f" (base {per['proxy@base'] / per['nginx']:.2f}x)"
            rows.append(Row(label, "front CPU µs/req (engine; load generator µs/req)",
                            [(a, f"{fmt(per.get(a, 0.0))} ({fmt(eng[a])}; {fmt(gen[a])})")
                             for a in targets],
                            note,
                            "" if big else "<= 1.5x nginx (issue 13)",
                            "" if big else verdict(versus <= 1.5)))  # fmt: skip
            if follower:
                # Per proxy process: its RSS before this kind's first request and after its
                # last (old code kept a prepared entry per request: `proxy.http.positions`).
                rss = {a: (before, rss_mib(fronts[a].proc.pid))
                       for a, before in rss_before.items()}  # fmt: skip
                sent = count["proxy"] + 100 + lat_n  # (timed, warm-up, latency)
                rows.append(Row(label, f"proxy RSS MiB before -> after ~{sent:,} requests "
                                "each", [(a, f"{b:.1f} -> {f:.1f}")
                                         for a, (b, f) in rss.items()],
                                "", "", ""))  # fmt: skip
    finally:
        stack.close()
    return rows


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baseline", type=Path, help="another checkout whose proxy runs beside")
    ap.add_argument("--kinds", help="only the kinds of answer naming one of these words "
                    "(comma-separated: live,catch-up,chunk,follower)")  # fmt: skip
    a = ap.parse_args()
    print(machine())
    print(table(asyncio.run(run(a.quick, a.baseline, a.kinds))))

"""S2: live fan-out: N clients on one shape through the proxy, one insert per second.

Run alone: `.venv/bin/python benchmarks/s2_fanout.py [--quick] [--sizes 200,1000,2000]
[--writes N]`.

An engine (default 20 s long-poll hold) on a 500-row shape and a proxy in front of it, both
started afresh for every arm (so nothing an earlier arm abandoned is still being answered),
the proxy with collapsing + cache on (the defaults) or both off. Arms, for each N, in turn:
- `collapse`: N long-polling clients through the collapsing proxy;
- `no-collapse`: N long-polling clients through the proxy with collapsing and cache off;
- `sse`: N SSE clients (`live_sse=true`) through the collapsing proxy: one engine stream
  for the shape, fanned out by the proxy to every client (`proxy/upstream/sse.py`);
- `sse-direct`: the same N SSE clients through the proxy with collapsing off: each client
  holds its own engine stream (the engine writes every change N times). Run at the largest N
  only (its cost grows with N and the point is the side-by-side ratio there).
The clients are a minimal asyncio HTTP/1.1 client (`_common.RawHTTP`) in this process. A
writer inserts one row per second; latency = time the client has the row - time the INSERT
returned (autocommit). Engine requests per write come from the proxy's
`shape_proxy_upstream_requests_total`; CPU and RSS from /proc for proxy and engine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, cast

import orjson
import psycopg
from _common import (
    SYNC_COMMIT,
    EngineProcess,
    Postgres,
    ProxyProcess,
    RawHTTP,
    Row,
    Stack,
    fmt,
    follow,
    pct,
    token,
    verdict,
)

TABLES = {
    "items": {"allow": [{"where": "org_id = {{org_id}}", "columns": ["id", "org_id", "title"]}]}
}


class SseStream(asyncio.Protocol):
    """One SSE connection of a benchmark client, parsed in `data_received`.

    A protocol, not a coroutine per chunk: 2,000 clients each woken per write cost the load
    generator (on the same 2 cores as the system under test) more than the proxy spends
    fanning the write out. Keeps (row id, arrival time) of every insert it sees and the
    offset to resume from (`<global_last_seen_lsn>_0`, as the npm client does); `done` is set
    when the connection ends. Expects a chunked 200 (what the proxy sends).
    """

    def __init__(
        self, path_qs: str, headers: dict[str, str], offset: str, received: list[tuple[str, float]]
    ) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = f"GET {path_qs} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
        self.offset = offset
        self.received = received
        self.failed = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._raw = b""
        self._text = b""
        self._head = False
        self._left = -1  # bytes left in the current chunk; -1: a size line comes next
        self._crlf = 0

    def itself(self) -> SseStream:
        """The protocol factory for `create_connection`: this stream."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's (run_all) is no subclass
        self._transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self._raw + data if self._raw else data
        pos = 0
        if not self._head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._raw = buf
                return
            self._head = True
            if buf[9:12] != b"200" or b"chunked" not in buf[:end].lower():
                self.failed = True
                self._close()
                return
            pos = end + 4
        body = []
        while pos < len(buf):
            if self._left < 0:  # the chunk-size line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:  # the stream ended: reconnect
                    self._close()
                    pos = len(buf)
                    break
                self._left, self._crlf = size, 2
            elif self._left > 0:
                take = min(self._left, len(buf) - pos)
                body.append(buf[pos : pos + take])
                pos += take
                self._left -= take
            else:  # the CRLF after the chunk's data
                take = min(self._crlf, len(buf) - pos)
                pos += take
                self._crlf -= take
                if self._crlf == 0:
                    self._left = -1
        self._raw = buf[pos:]
        if body:
            self._events(b"".join(body), now)

    def _events(self, text: bytes, now: float) -> None:
        events = (self._text + text).split(b"\n\n")
        self._text = events.pop()
        for event in events:
            if not event.startswith(b"data: "):
                continue  # a keep-alive comment
            m = orjson.loads(event[6:])
            headers = m["headers"]
            if "key" in m:
                if headers.get("operation") == "insert":
                    self.received.append((m["value"]["id"], now))
            elif "global_last_seen_lsn" in headers:
                self.offset = f"{headers['global_last_seen_lsn']}_0"

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def arm(pg: Postgres, engine: EngineProcess, proxy: ProxyProcess, auth: dict[str, str],
              n: int, writes: int, sse: bool, first_id: int) -> dict[str, float]:  # fmt: skip
    import aiohttp

    async with aiohttp.ClientSession() as s:
        _, _, handle, offset, _ = await follow(s, f"{proxy.url}/v1/shape?table=items&offset=-1",
                                               auth)  # fmt: skip
    path = "/v1/shape?table=items"
    commits: dict[str, float] = {}
    received: list[tuple[str, float]] = []
    errors = 0
    started = 0
    stop = False
    clients: list[RawHTTP] = []
    sse_streams: list[asyncio.Transport] = []

    def record(body_or_msg: Any, now: float) -> None:
        for m in body_or_msg:
            if "key" in m and m["headers"].get("operation") == "insert":
                received.append((m["value"]["id"], now))

    async def lp_client() -> None:
        nonlocal errors, started
        c = RawHTTP("127.0.0.1", proxy.port)
        clients.append(c)
        off, cursor = offset, "0"
        first = True
        while not stop:
            q = f"{path}&offset={off}&handle={handle}&live=true&cursor={cursor}"
            try:
                if first:
                    started += 1
                    first = False
                status, hdrs, body = await c.get(q, auth)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                if not stop:
                    errors += 1
                    await asyncio.sleep(0.2)
                continue
            now = time.time()
            if status != 200:
                errors += 1
                await asyncio.sleep(0.2)
                continue
            off, cursor = hdrs["electric-offset"], hdrs.get("electric-cursor", "0")
            if b'"operation"' in body:
                record(orjson.loads(body), now)

    async def sse_client() -> None:
        nonlocal errors, started
        loop = asyncio.get_running_loop()
        off = offset
        first = True
        while not stop:
            q = f"{path}&offset={off}&handle={handle}&live=true&live_sse=true&cursor=0"
            stream = SseStream(q, auth, off, received)
            try:
                transport, _ = await loop.create_connection(stream.itself, "127.0.0.1", proxy.port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.2)
                continue
            sse_streams.append(transport)
            if first:
                started += 1
                first = False
            try:
                await stream.done
            finally:
                transport.close()
            off = stream.offset
            if stream.failed and not stop:
                errors += 1
                await asyncio.sleep(0.2)

    proxy_rss0, engine_rss0 = proxy.rss(), engine.rss()
    tasks = [asyncio.create_task(sse_client() if sse else lp_client()) for _ in range(n)]
    deadline = time.monotonic() + 30
    while started < n and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0 + n / 1000)  # every client is now holding its request
    proxy_rss1, engine_rss1 = proxy.rss(), engine.rss()
    up0 = await proxy.upstream_requests()
    p0, e0, g0 = proxy.cpu(), engine.cpu(), time.process_time()
    async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
        await conn.execute(SYNC_COMMIT)
        t_next = time.monotonic()
        for i in range(writes):
            row = first_id + i
            commits[str(row)] = time.time()  # sent: the client may see it before we resume
            await conn.execute("INSERT INTO items VALUES (%s, 'org-a', 'fan-out')", (row,))
            t_next += 1.0
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    await asyncio.sleep(1.0)  # let the last write arrive everywhere
    p1, e1, g1 = proxy.cpu(), engine.cpu(), time.process_time()
    up1 = await proxy.upstream_requests()
    proxy_rss2, engine_rss2 = proxy.rss(), engine.rss()
    stop = True
    for c in clients:
        c.close()
    for transport in sse_streams:
        transport.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.5)  # let proxy and engine drop the abandoned requests
    lat = [t - commits[row] for row, t in received if row in commits]
    return {
        "req_per_write": (up1 - up0) / writes,
        "p50": pct(lat, 0.5) * 1000,
        "p99": pct(lat, 0.99) * 1000 if len(lat) >= n * writes * 0.99 else float("inf"),
        "delivered": len(lat) / (n * writes),
        "errors": errors,
        "proxy_cpu_ms": (p1 - p0) / writes * 1000,
        "engine_cpu_ms": (e1 - e0) / writes * 1000,
        "loadgen_cpu_ms": (g1 - g0) / writes * 1000,
        "proxy_rss": max(proxy_rss1, proxy_rss2),
        "engine_rss": max(engine_rss1, engine_rss2),
        "proxy_kb_per_held": (proxy_rss1 - proxy_rss0) * 1024 / n,
        "engine_kb_per_held": (engine_rss1 - engine_rss0) * 1024 / n,
    }


#: name: (collapse and cache on, SSE clients)
ARMS = {
    "collapse": (True, False),
    "no-collapse": (False, False),
    "sse": (True, True),
    "sse-direct": (False, True),
}


def _sse_rows(n: int, c: dict[str, float], d: dict[str, float] | None) -> list[Row]:
    """SSE collapsed (`sse`) against one engine stream per client (`sse-direct`)."""
    arms = [("sse", c)] + ([("sse-direct", d)] if d else [])
    label = f"S2 fan-out N={n:,} SSE"
    judged = n == 2000
    cpu_ratio = p99_ratio = ""
    if d:
        cpu_ratio = f"direct/collapsed {d['engine_cpu_ms'] / max(c['engine_cpu_ms'], 1e-9):.0f}x"
        p99_ratio = f"direct/collapsed p99 {d['p99'] / max(c['p99'], 1e-9):.1f}x"
    return [
        Row(
            label,
            "engine CPU ms per write",
            [(a, fmt(r["engine_cpu_ms"])) for a, r in arms],
            cpu_ratio,
            "sse <= 5 ms at N=2,000 (issue 13)" if judged else "",
            verdict(c["engine_cpu_ms"] <= 5) if judged else "",
        ),
        Row(
            label,
            "p50 / p99 commit→client",
            [(a, f"{fmt(r['p50'])} / {fmt(r['p99'], 'ms')}") for a, r in arms],
            p99_ratio,
            "sse p99 <= 100 ms at N=2,000 (issue 13)" if judged else "",
            verdict(c["p99"] <= 100) if judged else "",
        ),
        Row(
            label,
            "engine requests per write / CPU ms per write: proxy, load generator",
            [
                (
                    a,
                    f"{fmt(r['req_per_write'])} / {fmt(r['proxy_cpu_ms'])}, "
                    f"{fmt(r['loadgen_cpu_ms'])}",
                )
                for a, r in arms
            ],
        ),
        Row(
            label,
            "RSS MiB proxy / engine (KB per held stream, proxy)",
            [
                (
                    a,
                    f"{fmt(r['proxy_rss'])} / {fmt(r['engine_rss'])} "
                    f"({fmt(r['proxy_kb_per_held'])})",
                )
                for a, r in arms
            ],
        ),
    ]


async def run(
    quick: bool,
    sizes: list[int] | None = None,
    only: list[str] | None = None,
    writes: int | None = None,
) -> list[Row]:
    sizes = sizes or ([200, 1000] if quick else [200, 1000, 2000])
    writes = writes or (5 if quick else 10)
    stack = Stack()
    rows: list[Row] = []
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, org_id text, title text)")
            conn.execute("INSERT INTO items SELECT i, 'org-a', 'title ' || i "
                         "FROM generate_series(1, 500) i")  # fmt: skip
        auth = {"Authorization": f"Bearer {token(org_id='org-a')}"}
        # name: (collapse and cache on, SSE clients)
        arms = dict(ARMS)
        if only:
            arms = {name: arm_ for name, arm_ in arms.items() if name in only}
        results: dict[int, dict[str, dict[str, float]]] = {}
        first_id = 1_000_000
        for n in sizes:
            results[n] = {}
            for name, (collapse, sse) in arms.items():
                if name == "sse-direct" and n != sizes[-1] and not only:
                    continue
                # Fresh engine and proxy per arm: requests abandoned by the previous arm's
                # clients (held long-polls, SSE streams the engine only drops on its next
                # write) must not be answered on this arm's time, and RSS per held request
                # is only clean in a fresh process.
                arm_stack = Stack()
                try:
                    engine = arm_stack.add(EngineProcess(pg.url))
                    await engine.wait_ready()
                    px = arm_stack.add(ProxyProcess(
                        engine.url, TABLES, collapse=collapse,
                        cache_bytes=64 * 1024 * 1024 if collapse else 0))  # fmt: skip
                    await px.wait_ready()
                    results[n][name] = await arm(pg, engine, px, auth, n, writes, sse, first_id)
                finally:
                    arm_stack.close()
                first_id += 1000
                r = results[n][name]
                print(f"    S2 N={n} {name}: p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms "
                      f"req/write {r['req_per_write']:.1f} delivered {r['delivered']:.3f} "
                      f"errors {r['errors']}", flush=True)  # fmt: skip
        for n, res in results.items():
            if "collapse" not in res or "no-collapse" not in res:
                rows.append(Row(f"S2 fan-out N={n:,}", "p50 / p99 commit→client",
                                [(a, f"{fmt(r['p50'])} / {fmt(r['p99'], 'ms')}")
                                 for a, r in res.items()], "", "", ""))  # fmt: skip
                continue
            c, o = res["collapse"], res["no-collapse"]
            label = f"S2 fan-out N={n:,}"
            fresh = n == sizes[0]  # the memory target is judged once, at the first size
            rows.append(Row(label, "p50 / p99 commit→client",
                            [(a, f"{fmt(r['p50'])} / {fmt(r['p99'], 'ms')}")
                             for a, r in res.items()],
                            f"no-collapse/collapse p99 {o['p99'] / c['p99']:.1f}x",
                            "collapse p99 <= 250 ms at N=2,000 (design)" if n == 2000 else "",
                            verdict(c["p99"] <= 250) if n == 2000 else ""))  # fmt: skip
            rows.append(Row(label, "engine requests per write",
                            [(a, fmt(r["req_per_write"])) for a, r in res.items()],
                            f"no-collapse/collapse "
                            f"{o['req_per_write'] / max(c['req_per_write'], 1e-9):.0f}x",
                            "collapse <= 2 (design)",
                            verdict(c["req_per_write"] <= 2)))  # fmt: skip
            cpu_ratio = (o["proxy_cpu_ms"] + o["engine_cpu_ms"]) / max(
                c["proxy_cpu_ms"] + c["engine_cpu_ms"], 1e-9
            )
            rows.append(Row(label, "CPU ms per write: proxy / engine",
                            [(a, f"{fmt(r['proxy_cpu_ms'])} / {fmt(r['engine_cpu_ms'])}")
                             for a, r in res.items()],
                            f"no-collapse/collapse proxy+engine {cpu_ratio:.1f}x",
                            "", ""))  # fmt: skip
            rows.append(Row(label, "RSS MiB proxy / engine (KB per held request, proxy)",
                            [(a, f"{fmt(r['proxy_rss'])} / {fmt(r['engine_rss'])} "
                                 f"({fmt(r['proxy_kb_per_held'])})") for a, r in res.items()],
                            "", "proxy <= 8 KB per held long-poll, default config "
                                "(collapse) (issue 13; < 20 KB design)" if fresh else "",
                            verdict(c["proxy_kb_per_held"] <= 8) if fresh else ""))  # fmt: skip
            delivered = min(r["delivered"] for r in res.values())
            if delivered < 0.999 or any(r["errors"] for r in res.values()):
                rows.append(Row(label, "delivered / client errors",
                                [(a, f"{r['delivered'] * 100:.1f}% / {r['errors']:.0f}")
                                 for a, r in res.items()], "", "100% / 0",
                                verdict(delivered >= 0.999)))  # fmt: skip
        for n, res in results.items():
            if "sse" in res:
                rows.extend(_sse_rows(n, res["sse"], res.get("sse-direct")))
        largest = {a: max([n for n in sizes if a in results[n] and results[n][a]["p99"] < 1000],
                          default=0)
                   for a in arms}  # fmt: skip
        rows.append(
            Row(
                "S2 fan-out",
                f"largest N (of {', '.join(map(str, sizes))}) with p99 < 1 s",
                [(a, f"{v:,}") for a, v in largest.items()],
                "",
                "reported (design)",
                "",
            )
        )
    finally:
        stack.close()
    return rows


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="")
    ap.add_argument("--arms", default="", help="comma-separated subset of " + ",".join(ARMS))
    ap.add_argument("--writes", type=int, default=None, help="writes per arm (1 a second)")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else None
    only = a.arms.split(",") if a.arms else None
    print(machine())
    print(table(asyncio.run(run(a.quick, sizes, only, a.writes))))

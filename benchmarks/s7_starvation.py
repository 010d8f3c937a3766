"""S7: one user holding 1,000 distinct long-polls against another user's initial sync.

Run alone: `.venv/bin/python benchmarks/s7_starvation.py [--quick]`.

Before per-principal limits, one token holding 15 live long-polls with distinct `cache-buster`
values on a proxy with `pool_size: 10` delayed another user's initial sync from ~10 ms to
1.7 s: every pooled engine connection was held by the abuser for the engine's 20 s hold.

One engine (20 s long-poll hold, as shipped) and a proxy with `pool_size: 512` and the default
`limits:` (64 open engine requests per principal). The victim (its own token) runs initial
syncs one after another, each with a fresh `cache-buster` so it really reaches the engine
(a fresh client of a shape another client already fetched would be a cache hit and prove
nothing). Arms, measured in turn in one run:
- `idle`: nobody else is using the proxy;
- `abused`: another token keeps 1,000 distinct live long-polls open (distinct `cache-buster`
  values, so none collapse), re-polling as soon as one returns and retrying 429/503s after
  their `Retry-After`, as Electric's client does;
- `abused, no limits` (full run only): the same against a proxy whose limits are raised out of
  the way, to show what the limits prevent (the victim waits for a pooled connection: 503s
  after the 5 s pool wait, retried). Two victim syncs, each cut off at `UNLIMITED_CAP`
  (10 s) and then reported as ">10 s": waiting them out (minutes) shows nothing more.
The victim stays within its own limits (`VICTIM_SYNCS_PER_S`: the fairness promise is to a
user who does), in both arms alike. The target: the victim's initial-sync p99 under abuse
within 2x of its idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import time
from collections import Counter
from typing import Any

import psycopg
from _common import (
    EngineProcess,
    Postgres,
    ProxyProcess,
    RawHTTP,
    Row,
    Stack,
    fmt,
    pct,
    token,
    verdict,
)

from proxy.limits.config import LimitsConfig

TABLES = {"items": {"allow": [{"all_rows": True}]}}
POOL_SIZE = 512
ABUSERS = 1000
#: In the no-limits arm a sync can wait for minutes: each is cut off (and counted) at this,
#: and the arm is reported as ">UNLIMITED_CAP s" (it only shows what the limits prevent).
UNLIMITED_CAP = 10.0
#: Victim syncs in the no-limits arm (each may take the whole cap).
UNLIMITED_SYNCS = 2
NO_LIMITS = {
    "max_concurrent": 1_000_000,
    "rate": 1e9,
    "burst": 1_000_000_000,
    "max_held": 1_000_000,
    "new_shape_rate": 1e9,
    "new_shape_burst": 1_000_000_000,
}
#: The defaults a proxy gets without a `limits:` section.
SHIPPED_LIMITS = LimitsConfig().model_dump()
#: The victim stays within its own limits: an initial sync of this shape is two engine
#: requests (the snapshot, then the up-to-date answer; both `private`, so neither is served
#: from the proxy's cache), so it starts at most this many syncs per second: 80% of its rate.
#: Back to back, 500 syncs were ~1,000 engine requests in 3-5 s, past the 500-request burst
#: and 100/s: ~1% of them got the victim's own 429 `rate_limited` (Retry-After 1 s), with
#: or without an abuser; the idle arm, run in halves of 250 with a pause between, fitted in
#: the burst. That was the "victim p99 ~1 s under abuse" of the full runs until 2026-12-03.
VICTIM_SYNCS_PER_S = 0.8 * SHIPPED_LIMITS["rate"] / 2


async def initial_sync(client: RawHTTP, auth: dict[str, str], n: int) -> tuple[float, int]:
    """One initial sync (offset=-1 to up-to-date); (seconds, 429/503 retries)."""
    t0 = time.perf_counter()
    retries = 0
    query = f"offset=-1&cache-buster=v{n}"
    while True:
        status, headers, _ = await client.get(f"/v1/shape?table=items&{query}", auth)
        if status in (429, 503):
            retries += 1
            await asyncio.sleep(float(headers.get("retry-after", "1")))
            continue
        if status != 200:
            raise RuntimeError(f"victim got {status}")
        if "electric-up-to-date" in headers:
            return time.perf_counter() - t0, retries
        query = f"offset={headers['electric-offset']}&handle={headers['electric-handle']}"


async def victim(port: int, n: int, cap: float = 60.0) -> tuple[list[float], int]:
    """`n` initial syncs one after another, starting at most `VICTIM_SYNCS_PER_S` a second;
    one that takes longer than `cap` counts as `cap`."""
    client = RawHTTP("127.0.0.1", port)
    auth = {"Authorization": f"Bearer {token(sub='victim')}"}
    times: list[float] = []
    retries = 0
    started = -math.inf
    try:
        for i in range(n):
            await asyncio.sleep(max(0.0, started + 1 / VICTIM_SYNCS_PER_S - time.perf_counter()))
            started = time.perf_counter()
            n_id = int(time.time() * 1000) * 1000 + i
            try:
                took, r = await asyncio.wait_for(initial_sync(client, auth, n_id), cap)
            except TimeoutError:
                took, r = cap, 0
                client.close()  # its connection was mid-request
                client = RawHTTP("127.0.0.1", port)
            times.append(took)
            retries += r
    finally:
        client.close()
    return times, retries


class Abuser:
    """1,000 long-polls on distinct cache-busters from one token, kept open (in-process part)."""

    def __init__(self, port: int, handle: str, offset: str) -> None:
        self.port, self.handle, self.offset = port, handle, offset
        self.auth = {"Authorization": f"Bearer {token(sub='mallory')}"}
        self.statuses: Counter[int] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.started = 0
        self.all_sent = asyncio.Event()  # every one of the polls was sent at least once

    async def _poll_forever(self, i: int) -> None:
        client = RawHTTP("127.0.0.1", self.port)
        n = 0
        try:
            while True:
                n += 1
                path = (f"/v1/shape?table=items&offset={self.offset}&handle={self.handle}"
                        f"&live=true&cursor=&cache-buster=m{i}-{n}")  # fmt: skip
                self.started += 1
                if self.started >= ABUSERS:
                    self.all_sent.set()
                try:
                    status, headers, _ = await client.get(path, self.auth)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    await asyncio.sleep(0.5)
                    continue
                self.statuses[status] += 1
                if status in (429, 503):
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
        finally:
            client.close()

    async def run(self, sent: Any, stop: Any) -> None:
        """Poll until `stop` (a multiprocessing Event) is set; set `sent` once all are out."""
        self.tasks = [asyncio.create_task(self._poll_forever(i)) for i in range(ABUSERS)]
        await self.all_sent.wait()
        # Settled: every poll is out and no answer came for a second (the refused ones wait
        # for their Retry-After, the rest are held by the engine).
        answered = -1
        for _ in range(600):
            await asyncio.sleep(1.0)
            if sum(self.statuses.values()) == answered:
                break
            answered = sum(self.statuses.values())
        sent.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _abuser_process(port: int, handle: str, offset: str, sent: Any, stop: Any, out: Any) -> None:
    """The abuser's own process: its client work must not delay the victim's event loop."""
    abuser = Abuser(port, handle, offset)
    asyncio.run(abuser.run(sent, stop))
    out.send(dict(abuser.statuses))


async def _live_position(port: int) -> tuple[str, str]:
    client = RawHTTP("127.0.0.1", port)
    auth = {"Authorization": f"Bearer {token(sub='mallory')}"}
    query = "offset=-1"
    try:
        while True:
            status, headers, _ = await client.get(f"/v1/shape?table=items&{query}", auth)
            assert status == 200, status
            handle, offset = headers["electric-handle"], headers["electric-offset"]
            if "electric-up-to-date" in headers:
                return handle, offset
            query = f"offset={offset}&handle={handle}"
    finally:
        client.close()


async def _abused(
    proxy: ProxyProcess, syncs: int, cap: float = 60.0
) -> tuple[list[float], int, Counter[int]]:
    port = int(proxy.url.rsplit(":", 1)[1])
    handle, offset = await _live_position(port)
    mp = multiprocessing.get_context("spawn")  # not fork: this process runs an event loop
    sent, stop = mp.Event(), mp.Event()
    receive, send = mp.Pipe(duplex=False)
    child = mp.Process(
        target=_abuser_process, args=(port, handle, offset, sent, stop, send), daemon=True
    )
    child.start()
    try:
        # Let every one of the 1,000 polls reach the proxy and settle (held, or refused).
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, sent.wait, 120):
            raise RuntimeError("the abuser did not get its polls out")
        times, retries = await victim(port, syncs, cap)
    finally:
        stop.set()
    statuses: Counter[int] = Counter()
    if await loop.run_in_executor(None, receive.poll, 30):
        statuses.update(receive.recv())
    await loop.run_in_executor(None, child.join, 10)
    if child.is_alive():
        child.kill()
    return times, retries, statuses


async def run(quick: bool) -> list[Row]:
    syncs = 200 if quick else 500
    stack = Stack()
    rows: list[Row] = []
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
            conn.execute("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 200) i")
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        proxy = stack.add(ProxyProcess(engine.url, TABLES, collapse=True, cache_bytes=64 << 20,
                                       extra={"upstream": {"pool_size": POOL_SIZE},
                                              "limits": SHIPPED_LIMITS}))  # fmt: skip
        await proxy.wait_ready()
        port = int(proxy.url.rsplit(":", 1)[1])
        await victim(port, 10)  # warm-up: the shape exists, connections are open
        # Idle half before and half after the abuse, so a machine shared with other work
        # drifting over the run weighs on both arms alike.
        idle, idle_retries = await victim(port, syncs // 2)
        cpu0, t0 = proxy.cpu(), time.perf_counter()
        abused, retries, statuses = await _abused(proxy, syncs)
        abused_cpu = (proxy.cpu() - cpu0) / (time.perf_counter() - t0)
        rest, rest_retries = await victim(port, syncs - syncs // 2)
        idle += rest
        idle_retries += rest_retries
        arms = [("idle", f"{fmt(pct(idle, 0.99) * 1000, 'ms')} ({idle_retries})"),
                ("abused", f"{fmt(pct(abused, 0.99) * 1000, 'ms')} ({retries})")]  # fmt: skip
        ratio = pct(abused, 0.99) / pct(idle, 0.99)
        print(f"    victim initial-sync p50 idle {pct(idle, 0.5) * 1000:.1f} ms, "
              f"abused {pct(abused, 0.5) * 1000:.1f} ms; p99 idle {pct(idle, 0.99) * 1000:.1f}"
              f" ms, abused {pct(abused, 0.99) * 1000:.1f} ms; victim retries {retries}; "
              f"abuser answers {dict(sorted(statuses.items()))}; proxy CPU while abused "
              f"{abused_cpu * 100:.0f}% of a core", flush=True)  # fmt: skip
        if not quick:
            open_proxy = stack.add(ProxyProcess(
                engine.url, TABLES, collapse=True, cache_bytes=64 << 20,
                extra={"upstream": {"pool_size": POOL_SIZE}, "limits": NO_LIMITS}))  # fmt: skip
            await open_proxy.wait_ready()
            unlimited, u_retries, u_statuses = await _abused(
                open_proxy, UNLIMITED_SYNCS, cap=UNLIMITED_CAP
            )
            worst = pct(unlimited, 0.99)
            shown = f">{UNLIMITED_CAP:.0f} s" if worst >= UNLIMITED_CAP else fmt(worst * 1000, "ms")
            arms.append(("abused, no limits", shown))
            print(f"    no limits: victim syncs {[round(t, 2) for t in unlimited]} s, "
                  f"retries {u_retries}, abuser answers {dict(sorted(u_statuses.items()))}",
                  flush=True)  # fmt: skip
        rows.append(Row("S7 starvation",
                        f"victim initial-sync p99 ({syncs} syncs, at most "
                        f"{VICTIM_SYNCS_PER_S:g} a second; 429/503 retries)", arms,
                        f"{ratio:.2f}x abused/idle", "≤ 2x", verdict(ratio <= 2.0)))  # fmt: skip
    finally:
        stack.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    from _common import table

    print(table(asyncio.run(run(args.quick))))


if __name__ == "__main__":
    main()

"""Engine CPU per replicated change, with 10, 1,000 and 100,000 equality shapes registered.

Real XLogData messages are captured once from a real slot (inserts into `events`), then fed
through the engine's own path — `Replicator.handle_batch`: decode (only what routing needs
when no shape can want the row), transaction assembly, routing, change conversion, JSON
encoding and the append to the shape's log file — in this process, in batches of 300, timed
with `time.process_time` (best of 3 passes). Network reads and fsync are left out: S4
measures them.

Each shape is `user_id = k`. "matches one" changes carry a user_id some shape has; "matches
none" changes carry one no shape has. Targets (../shared/design.md): <= 100 µs and <= 10 µs
per change, flat from 10 to 100k shapes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
from _common import Postgres, machine
from _shapes import LOG_LIMIT, equality_shapes, replicator

from sync_engine.log.files import ShapeLog
from sync_engine.pg.catalog import TableInfo, load_table
from sync_engine.replication.slot import ensure_slot
from sync_engine.replication.stream import XLOGDATA_HEADER, ReplicationStream

CHANGES = 20_000
COMMIT, RELATION = ord("C"), ord("R")
BATCH = 300


async def capture(url: str, user_ids: list[int]) -> list[bytes]:
    """XLogData of one transaction per change (Begin, Insert, Commit), as the slot sends them;
    the pgoutput payload starts at byte `XLOGDATA_HEADER`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION bench FOR TABLE events")
    await ensure_slot(url, "bench")
    with psycopg.connect(url, autocommit=True) as conn:
        for i, uid in enumerate(user_ids):
            conn.execute("INSERT INTO events VALUES (%s, %s, 'some payload text')", (i + 1, uid))
    stream = ReplicationStream(url, "bench", "bench")
    await stream.start()
    out: list[bytes] = []
    while sum(1 for m in out if m[XLOGDATA_HEADER] == COMMIT) < len(user_ids):
        out += await stream.read_raw(timeout=5)
    await stream.close()
    return out


async def run(payloads: list[bytes], table: TableInfo, n_shapes: int, data: Path) -> float:
    registry, router = equality_shapes(table, n_shapes, data, logs=1, past_xmax=False)
    rep = replicator(registry, router)
    # The Relation message comes first in the stream; feed it outside the timing.
    rep.handle_batch([m for m in payloads if m[XLOGDATA_HEADER] == RELATION])
    body = [m for m in payloads if m[XLOGDATA_HEADER] != RELATION]
    changes = sum(1 for m in body if m[XLOGDATA_HEADER] == ord("I"))
    best = float("inf")
    for _ in range(3):
        shape0 = registry.by_handle["0"] if n_shapes else None
        if shape0 is not None:  # a fresh log: a replayed LSN would be skipped
            shape0.log = ShapeLog(data / "shapes" / f"0-{_}", LOG_LIMIT)
            shape0.log.create()
        spent = 0.0
        for i in range(0, len(body), BATCH):
            t0 = time.process_time()
            rep.handle_batch(body[i : i + BATCH])
            spent += time.process_time() - t0
            # Publish the batch as the stream loop does, untimed (fsync=False: S4
            # measures the flush).
            if rep.unflushed:
                await rep.flush()
        best = min(best, spent)
    return best / changes * 1e6


async def main() -> None:
    pg = Postgres()
    data = Path(tempfile.mkdtemp(prefix="shapegate-bench-rep-"))
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, user_id int, payload text)")
            conn.execute("ALTER TABLE events REPLICA IDENTITY FULL")
        half = CHANGES // 2
        # alternate: user 0 (has a shape) and user -1 (has none)
        payloads = await capture(pg.url, [0] * half + [-1] * half)
        async with await psycopg.AsyncConnection.connect(pg.url) as conn:
            table = await load_table(conn, "public", "events")
        assert table is not None  # (the benchmark made it)
        split = 0
        commits = 0
        for i, p in enumerate(payloads):
            if p[XLOGDATA_HEADER] == COMMIT:
                commits += 1
                if commits == half:
                    split = i + 1
                    break
        rel = next(p for p in payloads if p[XLOGDATA_HEADER] == RELATION)
        one, none = payloads[:split], [rel, *payloads[split:]]
        print(f"machine: {machine()}")
        print("engine CPU per replicated change (decode + route + convert + encode + append)")
        print(f"  {'shapes':>8}  {'matches one':>12}  {'matches none':>13}")
        for n in (10, 1_000, 100_000):
            d = data / str(n)
            a = await run(one, table, n, d)
            b = await run(none, table, n, d)
            print(f"  {n:>8,}  {a:9.1f} µs  {b:10.1f} µs")
            shutil.rmtree(d, ignore_errors=True)
        print("  targets: matches one <= 100 µs, matches none <= 10 µs, flat in the shape count")
    finally:
        pg.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    import uvloop

    uvloop.install()  # as the engine runs
    asyncio.run(main())

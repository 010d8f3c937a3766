"""S4: replication backlog drain: the engine's replication path against `pg_recvlogical`.

Run alone: `.venv/bin/python benchmarks/s4_backlog.py [--quick] [--changes N]`.

All consumers get their own pgoutput slot on one publication (`events`), created before any
change, so each drains the very same WAL. M single-row transactions are committed (a
server-side procedure, COMMIT per row) with nobody reading; then each consumer drains its
slot in turn, timed from start until it has processed the last commit:
- `pg_recvlogical --start -o proto_version=1 -o publication_names=... -f /dev/null
  --endpos <end LSN>` (Postgres decoding + the wire, no client work: the ceiling);
- the engine's replication path with 0, 1,000 and 100,000 shapes `user_id = k`, in this
  process: the engine's own `ReplicationStream.read_raw` and `Replicator.handle_batch`
  (decoding what routing needs, transaction assembly, routing, change conversion, JSON
  encoding, append to the shape log files) and its flush-then-ack step per batch, i.e. the
  body of `Replicator._consume` without fsync (the engine's `--no-fsync`). Shapes are
  registered in-process as in replication_cpu.py (creating 100,000 shapes over HTTP would
  take a snapshot query each).
Two mixes, each drained by every consumer: `match` (change i has user_id i % 1000, so with
1k/100k shapes each change matches exactly one shape) and `none` (user_id -1: no shape).
With 0 shapes the table is still published: the row is decoded and the router misses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from _common import PG_BIN, Postgres, Row, Stack, fmt, remove_later, verdict
from _shapes import equality_shapes, replicator

from sync_engine.pg.catalog import TableInfo, load_table
from sync_engine.replication.replicator import Replicator
from sync_engine.replication.stream import ReplicationStream

PUB = "bench_pub"
FULL_COUNTS = (0, 1_000, 100_000)
QUICK_COUNTS = (0, 1_000, 10_000)  # registering 100k shapes alone takes ~25 s


def build_replicator(table: TableInfo, n_shapes: int, data: Path) -> Replicator:
    # logs: the shapes the `match` mix appends to
    return replicator(*equality_shapes(table, n_shapes, data, logs=1000, past_xmax=True))


async def drain(url: str, slot: str, rep: Replicator, commits: int) -> tuple[float, float]:
    """`Replicator._consume`'s loop until `commits` commits are handled: (wall s, CPU s)."""
    stream = ReplicationStream(url, slot, PUB)
    t0, c0 = time.perf_counter(), time.process_time()
    await stream.start()
    first = rep.transactions_seen
    try:
        while rep.transactions_seen - first < commits:
            batch = await stream.read_raw(timeout=5.0)
            last_end = rep.handle_batch(batch)
            if rep.unflushed:
                await rep.flush()
            if last_end:
                stream.ack(last_end)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        await stream.send_status()
        await stream.close()


def recvlogical(url: str, slot: str, endpos: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [str(PG_BIN / "pg_recvlogical"), "-d", url, "--slot", slot, "--start", "--no-loop",
         "-o", "proto_version=1", "-o", f"publication_names={PUB}", "-f", "/dev/null",
         "-E", endpos, "-s", "1"],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - t0


GEN = """
CREATE PROCEDURE gen(first bigint, n int, matching bool) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN first .. first + n - 1 LOOP
    INSERT INTO events VALUES (i, CASE WHEN matching THEN (i % 1000)::int ELSE -1 END,
                               'some payload text of a change');
    COMMIT;
  END LOOP;
END $$;
"""


async def run(quick: bool, changes: int | None = None) -> list[Row]:
    m = changes or (20_000 if quick else 200_000)
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    big = f"{counts[-1]:,} shapes"
    stack = Stack()
    data = Path(tempfile.mkdtemp(prefix="shapegate-bench-s4-"))
    rows: list[Row] = []
    try:
        pg = stack.add(Postgres())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, user_id int, payload text)")
            conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE events")
            conn.execute(GEN)
            slots = ["recv", *(f"s{n}" for n in counts)]
            for slot in slots:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        async with await psycopg.AsyncConnection.connect(pg.url) as aconn:
            table = await load_table(aconn, "public", "events")
        assert table is not None  # (the benchmark made it)
        t0 = time.perf_counter()
        reps = {n: build_replicator(table, n, data / str(n)) for n in counts}
        register_s = time.perf_counter() - t0
        results: dict[str, dict[str, tuple[float, float, float]]] = {}
        first = 1
        for mix in ("match", "none"):
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("CALL gen(%s, %s, %s)", (first, m, mix == "match"))
                endpos = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            first += m
            res: dict[str, tuple[float, float, float]] = {}
            p0 = pg.cpu()
            wall = recvlogical(pg.url, "recv", str(endpos))
            res["pg_recvlogical"] = (wall, 0.0, pg.cpu() - p0)
            for n in counts:
                p0 = pg.cpu()
                wall, cpu = await drain(pg.url, f"s{n}", reps[n], m)
                res[f"{n:,} shapes"] = (wall, cpu, pg.cpu() - p0)
            results[mix] = res
            for name, (w, c, p) in res.items():
                print(f"    S4 {mix} {name}: {m / w:,.0f} changes/s, {c / m * 1e6:.1f} µs CPU "
                      f"per change (Postgres {p:.1f} s)", flush=True)  # fmt: skip
        for mix, res in results.items():
            label = f"S4 backlog drain, {m:,} 1-row txns, {mix}"
            rate = {k: m / w for k, (w, _, _) in res.items()}
            ceiling = rate["pg_recvlogical"]
            eng1k, engbig = rate["1,000 shapes"], rate[big]
            target = 5000 if mix == "match" else 30000
            rows.append(Row(label, "changes/s",
                            [(k, fmt(v)) for k, v in rate.items()],
                            f"engine({big})/recvlogical {engbig / ceiling:.2f}, "
                            f"{counts[-1] // 1000}k/1k shapes {engbig / eng1k:.2f}",
                            f">= {target:,}/s (anchors S4); flat: >= 0.9",
                            verdict(engbig >= target and engbig / eng1k >= 0.9)))  # fmt: skip
            cpu_us = {k: c / m * 1e6 for k, (_, c, _) in res.items() if k != "pg_recvlogical"}
            limit = 100 if mix == "match" else 10
            worst = max(v for k, v in cpu_us.items() if k != "0 shapes")
            rows.append(Row(label, "engine CPU µs per change (this process, incl. reading)",
                            [(k, fmt(v)) for k, v in cpu_us.items()],
                            f"{counts[-1] // 1000}k/1k shapes "
                            f"{cpu_us[big] / cpu_us['1,000 shapes']:.2f}",
                            f"<= {limit} µs, flat (design)", verdict(worst <= limit)))  # fmt: skip
        what = f"{sum(counts):,} shapes registered in-process"
        rows.append(Row("S4 backlog drain", "setup", [(what, fmt(register_s, "s"))]))
    finally:
        stack.close()
        remove_later(data)  # at exit: see _common.remove_later
    return rows


if __name__ == "__main__":
    from _common import machine
    from _common import table as render

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--changes", type=int, default=None)
    a = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        uvloop.install()  # as run_all.py does, and as the engine runs
    print(machine())
    print(render(asyncio.run(run(a.quick, a.changes))))
    os._exit(0)

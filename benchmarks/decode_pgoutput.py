"""Micro benchmark: pgoutput decode cost per message, on real payloads.

Captures ~200k real pgoutput payloads from a throwaway PostgreSQL (100k inserts of narrow
rows in one transaction, then 100k updates with REPLICA IDENTITY FULL, so old and new
tuples) through ``ReplicationStream``, then times ``pgoutput.decode`` over them (best of
several passes) and prints µs per message, overall and per message type, and for rows also
``pgoutput.read_row`` (how the replicator reads a row some shape may want, without the
message object). It also prints the catch-up read rate of the stream itself.

    .venv/bin/python benchmarks/decode_pgoutput.py                 # own throwaway cluster
    .venv/bin/python benchmarks/decode_pgoutput.py --dsn postgresql://...   # existing server

A throwaway cluster comes from ``scripts/dev-postgres start <tmpdir> <port>`` and is stopped
and removed at the end. With ``--dsn`` a scratch database is created and dropped there.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_engine.replication.pgoutput import Commit, decode, read_row  # noqa: E402
from sync_engine.replication.slot import ensure_slot  # noqa: E402
from sync_engine.replication.stream import ReplicationStream  # noqa: E402

SLOT = "bench_decode"
PUB = "bench_decode_pub"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


async def capture(dsn: str, rows: int) -> tuple[list[bytes], float]:
    """Load the changes, then read them back; returns the payloads and the read time."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, title text, n int)")
        await conn.execute("ALTER TABLE items REPLICA IDENTITY FULL")
        await conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE items").format(sql.Identifier(PUB))
        )
    await ensure_slot(dsn, SLOT)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO items SELECT g, 'title ' || g, g %% 1000 FROM generate_series(1, %s) g",
            (rows,),
        )
        await conn.commit()
        await conn.execute("UPDATE items SET n = n + 1, title = title || ' (edited)'")
        await conn.commit()

    payloads: list[bytes] = []
    commits = 0
    async with ReplicationStream(dsn, SLOT, PUB) as stream:
        t0 = time.perf_counter()
        while commits < 2:
            batch = await stream.read_batch(timeout=60)
            if not batch:
                raise RuntimeError("no replication data within 60 s")
            for _, payload in batch:
                payloads.append(payload)
                if payload[0] == ord("C"):
                    commits += 1
        read_s = time.perf_counter() - t0
        last = decode(payloads[-1])
        assert isinstance(last, Commit)
        stream.ack(last.end_lsn)
    return payloads, read_s


def time_decode(payloads: list[bytes], repeat: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of `repeat` passes decoding every payload once.

    CPU time is reported too because the machine may be shared: it is much less
    disturbed by other processes than wall time.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in payloads:
            decode(p)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def time_read_row(payloads: list[bytes], repeat: int) -> tuple[float, float]:
    """As `time_decode`, with `read_row`: how the replicator reads a row some shape may want
    (at its position in the raw XLogData message; here at 0)."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in payloads:
            read_row(p, 0)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


async def run(dsn: str, rows: int, repeat: int) -> None:
    payloads, read_s = await capture(dsn, rows)
    n = len(payloads)
    print(f"captured {n:,} payloads ({sum(map(len, payloads)) / n:.1f} bytes avg)")
    print(f"stream catch-up read (no decode): {read_s:.2f} s, {n / read_s / 1000:.0f}k msg/s")

    wall, cpu = time_decode(payloads, repeat)
    print(
        f"decode, all messages: {wall / n * 1e6:.3f} µs/message wall, {cpu / n * 1e6:.3f} µs CPU"
        f" ({n / wall / 1e6:.2f} M msg/s)"
    )
    kinds = Counter(chr(p[0]) for p in payloads)
    for kind in sorted(kinds, key=lambda k: -kinds[k]):
        subset = [p for p in payloads if chr(p[0]) == kind]
        if len(subset) < 1000:
            print(f"  {kind}: {len(subset):,} messages (too few to time)")
            continue
        wall, cpu = time_decode(subset, repeat)
        print(
            f"  {kind}: {len(subset):,} messages, {wall / len(subset) * 1e6:.3f} µs/message wall,"
            f" {cpu / len(subset) * 1e6:.3f} µs CPU"
        )
        if kind in "IUD":
            wall, cpu = time_read_row(subset, repeat)
            print(
                f"  {kind} with read_row (the replicator's): {wall / len(subset) * 1e6:.3f}"
                f" µs/message wall, {cpu / len(subset) * 1e6:.3f} µs CPU"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsn", help="an existing server with wal_level=logical (default: throwaway)")
    ap.add_argument("--rows", type=int, default=100_000, help="rows inserted, then updated")
    ap.add_argument("--repeat", type=int, default=5, help="decode passes (best is reported)")
    args = ap.parse_args()

    tmp: str | None = None
    server_url = args.dsn
    if server_url is None:
        tmp = tempfile.mkdtemp(prefix="shapegate-bench-pg-")
        out = subprocess.run(
            [str(ROOT / "scripts" / "dev-postgres"), "start", tmp, str(_free_port())],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        server_url = next(
            line.split("=", 1)[1] for line in out.splitlines() if line.startswith("DATABASE_URL=")
        )
    dbname = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            asyncio.run(run(_with_dbname(server_url, dbname), args.rows, args.repeat))
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (SLOT,),
                )
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )
    finally:
        if tmp is not None:
            subprocess.run([str(ROOT / "scripts" / "dev-postgres"), "stop", tmp], check=False)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""S9: a table joins the publication while 100 shaped tables are written: the Relation re-checks.

Run alone: `.venv/bin/python benchmarks/s9_publication.py [--quick] [--tables N] [--rounds N]`.

Why: the engine compares a shaped table with the catalog before applying the change that
follows each Relation message for it (`Tables.verify_relation`: a new primary key shows in
no Relation message). pgoutput sends a table's Relation message again after anything that
invalidates its entry, and a change of the publication invalidates every entry
(`rel_sync_cache_publication_cb`; the entry is rebuilt with `schema_sent = false`). So the
first shape of a table not yet published (the engine adds the table to its publication)
makes every shaped table that is written next cost one catalog read on the stream's path.

Setup: one engine, `--tables` empty tables (100; 20 with `--quick`) with one shape each
(`offset=-1`, which publishes them), a client long-polling the last one. Each round:
- baseline: one transaction inserts a row into every table (the last table's last); the
  time from its commit to the client having the last table's row, and the engine's CPU
  meanwhile (`schedstat`, ns);
- new table: `CREATE TABLE` and the first shape of it (the engine publishes it; not timed),
  then the same transaction, timed the same way: its Relation messages come again for every
  table, each re-checked before its row is applied. The engine's statements meanwhile
  (`pg_stat_statements`, all but the writer's) show the re-checks: one table description
  read per written table.
The difference per round, divided by the tables written, is the cost per re-checked table;
the row reports the medians over `--rounds` (5; 3 with `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import psycopg
from _common import ENGINE_SECRET, SYNC_COMMIT, EngineProcess, Postgres, Row, Stack, fmt, follow
from s5_routing import engine_cpu


def shape_url(engine: EngineProcess, table: str) -> str:
    return f"{engine.url}/v1/shape?table={table}&secret={ENGINE_SECRET}&offset=-1"


async def create_shape(s: aiohttp.ClientSession, engine: EngineProcess, table: str) -> None:
    async with s.get(shape_url(engine, table)) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{r.status} for the first shape of {table}")


class Tail:
    """Long-polls one shape; `wait_for(id)` returns when the client has that row."""

    def __init__(self, s: aiohttp.ClientSession, base: str, handle: str, offset: str) -> None:
        self.s, self.base, self.handle, self.offset = s, base, handle, offset
        self.seen: dict[int, float] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        cursor = "0"
        while True:
            q = f"{self.base}&offset={self.offset}&handle={self.handle}&live=true&cursor={cursor}"
            async with self.s.get(q) as r:
                body = await r.json()
                now = time.perf_counter()
                self.offset = r.headers["electric-offset"]
                cursor = r.headers.get("electric-cursor", "0")
            for m in body:
                if "key" in m:
                    self.seen[int(m["value"]["id"])] = now

    async def wait_for(self, row: int, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while row not in self.seen:
            if time.monotonic() > deadline or self.task.done():
                raise RuntimeError(f"row {row} never reached the client")
            await asyncio.sleep(0.002)
        return self.seen[row]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def write_all(conn: psycopg.AsyncConnection, tables: list[str], row: int) -> float:
    """One transaction, one row per table; returns when its COMMIT returned."""
    async with conn.transaction():
        for t in tables:
            await conn.execute(f"INSERT INTO {t} VALUES (%s, 0)", (row,))
    return time.perf_counter()


#: Statements counted as the engine's in `engine_queries`: not the writer's, not this count's.
_OTHERS = ("INSERT INTO r_%", "BEGIN%", "COMMIT%", "SET %", "%pg_stat_statements%")


def engine_queries(conn: psycopg.Connection) -> int:
    """Statements run so far other than the writer's (pg_stat_statements): the engine's."""
    where = " AND ".join("query NOT LIKE %s" for _ in _OTHERS)
    row = conn.execute(f"SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE {where}",
                       _OTHERS).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


async def run(quick: bool, n_tables: int | None = None, rounds: int | None = None) -> list[Row]:
    n = n_tables or (20 if quick else 100)
    rounds = rounds or (3 if quick else 5)
    tables = [f"r_{i}" for i in range(n)]
    stack = Stack()
    try:
        pg = stack.add(Postgres(stat_statements=True))
        with psycopg.connect(pg.url, autocommit=True) as c:
            for t in tables:
                c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v int)")
        engine = stack.add(EngineProcess(pg.url))
        await engine.wait_ready()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            sem = asyncio.Semaphore(8)

            async def first(t: str) -> None:
                async with sem:
                    await create_shape(s, engine, t)

            await asyncio.gather(*(first(t) for t in tables))
            _, _, handle, offset, _ = await follow(s, shape_url(engine, tables[-1]))
            tail = Tail(s, shape_url(engine, tables[-1]).replace("&offset=-1", ""), handle, offset)
            base_ms: list[float] = []
            new_ms: list[float] = []
            base_cpu: list[float] = []
            new_cpu: list[float] = []
            base_q: list[int] = []
            new_q: list[int] = []
            counter = psycopg.connect(pg.url, autocommit=True)
            row = 0
            try:
                async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as w:
                    await w.execute(SYNC_COMMIT)
                    for r in range(rounds + 1):  # round 0 warms up, not counted
                        for arm in ("base", "new"):
                            if arm == "new":
                                await w.execute(f"CREATE TABLE n_{r} (id int PRIMARY KEY)")
                                await create_shape(s, engine, f"n_{r}")
                            await asyncio.sleep(0.3)  # the stream idle again
                            row += 1
                            e0, q0 = engine_cpu(engine), engine_queries(counter)
                            committed = await write_all(w, tables, row)
                            got = await tail.wait_for(row)
                            cpu = engine_cpu(engine) - e0
                            queries = engine_queries(counter) - q0
                            if r:
                                (base_ms if arm == "base" else new_ms).append(
                                    (got - committed) * 1000
                                )
                                (base_cpu if arm == "base" else new_cpu).append(cpu * 1000)
                                (base_q if arm == "base" else new_q).append(queries)
            finally:
                counter.close()
                await tail.close()
    finally:
        stack.close()
    b, m = statistics.median(base_ms), statistics.median(new_ms)
    bc, mc = statistics.median(base_cpu), statistics.median(new_cpu)
    label = f"S9 a table joins the publication, {n} shaped tables written"
    spread = (f"{fmt(min(base_ms))}-{fmt(max(base_ms), 'ms')} / "
              f"{fmt(min(new_ms))}-{fmt(max(new_ms), 'ms')}")  # fmt: skip
    return [
        Row(label, f"commit→client of a {n}-table transaction, median of {rounds} "
                   f"(range {spread})",
            [("before", fmt(b, "ms")), ("after a new published table", fmt(m, "ms"))],
            f"+{fmt((m - b) / n, 'ms')} per re-checked table", "reported", ""),
        Row(label, "engine CPU ms (engine queries to Postgres) for that transaction",
            [("before", f"{fmt(bc)} ({statistics.median(base_q):.0f})"),
             ("after a new published table", f"{fmt(mc)} ({statistics.median(new_q):.0f})")],
            f"+{fmt((mc - bc) / n, 'ms')} per re-checked table", "", ""),
    ]  # fmt: skip


if __name__ == "__main__":
    from _common import machine, table

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tables", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(machine())
    print(table(asyncio.run(run(a.quick, a.tables, a.rounds))))

"""Initial sync of 1M narrow rows: engine cold and warm against Postgres's own COPY as JSON.

Arms, measured side by side in one run on the same database:
- `COPY (SELECT row_to_json(t) FROM big t) TO STDOUT`, read by a client (the floor: Postgres
  producing the same rows as JSON);
- engine cold: a new shape, from `offset=-1` to up-to-date over HTTP, bodies read fully;
- engine warm: a second client of the same shape (the shape log exists).
Targets (../shared/design.md): cold <= 1.5x COPY; warm >= 5x faster than cold.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import psycopg
from _common import EngineProcess, Postgres, machine


def copy_json_seconds(url: str) -> tuple[float, int]:
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        n = 0
        with conn.cursor().copy("COPY (SELECT row_to_json(t) FROM big t) TO STDOUT") as copy:
            for data in copy:
                n += len(data)
        return time.perf_counter() - t0, n


async def sync_seconds(base: str) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    total = requests = 0
    async with aiohttp.ClientSession() as s:
        q = {"table": "big", "offset": "-1"}
        while True:
            async with s.get(base + "/v1/shape", params=q) as r:
                body = await r.read()
                assert r.status == 200, (r.status, body[:300])
                total += len(body)
                requests += 1
                q = {
                    "table": "big",
                    "offset": r.headers["electric-offset"],
                    "handle": r.headers["electric-handle"],
                }
                if "electric-up-to-date" in r.headers:
                    break
    return time.perf_counter() - t0, total, requests


async def main(rows: int) -> None:
    pg = Postgres()
    engine = None
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id bigint PRIMARY KEY, title text, n int)")
            conn.execute(
                "INSERT INTO big SELECT g, 'title ' || g, g %% 1000 FROM generate_series(1, %s) g",
                (rows,),
            )
            conn.execute("VACUUM ANALYZE big")
        copy_json_seconds(pg.url)  # warm Postgres's buffers for both arms
        copy_s, copy_bytes = copy_json_seconds(pg.url)
        engine = EngineProcess(pg.url)
        await engine.wait_ready()
        cold_s, cold_bytes, cold_req = await sync_seconds(engine.url)
        warm_s, _, _ = await sync_seconds(engine.url)
        print(f"machine: {machine()}")
        print(f"initial sync of {rows:,} rows (id bigint, title text, n int)")
        print(f"  postgres COPY row_to_json        {copy_s:7.2f} s  {copy_bytes / 1e6:7.1f} MB")
        print(
            f"  engine cold (new shape)          {cold_s:7.2f} s  {cold_bytes / 1e6:7.1f} MB"
            f"  {cold_req} requests"
        )
        print(f"  engine warm (existing shape)     {warm_s:7.2f} s")
        print(f"  cold / COPY                      {cold_s / copy_s:7.2f} x   (target <= 1.5)")
        print(f"  cold / warm                      {cold_s / warm_s:7.2f} x   (target >= 5)")
    finally:
        if engine:
            engine.stop()
        pg.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(main(ap.parse_args().rows))

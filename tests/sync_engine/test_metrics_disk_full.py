"""`GET /metrics` of a real engine process whose data directory's disk fills up: what an
operator alerts on. Replication pauses (`/v1/health` 503): `sync_engine_replication_paused`
is 1 and the lag is above 0 while it is; once space is back both return to 0. Scraped as
Prometheus does, with `Authorization: Bearer <secret>`.

Before, /metrics had only `sync_engine_parked_requests`: a paused engine showed nothing
there, and the Bearer header carrying the secret was a 401.

Mounting a small tmpfs needs root (CI runs as root); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.test_disk_full_snapshot import _fill
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)

SECRET = "metrics-disk-secret-5d1e"
DEFAULT = (("source_id", "default"),)


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, object], float]:
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with session.get(url + "/metrics", headers=headers) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()
    assert row is not None
    return int(row[0])


async def health(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/v1/health") as resp:
        return resp.status


@pytest.mark.timeout(180)
async def test_a_full_disk_shows_as_paused_replication_and_lag(db_url: str, tmp_path: Path) -> None:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    engine = EngineProcess(db_url, mnt, "--secret", SECRET, "--long-poll-timeout", "2")
    engine.log = tmp_path / "engine.log"  # not on the disk that fills up
    filler = mnt / "filler"
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            params = {"table": "items", "offset": "-1", "secret": SECRET}
            async with session.get(engine.url + "/v1/shape", params=params) as resp:
                assert resp.status == 200, await resp.text()
            m = await scrape(session, engine.url)
            assert m[("sync_engine_replication_paused", DEFAULT)] == 0
            free_before = m[("sync_engine_data_dir_free_bytes", ())]

            await asyncio.to_thread(_fill, filler, 0)
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO items SELECT g, repeat(md5(g::text), 100)"
                    " FROM generate_series(1, 500) g"
                )

            async def paused() -> dict[tuple[str, object], float] | None:
                m = await scrape(session, engine.url)
                return m if m[("sync_engine_replication_paused", DEFAULT)] == 1 else None

            m = await wait_until_async(paused, timeout=60, message="replication paused = 1")
            assert await health(session, engine.url) == 503
            assert m[("sync_engine_replication_lag_bytes", DEFAULT)] > 0
            assert m[("sync_engine_data_dir_free_bytes", ())] < free_before

            # WAL written while paused, which the walsender has not sent: in the lag too
            # (from Postgres's own WAL end, asked every few seconds, not the stream's)
            with psycopg.connect(db_url, autocommit=True) as conn:
                before = wal_position(conn)
                conn.execute(
                    "INSERT INTO items SELECT g, repeat(md5(g::text), 100)"
                    " FROM generate_series(5001, 5500) g"
                )
                written = wal_position(conn) - before

            async def lag_covers_it() -> bool:
                m = await scrape(session, engine.url)
                return m[("sync_engine_replication_lag_bytes", DEFAULT)] >= written

            await wait_until_async(lag_covers_it, timeout=30, message=f"lag >= {written}")

            filler.unlink()

            async def resumed() -> bool:
                m = await scrape(session, engine.url)
                return (
                    m[("sync_engine_replication_paused", DEFAULT)] == 0
                    and m[("sync_engine_replication_lag_bytes", DEFAULT)] == 0
                )

            await wait_until_async(resumed, timeout=90, message="paused 0 and lag 0 again")
            assert await health(session, engine.url) == 200
    finally:
        await asyncio.to_thread(engine.stop)
        subprocess.run(["umount", "-l", str(mnt)], check=False)

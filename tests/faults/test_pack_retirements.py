"""A shape retired before a restart never comes back from its pack, whatever the pack lost.

A storm's small snapshots share a pack (`S` records); a shape retired later appends its
`R` record to it (and one whose log began, an `L` record). If, while the engine was down,
the pack was damaged before that `R`, or lost its tail at a record boundary before it
(every record left is whole: nothing in the pack says so), the retired shape came back on
restart with its old snapshot and an empty log: rows Postgres no longer had, with no 409
(found by chaos: the `pack_flip` / `pack_trunc` faults, then `repro_pack_resurrect.py`).

What must hold: the retired shape's old handle gets 409 must-refetch, so does every other
shape of that pack (it cannot say which of them were retired), and a fresh request of the
retired shape's definition gets exactly Postgres's current rows.

Real path: the engine as a process, SIGKILLed, the pack damaged on disk, a private Postgres
cluster (one for the module, a database per case).
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.test_damaged_files import Db, pg  # noqa: F401 (pg: a fixture)
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

CONFIRMED = (
    "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint"
    " FROM pg_replication_slots WHERE database = current_database()"
)
WHERES = [f"id > {50 * i} AND id <= {50 * i + 50}" for i in range(6)]


def _records(data: bytes) -> list[tuple[str, str, int, int]]:
    """(kind, handle, start, end) of a pack's records, by their lengths (see `packs.py`)."""
    out = []
    pos = 8  # (MAGIC)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        start, end = pos + 8, pos + 8 + length
        kind = chr(data[start])
        if kind == "S":
            (marker,) = struct.unpack_from("<I", data, start + 1)
            handle = str(orjson.loads(data[start + 5 : start + 5 + marker])["handle"])
        elif kind == "L":
            handle = data[start + 9 : end].decode()
        else:
            handle = data[start + 1 : end].decode()
        out.append((kind, handle, pos, end))
        pos = end
    return out


class Sync:
    """A client of one shape: from `-1` to up-to-date, 409s followed as the npm client does."""

    def __init__(self, base: str, where: str) -> None:
        self.base, self.where = base, where
        self.handle: str | None = None
        self.offset = "-1"
        self.rows: dict[str, dict[str, Any]] = {}

    def _query(self) -> dict[str, str]:
        q = {"table": "t", "where": self.where, "offset": self.offset}
        return q if self.handle is None else {**q, "handle": self.handle}

    async def get(self, session: aiohttp.ClientSession) -> tuple[int, list[dict[str, Any]]]:
        async with session.get(f"{self.base}/v1/shape", params=self._query()) as r:
            body = await r.read()
            return r.status, (orjson.loads(body) if r.status in (200, 409) else [])

    async def up_to_date(self, session: aiohttp.ClientSession) -> None:
        for _ in range(100):
            async with session.get(f"{self.base}/v1/shape", params=self._query()) as r:
                body = await r.read()
                if r.status == 409:
                    self.handle, self.offset, self.rows = None, "-1", {}
                    continue
                assert r.status == 200, (r.status, body[:300])
                self.handle = r.headers["electric-handle"]
                self.offset = r.headers["electric-offset"]
            messages = orjson.loads(body)
            for m in messages:
                if "key" not in m:
                    continue
                if m["headers"]["operation"] == "delete":
                    self.rows.pop(m["key"], None)
                else:
                    self.rows.setdefault(m["key"], {}).update(m["value"])
            if messages and messages[-1].get("headers", {}).get("control") == "up-to-date":
                return
        raise AssertionError(f"{self.where}: never up to date")


def _pg_rows(db: Db, where: str) -> dict[str, dict[str, str]]:
    rows = db.query(f"SELECT id, v FROM t WHERE {where}")
    return {f'"public"."t"/"{i}"': {"id": str(i), "v": str(v)} for i, v in rows}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fault",
    [
        "a byte of the next shape's chunk changed",
        "cut at its retirement record",
        "its log began, a byte of the next shape's chunk changed",
    ],
)
async def test_a_retired_shape_never_comes_back_from_a_damaged_pack(
    pg: FaultCluster,  # noqa: F811 (one cluster for the module, a database per case)
    tmp_path: Path,
    fault: str,
) -> None:
    db = Db(pg)
    db.query("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
    db.query("INSERT INTO t SELECT g, 0 FROM generate_series(1, 300) g")
    data = tmp_path / "data"
    # (--replication-timeout 3: the slot is confirmed past everything within seconds)
    args = ("--long-poll-timeout", "1", "--allow-delete", "--replication-timeout", "3")
    engine = EngineProcess(db.url, data, *args)
    await asyncio.to_thread(engine.start)
    try:
        async with aiohttp.ClientSession() as session:
            await Sync(engine.url, "id < 0").up_to_date(session)  # (t described once)
            # asked while t is locked: the snapshots wait, then run as one batch: one pack
            clients = [Sync(engine.url, where) for where in WHERES]
            async with await psycopg.AsyncConnection.connect(db.url) as locker:
                await locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                syncing = [asyncio.create_task(c.up_to_date(session)) for c in clients]
                await asyncio.sleep(1.5)
                await locker.rollback()
            await asyncio.gather(*syncing)
            by_handle = {c.handle: c for c in clients}
            packs = [(p, _records(p.read_bytes())) for p in sorted(data.rglob("*.pack"))]
            shared = [
                (p, [h for k, h, _, _ in recs if k == "S" and h in by_handle]) for p, recs in packs
            ]
            pack, (a_handle, b_handle, *_) = next((p, hs) for p, hs in shared if len(hs) >= 2)
            a, b = by_handle[a_handle], by_handle[b_handle]
            if "log began" in fault:
                db.query(
                    f"UPDATE t SET v = 1 WHERE id IN (SELECT id FROM t WHERE {a.where} LIMIT 1)"
                )

                def began() -> bool:  # (its log has begun: an `L` record)
                    return any(
                        k == "L" and h == a_handle for k, h, *_ in _records(pack.read_bytes())
                    )

                await wait_until_async(began, timeout=30, message="A's log-begun record")
            async with session.delete(
                f"{engine.url}/v1/shape", params={"table": "t", "where": a.where}
            ) as r:
                assert r.status in (200, 202, 204), (r.status, await r.read())

            def retired() -> bool:
                return any(k == "R" and h == a_handle for k, h, *_ in _records(pack.read_bytes()))

            await wait_until_async(retired, timeout=30, message="A's retirement record")
            # A's rows change after its retirement: a stale A would still have them as they were
            db.query(f"UPDATE t SET v = 100 WHERE {a.where}")
            db.query(f"DELETE FROM t WHERE id IN (SELECT id FROM t WHERE {a.where} LIMIT 5)")
            db.query("INSERT INTO t SELECT g, 7 FROM generate_series(1001, 1012) g")

            def confirmed() -> bool:
                (flushed, current), *_ = db.query(CONFIRMED)
                assert isinstance(flushed, int) and isinstance(current, int)
                return flushed >= current

            db.query("SELECT pg_switch_wal()")  # (WAL the slot can confirm past)
            await wait_until_async(confirmed, timeout=60, message="slot confirmed")
            engine.kill()
            raw = bytearray(pack.read_bytes())
            records = _records(bytes(raw))
            stat = pack.stat()
            if fault.startswith("cut"):
                # every record left is whole: nothing in the pack says it lost its tail
                (r_at,) = [at for k, h, at, _ in records if k == "R" and h == a_handle]
                raw = raw[:r_at]
            else:
                # one digit of B's row values changed (the JSON still parses), before R(A)
                (s_at, s_end) = next(
                    (at, end) for k, h, at, end in records if k == "S" and h == b_handle
                )
                at = raw.index(b'"v":"0', s_at, s_end) + 5
                raw[at] = ord("3")
            pack.write_bytes(bytes(raw))  # (in place: the same file, cut or changed)
            os.utime(pack, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            await asyncio.to_thread(engine.start)

            # the clients of that pack's shapes, on their old handles: 409, refetch
            for old in (a, b):
                status, body = await old.get(session)
                assert status == 409, (old.where, status, body[:3])
            # a fresh client of A's definition: exactly Postgres's rows (not A's old snapshot)
            for where in (a.where, b.where):
                fresh = Sync(engine.url, where)
                await fresh.up_to_date(session)
                assert fresh.handle not in (a_handle, b_handle)
                assert fresh.rows == _pg_rows(db, where), where
    finally:
        engine.stop()
        db.drop(pg)

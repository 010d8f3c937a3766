"""Convergence under concurrent writes, with and without the engine SIGKILLed midway.

A writer commits a fixed number of transactions of random inserts, updates, deletes and
primary-key changes while 20 clients with different `where` clauses follow their shapes over
HTTP (handling 409s and connection errors as the real client does). When the writer stops,
each client's rows must equal `SELECT ... WHERE <same clause>` — nothing lost, nothing
duplicated. The test counts transactions, not seconds: a loaded CI machine makes it slower,
never weaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from tests.support.engine_process import EngineProcess
from tests.support.waiting import WaitTimeout, wait_until_async

#: Transactions the writer commits (1-3 random statements each).
TRANSACTIONS = 300
#: With the engine killed: transactions committed while it is down, before it restarts.
WHILE_DOWN = 20

WHERES: list[tuple[str | None, dict[str, str]]] = [
    (None, {}),
    ("grp = 0", {}),
    ("grp = 1", {}),
    ("grp = $1", {"1": "2"}),
    ("grp IN (3, 4)", {}),
    ("grp <> 2", {}),
    ("val LIKE 'a%'", {}),
    ("val ILIKE '%B%'", {}),
    ("id > 100", {}),
    ("id <= 60 AND grp >= 2", {}),
    ("n IS NULL", {}),
    ("n IS NOT NULL AND n > 500", {}),
    ("grp = 1 OR val LIKE 'c%'", {}),
    ("NOT (grp = 3)", {}),
    ("n BETWEEN 100 AND 600", {}),
    ("lower(val) = 'abc'", {}),
    ("id % 2 = 0", {}),
    ("grp = $1 AND n > $2", {"1": "4", "2": "300"}),
    ("coalesce(n, 0) < 250", {}),
    ("val IN ('abc', 'bcd', 'cde')", {}),
]


class Follower:
    """A minimal shape client: -1, catch up, live; resets on 409; retries on errors."""

    def __init__(self, base: str, where: str | None, params: dict[str, str]) -> None:
        self.base = base
        self.q: dict[str, str] = {"table": "items"}
        if where:
            self.q["where"] = where
        for k, v in params.items():
            self.q[f"params[{k}]"] = v
        self.rows: dict[str, dict[str, Any]] = {}
        self.handle: str | None = None
        self.offset = "-1"
        self.up_to_date = False
        self.lsn = 0
        self.resets = 0

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            q = dict(self.q, offset=self.offset)
            if self.handle and self.offset != "-1":
                q["handle"] = self.handle
            if self.up_to_date:
                q["live"] = "true"
            try:
                async with session.get(
                    self.base + "/v1/shape", params=q, timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    body = await r.read()
                    if r.status == 409:
                        self.rows.clear()
                        self.handle = r.headers.get("electric-handle")
                        self.offset, self.up_to_date = "-1", False
                        self.resets += 1
                        continue
                    assert r.status == 200, (r.status, body[:500])
                    self._apply(orjson.loads(body))
                    self.handle = r.headers["electric-handle"]
                    self.offset = r.headers["electric-offset"]
                    if "electric-up-to-date" in r.headers:
                        self.up_to_date = True
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.1)

    def _apply(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            h = m["headers"]
            if "key" not in m:
                if h.get("control") == "up-to-date":
                    self.lsn = int(h["global_last_seen_lsn"])
                continue
            op = h["operation"]
            if op == "insert":
                assert m["key"] not in self.rows, f"duplicate insert {m['key']}"
                self.rows[m["key"]] = dict(m["value"])
            elif op == "update":
                assert m["key"] in self.rows, f"update of unknown row {m['key']}"
                self.rows[m["key"]].update(m["value"])
            else:
                assert m["key"] in self.rows, f"delete of unknown row {m['key']}"
                del self.rows[m["key"]]


def expected_rows(
    db_url: str, where: str | None, params: dict[str, str]
) -> dict[str, dict[str, Any]]:
    with psycopg.connect(db_url) as conn:
        cur = psycopg.RawCursor(conn)
        sql = "SELECT id::text, grp::text, val, n::text FROM items"
        if where:
            sql += f" WHERE {where}"
        cur.execute(sql, [params[str(i + 1)] for i in range(len(params))])
        return {
            f'"public"."items"/"{r[0]}"': {"id": r[0], "grp": r[1], "val": r[2], "n": r[3]}
            for r in cur.fetchall()
        }


@dataclass
class Progress:
    """Transactions the writer has committed so far (what the test waits on)."""

    committed: int = 0


async def write_randomly(db_url: str, transactions: int, seed: int, progress: Progress) -> None:
    rng = random.Random(seed)
    words = ["abc", "bcd", "cde", "ABx", "aBc", "zzz", "a", "b/c"]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        next_id = 1000
        while progress.committed < transactions:
            async with conn.transaction():
                for _ in range(rng.randint(1, 3)):
                    ids = [
                        r[0]
                        for r in await (
                            await conn.execute("SELECT id FROM items ORDER BY random() LIMIT 2")
                        ).fetchall()
                    ]
                    op = rng.random()
                    if op < 0.35 or not ids:
                        next_id += 1
                        await conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s)",
                            (
                                next_id,
                                rng.randint(0, 4),
                                rng.choice(words),
                                rng.choice([None, rng.randint(0, 1000)]),
                            ),
                        )
                    elif op < 0.75:
                        await conn.execute(
                            "UPDATE items SET grp = %s, n = %s, val = %s WHERE id = %s",
                            (
                                rng.randint(0, 4),
                                rng.choice([None, rng.randint(0, 1000)]),
                                rng.choice(words),
                                ids[0],
                            ),
                        )
                    elif op < 0.9:
                        await conn.execute("DELETE FROM items WHERE id = %s", (ids[0],))
                    else:
                        next_id += 1
                        await conn.execute(
                            "UPDATE items SET id = %s WHERE id = %s", (next_id, ids[0])
                        )
            progress.committed += 1
            await asyncio.sleep(rng.random() * 0.004)  # pacing: writes interleave with reads


async def _converge(db_url: str, tmp_path: Path, kill_midway: bool) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, grp int, val text, n int)")
        conn.execute(
            "INSERT INTO items SELECT g, g % 5, (ARRAY['abc','bcd','cde','zzz'])[g % 4 + 1],"
            " CASE WHEN g % 7 = 0 THEN NULL ELSE g * 7 % 1000 END FROM generate_series(1, 200) g"
        )
    engine = EngineProcess(db_url, tmp_path / "data", "--long-poll-timeout", "2")
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w, p) for w, p in WHERES]
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]
            progress = Progress()
            writer = asyncio.create_task(write_randomly(db_url, TRANSACTIONS, 7, progress))

            async def committed(count: int) -> bool:
                if writer.done():
                    writer.result()  # surface the writer's failure
                return progress.committed >= count

            if kill_midway:
                await wait_until_async(
                    lambda: committed(TRANSACTIONS // 2), timeout=120, message="half the writes"
                )
                engine.kill()
                down_from = progress.committed
                await wait_until_async(
                    lambda: committed(down_from + WHILE_DOWN),
                    timeout=60,
                    message=f"{WHILE_DOWN} transactions while the engine is down",
                )
                await asyncio.to_thread(engine.start)
            await writer
            assert progress.committed == TRANSACTIONS
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetchone()
                assert row is not None
                final_lsn = int(row[0])
            expected = [expected_rows(db_url, w, p) for w, p in WHERES]

            def converged() -> bool:
                for t in tasks:
                    if t.done():
                        t.result()  # surface assertion errors from a follower
                pairs = zip(followers, expected, strict=True)
                return all(f.rows == e and f.up_to_date for f, e in pairs)

            # On timeout the assertions below say what differs, client by client.
            with contextlib.suppress(WaitTimeout):
                await wait_until_async(converged, timeout=60, interval=0.05)
            stop.set()
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        for f, e, (w, _) in zip(followers, expected, WHERES, strict=True):
            missing = set(e) - set(f.rows)
            extra = set(f.rows) - set(e)
            wrong = [k for k in set(e) & set(f.rows) if e[k] != f.rows[k]]
            assert not missing and not extra and not wrong, (
                f"where={w!r}: missing={sorted(missing)[:5]} extra={sorted(extra)[:5]}"
                f" wrong={[(k, e[k], f.rows[k]) for k in wrong[:3]]} final_lsn={final_lsn}"
                f" offset={f.offset} up_to_date={f.up_to_date} resets={f.resets} lsn={f.lsn}"
            )
        # Shape logs survive a restart, SIGKILL included: nobody had to resync from scratch.
        assert [f.resets for f in followers] == [0] * len(followers)
    finally:
        engine.stop()


@pytest.mark.timeout(300)
async def test_twenty_clients_converge_under_random_writes(db_url: str, tmp_path: Path) -> None:
    await _converge(db_url, tmp_path, kill_midway=False)


@pytest.mark.timeout(300)
async def test_converge_with_engine_sigkilled_midway(db_url: str, tmp_path: Path) -> None:
    await _converge(db_url, tmp_path, kill_midway=True)

"""A shape client that counts instead of trusting, and a writer that survives outages.

Shared by the fault probes (tests/faults) and the disk-full test of the log
(tests/sync_engine/log). `Follower` follows a shape over HTTP as the real client does
(offset -1, catch up, live; 409: start again from -1; 503 and connection errors: retry) and
checks what it gets: every body parses, an insert is new, an update and a delete find their
row, each update raises `v` by exactly one (when the writer only ever increments it), so a
lost or repeated change shows as a count, not as a coincidence.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson
import psycopg

from tests.support.waiting import wait_until_async

#: Pause before retrying after a 503 or a connection error (as the client backs off).
RETRY_PAUSE = 0.1


class Follower:
    def __init__(
        self,
        base: str,
        where: str | None = None,
        table: str = "items",
        *,
        increments: bool = True,
        sse: bool = False,
    ) -> None:
        """`increments`: the writers only ever raise `v` by one, so each update is checked
        to do exactly that; without, an update is only checked to find its row. `sse`: once
        live, follow over SSE as the npm client does (`_follow_sse`)."""
        self.base = base
        self.increments = increments
        self.sse = sse
        self.q = {"table": table, **({"where": where} if where else {})}
        self.where = where
        self.rows: dict[str, dict[str, Any]] = {}
        self.handle: str | None = None
        self.offset = "-1"
        self.live = False
        self.lost = 0
        self.duplicated = 0
        self.invalid_json = 0
        self.resets = 0
        self.statuses: Counter[int] = Counter()
        self.bad_bodies: list[bytes] = []  # error bodies that are not JSON objects
        self.biggest = 0  # the biggest 200 body, in bytes

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            q = dict(self.q, offset=self.offset)
            if self.handle and self.offset != "-1":
                q["handle"] = self.handle
            if self.live:
                q["live"] = "true"
            try:
                if self.live and self.sse:  # (a stream ends when the follower is stopped)
                    stream = asyncio.ensure_future(self._follow_sse(session, q))
                    stopped = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({stream, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (stream, stopped):
                        task.cancel()
                    await asyncio.gather(stream, stopped, return_exceptions=True)
                    if not stream.cancelled() and stream.exception() is not None:
                        raise stream.exception()  # type: ignore[misc]
                    continue
                async with session.get(
                    self.base + "/v1/shape", params=q, timeout=aiohttp.ClientTimeout(total=15)
                ) as r:
                    body = await r.read()
                    self.statuses[r.status] += 1
                    if r.status == 409:
                        self.rows.clear()
                        self.handle = r.headers.get("electric-handle")
                        self.offset, self.live = "-1", False
                        self.resets += 1
                        continue
                    if r.status != 200:
                        if not _is_json_object(body):
                            self.bad_bodies.append(body[:300])
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                    try:
                        messages = orjson.loads(body)
                    except orjson.JSONDecodeError:
                        self.invalid_json += 1
                        await asyncio.sleep(RETRY_PAUSE)
                        continue
                    self.biggest = max(self.biggest, len(body))
                    self._apply(messages)
                    self.handle = r.headers["electric-handle"]
                    self.offset = r.headers["electric-offset"]
                    self.live = "electric-up-to-date" in r.headers
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(RETRY_PAUSE)

    async def _follow_sse(self, session: aiohttp.ClientSession, q: dict[str, str]) -> None:
        """One SSE stream (`live_sse=true`), as @electric-sql/client 1.5 reads it: messages
        are applied a batch at a time, at each up-to-date, and the stream is resumed from
        that up-to-date's `global_last_seen_lsn` (`<lsn>_0`); a batch cut off by the end of
        the stream (a killed engine) is dropped, and read again from the last offset."""
        q = dict(q, live_sse="true")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        async with session.get(self.base + "/v1/shape", params=q, timeout=timeout) as r:
            self.statuses[r.status] += 1
            if r.status != 200:
                body = await r.read()
                if r.status == 409:
                    self._reset(r.headers.get("electric-handle"))
                elif not _is_json_object(body):
                    self.bad_bodies.append(body[:300])
                await asyncio.sleep(RETRY_PAUSE)
                return
            batch: list[dict[str, Any]] = []
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                try:
                    m = orjson.loads(line[6:])
                except orjson.JSONDecodeError:
                    self.invalid_json += 1
                    return
                if "key" in m:
                    batch.append(m)
                    continue
                control = m.get("headers", {}).get("control")
                if control == "must-refetch":
                    self._reset(None)
                    return
                if control == "up-to-date":
                    self._apply(batch)
                    batch = []
                    self.offset = f"{m['headers']['global_last_seen_lsn']}_0"

    def _reset(self, handle: str | None) -> None:
        self.rows.clear()
        self.handle = handle
        self.offset, self.live = "-1", False
        self.resets += 1

    def _apply(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            if "key" not in m:
                continue
            op, key, value = m["headers"]["operation"], m["key"], m["value"]
            if op == "insert":
                if key in self.rows:
                    self.duplicated += 1
                self.rows[key] = dict(value)
            elif op == "update":
                row = self.rows.get(key)
                if row is None:
                    self.lost += 1
                    continue
                if not self.increments:
                    row.update(value)
                    continue
                step = int(value.get("v", row["v"])) - int(row["v"])
                if step < 1:
                    self.duplicated += 1
                elif step > 1:
                    self.lost += step - 1
                row.update(value)
            elif self.rows.pop(key, None) is None:
                self.duplicated += 1  # a delete of a row it does not have: seen twice?

    def assert_clean(self, *, resets: bool = True) -> None:
        """Nothing lost, repeated or broken was served, and no error but 503 (`resets`
        False: not even a 409)."""
        assert self.counts() == {
            "lost": 0,
            "duplicated": 0,
            "invalid_json": 0,
            "bad_error_bodies": 0,
        }, (self.where, dict(self.statuses), self.bad_bodies[:1])
        assert not [s for s in self.statuses if s >= 500 and s != 503], self.statuses
        assert resets or not self.resets, (self.where, self.statuses)

    def counts(self) -> dict[str, int]:
        return {
            "lost": self.lost,
            "duplicated": self.duplicated,
            "invalid_json": self.invalid_json,
            "bad_error_bodies": len(self.bad_bodies),
        }


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), (dict, list))
    except orjson.JSONDecodeError:
        return False


def expected_rows(
    db_url: str, where: str | None, columns: tuple[str, ...] = ("id", "v"), table: str = "items"
) -> dict[str, dict[str, Any]]:
    """What `SELECT` says the shape holds (its `columns`, as text, the first being the
    primary key), keyed as the engine keys rows."""
    select = ", ".join(f"{c}::text" for c in columns)
    sql = f"SELECT {select} FROM {table}" + (f" WHERE {where}" if where else "")
    with psycopg.connect(db_url) as conn:
        return {
            f'"public"."{table}"/"{row[0]}"': dict(zip(columns, row, strict=True))
            for row in conn.execute(sql.encode()).fetchall()
        }


class Writer:
    """Commits small transactions (an insert and an increment of `v`) until stopped; while
    Postgres is down it reconnects and goes on. `committed` counts what Postgres confirmed."""

    def __init__(self, db_url: str, first_id: int = 10_000, rows: int = 20) -> None:
        self.db_url = db_url
        self.rows = rows  # `v` is incremented on ids 1..rows in turn
        self.next_id = first_id
        self.committed = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.db_url, autocommit=True, connect_timeout=2
                ) as conn:
                    while not stop.is_set():
                        async with conn.transaction():
                            self.next_id += 1
                            await conn.execute("INSERT INTO items VALUES (%s, 0)", (self.next_id,))
                            await conn.execute(
                                "UPDATE items SET v = v + 1 WHERE id = %s",
                                (self.next_id % self.rows + 1,),
                            )
                        self.committed += 1
                        await asyncio.sleep(0.005)  # pacing: writes interleave with reads
            except psycopg.OperationalError:
                self.failures += 1  # Postgres down: the transaction did not commit
                await asyncio.sleep(RETRY_PAUSE)


async def follow_all(
    session: aiohttp.ClientSession, followers: list[Follower], stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Start every follower (until `stop`) and wait until each is live (up to date)."""
    tasks = [asyncio.create_task(f.run(session, stop)) for f in followers]
    await wait_until_async(
        lambda: all(f.live for f in followers), timeout=30, message="followers live"
    )
    return tasks


async def until_equal(
    followers: list[Follower], expected: list[dict[str, dict[str, Any]]], timeout: float
) -> None:
    """Wait until each follower's rows equal its `expected` rows; on timeout, fail saying
    how they differ (rows missing, extra, different; the follower's counts)."""

    def equal() -> bool:
        return all(f.rows == e for f, e in zip(followers, expected, strict=True))

    try:
        await wait_until_async(equal, timeout=timeout, interval=0.1, message="rows as SELECT")
    except AssertionError:
        raise AssertionError(
            "; ".join(
                f"{f.where!r}: {len(f.rows)} rows, {len(e)} expected, {len(e.keys() - f.rows)}"
                f" missing, {len(f.rows.keys() - e)} extra,"
                f" {sum(f.rows[k] != e[k] for k in e.keys() & f.rows)} different,"
                f" counts {f.counts()}, statuses {dict(f.statuses)}"
                for f, e in zip(followers, expected, strict=True)
                if f.rows != e
            )
        ) from None


async def follow_once(
    session: aiohttp.ClientSession, base: str, until: object = None, timeout: float = 30
) -> Follower:
    """A follower of `items` at the engine at `base`, stopped once live (and its rows equal
    `until`, if given): a client that synced and went away, its handle and offset kept."""
    follower = Follower(base)
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(session, stop))
    try:
        await wait_until_async(
            lambda: follower.live and (until is None or follower.rows == until),
            timeout=timeout,
            message="followed",
        )
    finally:
        stop.set()
        await task
    return follower


async def status_of_old_handle(session: aiohttp.ClientSession, follower: Follower) -> int:
    """The status of a request at `follower`'s shape, handle and offset (a client coming back):
    409 once its shape was retired."""
    assert follower.handle is not None
    params = {**follower.q, "handle": follower.handle, "offset": follower.offset}
    async with session.get(follower.base + "/v1/shape", params=params) as r:
        await r.read()
        return r.status

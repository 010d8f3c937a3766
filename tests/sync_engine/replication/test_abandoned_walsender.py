"""A replication connection that goes silent (a middlebox or network half-dead: TCP open,
nothing forwarded) is given up on after --replication-timeout; the engine then ends its own
abandoned walsender, which Postgres would otherwise keep, with the slot, until its
`wal_sender_timeout` (60 s by default, never with 0).

Before, every new stream failed with "replication slot ... is active for PID ..." for that
whole time and shape requests got 503 `stream_not_ready`: 40-54 s per fault in chaos seed 832
(`repl_cut`). Here Postgres runs with `wal_sender_timeout = 0`, so without the fix the stream
never comes back and the row below never arrives.

Real path: a private Postgres cluster, the engine as a process reaching it through a TCP relay
of this test that can freeze the replication connection: both sockets stay open, no byte is
forwarded either way, and the engine closing its side is not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.faults.cluster import FaultCluster
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async
from tests.sync_engine.tenants.harness import PGBIN

#: In the startup packet of a logical replication connection (libpq's `replication=database`).
REPLICATION_STARTUP = b"replication\x00database\x00"


class _Link:
    """One relayed connection: whether it is a replication one, and whether it is frozen."""

    def __init__(self) -> None:
        self.head = b""
        self.replication = False
        self.frozen = False
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []


class FreezingRelay:
    """A TCP relay to Postgres whose replication connections can be frozen."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: list[_Link] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze_replication(self) -> int:
        """Freeze every replication connection open now: how many there were."""
        frozen = [
            link for link in self.links if link.replication and not link.frozen and not link.closed
        ]
        for link in frozen:
            link.frozen = True
        return len(frozen)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for task in link.tasks:
                task.cancel()
            for writer in link.writers:
                writer.transport.abort()
        for link in self.links:
            for task in link.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link()
        self.links.append(link)
        link.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link.writers.append(up_writer)
        link.tasks += [
            asyncio.create_task(self._pump(link, reader, up_writer, sniff=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, sniff=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        sniff: bool,
    ) -> None:
        while True:
            data = await source.read(65536)
            if sniff and len(link.head) < 4096:
                link.head += data
                link.replication = REPLICATION_STARTUP in link.head
            if link.frozen:
                await asyncio.Event().wait()  # silent for good, the sockets open
            if not data:
                link.closed = True
                sink.close()  # (a clean close, passed on)
                return
            sink.write(data)
            await sink.drain()


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any, bytes]:
    async with session.get(
        url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=30)
    ) as r:
        return r.status, r.headers, await r.read()


@pytest.mark.timeout(240)
async def test_a_stream_given_up_on_does_not_keep_the_slot_from_the_next(tmp_path: Path) -> None:
    if PGBIN is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")
    cluster = FaultCluster(wal_sender_timeout="0")
    relay = FreezingRelay(cluster.port)
    engine: EngineProcess | None = None
    try:
        cluster.start_with_items()
        await relay.start()
        relayed = cluster.url.replace(f":{cluster.port}/", f":{relay.port}/")
        engine = EngineProcess(
            relayed,
            tmp_path / "data",
            "--replication-timeout",
            "2",
            "--long-poll-timeout",
            "2",
        )
        await asyncio.to_thread(engine.start)
        async with aiohttp.ClientSession() as session:
            status, headers, _ = await _get(session, engine.url, table="items", offset="-1")
            assert status == 200
            tip = {"table": "items", "handle": headers["electric-handle"]}
            tip["offset"] = headers["electric-offset"]
            while "electric-up-to-date" not in headers:
                status, headers, _ = await _get(session, engine.url, **tip)
                assert status == 200
                tip["offset"] = headers["electric-offset"]
            walsenders = cluster.query("SELECT pid FROM pg_stat_replication")
            assert len(walsenders) == 1, walsenders

            # The stream's connection goes silent; a row is committed meanwhile.
            assert relay.freeze_replication() == 1
            cluster.query("INSERT INTO items VALUES (1001, 7)")

            rows: list[dict[str, Any]] = []

            async def row_came() -> bool:
                status, headers, body = await _get(session, engine.url, **tip, live="true")
                if status == 200:
                    rows.extend(m for m in orjson.loads(body) if "key" in m)
                    tip["offset"] = headers["electric-offset"]
                else:  # (503 stream_not_ready while the stream is down; retried as clients do)
                    assert status == 503, (status, body[:300])
                    await asyncio.sleep(0.5)
                return any(m["value"]["id"] == "1001" for m in rows)

            await wait_until_async(row_came, timeout=60, message="row 1001 delivered")
        log = engine.log_tail(200_000)
        assert f"(pid {walsenders[0][0]}) still held" in log, log[-3000:]
        # The frozen walsender is gone; the one left is the engine's new stream.
        now = cluster.query("SELECT pid FROM pg_stat_replication")
        assert len(now) == 1 and now != walsenders, (now, walsenders)
    finally:
        if engine is not None:
            engine.stop()
        await relay.close()
        cluster.stop()

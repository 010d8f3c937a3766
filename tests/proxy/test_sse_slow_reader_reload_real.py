"""A reload that withdraws a rule ends the SSE response of a client that had fallen behind its
shared stream, without a stream of its own under the withdrawn rule (attack round 8, 23:19, HIGH).

Real path: proxy (collapsing on: SSE clients share one engine stream per shape, the default) ->
`sync-engine` -> Postgres; a real config file rewritten (atomic rename) and reloaded by the poll.
Two SSE readers of one shape: one reads everything, the other has a 16 KB receive buffer and
stops reading while ~1.5 MB of rows is written, so the proxy takes it off the shared stream
(more than `LAG_LIMIT` behind) and it drains its own buffer. Then the reload withdraws the
member rule and a row is written. On the old code (w-lead bcce732) the slow reader, once it
read again, went on on an engine stream of its own opened from its old authorisation: it got
the row written after the reload, and its response stayed open (~60 s, until the engine ended
that stream). Now its response ends where it was, without that row.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg

from tests.proxy.real_proxies import items_config
from tests.proxy.sse_fakes import RawSseSocket
from tests.support.engine_process import EngineProcess, sync_through
from tests.support.waiting import wait_until_async

ROWS = 600  # x 5 KB: far more than LAG_LIMIT (256 KB) plus the socket buffers
LEAK_ID = 100_000


def _sse_ids(body: bytes) -> list[str]:
    ids = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: ") and b'"key"' in block:
            ids.append(json.loads(block[6:])["value"]["id"])
    return ids


async def test_a_slow_sse_reader_gets_nothing_written_after_a_reload_withdrew_its_rule(
    items_engine: EngineProcess, db_url: str, idp_server: Any, reloadable_proxy: Any
) -> None:
    config = items_config(items_engine, idp_server, sse=True, reload_interval=0.05)
    proxy = await reloadable_proxy(config)
    token = proxy.tokens.make()
    _, handle, offset = await sync_through(proxy, token)
    target = f"/v1/shape?table=items&handle={handle}&offset={offset}"

    loop = asyncio.get_running_loop()
    fast = RawSseSocket(proxy, token, target)
    slow = RawSseSocket(proxy, token, target)

    async def read_on(reader: RawSseSocket) -> None:
        while not reader.received.endswith(b"\r\n0\r\n\r\n"):
            piece = await loop.sock_recv(reader.sock, 65536)
            if not piece:
                return
            reader.received += piece

    reading: asyncio.Task[None] | None = None
    try:
        for reader in (fast, slow):
            head = await reader.open()
            assert head.startswith(b"HTTP/1.1 200"), head
        reading = asyncio.create_task(read_on(fast))
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, 'org-a', repeat('x', 5000) FROM generate_series(10, %s) g",
                (10 + ROWS - 1,),
            )
        # The fast reader has every row: the shared stream passed them all on, and the slow
        # reader (~16 KB taken) was left behind it: off the shared stream, draining its buffer.
        last = str(10 + ROWS - 1)
        await wait_until_async(
            lambda: last in _sse_ids(fast.body()), timeout=60, message="the fast reader has all"
        )
        streams = list(proxy.app.forwarder._streams._streams.values())
        assert [len(stream.subscribers) for stream in streams] == [1], "the slow one fell behind"
        # The reload withdraws the member rule (the token's only rule).
        proxy.withdraw("member")
        proxy.write_config()

        async def refused() -> bool:
            async with proxy.client.get(
                f"{target.split('&handle')[0]}&offset=-1",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                return resp.status == 403

        await wait_until_async(refused, timeout=30, message="the reload applied")
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (%s, 'org-a', 'after the reload')", (LEAK_ID,))
        # The slow reader reads again, until its response ends (or the row arrives: the old
        # code's stream of its own would then stay open until the engine ends it).
        while str(LEAK_ID) not in _sse_ids(slow.body()):
            if slow.received.endswith(b"\r\n0\r\n\r\n"):
                break
            piece = await asyncio.wait_for(loop.sock_recv(slow.sock, 65536), 90)
            if not piece:
                break
            slow.received += piece
        ids = _sse_ids(slow.body())
        assert str(LEAK_ID) not in ids, "a row written after the reload reached the slow reader"
        assert slow.received.endswith(b"\r\n0\r\n\r\n"), slow.received[-200:]  # a clean end
        await asyncio.wait_for(reading, 60)  # (the reload ended the fast reader's response too)
        assert str(LEAK_ID) not in _sse_ids(fast.body())
    finally:
        if reading is not None:
            reading.cancel()
        slow.close()
        fast.close()

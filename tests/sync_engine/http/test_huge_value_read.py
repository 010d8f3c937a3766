"""A client reading a huge value (one row of many MB) costs the engine about the value once,
not once more for the answer's body, and its read does not hold the event loop.

`_respond` joined `[`, the entries and `]` into one body: a copy of the whole answer on top of
the entries read (+759 MB at peak for a 200 MB row, measured by faults), the loop held for the
copy. The answer is written in pieces now, byte for byte the same. And the log was read, its
records checked and split, on the event loop (10 MB: 13-25 ms quiet, 0.3-0.6 s under load,
every other client waiting), for a long-poll and for an SSE stream alike; big reads are in a
worker thread now (`ShapeLog.read_after_async`). Real path: the engine's app on a real socket,
real Postgres, a raw socket client that reads into one buffer made before; the engine's memory
measured with tracemalloc (Python's own allocations).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import tracemalloc

import orjson
import pytest

from sync_engine.log import files
from sync_engine.log.offsets import parse_offset
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine

#: The value: big enough that a copy of it stands out from everything else the read makes.
VALUE_BYTES = 12 << 20


async def _read_response(sock: socket.socket, into: bytearray) -> int:
    """Read one response (its head and `Content-Length` bytes of body) into `into`; returns
    its length. Allocates nothing per read (`recv_into` a slice of `into`)."""
    loop = asyncio.get_running_loop()
    view = memoryview(into)
    got = 0
    want = -1
    while want < 0 or got < want:
        n = await loop.sock_recv_into(sock, view[got:])
        assert n, "the engine closed the connection early"
        got += n
        if want < 0 and (end := into.find(b"\r\n\r\n", 0, got)) >= 0:
            head = bytes(into[:end]).lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            want = end + 4 + length
    return got


async def test_a_huge_value_is_read_off_the_loop_without_a_copy_of_the_answer(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    readers: list[str] = []  # (the threads that read the value's record)
    run_read = files._run_read

    def recorded(plan: files.LogRead) -> list[bytes] | str:
        if plan.size >= VALUE_BYTES:
            readers.append(threading.current_thread().name)
        return run_read(plan)

    monkeypatch.setattr(files, "_run_read", recorded)
    engine.sql("CREATE TABLE big (id int PRIMARY KEY, payload text)")
    _, handle, offset = await engine.sync(table="big")
    shape = engine.source.shape(handle)
    engine.sql("INSERT INTO big VALUES (1, repeat('x', %s))", (VALUE_BYTES,))
    await wait_until_async(
        lambda: shape.log.latest_offset > parse_offset(offset), timeout=60, message="logged"
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    server = engine.client.server
    into = bytearray(VALUE_BYTES + (1 << 20))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await loop.sock_connect(sock, (server.host, server.port))
        target = f"/v1/shape?table=big&handle={handle}&offset={offset}"
        await loop.sock_sendall(sock, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        size = await _read_response(sock, into)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        sock.close()
    head, _, body = bytes(into[:size]).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    messages = orjson.loads(body)
    assert [m["value"]["payload"] for m in messages if "value" in m] == ["x" * VALUE_BYTES]
    assert messages[-1]["headers"]["control"] == "up-to-date"
    # the value once: the entry as read from the log, straight into its own bytes (3.0x
    # before: the record read, the entry copied out of it, the answer joined)
    assert peak < 1.5 * VALUE_BYTES, peak / VALUE_BYTES

    # a client resuming from there, behind the tip, is answered without reading the first
    # transaction again (`Shape.issued` read the whole first chunk on the loop for its LSN)
    after = head.split(b"electric-offset: ")[1].split(b"\r\n")[0].decode()
    engine.sql("INSERT INTO big VALUES (2, 'small')")
    await wait_until_async(
        lambda: shape.log.latest_offset > parse_offset(after), timeout=60, message="logged"
    )
    status, _, answer = await engine.get(table="big", handle=handle, offset=after)
    assert status == 200 and [m["value"]["payload"] for m in answer if "value" in m] == ["small"]

    # an SSE stream from there reads it off the loop too
    async with engine.client.get(
        "/v1/shape",
        params={
            "table": "big",
            "handle": handle,
            "offset": offset,
            "live": "true",
            "live_sse": "true",
        },
    ) as resp:
        assert resp.status == 200
        seen = b""
        while b'"control":"up-to-date"' not in seen:
            piece = await asyncio.wait_for(resp.content.readany(), 30)
            assert piece, "the stream ended early"
            seen = seen[-64:] + piece
    assert len(readers) == 2 and threading.main_thread().name not in readers, readers  # (GET, SSE)

"""SSE collapsed, on the real path: many SSE clients -> proxy -> `sync-engine` -> PostgreSQL.

Each client here follows the shape as the npm client does over SSE: it takes the response's
`electric-offset` on open, keeps the changes of a batch once its up-to-date arrives, and
reconnects from `<global_last_seen_lsn>_0` when the stream ends (or breaks). Every client must
hold every change exactly once, whenever it joined and however slowly it read, while the
engine serves one stream per shape (counted by the proxy's upstream request counter: every
request the engine gets).
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from yarl import URL

from proxy.config.loader import build_config
from proxy.http.handlers import FORWARDER
from proxy.upstream.sse import SharedStream
from tests.proxy.engines import engine_on_a_new_database
from tests.proxy.proxy_fakes import base_config
from tests.proxy.sse_fakes import RawSseSocket
from tests.support.engine_process import EngineProcess
from tests.support.waiting import wait_until_async

SHAPE = "/v1/shape?table=items"


_SETUP = (
    "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text)",
    "INSERT INTO items VALUES (1, 'org-a', 'a1'), (2, 'org-b', 'b1')",
)
_ARGS = ("--long-poll-timeout", "3", "--no-fsync")


@pytest.fixture(scope="module")
def engine_secret() -> str:
    """One secret for the module (the shared engine's; the conftest's is per test)."""
    return "engine-secret-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def engine(
    pg_server_url: str, tmp_path_factory: pytest.TempPathFactory, engine_secret: str
) -> Iterator[EngineProcess]:
    """The engine through its CLI, shared by the module's tests that only add rows (each
    syncs to the tip first and inserts ids of its own: starting one per test was ~1 s
    each); SSE streams end after 2 s, so tests see several."""
    with engine_on_a_new_database(
        pg_server_url, tmp_path_factory.mktemp("fanout") / "data", engine_secret, *_SETUP,
        args=(*_ARGS, "--sse-timeout", "2"),
    ) as shared:  # fmt: skip
        yield shared


@pytest.fixture
def own_engine(
    db_url: str, tmp_path: Path, engine_secret: str, request: pytest.FixtureRequest
) -> Iterator[EngineProcess]:
    """An engine of the test's own, for what changes the shape or the engine for everyone (a
    TRUNCATE, a kill), or another SSE timeout than 2 s (indirect parametrisation)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in _SETUP:
            conn.execute(statement)
    sse_timeout = getattr(request, "param", 2)
    args = ("--secret", engine_secret, *_ARGS, "--sse-timeout", str(sse_timeout))
    process = EngineProcess(db_url, tmp_path / "data", *args)
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def _proxy(engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any) -> Any:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10, connect_timeout=1, retry_after=1)
    return await make_proxy(build_config(config, environ))


@pytest.fixture
async def proxy(engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any) -> Any:
    return await _proxy(engine, idp_server, environ, make_proxy)


@pytest.fixture
async def own_proxy(
    own_engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any
) -> Any:
    return await _proxy(own_engine, idp_server, environ, make_proxy)


class SseClient:
    """One SSE client of the shape, as `ShapeStream` with `liveSse: true` follows it."""

    def __init__(self, proxy: Any, token: str, handle: str, offset: str) -> None:
        self.proxy = proxy
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        self.handle = handle
        self.offset = offset
        self.cursor = ""
        self.changes: list[tuple[str, str, str | None]] = []  # (id, operation, title)
        self.statuses: list[int] = []
        self.opened = 0  # streams opened with a 200
        self.must_refetch = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> SseClient:
        self.task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def ids(self) -> list[str]:
        return [key for key, operation, _ in self.changes if operation == "insert"]

    async def _run(self) -> None:
        while not self.must_refetch:
            path = (
                f"{SHAPE}&handle={self.handle}&offset={self.offset}&live=true&live_sse=true"
                f"&cursor={self.cursor}"
            )
            try:
                await self._stream(path)
            except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError):
                pass  # a broken stream: reconnect from the last up-to-date, as the client does
            await asyncio.sleep(0.05)

    async def _stream(self, path: str) -> None:
        async with self.proxy.client.get(path, headers=self.headers) as resp:
            self.statuses.append(resp.status)
            if resp.status == 409:
                assert orjson.loads(await resp.read()) == [{"headers": {"control": "must-refetch"}}]
                self.must_refetch = True
                return
            if resp.status != 200:
                await resp.read()
                await asyncio.sleep(0.2)
                return
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            self.offset = resp.headers["electric-offset"]
            self.cursor = resp.headers["electric-cursor"]
            self.opened += 1
            batch: list[dict[str, Any]] = []
            data: list[bytes] = []
            async for line in resp.content:
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
                    continue
                if line or not data:
                    continue  # a comment (keep-alive), or a blank line after one
                message = orjson.loads(b"\n".join(data))
                data = []
                headers = message["headers"]
                if headers.get("control") == "up-to-date":
                    for m in batch:
                        value = m.get("value", {})
                        self.changes.append((value.get("id"), headers_op(m), value.get("title")))
                    batch = []
                    self.offset = f"{headers['global_last_seen_lsn']}_0"
                elif "operation" in headers:
                    batch.append(message)


def headers_op(message: dict[str, Any]) -> str:
    return str(message["headers"]["operation"])


def _upstream_requests(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith("shape_proxy_upstream_requests_total "):
            return float(line.split()[1])
    raise AssertionError("no upstream request counter")


async def _engine_requests(proxy: Any) -> float:
    return _upstream_requests((await proxy.get("/metrics")).body.decode())


async def _sync(proxy: Any, token: str) -> tuple[str, str]:
    """Follow the shape to up-to-date (the client's non-live requests); its handle, offset."""
    path = f"{SHAPE}&offset=-1"
    for _ in range(50):
        reply = await proxy.get(path, token=token)
        assert reply.status == 200, reply.body
        handle, offset = reply.headers["electric-handle"], reply.headers["electric-offset"]
        if "electric-up-to-date" in reply.headers:
            return handle, offset
        path = f"{SHAPE}&offset={offset}&handle={handle}"
    raise AssertionError("never up to date")


def _insert(db_url: str, *rows: tuple[int, str]) -> None:
    """One transaction inserting `rows` (id, title) for org-a."""
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        for id_, title in rows:
            conn.execute("INSERT INTO items VALUES (%s, 'org-a', %s)", (id_, title))


async def _all_have(clients: list[SseClient], ids: list[str], timeout: float = 60) -> None:
    await wait_until_async(
        lambda: all(len(c.ids()) >= len(ids) for c in clients),
        timeout=timeout,
        message=f"every client has {len(ids)} inserts",
    )
    for client in clients:
        assert client.ids() == ids  # each change exactly once, in commit order


async def _open(clients: list[SseClient]) -> None:
    await wait_until_async(
        lambda: all(c.opened for c in clients), message="every SSE client's stream is open"
    )


async def test_many_sse_clients_share_one_engine_stream_and_get_each_change_once(
    proxy: Any, engine: EngineProcess
) -> None:
    """20 clients (two users, same org: the same rewritten URL) across several engine stream
    lifetimes (2 s each): the engine holds one stream of theirs at a time, not one per client
    (its parked-requests gauge, sampled while the changes are written: a bound on requests
    per wall-clock lifetime is load-sensitive: catch-ups at stream ends add requests)."""
    tokens = [proxy.tokens.make(sub=f"user-{i % 2}", org_id="org-a") for i in range(20)]
    handle, offset = await _sync(proxy, tokens[0])
    before = await _engine_requests(proxy)
    clients = [SseClient(proxy, t, handle, offset).start() for t in tokens]
    parked: list[int] = []

    async def sample() -> None:
        while True:
            parked.append(await engine.parked_requests())
            await asyncio.sleep(0.05)  # (a sampling interval)

    sampler = asyncio.create_task(sample())
    try:
        await _open(clients)
        expected: list[str] = []
        for i in range(10, 16):  # over ~4.5 s: the clients reconnect twice meanwhile
            rows = [(i, f"t{i}")] if i % 3 else [(i, f"t{i}"), (i + 100, f"t{i + 100}")]
            _insert(engine.db_url, *rows)
            expected += [str(r[0]) for r in rows]
            await asyncio.sleep(0.75)
        await _all_have(clients, expected)
        # (2: at a hand-over the engine may not yet have seen a dropped stream's close)
        assert parked and max(parked) <= 2, parked
        opened = sum(c.opened for c in clients)
        assert await _engine_requests(proxy) - before < opened
        assert all(c.opened >= 2 for c in clients)  # streams really ended and reopened
        assert all(c.changes[0][2] == "t10" for c in clients)  # rows as written (org-a only)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        for client in clients:
            await client.stop()


async def test_a_client_joining_mid_stream_gets_exactly_what_it_missed(
    engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """Joining a stream that is ahead of the client (within what it remembers): the missed
    changes first, then the live ones, no engine request; a client behind what the stream
    remembers goes to the engine for its catch-up, then joins."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    handle, old_offset = await _sync(proxy, token)
    db_url = engine.db_url
    _insert(db_url, (20, "before"))  # before any stream: a later joiner at old_offset is behind
    # A long-poll from old_offset answers once the engine has it: the offset after it.
    reply = await proxy.get(
        f"{SHAPE}&handle={handle}&offset={old_offset}&live=true&cursor=", token=token
    )
    assert b'"before"' in reply.body
    offset = reply.headers["electric-offset"]
    first = SseClient(proxy, token, handle, offset).start()
    clients = [first]
    try:
        await _open(clients)
        _insert(db_url, (21, "x"))
        _insert(db_url, (22, "y"), (23, "z"))
        await _all_have([first], ["21", "22", "23"])
        requests = await _engine_requests(proxy)
        # Mid-stream: at the offset the first client started from, within the history.
        joiner = SseClient(proxy, token, handle, offset).start()
        clients.append(joiner)
        await _all_have([joiner], ["21", "22", "23"])
        assert await _engine_requests(proxy) == requests  # the joiner cost the engine nothing
        # Behind: at an offset before the stream's start ("20" predates it).
        behind = SseClient(proxy, token, handle, old_offset).start()
        clients.append(behind)
        await _all_have([behind], ["20", "21", "22", "23"])
        _insert(db_url, (24, "live"))
        await _all_have([first, joiner], ["21", "22", "23", "24"])
        await _all_have([behind], ["20", "21", "22", "23", "24"])
    finally:
        for client in clients:
            await client.stop()


class RawSseReader(RawSseSocket):
    """One SSE request on a plain socket with a small receive buffer, read at `rate` bytes a
    second (a phone on a slow link): it reads until the response ends or breaks, and tells
    the changes each up-to-date completed, as the npm client applies them."""

    def __init__(self, proxy: Any, token: str, handle: str, offset: str, rate: float) -> None:
        super().__init__(proxy, token, f"{SHAPE}&handle={handle}&offset={offset}")
        self.rate = rate

    async def read_until(self, done: Any, timeout: float = 30) -> str:
        """Read at `rate` until `done(batches)` or the response ends: how it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if done(self.batches()):
                return "done"
            if self.received.endswith(b"\r\n0\r\n\r\n"):
                return "ended"  # (cleanly: the connection stays open for the next request)
            try:
                piece = await asyncio.wait_for(loop.sock_recv(self.sock, 8192), 5)
            except (ConnectionResetError, TimeoutError):
                return "broken"
            if not piece:
                return "closed"
            self.received += piece
            await asyncio.sleep(len(piece) / self.rate)
        return "timeout"

    def batches(self) -> list[list[str]]:
        """The ids inserted by each batch an up-to-date closed, in order."""
        batches: list[list[str]]
        batch: list[str]
        body, batches, batch = self.body(), [], []
        for block in body.split(b"\n\n"):
            if not block.startswith(b"data:"):
                continue
            message = orjson.loads(block[5:])
            headers = message["headers"]
            if headers.get("control") == "up-to-date":
                batches.append(batch)
                batch = []
            elif headers.get("operation") == "insert":
                batch.append(message["value"]["id"])
        return batches


async def test_slow_and_stopped_readers_pass_a_big_transaction_in_one_response(
    proxy: Any, engine: EngineProcess
) -> None:
    """Chaos B: a reader slower than loopback, behind a transaction bigger than what the
    proxy lets wait unsent for a client of the shared stream, gets through it in the same
    response, each change once, while the fast readers go on. It was cut ~0.5 MB in,
    resumed from before the transaction and was cut again, for ever (the npm client gives up
    SSE after three). A reader that stops meanwhile holds up nobody and, reading again,
    gets it all too (as from the engine, which waits `SEND_TIMEOUT` for it): it was cut."""
    token = proxy.tokens.make()
    handle, offset = await _sync(proxy, token)
    readers = [SseClient(proxy, token, handle, offset).start() for _ in range(2)]
    slow = RawSseReader(proxy, token, handle, offset, rate=4_000_000)
    stopped = RawSseReader(proxy, token, handle, offset, rate=1e9)
    try:
        for raw in (slow, stopped):
            assert (await raw.open()).startswith(b"HTTP/1.1 200")
        await _open(readers)
        expected = [str(i) for i in range(1100, 1115)]
        _insert(engine.db_url, *((i, "t" * 100_000) for i in range(1100, 1115)))  # one 1.5 MB tx
        await _all_have(readers, expected)  # (`stopped` reads nothing meanwhile)
        ended = await slow.read_until(lambda batches: expected in batches)
        assert ended == "done", (ended, len(slow.received))
        assert [i for batch in slow.batches() for i in batch] == expected
        ended = await stopped.read_until(lambda batches: expected in batches)
        assert ended == "done", (ended, len(stopped.received))
        assert [i for batch in stopped.batches() for i in batch] == expected
        _insert(engine.db_url, (1115, "after"))  # and they go on, each change once
        await _all_have(readers, [*expected, "1115"])
        ended = await slow.read_until(lambda batches: ["1115"] in batches)
        assert ended in ("done", "ended"), ended  # (or reconnects from past the transaction)
    finally:
        slow.close()
        stopped.close()
        for client in readers:
            await client.stop()


async def test_shape_rotation_under_a_shared_stream_is_a_409_for_every_client(
    own_proxy: Any, db_url: str
) -> None:
    proxy = own_proxy
    tokens = [proxy.tokens.make(sub=f"user-{i}") for i in range(8)]
    handle, offset = await _sync(proxy, tokens[0])
    clients = [SseClient(proxy, t, handle, offset).start() for t in tokens]
    try:
        await _open(clients)
        _insert(db_url, (30, "before"))
        await _all_have(clients, ["30"])
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE items")  # the shape rotates: its streams end, then 409
        await wait_until_async(
            lambda: all(c.must_refetch for c in clients), timeout=20, message="a 409 for all"
        )
        for client in clients:
            assert client.ids() == ["30"]
    finally:
        for client in clients:
            await client.stop()


async def test_engine_restart_under_a_shared_stream(
    own_proxy: Any, own_engine: EngineProcess, db_url: str
) -> None:
    """The engine dies mid-stream: clients see the stream break, retry through the proxy's
    502s, and once the engine is back they get later changes, none twice."""
    proxy, engine = own_proxy, own_engine
    tokens = [proxy.tokens.make(sub=f"user-{i}") for i in range(6)]
    handle, offset = await _sync(proxy, tokens[0])
    clients = [SseClient(proxy, t, handle, offset).start() for t in tokens]
    try:
        await _open(clients)
        _insert(db_url, (40, "before"))
        await _all_have(clients, ["40"])
        engine.kill()
        await wait_until_async(
            lambda: all(502 in c.statuses for c in clients), message="the engine is gone"
        )
        _insert(db_url, (41, "while down"))
        engine.start()
        _insert(db_url, (42, "after"))
        await _all_have(clients, ["40", "41", "42"], timeout=30)
    finally:
        for client in clients:
            await client.stop()


async def test_clients_leaving_do_not_disturb_the_others(proxy: Any, engine: EngineProcess) -> None:
    db_url = engine.db_url
    token = proxy.tokens.make()
    handle, offset = await _sync(proxy, token)
    clients = [SseClient(proxy, token, handle, offset).start() for _ in range(10)]
    try:
        await _open(clients)
        _insert(db_url, (50, "one"))
        await _all_have(clients, ["50"])
        for client in clients[:5]:  # half of them go away mid-stream
            await client.stop()
        _insert(db_url, (51, "two"))
        await _all_have(clients[5:], ["50", "51"])
    finally:
        for client in clients:
            await client.stop()


@pytest.mark.parametrize("own_engine", [60], indirect=True)
async def test_the_engine_stream_ends_when_its_last_client_leaves(
    own_engine: EngineProcess, db_url: str, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """Nobody reads it: the shared stream (and its engine request) goes at once, not when the
    engine's 60 s run out (aiohttp's test server cancels a handler whose client went away,
    as the proxy's server does)."""
    config = base_config(own_engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=30)  # above the engine's keep-alive gap
    proxy = await make_proxy(build_config(config, environ))
    forwarder = proxy.app[FORWARDER]
    token = proxy.tokens.make()
    handle, offset = await _sync(proxy, token)
    clients = [SseClient(proxy, token, handle, offset).start() for _ in range(3)]
    await _open(clients)
    assert forwarder.shared_streams == 1
    await clients[0].stop()
    _insert(db_url, (60, "still read"))
    await _all_have(clients[1:], ["60"])
    assert forwarder.shared_streams == 1
    for client in clients[1:]:
        await client.stop()
    await wait_until_async(
        lambda: forwarder.shared_streams == 0, timeout=5, message="the unread stream is closed"
    )


async def test_a_stream_its_last_client_left_is_freed_at_once(
    engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    """The shared stream and what it read are freed as soon as it ends, not at the cyclic
    collector's next pass (which the real proxy runs rarely: `tune_gc`): its cancelled task
    kept its CancelledError, whose traceback kept the stream, which kept the task."""
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    forwarder = proxy.app[FORWARDER]
    token = proxy.tokens.make()
    handle, offset = await _sync(proxy, token)
    gc.collect()
    gc.disable()
    try:
        clients = [SseClient(proxy, token, handle, offset).start() for _ in range(2)]
        await _open(clients)
        for client in clients:
            await client.stop()
        await wait_until_async(lambda: forwarder.shared_streams == 0, timeout=5)
        await asyncio.sleep(0.1)
        left = [o for o in gc.get_objects() if isinstance(o, SharedStream)]
    finally:
        gc.enable()
    assert left == []


class GateRelay:
    """A TCP relay between the proxy and the engine that can hold one engine answer's body.

    `hold(marker)`: the next request whose bytes contain `marker` gets its response headers
    at once and its body only after `release()` (how the duplicate of `test_sse_ahead.py`
    came about by chance: a client joined a shared stream before its first read arrived).
    """

    def __init__(self, engine_url: str) -> None:
        url = URL(engine_url)
        self.engine = (url.host or "127.0.0.1", url.port or 80)
        self.marker: bytes | None = None
        self.held = asyncio.Event()  # a matching request's headers went through
        self.gate = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def hold(self, marker: bytes) -> None:
        self.marker, self.gate = marker, asyncio.Event()
        self.held.clear()

    def release(self) -> None:
        self.gate.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.engine)
        gated: list[asyncio.Event] = []  # the gate for the response to come, if held
        try:
            await asyncio.gather(
                self._requests(reader, up_writer, gated), self._responses(up_reader, writer, gated)
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            up_writer.close()
            self.tasks.discard(task)

    async def _requests(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, gated: list[asyncio.Event]
    ) -> None:
        while piece := await reader.read(65536):
            if self.marker is not None and self.marker in piece:
                self.marker = None
                gated.append(self.gate)
            up.write(piece)
            await up.drain()
        up.close()

    async def _responses(
        self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: list[asyncio.Event]
    ) -> None:
        """Bytes after a held request are its answer's (the proxy sends a request on a
        connection only once it has read the answer before): its headers, then the gate."""
        head = b""
        while piece := await up.read(65536):
            if gated:
                head += piece
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                writer.write(head[: end + 4])
                await writer.drain()
                self.held.set()
                await gated.pop().wait()
                piece, head = head[end + 4 :], b""
            writer.write(piece)
            await writer.drain()
        writer.close()


async def test_a_client_ahead_of_a_shared_catch_up_gets_no_change_twice(
    engine: EngineProcess, idp_server: Any, environ: Any, make_proxy: Any
) -> None:
    db_url = engine.db_url
    """The duplicate the npm client saw (`sse-fanout.test.mjs`: insert 5 twice), on the
    real engine: a client still behind a change opens the shared stream (the engine's
    answer is that change, its catch-up), and a client that already had it joins before the
    catch-up arrives. It must not get the change again (it did: every read went to every
    client), and both go on to get later changes once."""
    relay = GateRelay(engine.url)
    config = base_config(await relay.start(), str(idp_server.make_url("/jwks.json")))
    proxy = await make_proxy(build_config(config, environ))
    token = proxy.tokens.make()
    handle, old = await _sync(proxy, token)
    _insert(db_url, (70, "caught up"))

    # The change's LSN from a long-poll: where an SSE client resumes once it has it.
    async def change() -> list[Any]:
        path = f"{SHAPE}&handle={handle}&offset={old}&live=true&cursor="
        reply = await proxy.get(path, token=token)
        return [m for m in orjson.loads(reply.body) if "operation" in m["headers"]]

    (message,) = await wait_until_async(change, message="the change, by long-poll")
    new = f"{message['headers']['lsn']}_0"
    relay.hold(f"offset={old}&".encode())
    behind = SseClient(proxy, token, handle, old).start()
    clients = [behind]
    try:
        await wait_until_async(relay.held.is_set, message="the catch-up's headers")
        await _open([behind])
        requests = await _engine_requests(proxy)
        ahead = SseClient(proxy, token, handle, new).start()
        clients.append(ahead)
        await _open([ahead])  # attached to the shared stream, whose body is still held
        assert await _engine_requests(proxy) == requests  # (it joined, nothing of its own)
        relay.release()
        await _all_have([behind], ["70"])
        _insert(db_url, (71, "after"))
        await _all_have([behind], ["70", "71"])
        await _all_have([ahead], ["71"])  # was ["70", "71"]
    finally:
        for client in clients:
            await client.stop()
        await relay.close()

"""One forward's own cost in-process, no sockets: the proxy's fast lane or the floor forwarder.

Run: `.venv/bin/python benchmarks/floor_inprocess.py {proxy|floor} [N] [--root DIR]
[--kind live|follower|catch-up]`.

Why: S1's CPU per request includes the kernel and the event loop and moves with the
machine's load; this measures only the Python (and the C it calls) of one forward, so a
change to the fast lane can be judged in minutes. Each forward: the client's request bytes
into the connection's `data_received`, the engine request it writes taken from a fake
transport, a recorded engine answer (a small live answer, 17 headers, 302 bytes of body)
into the engine connection's `data_received`, and the answer the client gets taken from
its fake transport. The proxy runs as in S1's "proxy" arm (collapsing and cache off), after
100 forwards that authorise the request and keep an engine connection.

Load-independent figure: instructions per forward under callgrind, the difference between
N=1000 and N=0 (compile first, so both runs load the same .pyc files):
    .venv/bin/python -m compileall -q proxy benchmarks sync_engine
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.0 .venv/bin/python \\
        benchmarks/floor_inprocess.py proxy 0   # then with 1000; (Ir(1000) - Ir(0)) / 1000
`benchmarks/floor_instructions.py` runs both and prints the difference per forward.
`--root DIR` measures another checkout's proxy (its `proxy` package, this script's floor).
`--kind` is S1's arm (`s1_front.py --kinds`): `live` one URL repeated (the default),
`follower` a live follower's (a cursor never sent before and one of two offsets in turn on
every request: no two requests the same URL), `catch-up` a non-live request repeated.
This is a measuring tool: it reaches into the proxy's engine connection to fake its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent

ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"electric-handle: 3762131176-1796323926870057\r\n"
    b"electric-offset: 49285728_0\r\n"
    b"electric-has-data: true\r\n"
    b"cache-control: public, max-age=5, stale-while-revalidate=5\r\n"
    b"electric-cursor: 67891960\r\n"
    b"electric-up-to-date: \r\n"
    b'etag: "3762131176-1796323926870057:49285536_8:49285728_0"\r\n'
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"electric-server: shapegate/0.1.0\r\n"
    b"x-request-id: 9f42602d921bad710000000000000001\r\n"
    b"access-control-allow-origin: *\r\n"
    b"access-control-expose-headers: electric-cursor,electric-handle,electric-has-data,"
    b"electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,"
    b"retry-after\r\n"
    b"access-control-allow-methods: GET, POST, HEAD, DELETE, OPTIONS\r\n"
    b"Content-Length: 302\r\n"
    b"Date: Thu, 03 Dec 2026 18:52:24 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n"
    b"\r\n"
    b'[{"key":"\\"public\\".\\"items\\"/\\"1000006\\"","value":{"id":"1000006","org_id":"org-a",'
    b'"title":"one live row"},"headers":{"operation":"insert","relation":["public","items"],'
    b'"txids":[732],"lsn":"49285728","op_position":0,"last":true}},{"headers":{"control":'
    b'"up-to-date","global_last_seen_lsn":"49285728"}}]'
)
QUERY = "table=items&offset=49285536_8&handle=3762131176-1796323926870057&live=true&cursor=1"
#: Per `--kind`: the query, `{n}` a request's own number (a follower's new cursor; its offset
#: is one of `FOLLOWER_OFFSETS` by the number's parity).
QUERIES = {
    "live": QUERY,
    "follower": "table=items&offset={offset}&handle=3762131176-1796323926870057&live=true"
    "&cursor={n}",
    "catch-up": "table=items&offset=49285536_8&handle=3762131176-1796323926870057",
}
FOLLOWER_OFFSETS = ("49285536_8", "49285410_0")
#: Distinct requests made before measuring (the same number whatever N: the instruction
#: count's N=0 run makes them too); a follower's repeat after this many.
DISTINCT = 4096


def requests_of(kind: str, head: str) -> list[bytes]:
    """The requests forwarded in turn: `head` (the line after the target and the headers,
    `{query}` where the query goes) with this kind's queries."""
    template = QUERIES[kind]
    if "{n}" not in template:
        return [head.format(query=template).encode()]
    return [
        head.format(
            query=template.format(n=10_000_000 + n, offset=FOLLOWER_OFFSETS[n % 2])
        ).encode()
        for n in range(DISTINCT)
    ]


class FakeTransport:
    """Records what is written; never closes, never pushes back."""

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        self.on_write = on_write
        self.closed = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def writelines(self, items: Any) -> None:
        self.on_write(b"".join(items))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


async def _until(ready: Callable[[], bool]) -> None:
    """Let the loop run until `ready()` (a request the fast lane does not take has a task)."""
    for _ in range(10_000):
        if ready():
            return
        await asyncio.sleep(0)
    raise RuntimeError("the forward did not complete")


async def proxy_forward(
    inflight: int = 1, kind: str = "live"
) -> tuple[Callable[[], bytes], Callable[[], Awaitable[None]]]:
    """The proxy app of S1's "proxy" arm, its engine connections faked; and its stop.
    `inflight` > 1: each call forwards that many requests, one per client connection, all
    sent before the engine answers any (as S1's c = 32 keeps requests in flight)."""
    import s1_front
    from _common import ENGINE_SECRET, ISSUER, JWT_SECRET, UNLIMITED, token

    import proxy.upstream.client as client
    from proxy.app import ProxyApp
    from proxy.config.loader import build_config
    from proxy.http.protocol import Connection

    config = {
        "server": {"host": "127.0.0.1", "port": 1},
        "upstream": {"url": "http://127.0.0.1:47001", "pool_size": 64,
                     "first_byte_timeout": 90, "secret_env": "ENGINE_SECRET"},
        "issuers": [{"issuer": ISSUER, "audience": "bench", "algorithms": ["HS256"],
                     "keys": [{"secret_env": "BENCH_JWT_SECRET"}]}],
        "tables": s1_front.TABLES, "collapse": False, "cache": {"max_bytes": 0},
        "limits": dict(UNLIMITED),
    }  # fmt: skip
    env = {"ENGINE_SECRET": ENGINE_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    app = ProxyApp(build_config(config, env), environ=env)
    await app.start()
    sent: list[Any] = []

    async def connect(  # (UpstreamPool._connect's signature, `self` the pool)
        self: client.UpstreamPool, key: tuple[str, int, bool], options: client.UpstreamOptions
    ) -> client._Connection:
        self._open += 1
        conn = client._Connection(self, key)
        conn.connection_made(FakeTransport(lambda _: sent.append(conn)))  # type: ignore[arg-type]
        self._all.add(conn)
        return conn

    client.UpstreamPool._connect = connect  # type: ignore[method-assign]
    out: list[bytes] = []
    conn = Connection(app)
    conn.connection_made(FakeTransport(out.append))  # type: ignore[arg-type]
    requests = requests_of(
        kind,
        "GET /v1/shape?{query} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer "
        f"{token(org_id='org-a')}\r\nUser-Agent: node\r\nAccept: */*\r\n\r\n",
    )
    turn = itertools.cycle(requests)
    request = requests[0]
    for _ in range(100):  # the first authorises (a task); later ones take the fast lane
        conn.data_received(next(turn))
        await _until(lambda: bool(sent))
        sent.pop().data_received(ANSWER)
        await _until(lambda: bool(out))
        out.pop()

    if inflight > 1:
        clients = [conn]
        outs = [out]
        for _ in range(inflight - 1):
            outs.append([])
            clients.append(Connection(app))
            clients[-1].connection_made(FakeTransport(outs[-1].append))  # type: ignore[arg-type]
        for _ in range(20):  # (until each has an idle engine connection: the fast lane)
            for c in clients:
                c.data_received(request)
            await _until(lambda: len(sent) == inflight)
            engines = sent[:]
            sent.clear()
            for engine in engines:
                engine.data_received(ANSWER)
            await _until(lambda: all(outs))
            for o in outs:
                o.pop()

        def forward_many() -> bytes:
            for c in clients:
                c.data_received(next(turn))
            if len(sent) != inflight:
                raise RuntimeError("a request did not take the fast lane")
            engines = sent[:]
            sent.clear()
            for engine in engines:
                engine.data_received(ANSWER)
            return b"".join([o.pop() for o in outs])

        return forward_many, app.stop

    def forward() -> bytes:
        conn.data_received(next(turn))
        sent.pop().data_received(ANSWER)
        return out.pop()

    return forward, app.stop


async def floor_forward(
    kind: str = "live",
) -> tuple[Callable[[], bytes], Callable[[], Awaitable[None]]]:
    """`floor_forwarder.py`'s protocols, its engine connections faked."""
    import floor_forwarder as floor

    forwarder = floor.Forwarder("127.0.0.1", 47001)
    sent: list[floor.Engine] = []

    async def connect(data: bytes, client: floor.Client) -> None:
        engine = floor.Engine(forwarder.pool)
        engine.connection_made(FakeTransport(lambda _: sent.append(engine)))  # type: ignore[arg-type]
        engine.send(data, client)

    forwarder._connect = connect  # type: ignore[method-assign]
    out: list[bytes] = []
    conn = floor.Client(forwarder)
    conn.connection_made(FakeTransport(out.append))  # type: ignore[arg-type]
    turn = itertools.cycle(
        requests_of(
            kind,
            "GET /v1/shape?{query}&secret=x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            "User-Agent: node\r\nAccept: */*\r\n\r\n",
        )
    )
    for _ in range(100):
        conn.data_received(next(turn))
        await _until(lambda: bool(sent))
        sent.pop().data_received(ANSWER)
        out.pop()

    def forward() -> bytes:
        conn.data_received(next(turn))
        sent.pop().data_received(ANSWER)
        return out.pop()

    async def stop() -> None:
        pass

    return forward, stop


async def main(arm: str, n: int, inflight: int = 1, kind: str = "live") -> None:
    forward, stop = await (proxy_forward(inflight, kind) if arm == "proxy" else floor_forward(kind))
    if arm != "proxy":
        inflight = 1
    n = n // inflight  # (each call forwards `inflight` requests)
    if arm == "proxy":  # (as `python -m proxy` runs: its collector tuned; the floor's not)
        from proxy.__main__ import tune_gc

        tune_gc()
    t0 = time.process_time()
    for _ in range(n):
        forward()
    cpu = time.process_time() - t0
    await stop()
    done = n * inflight
    print(f"{arm} ({kind}): {cpu / max(done, 1) * 1e6:.1f} µs of CPU per forward in-process "
          f"(N={done}{f', {inflight} in flight' if inflight > 1 else ''})")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("arm", choices=("proxy", "floor"))
    ap.add_argument("n", type=int, nargs="?", default=20000)
    ap.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose proxy")
    ap.add_argument(
        "--inflight", type=int, default=1, help="proxy: requests in flight at once (S1: 32)"
    )
    ap.add_argument("--kind", choices=tuple(QUERIES), default="live", help="S1's arm")
    a = ap.parse_args()
    sys.path[:0] = [str(a.root), str(HERE)]
    importlib.import_module("proxy")  # (now: `_common` puts this checkout first on the path)
    uvloop.run(main(a.arm, a.n, a.inflight, a.kind))

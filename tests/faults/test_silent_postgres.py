"""A silent Postgres: its processes stopped (SIGSTOP), then continued, or its network link
cut (packets dropped in a network namespace), then restored. Nothing answers and nothing
is closed: a connection's packets (new connections too) get no reply.

Requests must not hang: meanwhile a new shape gets a 503 with a JSON body and Retry-After,
an existing shape's first request is served from its log, and the replication stream,
silent, is found lost (the engine asks for a keepalive and none comes) and reconnected;
after SIGCONT the engine goes on by itself and its followers end equal to `SELECT`,
nothing lost or repeated.

Before: the catalog query of a request (a new shape's table lookup; an existing shape's
"is the table still there" at offset -1) waited for Postgres as long as it was stopped,
holding the catalog connection's lock, so every such request hung; the replication stream
waited forever on its quiet socket.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.faults.cluster import FaultCluster, PartitionedCluster
from tests.support.engine_process import EngineProcess
from tests.support.follower import Follower, Writer, expected_rows, follow_all, until_equal
from tests.support.waiting import wait_until_async

WHERES = [None, "id % 2 = 0"]
#: Long enough for the engine's own bounds (a catalog query: 5 s; the stream: 4 s here);
#: a request still waiting then is hung (it would wait as long as Postgres is stopped).
ANSWER_WITHIN = 30
WALSENDER = "SELECT active_pid FROM pg_replication_slots WHERE active_pid IS NOT NULL"


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, bytes, str]:
    async with session.get(
        url + "/v1/shape", params=params, timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN)
    ) as r:
        return r.status, await r.read(), r.headers.get("retry-after", "")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("what", ["postgres", "walsender", "partition"])
async def test_a_silent_postgres_gets_answers_and_is_followed_again(
    request: pytest.FixtureRequest, tmp_path: Path, what: str
) -> None:
    """`postgres`: every process of the cluster stopped; `walsender`: only the one sending
    the engine's replication stream (new connections are answered: a new shape is made);
    `partition`: the cluster's network link cut (packets dropped, not even the kernel
    answers)."""
    cluster: FaultCluster = request.getfixturevalue(
        "partitioned" if what == "partition" else "cluster"
    )
    engine = EngineProcess(
        cluster.url, tmp_path / "data", "--long-poll-timeout", "2", "--replication-timeout", "4"
    )
    await asyncio.to_thread(engine.start)
    followers = [Follower(engine.url, w) for w in WHERES]
    writer = Writer(cluster.url)
    stop_followers, stop_writer = asyncio.Event(), asyncio.Event()
    stopped: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            tasks = await follow_all(session, followers, stop_followers)
            writing = asyncio.create_task(writer.run(stop_writer))
            await wait_until_async(lambda: writer.committed >= 20, timeout=30, message="writes")
            if what == "partition":
                assert isinstance(cluster, PartitionedCluster)
                cluster.partition()
            elif what == "postgres":
                stopped = cluster.pids()
            else:
                stopped = [int(pid) for (pid,) in cluster.query(WALSENDER)]  # type: ignore[call-overload]
            cluster.signal(stopped, signal.SIGSTOP)

            new, existing = await asyncio.gather(
                _get(session, engine.url, table="items", where="id > 5", offset="-1"),
                _get(session, engine.url, table="items", offset="-1"),
            )
            status, body, retry_after = new
            if what != "walsender":
                assert status == 503 and retry_after, (status, body)
                assert isinstance(orjson.loads(body)["message"], str)
            else:
                assert status == 200, (status, body)
            assert existing[0] == 200, existing
            await wait_until_async(
                lambda: "the server stopped answering" in engine.log_tail(100_000),
                timeout=ANSWER_WITHIN,
                message="the silent replication stream found lost",
            )

            cluster.signal(stopped, signal.SIGCONT)
            if isinstance(cluster, PartitionedCluster):
                cluster.heal()
            target = writer.committed + 20
            await wait_until_async(
                lambda: writer.committed >= target, timeout=60, message="writes after"
            )
            stop_writer.set()
            await writing
            await until_equal(followers, [expected_rows(cluster.url, w) for w in WHERES], 60)
            stop_followers.set()
            await asyncio.gather(*tasks)
            # and a new shape is made again
            fresh = Follower(engine.url, "id > 5")
            stop = asyncio.Event()
            task = asyncio.create_task(fresh.run(session, stop))
            await wait_until_async(lambda: fresh.live, timeout=30, message="a new shape")
            stop.set()
            await task
        assert fresh.rows == expected_rows(cluster.url, "id > 5")
        for f in followers:
            f.assert_clean()
    finally:
        cluster.signal(stopped, signal.SIGCONT)
        stop_writer.set()
        stop_followers.set()
        engine.stop()

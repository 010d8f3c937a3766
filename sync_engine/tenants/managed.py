"""ManagedSource: a registered database's `Source`, with per-source limits and lag.

Each one has its own connections, replication task and shape directory (as every
`Source`), so one source's failure or slowness does not block another's. On top it adds:
- a limit on initial syncs (shape snapshots) in progress: a request that would start one
  more is answered 503 with Retry-After instead of queueing without bound;
- the replication lag of its slot (bytes of WAL not yet confirmed), polled every few seconds;
- its error explained as a reason a person can act on (`diagnose.explain`);
- the requests it is serving, so that pausing or deleting it ends them before its
  connections close (`admit`, `end_requests`): a request still using a connection that
  `stop()` closes hangs on it, and the event loop keeps watching the closed socket's number,
  which breaks whatever connection (of any source) the kernel gives that number next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from ..errors import EngineError, ServiceUnavailable
from ..http.parser_refusals import connection_cap, connections_in_use
from ..source import Source, SourceConfig, SourceState
from .diagnose import Diagnosis, explain

if TYPE_CHECKING:
    from ..shapes.definition import Described, ShapeParams
    from ..shapes.shape import Shape, ShapeDefinition

logger = logging.getLogger(__name__)

LAG_INTERVAL = 5.0
#: Seconds requests get to finish on their own when their source is paused or deleted,
#: before they are cut off; and then for the cut-off ones to unwind.
END_REQUESTS_WAIT = 5.0
#: Connections below the engine's cap from which a source holding its share of live
#: requests is refused more (`ManagedSource.holding_live`): room kept for the others.
LIVE_RESERVE_MIN = 8


def live_reserve(cap: int) -> int:
    """Connections kept, near a cap of `cap`, for sources below their share of live
    requests: an eighth of the cap, at least `LIVE_RESERVE_MIN`."""
    return max(LIVE_RESERVE_MIN, cap // 8)


def _restarting() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Source is starting again: its Postgres went back in time (restored from a disk or"
        " VM snapshot?); its shapes were retired, refetch them",
        retry_after=2,
        code="source_restarting",
    )


class ManagedSource(Source):
    def __init__(
        self,
        config: SourceConfig,
        database_url: str,
        max_initial_syncs: int | None,
        start_afresh: Callable[[ManagedSource, str], None] | None = None,
        peers: Callable[[], int] = lambda: 1,
    ) -> None:
        """`start_afresh(source, why)`: asked to stop this source and start it again from
        its data dir (`SourceManager`), for a state only a fresh start clears. `peers()`:
        how many sources the engine runs now."""
        super().__init__(config)
        self._database_url = database_url
        self._start_afresh_by = start_afresh
        # How many sources the engine runs (`holding_live`: a share applies past one).
        self._peers = peers
        #: Live requests (long-polls, SSE streams) of this source waiting now.
        self.held_live = 0
        self.max_initial_syncs = max_initial_syncs
        self.lag_bytes: int | None = None
        self._reserved = 0
        # The requests in flight, each with the secret hash it authenticated with.
        self._requests: dict[asyncio.Task[Any], str | None] = {}
        # The live requests held (`holding_live`), and those of them whose secret was
        # revoked meanwhile (`revoke`: they end with an answer, `revoked`).
        self._held: set[asyncio.Task[Any]] = set()
        self._revoked: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await super().start()
        task = asyncio.create_task(self._watch_lag(), name=f"lag-{self.config.source_id}")
        self._tasks.add(task)

    # -- the requests it serves --------------------------------------------------------

    def admit(self, secret_hash: str | None = None) -> None:
        """Count the current request (its task) as this source's until it ends, with the
        hash of the secret it authenticated with (see `revoke`)."""
        self.check_open()
        task = asyncio.current_task()
        if task is not None and task not in self._requests:
            self._requests[task] = secret_hash
            task.add_done_callback(self._forget_request)

    @contextmanager
    def holding_live(self) -> Iterator[None]:
        """Count a live request of this source while it waits; refuse it (503,
        `source_live_share`) when the engine runs more than one source, this one already
        holds its share of the connection cap (the cap over the sources running) and the
        engine's connections are within `LIVE_RESERVE` of the cap. A held request is busy:
        the cap cannot evict it, so one source's clients holding long-polls or SSE streams
        took every connection and every other source got 503 "Too many connections"
        (attack). One source alone is never refused here (a single-source engine holds
        10,000-20,000 clients of it)."""
        peers = self._peers()
        if peers > 1:
            cap = connection_cap()
            if self.held_live >= cap // peers and connections_in_use() >= cap - live_reserve(cap):
                raise ServiceUnavailable(
                    "Too many live requests held for this source: it has its share of the"
                    " engine's connections; retry shortly",
                    retry_after=5,
                    code="source_live_share",
                )
        self.held_live += 1
        task = asyncio.current_task()
        if task is not None:
            self._held.add(task)
        try:
            yield
        finally:
            self.held_live -= 1
            self._held.discard(task)
            self._revoked.discard(task)

    def _forget_request(self, task: asyncio.Task[Any]) -> None:
        self._requests.pop(task, None)
        self._held.discard(task)
        self._revoked.discard(task)

    def revoked(self) -> bool:
        return asyncio.current_task() in self._revoked

    def revoke(self, valid_hashes: list[str]) -> int:
        """End the requests in flight that authenticated with a secret no longer valid
        (rotated, or its grace period over): a long-poll or SSE stream opened with it must
        not go on receiving changes. Their clients' next request gets the 401.

        A held live request ends with a whole answer, not a cut connection (which a client
        cannot tell from a crash, and nginx in front turns into a 502): a long-poll is
        answered as at its timeout (200, up-to-date, nothing new: the proxy ends a held
        long-poll the same way, `proxy.upstream.held`), an SSE stream ends after its last
        whole event. Not a 401: behind the proxy (which injects the secret) a 401 would
        reach the client as if its own token were bad (the TS client's `onError` refreshes
        tokens on it; without one the stream stops), whereas after these the client simply
        makes its next request, and through the proxy that carries the new secret. Other
        requests in flight (not held) are cut off, as before."""
        stale = [t for t, h in self._requests.items() if h not in valid_hashes and not t.done()]
        held = [t for t in stale if t in self._held]
        for t in stale:
            if t in self._held:
                self._revoked.add(t)
            else:
                t.cancel()
        if held:
            for shape in list(self.registry.by_handle.values()):
                shape.notify()  # (the held ones look at `revoked` when woken)
        if stale:
            logger.info(
                "source %s: %d requests made with a revoked secret ended (%d held, answered;"
                " %d cut off)",
                self.config.source_id,
                len(stale),
                len(held),
                len(stale) - len(held),
            )
        return len(stale)

    @property
    def requests_in_flight(self) -> int:
        return len(self._requests)

    async def end_requests(
        self, error: Callable[[], EngineError], timeout: float | None = None
    ) -> None:
        """Refuse new work (`error()`), give the requests in flight `timeout` seconds to
        finish (`END_REQUESTS_WAIT`), then cancel the rest and wait for them to unwind.
        Call it before `stop()`."""
        if timeout is None:
            timeout = END_REQUESTS_WAIT
        self.close_to_requests(error)  # held requests answer error() at once
        pending = {t for t in list(self._requests) if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            logger.info(
                "source %s: cutting off %d requests still in flight",
                self.config.source_id,
                len(pending),
            )
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=END_REQUESTS_WAIT)

    async def describe(self, params: ShapeParams) -> Described:
        self.check_open()
        return await super().describe(params)

    async def resolve(self, params: ShapeParams, *, from_start: bool = False) -> Shape:
        # A request woken by its source's deletion asks for the shape that replaces its
        # own (`http.shape._successor`): none is made on a source that is going away.
        self.check_open()
        return await super().resolve(params, from_start=from_start)

    async def _start_afresh(self, why: str) -> None:
        """Only this source starts afresh; the engine and its other sources go on serving.
        Closed to requests first (a 503 saying why, until it is started again), so that no
        shape is made on it meanwhile: a request woken by the retirement gets its 409, with
        no successor, and its client's refetch waits for the fresh start. Before, a source
        whose Postgres went back in time stopped the engine process, and so every source."""
        if self._start_afresh_by is None:
            await super()._start_afresh(why)
            return
        self.close_to_requests(_restarting)
        await self.registry.retire_all("Postgres went back in time: its history changed")
        logger.critical("%s; starting the source again (a fresh start clears it)", why)
        self._start_afresh_by(self, why)

    # -- what the admin API shows --------------------------------------------------------

    @property
    def diagnosis(self) -> Diagnosis | None:
        if self.state is not SourceState.ERROR or not self.error:
            return None
        return explain(self.error, self._database_url)

    @property
    def shape_count(self) -> int:
        return len(self.registry)

    def initial_syncs_in_progress(self) -> int:
        running = sum(
            1
            for s in self.registry.by_handle.values()
            if not s.rotated and not s.log.snapshot_complete
        )
        return running + self._reserved

    # -- limits --------------------------------------------------------------------------

    @contextmanager
    def _admission(self, definition: ShapeDefinition, existing: Shape | None) -> Iterator[None]:
        """At most `max_initial_syncs` shapes of this source take their snapshot at once."""
        limit = self.max_initial_syncs
        joining = self.is_creating(definition)
        if limit is None or (existing is not None and not existing.rotated) or joining:
            yield
            return
        if self.initial_syncs_in_progress() >= limit:
            raise ServiceUnavailable(
                f"Too many initial syncs in progress for this source (limit {limit});"
                " retry shortly",
                retry_after=2,
                code="too_many_initial_syncs",
            )
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1

    # -- replication lag -----------------------------------------------------------------

    async def _watch_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL if self.lag_bytes is not None else 1.0)
            if self.state is not SourceState.ACTIVE:
                continue
            try:
                # Not `asyncio.wait_for`: on Python 3.11 it drops a cancellation that comes
                # as the query ends, and this loop then outlived the source's stop.
                async with asyncio.timeout(5):
                    await self.refresh_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.debug("lag check of source %s failed: %s", self.config.source_id, exc)

    async def refresh_lag(self) -> int | None:
        async def ask(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (self.config.slot_name,),
            )
            return await cur.fetchone()

        row = await self.tables.on_catalog(ask)
        self.lag_bytes = max(0, int(row[0])) if row and row[0] is not None else None
        return self.lag_bytes

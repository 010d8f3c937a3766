"""ManagedSource: a registered database's `Source`, with per-source limits and lag.

Each one has its own connections, replication task and shape directory (as every
`Source`), so one source's failure or slowness does not block another's. On top it adds:
- a limit on initial syncs (shape snapshots) in progress: a request that would start one
  more is answered 503 with Retry-After instead of queueing without bound;
- the replication lag of its slot (bytes of WAL not yet confirmed), polled every few seconds;
- its error explained as a reason a person can act on (`diagnose.explain`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from ..errors import ServiceUnavailable
from ..source import Source, SourceConfig, SourceState
from .diagnose import Diagnosis, explain

if TYPE_CHECKING:
    from ..shapes.shape import Shape, ShapeDefinition

logger = logging.getLogger(__name__)

LAG_INTERVAL = 5.0


class ManagedSource(Source):
    def __init__(
        self, config: SourceConfig, database_url: str, max_initial_syncs: int | None
    ) -> None:
        super().__init__(config)
        self._database_url = database_url
        self.max_initial_syncs = max_initial_syncs
        self.lag_bytes: int | None = None
        self._reserved = 0

    async def start(self) -> None:
        await super().start()
        task = asyncio.create_task(self._watch_lag(), name=f"lag-{self.config.source_id}")
        self._tasks.add(task)

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
                await asyncio.wait_for(self.refresh_lag(), 5)
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

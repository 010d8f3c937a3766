"""The engine's `GET /metrics`: what an operator watches, read at scrape time.

A custom collector (as `proxy/metrics.py`'s) reads what the engine already keeps: the
replication stream's last WAL end and last message, the saved position, the shape
registries' counts, one `statvfs` of the data directory. A scrape never waits for Postgres
(its WAL end is asked in the background, at most every `WAL_CHECK_EVERY` seconds per
source: `WalEnds`), and nothing is updated per request but one integer per `/v1/shape`
response (`ShapeResponses`).

Per source (label `source_id`):

- `sync_engine_replication_lag_bytes`: the end of the source's WAL as last known, less what
  the engine has durably processed (its saved position, what it confirms to the slot). The
  end known is the later of what the walsender last reported (keepalives and XLogData: the
  WAL it has decoded and sent) and what Postgres said when last asked (`WalEnds`: at most
  once every `WAL_CHECK_EVERY` seconds, in the background, asked by scrapes): the first
  alone misses the WAL the walsender has not decoded yet, all of a backlog after a pause.
  A lower bound, never more than the true lag. Absent until an end is known.
- `sync_engine_replication_last_message_age_seconds`: seconds since Postgres last sent anything
  on the replication stream (a stream starting counts). Absent before any.
- `sync_engine_replication_paused`: 1 while shape logs cannot be written (a full disk, a
  write error) and replication waits; `/v1/health` answers 503 then.
- `sync_engine_source_state{state}`: 1 for the source's state (connecting, active, error;
  paused for a registered source an operator paused), 0 for the others.
- `sync_engine_shapes`, `sync_engine_shape_log_bytes`: live shapes, and the bytes of their
  logs as written (snapshot chunks and change records).
- `sync_engine_shapes_created_total`, `sync_engine_shapes_retired_total{reason}`: since the
  source started (`retire_kind` names the reasons; a retired shape's clients get a 409).

Engine-wide: `sync_engine_data_dir_{size,used,free}_bytes` (`statvfs` of the data
directory's filesystem; free is what the engine may use), `sync_engine_parked_requests`,
`sync_engine_shape_responses_total{status_class}`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from multidict import MultiMapping
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .http.routes import is_shape_route

if TYPE_CHECKING:
    from aiohttp import web
    from psycopg import AsyncConnection

    from .source import Source

logger = logging.getLogger(__name__)

#: Seconds between two asks of a source's Postgres for the end of its WAL (`WalEnds`).
WAL_CHECK_EVERY = 10.0
#: Seconds such an ask may take (then the end last known stays).
WAL_CHECK_TIMEOUT = 5.0
#: The end of the WAL: written (a primary), or replayed (a standby, where logical
#: replication may run from Postgres 16 and `pg_current_wal_lsn()` fails).
_WAL_END_SQL = (
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END) - '0/0'"
)

#: Kinds of reasons a shape is retired (`ShapeRegistry.rotate`), by a part of the reason's
#: text, first match wins: a label must take few values, and the reasons carry table names
#: and error texts. A reason none matches counts as `other`.
RETIRE_KINDS: tuple[tuple[str, str], ...] = (
    ("deleted through the API", "deleted"),
    ("source deleted", "source_deleted"),
    ("least recently used of more than", "max_shapes"),
    ("--max-log-bytes", "max_log_bytes"),
    ("the default log limit", "max_log_bytes"),
    ("snapshot failed", "snapshot_failed"),
    ("table truncated", "truncated"),
    # (its files replaced: TRUNCATE, VACUUM FULL, CLUSTER, a column's type altered; a
    # TRUNCATE's Relation message comes first and is checked first, `Tables.verify_relation`)
    ("table rewritten", "table_rewritten"),
    ("partition rewritten", "table_rewritten"),
    ("table dropped", "table_dropped"),
    ("publication changed", "publication_changed"),
    ("replication slot replaced", "slot_replaced"),
    ("Postgres went back in time", "postgres_went_back"),
    ("saved replication position was lost", "data_dir_behind"),
    ("data is older than its replication slot", "data_dir_behind"),
    ("data directory was another database's", "data_dir_foreign"),
    ("came without its old row", "old_row_missing"),
    ("swapped or shifted primary keys", "primary_key_changed"),
    ("where clause", "where_unevaluable"),
    ("log was damaged", "damaged"),
    ("held transaction could not be delivered", "write_failed"),
    ("time zone", "time_zone"),
    # The catalog's drift (`tables._drift`) and a table's family changing.
    ("table schema changed", "schema_changed"),
    ("enum value renamed", "schema_changed"),
    ("composite type's attributes changed", "schema_changed"),
    ("a cast was made", "schema_changed"),
    ("partition or child table", "schema_changed"),
    ("column collation changed", "schema_changed"),
    ("primary key made deferrable", "schema_changed"),
    ("family changed", "schema_changed"),
)


def retire_kind(reason: str) -> str:
    """The label of a retirement's reason (`RETIRE_KINDS`)."""
    for part, kind in RETIRE_KINDS:
        if part in reason:
            return kind
    return "other"


class ShapeResponses:
    """`/v1/shape` responses by status class, counted as each is prepared (its head sent):
    an `on_response_prepare` hook, so streamed answers (SSE) and file-backed ones count
    too. A request the server refused before routing (a 414, a 431) is not one."""

    __slots__ = ("by_class",)

    def __init__(self) -> None:
        self.by_class = [0] * 6  # (index: the status's first digit)

    async def on_prepare(self, request: web.Request, resp: web.StreamResponse) -> None:
        if is_shape_route(request):
            self.by_class[min(resp.status // 100, 5)] += 1


def bearer(headers: Mapping[str, str]) -> bytes | None:
    """The credential of an `Authorization: Bearer <credential>` header, if one is sent
    (what Prometheus sends with `authorization: credentials_file` or `bearer_token_file`)."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    token = value.strip().encode("utf-8", "surrogateescape")
    return token if scheme.lower() == "bearer" and token else None


def may_read(
    query: MultiMapping[str],
    headers: Mapping[str, str],
    given_secret: str | None,
    secret: bytes | None,
    admin_token: bytes | None,
    has_sources: bool,
) -> bool:
    """Whether a request may read /metrics: with the `--secret` when one is set, as the
    `secret` query parameter (as `/v1/shape` takes it) or as `Authorization: Bearer`; or
    with the admin token as a Bearer header when one is set. Without either configured,
    anyone may unless sources are registered (then nobody may: their activity is not the
    public's). Compared in constant time."""
    token = bearer(headers)
    if secret is not None:
        if given_secret is not None and hmac.compare_digest(given_secret.encode(), secret):
            return True
        if token is not None and hmac.compare_digest(token, secret):
            return True
    if admin_token is not None and token is not None and hmac.compare_digest(token, admin_token):
        return True
    return secret is None and admin_token is None and not has_sources


class WalEnds:
    """The end of each source's WAL as its Postgres last said: asked on the source's catalog
    connection in the background, when a scrape finds the last answer older than
    `WAL_CHECK_EVERY` (no scrape, no query; a scrape never waits for one)."""

    def __init__(self) -> None:
        self._known: WeakKeyDictionary[Source, tuple[float, int]] = WeakKeyDictionary()
        self._asking: set[asyncio.Task[None]] = set()

    def get(self, source: Source, now: float) -> int:
        """The end last known (0: none yet); asks again if it is old and the source has
        started (paused for a full disk too: its lag grows then)."""
        asked_at, end = self._known.get(source, (float("-inf"), 0))
        if now - asked_at >= WAL_CHECK_EVERY and source.ready.is_set():
            self._known[source] = (now, end)  # (one ask at a time)
            try:
                task = asyncio.get_running_loop().create_task(self._ask(source))
            except RuntimeError:  # (no loop: collected outside the app)
                return end
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)
        return end

    async def _ask(self, source: Source) -> None:
        async def ask(conn: AsyncConnection[Any]) -> int | None:
            cur = await conn.execute(_WAL_END_SQL)
            row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        try:
            end = await source.tables.on_catalog(ask, timeout=WAL_CHECK_TIMEOUT)
        except Exception as exc:  # (unreachable, say: the end last known stays)
            logger.debug("source %s: its WAL end unknown: %s", source.config.source_id, exc)
            return
        if end is not None and source in self._known:
            asked_at, known = self._known[source]
            self._known[source] = (asked_at, max(known, end))

    async def close(self) -> None:
        """Cancel the asks in flight (the app is stopping)."""
        tasks = list(self._asking)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EngineCollector(Collector):
    """Reads the sources and the data directory at each scrape (see the module's doc)."""

    def __init__(
        self,
        sources: Callable[[], Iterable[Source]],
        paused: Callable[[], Iterable[str]],
        data_dir: Path,
        responses: ShapeResponses,
        wal_ends: WalEnds | None = None,
    ) -> None:
        """`sources()`: the running sources; `paused()`: the ids of registered sources an
        operator paused (not running); `wal_ends`: None asks Postgres nothing (the lag is
        then from the stream alone)."""
        self._sources = sources
        self._wal_ends = wal_ends
        self._paused = paused
        self._data_dir = data_dir
        self._responses = responses

    def collect(self) -> Iterator[Metric]:
        label = ["source_id"]
        lag = GaugeMetricFamily(
            "sync_engine_replication_lag_bytes",
            "End of the source's WAL as last known, less what the engine durably processed",
            labels=label,
        )
        heard = GaugeMetricFamily(
            "sync_engine_replication_last_message_age_seconds",
            "Seconds since Postgres last sent anything on the replication stream",
            labels=label,
        )
        paused = GaugeMetricFamily(
            "sync_engine_replication_paused",
            "1 while shape logs cannot be written (disk full, write error): replication waits",
            labels=label,
        )
        state = GaugeMetricFamily(
            "sync_engine_source_state",
            "1 for the source's state (connecting, active, error, paused)",
            labels=["source_id", "state"],
        )
        shapes = GaugeMetricFamily("sync_engine_shapes", "Live shapes", labels=label)
        log_bytes = GaugeMetricFamily(
            "sync_engine_shape_log_bytes",
            "Bytes of the live shapes' logs as written (snapshot chunks and changes)",
            labels=label,
        )
        created = CounterMetricFamily(
            "sync_engine_shapes_created", "Shapes created since the source started", labels=label
        )
        retired = CounterMetricFamily(
            "sync_engine_shapes_retired",
            "Shapes retired since the source started (their clients get a 409), by reason",
            labels=["source_id", "reason"],
        )
        parked = 0
        now = time.monotonic()
        states = ("connecting", "active", "error", "paused")
        for source in self._sources():
            sid = source.config.source_id
            rep = source.replicator
            end: int = rep.wal_end
            if self._wal_ends is not None:
                end = max(end, self._wal_ends.get(source, now))
            if end:
                position = rep.position
                done = position.saved if position is not None else 0
                lag.add_metric([sid], max(0, end - done))
            if rep.last_heard:
                heard.add_metric([sid], max(0.0, now - rep.last_heard))
            paused.add_metric([sid], 0 if source.write_error is None else 1)
            for name in states:
                state.add_metric([sid, name], 1 if source.state == name else 0)
            registry = source.registry
            live = list(registry.by_handle.values())
            shapes.add_metric([sid], len(live))
            log_bytes.add_metric([sid], sum(s.log.log_bytes + s.log.snapshot_bytes for s in live))
            parked += sum(s.waiting for s in live)
            created.add_metric([sid], registry.created)
            for reason, count in sorted(registry.retired.items()):
                retired.add_metric([sid, reason], count)
        for sid in self._paused():
            for name in states:
                state.add_metric([sid, name], 1 if name == "paused" else 0)
        yield from (lag, heard, paused, state, shapes, log_bytes, created, retired)
        yield GaugeMetricFamily(
            "sync_engine_parked_requests",
            "Live requests waiting for their shape to change",
            value=parked,
        )
        yield from self._disk()
        responses = CounterMetricFamily(
            "sync_engine_shape_responses",
            "/v1/shape responses by status class",
            labels=["status_class"],
        )
        for digit in range(1, 6):
            responses.add_metric([f"{digit}xx"], self._responses.by_class[digit])
        yield responses

    def _disk(self) -> Iterator[Metric]:
        try:
            st = os.statvfs(self._data_dir)
        except OSError:  # (not made yet, or gone: no numbers rather than wrong ones)
            return
        what = "of the filesystem of the data directory (statvfs)"
        yield GaugeMetricFamily(
            "sync_engine_data_dir_size_bytes", f"Size {what}", value=st.f_blocks * st.f_frsize
        )
        yield GaugeMetricFamily(
            "sync_engine_data_dir_used_bytes",
            f"Bytes used {what}",
            value=(st.f_blocks - st.f_bfree) * st.f_frsize,
        )
        yield GaugeMetricFamily(
            "sync_engine_data_dir_free_bytes",
            f"Bytes free to the engine {what}",
            value=st.f_bavail * st.f_frsize,
        )


def new_registry(collector: EngineCollector) -> CollectorRegistry:
    """A registry of its own per app (not the process-global default): several apps in one
    process (tests) stay apart."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


#: The exposition's Content-Type: the text format every Prometheus reads (the names here
#: need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of a scrape."""
    return generate_latest(registry)

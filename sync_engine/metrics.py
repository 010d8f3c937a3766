"""The engine's `GET /metrics`: what an operator watches, read at scrape time.

A custom collector (as `proxy/metrics.py`'s) reads what the engine already keeps: the
replication stream's last WAL end and last message, the saved position, the shape
registries' counts, one `statvfs` of the data directory. Nothing is asked of Postgres per
scrape, and nothing is updated per request but one integer per `/v1/shape` response
(`ShapeResponses`).

Per source (label `source_id`):

- `sync_engine_replication_lag_bytes`: the WAL end the walsender last reported (keepalives
  and XLogData: the WAL it has decoded and sent) less what the engine has durably processed
  (its saved position, what it confirms to the slot). Grows while the engine falls behind
  or is paused; it does not show WAL the walsender has not decoded yet (Postgres's
  `pg_current_wal_lsn() - confirmed_flush_lsn`, which the admin API shows per registered
  source, does). Absent until a stream has reported a WAL end.
- `sync_engine_replication_last_message_seconds`: seconds since Postgres last sent anything
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

import hmac
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from multidict import MultiMapping
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .http.routes import is_shape_route

if TYPE_CHECKING:
    from aiohttp import web

    from .source import Source

#: Kinds of reasons a shape is retired (`ShapeRegistry.rotate`), by a part of the reason's
#: text, first match wins: a label must take few values, and the reasons carry table names
#: and error texts. A reason none matches counts as `other`.
RETIRE_KINDS: tuple[tuple[str, str], ...] = (
    ("deleted through the API", "deleted"),
    ("source deleted", "source_deleted"),
    ("least recently used of more than", "max_shapes"),
    ("--max-log-bytes", "max_log_bytes"),
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


class EngineCollector(Collector):
    """Reads the sources and the data directory at each scrape (see the module's doc)."""

    def __init__(
        self,
        sources: Callable[[], Iterable[Source]],
        paused: Callable[[], Iterable[str]],
        data_dir: Path,
        responses: ShapeResponses,
    ) -> None:
        """`sources()`: the running sources; `paused()`: the ids of registered sources an
        operator paused (not running)."""
        self._sources = sources
        self._paused = paused
        self._data_dir = data_dir
        self._responses = responses

    def collect(self) -> Iterator[Metric]:
        label = ["source_id"]
        lag = GaugeMetricFamily(
            "sync_engine_replication_lag_bytes",
            "WAL the walsender last reported sent, less what the engine durably processed",
            labels=label,
        )
        heard = GaugeMetricFamily(
            "sync_engine_replication_last_message_seconds",
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
            end = rep.wal_end
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

"""Prometheus metrics of one proxy app, in the app's own `CollectorRegistry`.

A registry per app (not the process-global default) keeps tests and several apps in one
process independent, and leaves no module-level mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class Metrics:
    """Counters and histograms the handlers update."""

    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "shape_proxy_requests",
            "Requests by outcome and reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.upstream_responses = Counter(
            "shape_proxy_upstream_responses", "Engine responses by status", ["status"], registry=r
        )
        self.latency = Histogram(
            "shape_proxy_request_duration_seconds",
            "Time from request to end of response, by kind",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120),
            registry=r,
        )
        self.upstream_first_byte = Histogram(
            "shape_proxy_upstream_first_byte_seconds",
            "Time until the engine's response headers",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 20, 60),
            registry=r,
        )
        self.jwks_fetches = Counter(
            "shape_proxy_jwks_fetches", "JWKS fetches by result", ["result"], registry=r
        )
        self.token_cache = Counter(
            "shape_proxy_token_cache", "Verified-token cache lookups", ["result"], registry=r
        )
        self.config_reloads = Counter(
            "shape_proxy_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.upstream_requests = Counter(
            "shape_proxy_upstream_requests",
            "Requests sent to the engine (one per collapsed group, none for cache hits)",
            registry=r,
        )
        self.collapsed = Counter(
            "shape_proxy_collapsed_requests",
            "Client requests that joined an identical engine request already in flight",
            registry=r,
        )
        self.response_cache = Counter(
            "shape_proxy_response_cache",
            "Response cache lookups (hit, miss) and stores",
            ["result"],
            registry=r,
        )
        self.response_cache_bytes = Gauge(
            "shape_proxy_response_cache_bytes", "Bytes held by the response cache", registry=r
        )
        # `labels()` takes a lock and builds a key on every call; the children for label
        # values already seen are kept here (per app, like the registry).
        self._children: dict[tuple[str, ...], Any] = {}
        self._cache_hit = self.response_cache.labels(result="hit")
        self._cache_miss = self.response_cache.labels(result="miss")
        self._cache_store = self.response_cache.labels(result="store")
        self._token_hit = self.token_cache.labels(result="hit")
        self._token_miss = self.token_cache.labels(result="miss")

    def _child(self, metric: Any, *values: str) -> Any:
        key = (str(id(metric)), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def request_done(self, outcome: str, reason: str, kind: str, duration: float) -> None:
        self._child(self.requests, outcome, reason).inc()
        self._child(self.latency, kind).observe(duration)

    def upstream_status(self, status: int) -> None:
        self._child(self.upstream_responses, str(status)).inc()

    def cache_hit(self) -> None:
        self._cache_hit.inc()

    def cache_miss(self) -> None:
        self._cache_miss.inc()

    def cache_stored(self, bytes_used: int) -> None:
        self._cache_store.inc()
        self.response_cache_bytes.set(bytes_used)

    def token_cache_lookup(self, hit: bool) -> None:
        (self._token_hit if hit else self._token_miss).inc()

    def jwks_fetch(self, result: str) -> None:
        self.jwks_fetches.labels(result=result).inc()

"""Prometheus metrics of one proxy app, in the app's own `CollectorRegistry`.

A registry per app (not the process-global default) keeps tests and several apps in one
process independent, and leaves no module-level mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


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

    def token_cache_lookup(self, hit: bool) -> None:
        self.token_cache.labels(result="hit" if hit else "miss").inc()

    def jwks_fetch(self, result: str) -> None:
        self.jwks_fetches.labels(result=result).inc()

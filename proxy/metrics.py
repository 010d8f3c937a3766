"""Prometheus metrics of one proxy app, in the app's own `CollectorRegistry`.

A registry per app (not the process-global default) keeps tests and several apps in one
process independent, and leaves no module-level mutable state.

The per-request counters and histograms are plain integers read by a custom collector at
scrape time. prometheus-client's `Counter`/`Histogram` take a lock and walk the buckets in
Python on every update; the proxy updates four or five of them per request on one event-loop
thread, where that was a measurable share of the cost of answering a collapsed long-poll.
The exposition (names, labels, types, buckets) is the same as with the stock metric types.
Rare events (JWKS fetches, config reloads) keep the stock `Counter`.
"""

from __future__ import annotations

import hmac
import ipaddress
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

#: Headers a forwarding proxy adds: a request carrying one came from elsewhere, whatever
#: address it arrived from (a reverse proxy on the same host connects from loopback).
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "Via")


def metrics_refusal(
    remote: str | None,
    headers: Mapping[str, str],
    token: str | None,
    *,
    allow_loopback: bool = False,
) -> tuple[str, str] | None:
    """Why this request may not read `/metrics` (reason, message), or None if it may.

    The counters show when and how many users are live and write: on the public port they
    would be a signal of every user's activity (the engine keeps its own `/metrics` behind
    its secret for that reason). Two ways in, both configured (`metrics:`):

    - `token_env`: `Authorization: Bearer <that token>`, from anyone (what Prometheus sends
      with `authorization: credentials_file`);
    - `allow_loopback: true`: a client on a loopback address whose request carries no
      forwarding header (a scraper on the same host, `curl localhost`).

    Neither configured: `/metrics` answers no one. It used to answer any loopback client by
    default, and a reverse proxy on the same host that adds no forwarding header (nginx's
    plain `proxy_pass` adds none) connects from loopback: everyone through it read the
    counters (attack 14:58). Nothing in a request tells such a front from a local scraper,
    so the operator says which it is.
    """
    if token is not None:
        given = headers.get("Authorization", "")
        scheme, _, value = given.strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            return None
    if allow_loopback:
        if _is_loopback(remote) and not any(name in headers for name in FORWARDING_HEADERS):
            return None
        if token is None:
            return (
                "metrics_not_local",
                "/metrics answers clients on this host only (metrics.allow_loopback)",
            )
    if token is not None:
        return "metrics_token", "/metrics requires the metrics token (Authorization: Bearer)"
    return (
        "metrics_off",
        "/metrics is off: configure metrics.token_env or metrics.allow_loopback",
    )


def metrics_exposure(token_env: str | None, allow_loopback: bool) -> str:
    """How `/metrics` is exposed under this config, for the log at start and on reload."""
    ways = []
    if token_env is not None:
        # (not "a bearer of": the log redaction takes the word after "bearer" for a token)
        ways.append(f"to a caller holding the metrics token (metrics.token_env {token_env})")
    if allow_loopback:
        ways.append(
            "to clients on a loopback address whose request has no Forwarded/X-Forwarded-For/"
            "X-Real-IP/Via header (metrics.allow_loopback: a reverse proxy on this host must "
            "add X-Forwarded-For or not route /metrics)"
        )
    if not ways:
        return (
            "GET /metrics is off (refused to every client): set metrics.token_env, or "
            "metrics.allow_loopback: true for a scraper on this host"
        )
    return "GET /metrics answers " + " and ".join(ways)


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
FIRST_BYTE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 20, 60)


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class _Histogram:
    """Bucket counts (non-cumulative; the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass
class Metrics:
    """What the handlers count; exposed through `registry`."""

    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        #: `latency`'s "live" and "other" histograms, once made (made at a kind's first
        #: request, so /metrics names only kinds seen, as before): no lookup per request.
        self._live: _Histogram | None = None
        self._other: _Histogram | None = None
        #: By status as a number: its label is made at scrape time, not per response.
        self.upstream_responses: dict[int, int] = {}
        self.upstream_first_byte = _Histogram(FIRST_BYTE_BUCKETS)
        self.upstream_requests = 0
        self.collapsed = 0
        self.token_cache = {"hit": 0, "miss": 0}
        self.response_cache = {"hit": 0, "miss": 0, "store": 0, "evict": 0}
        self.response_cache_bytes = 0
        self.jwks_fetches = Counter(
            "shape_proxy_jwks_fetches", "JWKS fetches by result", ["result"], registry=self.registry
        )
        self.config_reloads = Counter(
            "shape_proxy_config_reloads",
            "Config reloads by result",
            ["result"],
            registry=self.registry,
        )
        self.registry.register(_Exporter(self))

    # --- updates (event-loop thread only) ----------------------------------------------

    def request_done(self, outcome: str, reason: str, live: bool, duration: float) -> None:
        """Count one answered request; its duration under kind "live" or "other"."""
        key = (outcome, reason)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self._live if live else self._other
        if histogram is None:
            histogram = self._latency_of(live)
        histogram.counts[bisect_left(histogram.bounds, duration)] += 1  # (`observe`, inline:
        histogram.total += duration  # once per request)

    def _latency_of(self, live: bool) -> _Histogram:
        histogram = _Histogram(LATENCY_BUCKETS)
        if live:
            self._live = self.latency["live"] = histogram
        else:
            self._other = self.latency["other"] = histogram
        return histogram

    def upstream_sent(self) -> None:
        self.upstream_requests += 1

    def upstream_answered(self, status: int, first_byte_seconds: float) -> None:
        responses = self.upstream_responses
        responses[status] = responses.get(status, 0) + 1
        histogram = self.upstream_first_byte
        histogram.counts[bisect_left(histogram.bounds, first_byte_seconds)] += 1
        histogram.total += first_byte_seconds

    def collapsed_request(self) -> None:
        self.collapsed += 1

    def cache_hit(self) -> None:
        self.response_cache["hit"] += 1

    def cache_miss(self) -> None:
        self.response_cache["miss"] += 1

    def cache_stored(self, bytes_used: int) -> None:
        self.response_cache["store"] += 1
        self.response_cache_bytes = bytes_used

    def cache_evicted(self, entries: int) -> None:
        """Answers dropped because the engine showed their shape was rotated or deleted."""
        self.response_cache["evict"] += entries

    def token_cache_lookup(self, hit: bool) -> None:
        self.token_cache["hit" if hit else "miss"] += 1

    def jwks_fetch(self, result: str) -> None:
        self.jwks_fetches.labels(result=result).inc()


class _Exporter(Collector):
    """Turns the plain counters of one `Metrics` into Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []  # names are only known at collect time; nothing to pre-check

    def collect(self) -> Iterator[Metric]:
        m = self._m
        requests = CounterMetricFamily(
            "shape_proxy_requests", "Requests by outcome and reason", labels=["outcome", "reason"]
        )
        for (outcome, reason), count in sorted(m.requests.items()):
            requests.add_metric([outcome, reason], count)
        yield requests
        latency = HistogramMetricFamily(
            "shape_proxy_request_duration_seconds",
            "Time from request to end of response, by kind",
            labels=["kind"],
        )
        for kind, histogram in sorted(m.latency.items()):
            latency.add_metric([kind], histogram.buckets(), histogram.total)
        yield latency
        responses = CounterMetricFamily(
            "shape_proxy_upstream_responses", "Engine responses by status", labels=["status"]
        )
        by_label = {str(status): count for status, count in m.upstream_responses.items()}
        for label, count in sorted(by_label.items()):
            responses.add_metric([label], count)
        yield responses
        first_byte = HistogramMetricFamily(
            "shape_proxy_upstream_first_byte_seconds", "Time until the engine's response headers"
        )
        first_byte.add_metric([], m.upstream_first_byte.buckets(), m.upstream_first_byte.total)
        yield first_byte
        yield CounterMetricFamily(
            "shape_proxy_upstream_requests",
            "Requests sent to the engine (one per collapsed group, none for cache hits)",
            value=m.upstream_requests,
        )
        yield CounterMetricFamily(
            "shape_proxy_collapsed_requests",
            "Client requests that joined an identical engine request already in flight",
            value=m.collapsed,
        )
        token = CounterMetricFamily(
            "shape_proxy_token_cache", "Verified-token cache lookups", labels=["result"]
        )
        for result, count in m.token_cache.items():
            token.add_metric([result], count)
        yield token
        cache = CounterMetricFamily(
            "shape_proxy_response_cache",
            "Response cache lookups (hit, miss) and stores",
            labels=["result"],
        )
        for result, count in m.response_cache.items():
            cache.add_metric([result], count)
        yield cache
        yield GaugeMetricFamily(
            "shape_proxy_response_cache_bytes",
            "Bytes held by the response cache",
            value=m.response_cache_bytes,
        )

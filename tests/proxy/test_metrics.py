"""The proxy's metrics as a Prometheus server parses them: names, labels, histogram buckets."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import LATENCY_BUCKETS, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_and_histograms_are_exposed_like_stock_metrics() -> None:
    m = Metrics()
    m.request_done("ok", "-", True, 0.003)
    m.request_done("ok", "-", True, 0.2)
    m.request_done("refused", "token_expired", False, 0.001)
    m.upstream_sent()
    m.upstream_answered(200, 0.004)
    m.collapsed_request()
    m.cache_miss()
    m.cache_stored(1234)
    m.token_cache_lookup(True)
    m.jwks_fetch("ok")
    s = samples(m)

    assert s[("shape_proxy_requests_total", (("outcome", "ok"), ("reason", "-")))] == 2
    key = (("outcome", "refused"), ("reason", "token_expired"))
    assert s[("shape_proxy_requests_total", key)] == 1
    live = (("kind", "live"),)
    # Buckets are cumulative, +Inf counts everything, _sum adds the observations.
    assert s[("shape_proxy_request_duration_seconds_bucket", (*live, ("le", "0.005")))] == 1
    assert s[("shape_proxy_request_duration_seconds_bucket", (*live, ("le", "0.1")))] == 1
    assert s[("shape_proxy_request_duration_seconds_bucket", (*live, ("le", "0.25")))] == 2
    assert s[("shape_proxy_request_duration_seconds_bucket", (*live, ("le", "+Inf")))] == 2
    assert s[("shape_proxy_request_duration_seconds_count", live)] == 2
    assert abs(s[("shape_proxy_request_duration_seconds_sum", live)] - 0.203) < 1e-9
    buckets = [k for k in s if k[0] == "shape_proxy_request_duration_seconds_bucket"]
    assert len(buckets) == 2 * (len(LATENCY_BUCKETS) + 1)  # two kinds

    assert s[("shape_proxy_upstream_requests_total", ())] == 1
    assert s[("shape_proxy_upstream_responses_total", (("status", "200"),))] == 1
    assert s[("shape_proxy_upstream_first_byte_seconds_count", ())] == 1
    assert s[("shape_proxy_collapsed_requests_total", ())] == 1
    assert s[("shape_proxy_response_cache_total", (("result", "miss"),))] == 1
    assert s[("shape_proxy_response_cache_total", (("result", "store"),))] == 1
    assert s[("shape_proxy_response_cache_bytes", ())] == 1234
    assert s[("shape_proxy_token_cache_total", (("result", "hit"),))] == 1
    assert s[("shape_proxy_jwks_fetches_total", (("result", "ok"),))] == 1


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    m = Metrics()
    m.request_done("ok", "-", False, 0.01)  # le="0.01" includes 0.01
    s = samples(m)
    other = (("kind", "other"),)
    assert s[("shape_proxy_request_duration_seconds_bucket", (*other, ("le", "0.005")))] == 0
    assert s[("shape_proxy_request_duration_seconds_bucket", (*other, ("le", "0.01")))] == 1


def test_two_apps_count_apart() -> None:
    a, b = Metrics(), Metrics()
    a.upstream_sent()
    assert samples(b)[("shape_proxy_upstream_requests_total", ())] == 0

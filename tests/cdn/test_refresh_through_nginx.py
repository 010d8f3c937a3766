"""A live client's refresh through the shipped nginx tier is answered by the engine, not the cache.

    pglite-sync (npm) -> nginx (config/nginx, real) -> proxy (config/examples/open.yaml) -> engine

tests/node/multi-shape-refresh.test.mjs: pglite-sync's multi-table sync applies a change of one
table once the other table's shape, refreshed by MultiShapeStream, names an up-to-date LSN past
it. nginx served that refresh (a non-live request with `cursor`, the same URL every time until
the idle shape's long-poll ends) from its cache with the first refresh's old LSN, so every change
after the first waited for the idle table's long-poll to end. The node test runs straight to the
engine and through the proxy in `make test`; here through nginx.
"""

from __future__ import annotations

from tests.cdn.node_through_nginx import ROOT, run_through_nginx

TEST = ROOT / "tests" / "node" / "multi-shape-refresh.test.mjs"


def test_a_live_clients_refresh_is_not_answered_from_the_cache() -> None:
    run_through_nginx(TEST, "@electric-sql/pglite-sync", timeout=300)

"""The chaos run (tests/node/chaos.test.mjs) through the shipped nginx tier in front of the proxy.

    npm client -> nginx (config/nginx, real) -> proxy (config/examples/open.yaml) -> engine

The same clients and writers as straight to the engine and through the proxy, and each of their
fault kinds once (the engine and the proxy SIGKILLed and started again, Postgres restarted fast
or immediate (seeded: the other runs do both), the engine SIGKILLed while Postgres crashes, and
always a TRUNCATE: a rotation, what a cache can get wrong), with nginx caching what the headers allow in between. (The users
under a row policy reach their own proxy, never nginx: the run through the proxy has them.) Caching must never freeze a
client on stale data or lose it rows: a 409 must get through, and what was cached for a handle
must not outlive its rotation in a way that loses rows. Every client must end with exactly its
shape's rows (`SELECT`), and must have taken every change its view was handed.

`CHAOS_SEED=<n>` repeats a run's choices; the seed is printed in the output.
"""

from __future__ import annotations

from tests.cdn.node_through_nginx import ROOT, run_through_nginx

CHAOS = ROOT / "tests" / "node" / "chaos.test.mjs"


def test_chaos_through_nginx_in_front_of_the_proxy() -> None:
    run_through_nginx(CHAOS, "@electric-sql/client", timeout=240)

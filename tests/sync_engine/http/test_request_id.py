"""The engine's own request ids tell nothing of other requests.

A response whose request carried no usable `x-request-id` gets one of the engine's: it
was a per-process prefix and a counter, so anyone holding one source's secret could count
the requests of every source between two of theirs (the last 16 hex digits went up by
one per response). Now 32 random hex digits (the length the proxy and Electric's clients
saw before).

Real path: the in-process engine over HTTP.
"""

from __future__ import annotations

import itertools
import re

from tests.sync_engine.engine_harness import Engine


async def test_the_engine_s_request_ids_are_not_a_counter(engine: Engine) -> None:
    engine.sql("CREATE TABLE items (id int PRIMARY KEY)")
    ids = []
    for _ in range(4):
        status, headers, _ = await engine.get(table="items", offset="-1")
        assert status == 200
        ids.append(headers["x-request-id"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len({i[:16] for i in ids}) == len(ids), ids  # (was one prefix for all)
    steps = {int(b, 16) - int(a, 16) for a, b in itertools.pairwise(ids)}
    assert 1 not in steps, ids
    # (a usable id of the client's own comes back as it was)
    given = "client-request-0123456789"
    resp = await engine.client.get(
        "/v1/shape", params={"table": "items", "offset": "-1"}, headers={"x-request-id": given}
    )
    assert resp.headers["x-request-id"] == given

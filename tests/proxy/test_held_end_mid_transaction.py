"""A long-poll the proxy ends itself (token `exp`, a revoking reload) claims no up-to-date.

It answered as the engine answers a long-poll timeout: up-to-date with `global_last_seen_lsn`
= the offset's transaction. The engine says that only at its log's tip, where transactions
are whole; a client reading a transaction larger than a chunk in live mode holds offsets
inside it, so the made-up answer told it half a transaction was up to date (its Shape showed
that state) and promised every change of that transaction was delivered: pglite-sync, which
keeps the watermark, dropped the rest of the transaction when it came (chaos probe, seed 302:
a 120k-row DELETE read through the proxy while a reload ended the hold). The end-to-end
behaviour (the real npm client going on with a fresh token, nothing lost or repeated) is
`tests/node/token-expiry.test.mjs` and `tests/proxy/test_held_expiry_real.py`.
"""

from __future__ import annotations

import orjson
import pytest
from yarl import URL

from proxy.upstream.held import ended_long_poll


@pytest.mark.parametrize("offset", ["66932936_55682", "66932936_0", "66932936_inf"])
def test_an_ended_hold_claims_nothing_about_the_transaction(offset: str) -> None:
    url = URL(f"http://x/v1/shape?table=t&handle=h-1&offset={offset}&live=true&cursor=1")
    response = ended_long_poll(url, "GET", "public, max-age=5")
    assert response is not None
    assert response.status == 200
    assert orjson.loads(response.body) == []  # no up-to-date, no global_last_seen_lsn
    assert "electric-up-to-date" not in {k.lower() for k in response.headers}
    assert response.headers["electric-offset"] == offset
    assert response.headers["electric-handle"] == "h-1"


def test_head_gets_the_same_headers_without_a_body() -> None:
    url = URL("http://x/v1/shape?table=t&handle=h-1&offset=5_3&live=true")
    response = ended_long_poll(url, "HEAD", "public, max-age=5")
    assert response is not None and response.body == b""
    assert "electric-up-to-date" not in {k.lower() for k in response.headers}

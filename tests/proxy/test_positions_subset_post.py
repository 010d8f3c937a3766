"""A GET subset whose engine URL does not fit the engine's line goes as a POST body; its engine
URL then has no `subset__`, and `positions.template` (which looked only there) kept it as a
template for shorter positions: a later request of the same rest of query and kind whose
offset, handle and cursor fit was sent as that POST where the general path sends a GET with the
subset in its query (the engine answers the two with other Cache-Control). Found by review
16:57 (its test, as it wrote it); fails on 5f8fb7f9, passes here. Only under
`limits.max_subsets: unlimited` (by default a subset under `max_subsets` is never remembered).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.proxy.test_positions import Recording, _ask, _head, _lines
from tests.proxy.test_upstream_client import RawServer


@contextlib.asynccontextmanager
async def _engine(idp_server: Any, environ: dict[str, str]) -> AsyncIterator[tuple[Any, Any, Any]]:
    """test_positions' harness, with `limits.max_subsets: unlimited` (by default a subset under
    max_subsets is never remembered, so never templated)."""
    recording = Recording()
    async with RawServer(recording.serve) as raw:
        assert raw.server is not None
        port = raw.server.sockets[0].getsockname()[1]
        configs = []
        for settings in ({}, {"token_cache_size": 0}):
            config = base_config(f"http://127.0.0.1:{port}", str(idp_server.make_url("/jwks.json")))
            config["collapse"] = False
            config["cache"] = {"max_bytes": 0}
            config["limits"] = {"max_subsets": "unlimited"}
            config["server"] = {**config.get("server", {}), **settings}
            configs.append(build_config(config, environ))
        yield recording, configs[0], configs[1]


async def test_subset_sent_as_post_is_not_a_template_for_shorter_positions(
    idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    async with _engine(idp_server, environ) as (engine, ours_config, plain_config):
        proxy = await make_proxy(ours_config)
        general = await make_proxy(plain_config)
        admin = proxy.tokens.make(sub="root", role="admin")
        long_values = (
            "offset=1234567890123456789_123456789012345678&handle="
            + "h" * 128
            + "&cursor=123456789012345678"
        )
        short_values = "offset=1_0&handle=h&cursor=1"
        mismatches = []
        methods: set[bytes] = set()
        for pad in range(1575, 1675, 6):  # (the subset's where: 6 bytes an `é` at the engine)
            where = "title+%3C%3E+%27" + "%C3%A9" * pad + f"{pad}%27"
            rest = f"table=items&subset__where={where}&subset__order_by=id&subset__limit=5"
            for values in (long_values, short_values):  # (the long one first: a POST)
                head = _head(f"/v1/shape?{rest}&{values}", admin)
                before = len(engine.heads)
                answers = [await _ask(proxy, head)]
                middle = len(engine.heads)
                answers.append(await _ask(general, head))
                sent = (_lines(engine.heads[before:middle]), _lines(engine.heads[middle:]))
                methods.update(h.split(b" ")[0] for h in sent[1])
                if sent[0] != sent[1] or answers[0] != answers[1]:
                    mismatches.append(
                        (pad, values[:12], [h[:60] for h in sent[0]], [h[:60] for h in sent[1]])
                    )
        assert methods == {b"GET", b"POST"}  # (the sweep did cross the limit)
        assert mismatches == [], mismatches

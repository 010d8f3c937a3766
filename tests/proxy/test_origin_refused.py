"""A shape request from an Origin not in `cors.allow_origins` (newuser 13:xx, MEDIUM).

The browser hides the 403 from the page (it has no CORS headers: the page sees only
"blocked by CORS policy"), and the proxy's log said `reason=origin_not_allowed` without the
Origin: the developer could not tell which origin to add. The log now names it and the
setting, a few lines a minute; the answer's message names the setting too.
"""

from __future__ import annotations

import logging
from typing import Any

SHAPE = "/v1/shape?table=items&offset=-1"


async def test_a_refused_origin_is_named_in_the_log_with_the_setting_to_change(
    proxy: Any, caplog: Any
) -> None:
    token = proxy.tokens.make()
    caplog.set_level(logging.WARNING, logger="proxy.app")
    origin = "http://localhost:3001"
    for method in ("GET", "OPTIONS"):  # (the page's request, and its preflight)
        reply = await proxy.request(method, SHAPE, token=token, headers={"Origin": origin})
        assert reply.status == 403
        assert "access-control-allow-origin" not in {k.lower() for k in reply.headers}
        assert reply.json()["code"] == "origin_not_allowed"
        assert "cors.allow_origins" in reply.json()["message"]
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.app"]
    assert (
        lines == [f"refused a request from Origin {origin!r}: it is not in cors.allow_origins"] * 2
    )
    for n in range(10):  # (anyone can send any Origin: a few lines a minute, then a count)
        await proxy.get(SHAPE, token=token, headers={"Origin": f"http://x{n}.example"})
    assert len([r for r in caplog.records if r.name == "proxy.app"]) == 5

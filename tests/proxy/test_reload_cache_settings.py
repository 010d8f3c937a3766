"""A reload that changes the `cache:` section is applied to answers the response cache kept
before it: their client-facing `Cache-Control` was made under the old settings
(`max_age_cap`: how long a browser may keep a private answer), and a hit served it as kept for
as long as the entry lived (an hour for a catch-up chunk). Found by proxy (2nd shift) looking
for what the proxy keeps across a reload. Through the real proxy, a fake engine, a real
config file reloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from proxy.config.loader import load_config

CHUNK = "/v1/shape?table=items&handle=h-1&offset=0_0"


async def test_a_reload_lowering_max_age_cap_applies_to_cached_answers(
    config_data: dict[str, Any], environ: dict[str, str], make_proxy: Any, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config_data))
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    token = proxy.tokens.make()
    first = await proxy.get(CHUNK, token=token)
    assert first.status == 200
    assert first.headers["Cache-Control"] == "private, max-age=60, stale-while-revalidate=60"
    cached = await proxy.get(CHUNK, token=token)
    assert cached.body == first.body and len(proxy.engine.requests) == 1  # (a hit)

    config_data["cache"] = {"max_age_cap": 0}
    path.write_text(yaml.safe_dump(config_data))
    assert proxy.app.holder.reload()
    after = await proxy.get(CHUNK, token=token)
    assert after.status == 200 and after.body == first.body
    assert after.headers["Cache-Control"] == "private, max-age=0, stale-while-revalidate=0"
    # Unchanged cache settings keep what the cache holds (a reload is not a cold start).
    config_data["collapse"] = True
    path.write_text(yaml.safe_dump(config_data) + "\n# touched\n")
    assert proxy.app.holder.reload()
    requests = len(proxy.engine.requests)
    again = await proxy.get(CHUNK, token=token)
    assert again.headers["Cache-Control"] == after.headers["Cache-Control"]
    assert len(proxy.engine.requests) == requests  # (a hit)

"""The dashboard flags a source nobody has the secret of (its creation's answer never
sent): it was in the API only (`secret_delivered: false`), the page looked like any other
source's. In headless Chromium against the in-process engine's admin listener."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.browser.test_dashboard import _chromium, _node_deps
from tests.sync_engine.tenants.harness import TOKEN, MultiEngine, make_items

ROOT = Path(__file__).resolve().parents[3]


async def test_the_dashboard_shows_a_source_whose_secret_was_never_delivered(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    chromium = _chromium()
    _node_deps()
    url_lost, url_known = make_db(), make_db()
    for url in (url_lost, url_known):
        make_items(url, ["a1"])
    engine = await engines().start()
    known = await engine.add("known", url_known)
    # created, its answer never sent (the client gone): nobody holds its secret
    rec, _, _ = await engine.manager.create("lost", url_lost)
    engine.manager.answer_ended(rec.source_id)
    assert engine.admin is not None
    proc = await asyncio.create_subprocess_exec(
        "node", str(Path(__file__).with_name("dashboard_pending.mjs")),
        env={**os.environ, "ADMIN_URL": str(engine.admin.make_url("")).rstrip("/"),
             "ADMIN_TOKEN": TOKEN, "LOST_ID": rec.source_id, "KNOWN_ID": known["source_id"],
             "CHROMIUM": chromium, "PLAYWRIGHT": str(ROOT / "tests/browser/package.json")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    assert seen["errors"] == [], seen
    assert "no secret delivered" in seen["lostRow"]
    assert "no secret delivered" not in seen["knownRow"]
    assert "never recorded as sent" in seen["badgeTitle"]
    assert "Maybe nobody has this source's secret" in seen["notice"]
    assert "same creation again" in seen["notice"]
    # a rotation delivers a secret: the flag goes
    assert seen["noticeAfterRotate"] is False
    assert "no secret delivered" not in seen["lostRowAfter"]
    status, body = await engine.api("GET", f"/api/sources/{rec.source_id}")
    assert status == 200 and body["secret_delivered"] is True

"""The dashboard flags a source nobody may have the secret of (its creation's answer not
recorded as sent), and a registry open read-only: both were in the API only, the pages
looked as usual. In headless Chromium against the in-process engine's admin listener."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sync_engine.tenants.store import SourceStore
from tests.browser.test_dashboard import _chromium, _node_deps
from tests.sync_engine.tenants.harness import TOKEN, MultiEngine, make_items

ROOT = Path(__file__).resolve().parents[3]


async def test_the_dashboard_shows_an_undelivered_secret_and_a_read_only_registry(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both were in the API only (`secret_delivered: false`, `registry.read_only`); a
    change refused on a read-only registry was a bare alert. (The full disk itself is
    test_full_disk's; here opening sources.db for writing is made to fail.)"""
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
    store = engine.manager.store
    assert engine.admin is not None and store is not None
    proc = await asyncio.create_subprocess_exec(
        "node", str(Path(__file__).with_name("dashboard_pending.mjs")),
        env={**os.environ, "ADMIN_URL": str(engine.admin.make_url("")).rstrip("/"),
             "ADMIN_TOKEN": TOKEN, "LOST_ID": rec.source_id, "KNOWN_ID": known["source_id"],
             "CHROMIUM": chromium, "PLAYWRIGHT": str(ROOT / "tests/browser/package.json")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.strip() == b"PENDING SEEN", line
        status, body = await engine.api("GET", f"/api/sources/{rec.source_id}")
        assert status == 200 and body["secret_delivered"] is True  # (rotated in the page)
        monkeypatch.setattr(SourceStore, "_open_writable", _disk_full)
        store.read_only = "OperationalError: database or disk is full"
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"READ-ONLY SEEN", line
        monkeypatch.undo()  # space returned: the engine opens it for writing within 1 s
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
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
    # read-only: a banner on the list and on a source's page, a refused change explained
    assert "Read-only" in seen["listBanner"] and "disk is full" in seen["listBanner"], seen
    assert seen["sourcePageBanner"] is True
    assert any("read-only" in a for a in seen["alerts"]), seen
    assert seen["bannerGone"] is True  # writable again
    assert store.read_only is None


def _disk_full(self: SourceStore) -> sqlite3.Connection:
    raise sqlite3.OperationalError("database or disk is full")

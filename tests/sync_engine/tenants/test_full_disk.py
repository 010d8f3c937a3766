"""sources.db cannot be written (the data directory's disk full, another program holding its
lock): the admin API answers a clear 503 at once and changes nothing (a create, a rotation,
a pause, a deletion), the registered sources go on serving, and once it can be written
again everything works. Mounting a small tmpfs needs root (CI runs as root)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sync_engine.tenants.store import store_has_sources
from tests.sync_engine.tenants.harness import MultiEngine, make_items

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)


def _fill(path: Path) -> None:
    """Fill the filesystem of `path` to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


@needs_root
@pytest.mark.timeout(120)
async def test_admin_requests_on_a_full_disk_are_a_503_and_change_nothing(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str], tmp_path: Path
) -> None:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    engine: MultiEngine | None = None
    try:
        url_a, url_b = make_db(), make_db()
        make_items(url_a, ["a1"])
        engine = await engines(mnt).start()
        a = await engine.add("alpha", url_a)
        sid = a["source_id"]
        await engine.wait_state(sid, "active")
        rows, _, _ = await engine.sync(sid, a["secret"], table="items")
        _fill(mnt / "filler")
        for method, path, body in [
            ("POST", "/api/sources", {"name": "beta", "database_url": url_b}),
            ("POST", f"/api/sources/{sid}/rotate-secret", {}),
            ("POST", f"/api/sources/{sid}/pause", None),
            ("DELETE", f"/api/sources/{sid}", None),
        ]:
            status, got = await engine.api(method, path, body)
            assert status == 503 and got["error"] == "store_unavailable", (path, status, got)
            assert "disk is full" in got["message"]
        status, got = await engine.api("GET", "/api/sources")
        assert [s["name"] for s in got["sources"]] == ["alpha"]
        assert got["sources"][0]["state"] == "active"
        rows, _, _ = await engine.sync(sid, a["secret"], table="items")  # still serving
        assert [r["name"] for r in rows.values()] == ["a1"]
        (mnt / "filler").unlink()
        b = await engine.add("beta", url_b)
        status, _ = await engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
        assert status == 200
        status, _ = await engine.api("DELETE", f"/api/sources/{b['source_id']}")
        assert status == 200
    finally:
        if engine is not None:
            await engine.close()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_admin_requests_while_another_program_holds_the_store_are_a_quick_503(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str]
) -> None:
    """An operator's sqlite3 shell holding sources.db's write lock: a write waited 10 s on
    the event loop (every source's requests stalled), then was a 500. Now 1 s, then 503."""
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    a = await engine.add("alpha", url)
    await engine.wait_state(a["source_id"], "active")
    other = sqlite3.connect(engine.data_dir / "sources.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        status, got = await engine.api("POST", f"/api/sources/{a['source_id']}/pause")
        assert status == 503 and got["error"] == "store_unavailable", got
        assert "locked" in got["message"]
        assert time.monotonic() - started < 9  # the old wait was 10 s
        other.execute("ROLLBACK")
    finally:
        other.close()
    status, got = await engine.api("POST", f"/api/sources/{a['source_id']}/pause")
    assert status == 200 and got["state"] == "paused"


@needs_root
@pytest.mark.timeout(120)
async def test_a_start_on_a_full_disk_serves_the_sources_then_writes_when_space_returns(
    engines: Callable[..., MultiEngine], make_db: Callable[[], str], tmp_path: Path
) -> None:
    """SQLite cannot open sources.db for writing on a disk with no space (its WAL files
    cannot be made): the start failed, or (with the engine's own full-disk start) every
    registered source answered 503 until space returned. Now sources.db is opened read-only:
    the sources serve as they are on disk, writes are a 503 that change nothing, and once
    space returns the next write works (and lasts: a restart keeps it)."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    filler = mnt / "filler"
    try:
        url = make_db()
        make_items(url, ["a1"])
        # 1. a first start, no sources.db yet, no space: up, nothing registered, create 503
        _fill(filler)
        engine = await engines(mnt).start()
        status, got = await engine.api("GET", "/api/sources")
        assert status == 200 and got["sources"] == [], got
        assert "disk" in got["registry"]["read_only"], got  # (full, or I/O error)
        status, got = await engine.api("POST", "/api/sources", {"name": "alpha",
                                                                "database_url": url})  # fmt: skip
        assert status == 503 and got["error"] == "store_unavailable", got
        filler.unlink()
        a = await engine.add("alpha", url)  # space returned: the write works
        sid, first = a["source_id"], a["secret"]
        await engine.wait_state(sid, "active")
        rows, _, _ = await engine.sync(sid, first, table="items")
        await engine.close()  # a clean stop: SQLite removes its WAL files

        # 2. started again with no space: the source serves, writes are refused
        _fill(filler)
        assert store_has_sources(mnt)  # (an engine without --admin-token reads it too)
        engine = await engines(mnt).start()
        status, got = await engine.api("GET", "/api/sources")
        assert [s["source_id"] for s in got["sources"]] == [sid], got
        assert got["registry"]["read_only"], got
        rows, _, _ = await engine.sync(sid, first, table="items")
        assert [r["name"] for r in rows.values()] == ["a1"]
        for method, path in [("POST", f"/api/sources/{sid}/rotate-secret"),
                             ("POST", f"/api/sources/{sid}/pause"),
                             ("DELETE", f"/api/sources/{sid}")]:  # fmt: skip
            status, got = await engine.api(method, path)
            assert status == 503 and got["error"] == "store_unavailable", (path, got)
            assert "read-only" in got["message"], got
        rows, _, _ = await engine.sync(sid, first, table="items")  # changed nothing
        # 3. space returns: the next write works, and lasts
        filler.unlink()
        status, got = await engine.api("POST", f"/api/sources/{sid}/rotate-secret")
        assert status == 200, got
        second = got["secret"]
        assert (await engine.api("GET", "/api/info"))[1]["registry"] == {"read_only": None}
        assert (await engine.get(sid, first, table="items", offset="-1"))[0] == 401
        await engine.close()
        engine = await engines(mnt).start()
        await engine.wait_state(sid, "active")
        assert (await engine.get(sid, first, table="items", offset="-1"))[0] == 401
        rows, _, _ = await engine.sync(sid, second, table="items")
        assert [r["name"] for r in rows.values()] == ["a1"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_root
@pytest.mark.timeout(120)
def test_a_crash_then_a_start_on_a_full_disk_without_the_wal_index(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    """A real engine SIGKILLed right after a rotation (in sources.db's WAL only), its WAL
    index file gone (a reboot), started again on a full disk: SQLite cannot read that WAL
    without an index and cannot make one (disk I/O error), and the registered sources were
    not served (503 registry_unavailable until space returned). Now the WAL is applied in
    memory: the rotated secret is the one that works, the old one is refused."""
    from tests.sync_engine.tenants.harness import AdminEngine

    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    log = tmp_path / "engine.log"
    engine: AdminEngine | None = None
    try:
        url = make_db()
        make_items(url, ["a1"])
        engine = AdminEngine(mnt, log)
        status, made = engine.api("POST", "/api/sources", {"name": "shop", "database_url": url})
        assert status == 201, made
        sid, first = made["source_id"], made["secret"]
        engine.stop()  # a clean stop: the registry is all in sources.db
        engine = AdminEngine(mnt, log)
        status, rotated = engine.api("POST", f"/api/sources/{sid}/rotate-secret", {})
        assert status == 200, rotated
        engine.kill()  # the rotation is only in the WAL
        assert (mnt / "sources.db-wal").stat().st_size > 0
        (mnt / "sources.db-shm").unlink(missing_ok=True)
        _fill(mnt / "filler")
        engine = AdminEngine(mnt, log)
        status, listing = engine.api("GET", "/api/sources")
        assert status == 200 and [s["source_id"] for s in listing["sources"]] == [sid], listing
        assert listing["registry"]["read_only"], listing
        assert engine.shape_status(sid, first) == 401  # rotated out: stays out
        assert engine.shape_status(sid, rotated["secret"]) != 401  # (200, or 503: no space)
    finally:
        if engine is not None:
            engine.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    text = log.read_text()
    assert first not in text and rotated["secret"] not in text

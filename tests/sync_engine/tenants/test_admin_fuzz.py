"""The admin API and the source lifecycle under hostile input, in-process (fast): odd and
long names, unicode, repeated parameters and JSON keys, wrong methods, huge and chunked
bodies, and create/rotate/pause/resume/delete of one source all at once. Every answer is
JSON with a 2xx or a 4xx, never a 5xx; after the storm the records in memory, the store on
disk and the running sources agree, the one current secret works; and no secret appears in
any log line or error body."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest

from sync_engine.tenants.store import SourceStore
from tests.sync_engine.tenants.harness import TOKEN, MultiEngine, make_items

NAMES = [
    "", " ", "a", "A" * 64, "a" * 65, " padded ", "trailing.", "-lead", ".lead", "_x", "x y",
    "x\ty", "x\ny", "x\x00y", "é", "\uff53\uff48\uff4f\uff50", "shop\u200b", "\u202eshop", "😀", "shop/..",
    "shop%00", "shop?x=1", "shop#x", "'; DROP TABLE sources; --", "a" * 10_000, "ß", "İ",
]  # fmt: skip


async def _call(engine: MultiEngine, method: str, path: str, *, raw: bytes | None = None,
                body: Any = None, headers: dict[str, str] | None = None,
                seen: list[str]) -> tuple[int, Any]:  # fmt: skip
    assert engine.admin is not None
    h = {"authorization": f"Bearer {TOKEN}", **(headers or {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    resp = await engine.admin.request(method, path, data=data, headers=h)
    text = await resp.text()
    assert resp.status < 500, (method, path, (data or b"")[:200], resp.status, text[:500])
    if method != "HEAD":
        assert resp.headers.get("content-type", "").startswith("application/json"), text[:200]
    seen.append(text)
    return resp.status, json.loads(text) if text else None


async def test_hostile_admin_requests_are_clear_4xx(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    seen: list[str] = []
    src = await engine.add("shop", url)
    sid, secret = src["source_id"], src["secret"]
    secrets = [secret]

    # names: each either a 201 (then it is listed as given, trimmed) or a 400 on `name`
    for name in NAMES:
        status, body = await _call(engine, "POST", "/api/sources", seen=seen,
                                   body={"name": name, "database_url": url})  # fmt: skip
        if status == 201:
            secrets.append(body["secret"])
            assert body["name"] == name.strip()
            status, _ = await _call(engine, "DELETE", f"/api/sources/{body['source_id']}",
                                    seen=seen)  # fmt: skip
            assert status == 200
        else:
            assert (status, body["error"], body.get("field")) == (400, "invalid_request",
                                                                   "name"), (name, body)  # fmt: skip
    # the same name in another case is the same name
    status, body = await _call(engine, "POST", "/api/sources", seen=seen,
                               body={"name": "SHOP", "database_url": url})  # fmt: skip
    assert status == 409 and body["source_id"] == sid, body
    # repeated JSON keys: the last one, as every JSON parser here (not a 500, not a mix)
    status, body = await _call(engine, "POST", f"/api/sources/{sid}/rotate-secret", seen=seen,
                               raw=b'{"grace_period_seconds": 1e9, "grace_period_seconds": 0}')  # fmt: skip
    assert status == 200 and body["previous_secret_expires_at"] is None, body
    secrets.append(body["secret"])
    secret = body["secret"]
    # repeated and odd query parameters change nothing
    for query in ("?x=1&x=2", "?grace_period_seconds=99", "?%ff=%00", "?" + "a=b&" * 500):
        status, body = await _call(engine, "GET", f"/api/sources{query}", seen=seen)
        assert status == 200 and [s["name"] for s in body["sources"]] == ["shop"], body
    # numbers JSON allows and Python reads oddly
    for raw in (b'{"grace_period_seconds": NaN}', b'{"grace_period_seconds": Infinity}',
                b'{"grace_period_seconds": -Infinity}', b'{"grace_period_seconds": 1' + b"0" * 5000
                + b"}", b'{"grace_period_seconds": "60"}', b'{"grace_period_seconds": true}',
                b'{"grace_period_seconds": -1}', b'{"grace_period_seconds": [60]}'):  # fmt: skip
        status, body = await _call(engine, "POST", f"/api/sources/{sid}/rotate-secret", raw=raw,
                                   seen=seen)  # fmt: skip
        assert status == 400 and body["error"] == "invalid_request", (raw[:60], body)
    for value in (0, -1, 1.5, "5", True, 10**7, 1e400, None):
        status, body = await _call(engine, "POST", "/api/sources", seen=seen,
                                   raw=json.dumps({"name": "lim", "database_url": url,
                                                   "max_shapes": value}).encode()
                                   if value != 1e400 else b'{"name": "lim", "database_url": "'
                                   + url.encode() + b'", "max_shapes": 1e400}')  # fmt: skip
        if value is None:
            assert status == 201, body
            secrets.append(body["secret"])
            await _call(engine, "DELETE", f"/api/sources/{body['source_id']}", seen=seen)
        else:
            assert status == 400 and body.get("field") == "max_shapes", (value, body)
    # wrong methods: 405 JSON with Allow
    for method, path in [("PUT", "/api/sources"), ("PATCH", f"/api/sources/{sid}"),
                         ("GET", f"/api/sources/{sid}/rotate-secret"),
                         ("DELETE", "/api/sources"), ("PUT", f"/api/sources/{sid}/pause"),
                         ("POST", "/api/info"), ("POST", f"/api/sources/{sid}")]:  # fmt: skip
        assert engine.admin is not None
        resp = await engine.admin.request(method, path,
                                          headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
        text = await resp.text()
        assert resp.status == 405 and json.loads(text)["error"] == "method_not_allowed", text
        assert resp.headers.get("allow"), (method, path, dict(resp.headers))
    # huge bodies, with and without a length
    big = json.dumps({"name": "big", "database_url": url, "x": "y" * 200_000}).encode()
    status, body = await _call(engine, "POST", "/api/sources", raw=big, seen=seen)
    assert status == 413 and body["error"] == "body_too_large", body

    async def chunks() -> Any:
        for _ in range(100):
            yield b"{" + b" " * 4096

    assert engine.admin is not None
    resp = await engine.admin.post("/api/sources", data=chunks(),
                                   headers={"authorization": f"Bearer {TOKEN}"})  # fmt: skip
    text = await resp.text()
    assert resp.status == 413 and json.loads(text)["error"] == "body_too_large", text
    # odd content types are read as JSON all the same, or refused clearly
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, body = await _call(engine, "POST", f"/api/sources/{sid}/pause", raw=b"{}",
                                   headers={"content-type": ctype}, seen=seen)  # fmt: skip
        assert status in (200, 400, 415), body
        await _call(engine, "POST", f"/api/sources/{sid}/resume", seen=seen)

    # seeded random bodies: every field any JSON value, unknown keys, on every POST
    rng = random.Random(512)
    values: list[Any] = [None, True, 0, -1, 1, 2**31, 2**63, 1e300, -0.0, "", " ", "x" * 300,
                         "\x00", "\ud800", "😀", [], {}, [1], {"a": None}, url, url + "\x00",
                         "postgresql://u:FUZZ-PW@h:0/d", "host=h dbname=d password=FUZZ-PW"]  # fmt: skip
    fields = ["name", "database_url", "max_shapes", "max_initial_syncs", "grace_period_seconds"]
    for _ in range(150):
        path = rng.choice(["/api/sources", f"/api/sources/{sid}/rotate-secret",
                           f"/api/sources/{sid}/pause", f"/api/sources/{sid}/resume"])  # fmt: skip
        doc = {rng.choice([*fields, "x", "NAME", ""]): rng.choice(values)
               for _ in range(rng.randint(0, 4))}  # fmt: skip
        status, body = await _call(engine, "POST", path, raw=json.dumps(doc).encode(),
                                   seen=seen)  # fmt: skip
        if body.get("secret"):
            secrets.append(body["secret"])
            if path == "/api/sources":
                await _call(engine, "DELETE", f"/api/sources/{body['source_id']}", seen=seen)
            else:
                secret = body["secret"]
        else:
            assert status in (200, 400, 409), (doc, status, body)
        for text in seen[-1:]:
            assert "FUZZ-PW" not in text
    await _call(engine, "POST", f"/api/sources/{sid}/resume", seen=seen)

    await engine.wait_state(sid, "active")
    assert (await engine.get(sid, secret, table="items", offset="-1"))[0] == 200
    _no_secrets(secrets, seen, caplog)
    assert "FUZZ-PW" not in caplog.text


def _no_secrets(secrets: list[str], seen: list[str], caplog: pytest.LogCaptureFixture) -> None:
    # (not the test server's access log: the engine runs without one, `__main__`, and
    # test_hostile_input greps a real engine process's log)
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records
                       if r.name != "aiohttp.access")  # fmt: skip
    for s in secrets:
        assert s not in logged
    # an answer carrying a secret is the one that issued it; error bodies carry none
    for text in seen:
        body = json.loads(text) if text else None
        if isinstance(body, dict) and "secret" not in body:
            for s in secrets:
                assert s not in text, text[:300]


async def test_concurrent_create_rotate_pause_delete_of_one_source_stay_consistent(
    engines: Callable[..., MultiEngine],
    make_db: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = make_db()
    make_items(url, ["a1"])
    engine = await engines().start()
    seen: list[str] = []
    secrets: list[str] = []
    rng = random.Random(1205)
    body = {"name": "race", "database_url": url}

    async def one(op: str, sid: str | None) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        if op == "create" or sid is None:
            status, got = await _call(engine, "POST", "/api/sources", body=body, seen=seen)
            assert status in (201, 409, 503), got
        elif op == "rotate":
            status, got = await _call(engine, "POST", f"/api/sources/{sid}/rotate-secret",
                                      body={"grace_period_seconds": rng.choice([0, 5])},
                                      seen=seen)  # fmt: skip
            assert status in (200, 404), got
        elif op == "delete":
            status, got = await _call(engine, "DELETE", f"/api/sources/{sid}", seen=seen)
            assert status in (200, 404), got
        else:
            status, got = await _call(engine, "POST", f"/api/sources/{sid}/{op}", seen=seen)
            assert status in (200, 404), got
        if got and got.get("secret"):
            secrets.append(got["secret"])

    for _ in range(4):
        status, listing = await _call(engine, "GET", "/api/sources", seen=seen)
        sid = listing["sources"][0]["source_id"] if listing["sources"] else None
        ops = [rng.choice(["create", "rotate", "rotate", "pause", "resume", "delete"])
               for _ in range(12)]  # fmt: skip
        await asyncio.gather(*(one(op, sid) for op in ops))

    # memory, disk and the running sources agree
    manager = engine.manager
    assert manager.store is not None
    disk = SourceStore(manager.path)
    try:
        on_disk = {r.source_id: r for r in disk.all()}
    finally:
        disk.close()
    assert set(on_disk) == set(manager.records)
    for sid, rec in manager.records.items():
        d = on_disk[sid]
        assert (d.secret_hash, d.previous_secret_hash, d.paused, d.name) == (
            rec.secret_hash, rec.previous_secret_hash, rec.paused, rec.name)  # fmt: skip
        assert (sid in manager.running) == (not rec.paused)
    # a source left: exactly the secrets it holds hashes of work
    status, got = await _call(engine, "POST", "/api/sources", body=body, seen=seen)
    if status == 201:
        secrets.append(got["secret"])
    status, listing = await _call(engine, "GET", "/api/sources", seen=seen)
    (src,) = listing["sources"]
    sid = src["source_id"]
    if src["paused"]:
        await _call(engine, "POST", f"/api/sources/{sid}/resume", seen=seen)
    status, got = await _call(engine, "POST", f"/api/sources/{sid}/rotate-secret", seen=seen)
    assert status == 200
    await engine.wait_state(sid, "active")
    assert (await engine.get(sid, got["secret"], table="items", offset="-1"))[0] == 200
    for old in secrets:
        assert (await engine.get(sid, old, table="items", offset="-1"))[0] == 401
    secrets.append(got["secret"])
    _no_secrets(secrets, seen, caplog)

"""Pure parts of source management: secrets, URLs, diagnoses, the SQLite registry, auth."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from sync_engine.tenants import auth as auth_module
from sync_engine.tenants.auth import SourceAuth, canonical_source_id, parse_source_id
from sync_engine.tenants.credentials import hash_secret, is_slow, new_secret, verify_secret
from sync_engine.tenants.dburl import check_database_url, redact_url
from sync_engine.tenants.diagnose import PUBLIC_REASONS, explain, public_reason
from sync_engine.tenants.errors import DuplicateName, InvalidInput, UnknownSource
from sync_engine.tenants.store import SourceStore, store_has_sources
from tests.support.waiting import wait_until_async

URL = "postgresql://app:s3cr3t-pw@db.example.com:5432/shop"


def test_secrets_are_long_random_and_hashed_with_salt() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 43
    for slow, kind in ((False, "sha256$"), (True, "scrypt$")):
        h1, h2 = hash_secret(a, slow=slow), hash_secret(a, slow=slow)
        assert h1 != h2 and h1.startswith(kind) and a not in h1
        assert is_slow(h1) == slow
        assert verify_secret(a, h1) and verify_secret(a, h2)
        assert not verify_secret(b, h1)
        assert not verify_secret(a + "x", h1) and not verify_secret(a[:-1], h1)
        assert not verify_secret("", h1) and not verify_secret("\x00", h1)
        assert not verify_secret("\udcff" + a, h1)  # any decoded string: False, not an error
    assert not verify_secret(a, "garbage")
    assert not verify_secret(a, "sha256$garbage")


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (URL, "postgresql://app:****@db.example.com:5432/shop"),
        ("postgres://app@h/db", "postgres://app@h/db"),
        ("postgresql://h/db?password=pw&sslmode=require",
         "postgresql://h/db?password=****&sslmode=require"),
        ("host=h user=u password=pw dbname=d", "user=u password=**** dbname=d host=h"),
        # an sslpassword (the client key's passphrase) is a secret too
        ("postgresql://u@h/d?sslpassword=s3cr3t", "postgresql://u@h/d?sslpassword=****"),
        ("host=h sslpassword=s3cr3t", "host=h sslpassword=****"),
        ("postgresql://h/d?oauth_client_id=c&oauth_client_secret=s3cr3t",
         "postgresql://h/d?oauth_client_id=c&oauth_client_secret=****"),
        # libpq reads password 123?x where urlsplit sees host u, port 123: no part shows
        ("postgresql://u:123?x@h/d", "user=u password=**** dbname=d host=h"),
    ],
)  # fmt: skip
def test_redact_url(url: str, want: str) -> None:
    assert redact_url(url) == want
    check_database_url(url)  # all of them are accepted


@pytest.mark.parametrize(
    "bad",
    [None, "", "   ", 42, "not a url", "mysql://u@h/d", "http://h/d", "postgresql://h:99999/d",
     "postgresql://h/d?bogus=1", "postgresql://u:p@[::1/d", "postgresql://h/d?replication=1",
     "x" * 5000, "postgresql://u:s3cr3t@h/d\x00", "host=h dbname=d\x00",
     # not UTF-8 (were a 500: UnicodeEncodeError / UnicodeDecodeError inside psycopg)
     "postgresql://h/d\ud800", "postgresql://u:s3cr3t\ud800@h/d", "host=h dbname=\udcff",
     "postgresql://%ff@h/d", "postgresql://h/%ed%a0%80", "postgresql://u@h/d?password=%ff"],
)  # fmt: skip
def test_invalid_database_urls_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as info:
        check_database_url(bad)
    assert info.value.field == "database_url"
    assert "s3cr3t" not in info.value.message


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://u:s3cr3t@h/d?nope=1",
        # libpq quotes what it could not read: here the password itself
        "host=h user=u s3cr3t",
        "postgresql://u:s3cr3t%ZZ@h/d",
        "host=h password=x s3cr3t=1",
    ],
)
def test_invalid_url_message_never_echoes_the_password(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_database_url(bad)
    assert "s3cr3t" not in info.value.message, info.value.message


def test_valid_database_urls() -> None:
    assert check_database_url(f"  {URL} ") == URL
    assert check_database_url("host=localhost dbname=x") == "host=localhost dbname=x"


@pytest.mark.parametrize(
    ("error", "code", "hint"),
    [
        ("wal_level is replica, not logical: set wal_level = logical ...", "wal_level",
         "wal_level"),
        ('connection failed: connection to server at "10.0.0.9", port 5432 failed: Connection'
         " refused\n\tIs the server running on that host?", "unreachable", "cannot reach"),
        ("failed to resolve host 'db.example.com': [Errno -2] Name or service not known",
         "unreachable", "cannot reach"),
        ("terminating connection due to administrator command", "unreachable",
         "lost the connection"),
        ("must be superuser or replication role to start walsender", "no_replication_role",
         "ALTER ROLE app WITH REPLICATION"),
        ("all replication slots are in use", "no_replication_slots", "max_replication_slots"),
        ("number of requested standby connections exceeds max_wal_senders (currently 0)",
         "no_wal_senders", "max_wal_senders"),
        ('password authentication failed for user "app"', "auth_failed", "password"),
        ('database "shop" does not exist', "database_missing", "create it"),
        ("permission denied for database shop", "permission", "GRANT CREATE"),
        ("something odd", "other", "something odd"),
    ],
)  # fmt: skip
def test_errors_are_explained(error: str, code: str, hint: str) -> None:
    d = explain(error, URL)
    assert d.code == code
    assert hint in d.message
    assert "s3cr3t" not in d.message
    # What a public answer says of it: its kind, no host, role or database name.
    said = public_reason(error)
    assert said in PUBLIC_REASONS.values()
    for name in ("10.0.0.9", '"app"', "shop", "db.example.com", "s3cr3t"):
        assert name not in said


def test_public_reasons_of_a_stream_that_stopped() -> None:
    assert public_reason(None) == "connecting to the database"
    held = 'replication slot "shapegate_slot_default" is active for PID 4242'
    assert public_reason(held) == "the replication slot is in use by another connection"
    lost = "replication connection lost (slot 'shapegate_slot_default'): server closed"
    assert public_reason(lost) == PUBLIC_REASONS["lost"]


def test_registry_round_trip_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sources.db"
    reg = SourceStore(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not store_has_sources(tmp_path / "data")
    rec = reg.create("shop", URL, "h1", max_shapes=5)
    assert parse_source_id(rec.source_id) == rec.source_id
    assert "s3cr3t" not in repr(rec) and "h1" not in repr(rec)
    with pytest.raises(DuplicateName):
        reg.create("SHOP", URL, "h2")
    rotated = reg.rotate_secret(rec.source_id, "h2", 60)
    now = time.monotonic()  # (grace periods are checked by the monotonic clock)
    assert rotated.valid_hashes(now) == ["h2", "h1"] == rotated.valid_hashes()
    assert rotated.valid_hashes(now + 61) == ["h2"]
    assert reg.get(rec.source_id).valid_hashes(now + 59) == ["h2", "h1"]
    reg.set_state(rec.source_id, "error", "wal_level is replica")
    reg.set_state(rec.source_id, "active", None)
    reg.set_paused(rec.source_id, True)
    reg.close()

    reg = SourceStore(path)  # survives reopening
    again = reg.get(rec.source_id)
    assert again.secret_hash == "h2" and again.previous_secret_hash == "h1"
    assert again.paused and again.state == "paused"
    assert again.last_error == "wal_level is replica" and again.max_shapes == 5
    assert store_has_sources(tmp_path / "data")
    reg.delete(rec.source_id)
    with pytest.raises(UnknownSource):
        reg.get(rec.source_id)
    with pytest.raises(UnknownSource):
        reg.delete(rec.source_id)
    with pytest.raises(UnknownSource):
        reg.set_paused(rec.source_id, False)
    assert reg.all() == []
    reg.close()


def test_a_store_that_cannot_be_written_is_read_as_it_is_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened for writing fails (a full disk): read-only, with the WAL's content when it has
    some (a crash left it: a rotation only there must be seen, or an old secret works
    again), writes refused until opening for writing works again."""
    import sqlite3

    from sync_engine.tenants.store import StoreReadOnly

    path = tmp_path / "data" / "sources.db"
    writer = SourceStore(path)
    rec = writer.create("shop", URL, "h1")
    writer.rotate_secret(rec.source_id, "h2", 0)  # in the WAL (the writer still has it open)
    assert (path.parent / "sources.db-wal").stat().st_size > 0
    real = SourceStore._open_writable
    broken = True

    def open_writable(self: SourceStore) -> sqlite3.Connection:
        if broken:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self)

    monkeypatch.setattr(SourceStore, "_open_writable", open_writable)
    reader = SourceStore(path)
    assert reader.read_only and "disk I/O error" in reader.read_only
    assert reader.get(rec.source_id).secret_hash == "h2"
    assert store_has_sources(path.parent)
    with pytest.raises(StoreReadOnly):
        reader.rotate_secret(rec.source_id, "h3", 0)
    reader.close()
    writer.close()  # a clean stop: the WAL is folded in and removed
    assert not (path.parent / "sources.db-wal").exists()
    reader = SourceStore(path)  # read as it is (immutable)
    assert reader.read_only and reader.get(rec.source_id).secret_hash == "h2"
    assert not reader.try_writable()
    broken = False  # space returned: the next write opens it for writing
    reader.rotate_secret(rec.source_id, "h3", 0)
    assert reader.read_only is None
    reader.close()
    assert SourceStore(path).get(rec.source_id).secret_hash == "h3"

    # never written (a first start on a full disk): no source, nothing written
    broken = True
    empty = SourceStore(tmp_path / "other" / "sources.db")
    assert empty.read_only and empty.all() == [] and not empty.ever_had_sources()
    with pytest.raises(StoreReadOnly):
        empty.create("shop", URL, "h1")


def test_a_store_of_schema_3_is_upgraded_its_sources_delivered(tmp_path: Path) -> None:
    """Sources registered before `secret_delivered` existed had their answers sent (as far
    as anyone can tell): a retry of their creation stays a 409."""
    import sqlite3

    from sync_engine.tenants import store as store_module

    path = tmp_path / "sources.db"
    db = sqlite3.connect(path)
    schema = store_module._SCHEMA.replace("    secret_delivered INTEGER NOT NULL DEFAULT 1,\n", "")
    assert "secret_delivered" not in schema
    db.executescript(schema)
    db.execute("INSERT INTO sources (source_id, name, database_url, secret_hash, created_at,"
               " updated_at) VALUES ('00000000-0000-4000-8000-000000000001', 'old', ?, 'h',"
               " 1, 1)", (URL,))  # fmt: skip
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    reg = SourceStore(path)
    (old,) = reg.all()
    assert old.name == "old" and old.secret_delivered
    new = reg.create("new", URL, "h2")
    assert not new.secret_delivered and not reg.get(new.source_id).secret_delivered
    reg.mark_delivered(new.source_id)
    assert reg.get(new.source_id).secret_delivered
    assert reg.find_name("NEW") == reg.get(new.source_id)
    reg.close()


def test_a_store_of_schema_3_that_cannot_be_upgraded_still_opens(tmp_path: Path) -> None:
    """The upgrade to schema 4 cannot be written (a full disk; here another program holds the
    lock): the engine still starts, on schema 3, every source counted as delivered (a start
    on a full disk never wrote before schema 4 either); the next start upgrades it."""
    import sqlite3

    from sync_engine.tenants import store as store_module

    path = tmp_path / "sources.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")  # as every store is
    db.executescript(
        store_module._SCHEMA.replace("    secret_delivered INTEGER NOT NULL DEFAULT 1,\n", "")
    )
    db.execute("INSERT INTO sources (source_id, name, database_url, secret_hash, created_at,"
               " updated_at) VALUES ('00000000-0000-4000-8000-000000000001', 'old', ?, 'h',"
               " 1, 1)", (URL,))  # fmt: skip
    db.execute("PRAGMA user_version=3")
    db.execute("BEGIN IMMEDIATE")  # held: the upgrade cannot be written
    reg = SourceStore(path)
    (old,) = reg.all()
    assert old.name == "old" and old.secret_delivered
    assert reg.find_name("OLD") == old and reg.get(old.source_id) == old
    db.execute("ROLLBACK")
    new = reg.create("new", URL, "h2")
    assert new.secret_delivered and reg.get(new.source_id).secret_delivered
    reg.mark_delivered(new.source_id)
    reg.close()
    db.close()
    reg = SourceStore(path)  # the next start can write it
    assert [r.name for r in reg.all()] == ["old", "new"]
    assert not reg.create("newer", URL, "h3").secret_delivered
    reg.close()


async def test_auth_checks(tmp_path: Path) -> None:
    reg = SourceStore(tmp_path / "sources.db")
    secret, other = new_secret(), new_secret()
    rec = reg.create("a", URL, hash_secret(secret))
    auth = SourceAuth()
    await auth.prepare()
    assert await auth.check(rec, secret)
    assert await auth.check(rec, secret)  # remembered
    assert not await auth.check(rec, other)
    assert not await auth.check(rec, None)
    assert not await auth.check(rec, "")
    assert not await auth.check(None, secret)  # unknown source, same answer
    rotated = reg.rotate_secret(rec.source_id, hash_secret(other), 10)
    now = time.monotonic()
    assert await auth.check(rotated, other, now=now)
    assert await auth.check(rotated, secret, now=now)  # grace period
    assert not await auth.check(rotated, secret, now=now + 11)  # remembered but expired
    immediate = reg.rotate_secret(rec.source_id, hash_secret(new_secret()), 0)
    assert not await auth.check(immediate, other)
    assert not await auth.check(immediate, secret)


def test_parse_source_id() -> None:
    sid = "0a000000-0000-4000-8000-00000000000b"
    assert parse_source_id(sid) == canonical_source_id(sid) == sid
    for bad in (None, "", "default", "x" * 100, "1234"):
        assert parse_source_id(bad) is None
        assert canonical_source_id(bad) is None
    # the same uuid spelled otherwise: the admin API finds it, /v1/shape does not
    for other in (sid.upper(), "{" + sid + "}", "urn:uuid:" + sid, sid.replace("-", "")):
        assert parse_source_id(other) == sid
        assert canonical_source_id(other) is None


async def test_secret_checks_take_turns_by_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of wrong secrets for one source (or for made-up ids) waits behind itself: the
    free workers go to each source waiting in turn, not to the flood's next check (the
    checks used to wait in one queue, first come first served)."""
    reg = SourceStore(tmp_path / "sources.db")
    secret_a, secret_b = new_secret(), new_secret()
    rec_a = reg.create("a", URL, hash_secret(secret_a, slow=True))
    rec_b = reg.create("b", URL, hash_secret(secret_b, slow=True))
    auth = SourceAuth(concurrency=1)
    auth.slow_dummies = True  # a source has a scrypt hash: made-up ids cost scrypt too
    await auth.prepare()
    order: list[str] = []
    go = threading.Semaphore(0)
    real = auth_module._verify_all

    def held(secret: str, hashes: list[str]) -> list[bool]:
        order.append(secret)
        assert go.acquire(timeout=30)
        return real(secret, hashes)

    monkeypatch.setattr(auth_module, "_verify_all", held)
    flood = [asyncio.create_task(auth.check(rec_a, f"wrong-{i}")) for i in range(4)]
    flood += [asyncio.create_task(auth.check(None, f"made-up-{i}")) for i in range(3)]
    await wait_until_async(lambda: len(order) == 1 and auth.waiting == 6, message="queued")
    legit = asyncio.create_task(auth.check(rec_b, secret_b))
    await wait_until_async(lambda: auth.waiting == 7, message="the legit check queued")
    for n in (2, 3):
        go.release()
        await wait_until_async(lambda: len(order) == n, message="the next check runs")  # noqa: B023
    # one turn for each source waiting: the made-up ids', then b's (was 8th of 8)
    assert order == ["wrong-0", "made-up-0", secret_b], order
    for _ in range(6):
        go.release()
    assert await legit
    assert not any(await asyncio.gather(*flood))
    assert auth.waiting == 0 and auth._running == 0


async def test_slow_checks_are_bounded_shared_and_given_up_when_nobody_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bounds (per source, in all) a check is refused at once with `Overloaded`;
    identical checks waiting at once share one; a check whose requests all left gives its
    place up. A remembered secret never waits."""
    reg = SourceStore(tmp_path / "sources.db")
    secret_a = new_secret()
    rec_a = reg.create("a", URL, hash_secret(secret_a, slow=True))
    rec_b = reg.create("b", URL, hash_secret(new_secret(), slow=True))
    auth = SourceAuth(concurrency=1, max_waiting_per_source=3, max_waiting=5)
    auth.slow_dummies = True
    await auth.prepare()
    assert await auth.check(rec_a, secret_a)  # remembered from now on
    calls: list[str] = []
    go = threading.Event()
    real = auth_module._verify_all

    def held(secret: str, hashes: list[str]) -> list[bool]:
        calls.append(secret)
        assert go.wait(30)
        return real(secret, hashes)

    monkeypatch.setattr(auth_module, "_verify_all", held)
    a = [asyncio.create_task(auth.check(rec_a, f"a-{i}")) for i in range(3)]
    await wait_until_async(lambda: calls == ["a-0"] and auth.waiting == 2, message="a queued")
    with pytest.raises(auth_module.Overloaded):
        await auth.check(rec_a, "a-3")  # 3 of a's already
    shared = [asyncio.create_task(auth.check(rec_a, "a-1")) for _ in range(5)]  # joins a-1's
    b = [asyncio.create_task(auth.check(rec_b, f"b-{i}")) for i in range(2)]
    await wait_until_async(lambda: auth.active == 5, message="b's queued")
    with pytest.raises(auth_module.Overloaded):
        await auth.check(rec_b, "b-2")  # 5 in all
    with pytest.raises(auth_module.Overloaded):
        await auth.check(None, "made-up")
    assert await auth.check(rec_a, secret_a)  # remembered: no wait, no refusal
    b[1].cancel()  # its request left: its place is free again
    await wait_until_async(lambda: auth.active == 4, message="b-1 gave its place up")
    late = asyncio.create_task(auth.check(None, "made-up"))
    await wait_until_async(lambda: auth.active == 5, message="made-up queued")
    go.set()
    assert not any(await asyncio.gather(*a, *shared, b[0], late))
    assert sorted(calls) == ["a-0", "a-1", "a-2", "b-0", "made-up"]  # a-1 checked once
    assert auth.active == 0 and auth.waiting == 0 and auth._running == 0
    auth.close()


def test_a_creations_secret_is_kept_sealed_until_delivered_and_forgotten_after() -> None:
    """The first secret of a source whose answer was not recorded as sent is kept sealed
    (by a key from the admin token), so that a retry of the creation gets it again; a copy
    of sources.db does not show it, and another key does not open it."""
    from sync_engine.tenants.credentials import seal_secret, sealing_key, unseal_secret

    secret, key = new_secret(), sealing_key("admin-token-0123456789")
    sid = "00000000-0000-4000-8000-000000000001"
    sealed = seal_secret(secret, key, sid)
    assert secret not in sealed and sealed != seal_secret(secret, key, sid)  # nonce
    assert unseal_secret(sealed, key, sid) == secret
    assert unseal_secret(sealed, sealing_key("another-token-0123456789"), sid) is None
    assert unseal_secret(sealed, key, sid.replace("1", "2")) is None
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert unseal_secret(tampered, key, sid) is None  # authenticated: no altered secret
    for junk in ("", "aesgcm$", "aesgcm$$", "aesgcm$!!$!!", "zz$a$b", sealed + "$"):
        assert unseal_secret(junk, key, sid) is None


def test_a_store_of_schema_4_is_upgraded_and_the_sealed_secret_forgotten(tmp_path: Path) -> None:
    """Schema 5 adds `pending_secret`: a source left undelivered by schema 4 has none (a
    retry is then a 409 that says to rotate). Marking delivered or rotating forgets it."""
    import sqlite3

    from sync_engine.tenants import store as store_module

    path = tmp_path / "sources.db"
    db = sqlite3.connect(path)
    db.executescript(store_module._SCHEMA.replace("    pending_secret TEXT,\n", ""))
    db.execute("INSERT INTO sources (source_id, name, database_url, secret_hash, created_at,"
               " updated_at, secret_delivered) VALUES ('00000000-0000-4000-8000-000000000001',"
               " 'old', ?, 'h', 1, 1, 0)", (URL,))  # fmt: skip
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    reg = SourceStore(path)
    (old,) = reg.all()
    assert not old.secret_delivered and old.pending_secret is None
    a = reg.create("a", URL, "h1", pending_secret="sealed-a")
    b = reg.create("b", URL, "h2", pending_secret="sealed-b")
    assert reg.get(a.source_id).pending_secret == "sealed-a" == a.pending_secret
    reg.mark_delivered(a.source_id)
    assert reg.get(a.source_id).pending_secret is None and reg.get(a.source_id).secret_delivered
    assert reg.rotate_secret(b.source_id, "h3", 0).pending_secret is None
    assert reg.get(b.source_id).pending_secret is None
    reg.close()
    assert b"sealed-" not in path.read_bytes()  # (secure_delete: not left in a free page)


def _crashed_copy(tmp_path: Path, into: Path) -> tuple[str, Path]:
    """A store whose last writes are only in its WAL (its writer still has it open, as if
    killed), copied to `into` without its index file (`-shm`): a crash, then a reboot."""
    import shutil

    src = tmp_path / "src" / "sources.db"
    writer = SourceStore(src)
    first = writer.create("first", URL, "h0")
    rec = writer.create("shop", URL, "h1")
    writer.rotate_secret(rec.source_id, "h2", 0)
    writer.delete(first.source_id)
    assert (src.parent / "sources.db-wal").stat().st_size > 0
    into.mkdir(parents=True, exist_ok=True)
    for name in ("sources.db", "sources.db-wal"):
        shutil.copy(src.parent / name, into / name)
    writer.close()
    return rec.source_id, into / "sources.db"


def test_a_wal_is_applied_in_memory_as_sqlite_reads_it(tmp_path: Path) -> None:
    """`read_snapshot` (the read of last resort: a WAL with content, no index file, no
    space to make one) gives what SQLite gives: the WAL's committed transactions, a torn
    last frame ignored."""
    from sync_engine.tenants.store import read_snapshot

    sid, path = _crashed_copy(tmp_path, tmp_path / "copy")
    db = read_snapshot(path)
    rows = db.execute("SELECT source_id, secret_hash FROM sources").fetchall()
    assert [tuple(r) for r in rows] == [(sid, "h2")]
    assert db.execute("SELECT count(*) FROM deleted_sources").fetchone()[0] == 1
    db.close()
    wal = path.with_name("sources.db-wal")
    data = wal.read_bytes()
    wal.write_bytes(data[:-100])  # the last transaction (the deletion) torn
    db = read_snapshot(path)
    assert db.execute("SELECT count(*) FROM sources").fetchone()[0] == 2
    assert db.execute("SELECT secret_hash FROM sources WHERE source_id = ?",
                      (sid,)).fetchone()[0] == "h2"  # fmt: skip
    db.close()
    # no valid frame: the main file alone (here it has no table yet): a clear error
    wal.write_bytes(data[:32] + bytes(len(data) - 32))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        read_snapshot(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (CI runs as root)")
def test_a_store_with_a_wal_and_no_index_on_a_full_disk_is_served(tmp_path: Path) -> None:
    """A start on a full disk after a crash and a reboot: sources.db's WAL has content, its
    index file is gone and there is no room to make it. SQLite cannot read it (disk I/O
    error): the engine had no registry (and one without --admin-token did not start, no
    sources found). Now it is read with the WAL applied, the rotation in it included."""
    import subprocess

    from sync_engine.preflight import check_registry
    from tests.sync_engine.tenants.test_full_disk import _fill

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        sid, path = _crashed_copy(tmp_path, mnt)
        _fill(mnt / "filler")
        assert store_has_sources(mnt)
        # the engine's start check: the main file alone has no table yet (all in the WAL);
        # it was refused ("restore it from a backup") and the engine exited, restarted, ...
        assert check_registry(mnt) is None
        reg = SourceStore(path)
        assert reg.read_only
        assert [(r.source_id, r.secret_hash) for r in reg.all()] == [(sid, "h2")]
        assert reg.ever_had_sources()
        with pytest.raises(sqlite3.OperationalError):
            reg.rotate_secret(sid, "h3", 0)
        (mnt / "filler").unlink()
        reg.rotate_secret(sid, "h3", 0)  # space returned: written
        assert reg.read_only is None
        reg.close()
        assert SourceStore(path).get(sid).secret_hash == "h3"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_snapshot_reads_what_sqlite_reads(tmp_path: Path) -> None:
    """Differential: after each of a seeded run of changes (creates, rotations, pauses,
    deletions; a checkpoint now and then, so the WAL starts over with new salts), the store
    copied without its index file reads the same through `read_snapshot` as through SQLite
    itself (which may make an index file in a directory with space)."""
    import random
    import shutil

    from sync_engine.tenants.store import read_snapshot

    rng = random.Random(77)
    writer = SourceStore(tmp_path / "w" / "sources.db")
    ids: list[str] = []
    for step in range(60):
        roll = rng.random()
        if roll < 0.35 or not ids:
            ids.append(writer.create(f"s{step}", URL, f"h{step}" * rng.randint(1, 400)).source_id)
        elif roll < 0.6:
            writer.rotate_secret(rng.choice(ids), f"r{step}", rng.choice([0, 60]))
        elif roll < 0.75:
            writer.set_paused(rng.choice(ids), rng.random() < 0.5)
        elif roll < 0.9:
            writer.delete(ids.pop(rng.randrange(len(ids))))
        else:
            writer._db.execute("PRAGMA wal_checkpoint(RESTART)")
        if step % 6:
            continue
        copy = tmp_path / f"c{step}"
        copy.mkdir()
        for name in ("sources.db", "sources.db-wal"):
            if (writer.path.parent / name).exists():
                shutil.copy(writer.path.parent / name, copy / name)
        mine = read_snapshot(copy / "sources.db")
        theirs = sqlite3.connect(copy / "sources.db")
        try:
            assert list(mine.iterdump()) == list(theirs.iterdump()), step
        finally:
            mine.close()
            theirs.close()
    writer.close()


def test_a_keyword_connection_string_whose_password_has_a_scheme_separator() -> None:
    """`host=db password=Ab://cd` is a keyword/value string libpq reads; it was taken for a
    URL of scheme "host=db password=ab" and refused with that text, the password's first
    part, quoted in the 400's message."""
    url = "host=db.example.com dbname=shop password=Pw0rd://tail"
    assert check_database_url(url) == url
    assert "Pw0rd" not in redact_url(url) and "tail" not in redact_url(url)
    with pytest.raises(InvalidInput) as bad:
        check_database_url("mysql://u:pw@h/d")
    assert "mysql://" in bad.value.message


def test_a_url_whose_password_has_an_unencoded_slash_is_refused_without_quoting_it() -> None:
    """urlsplit reads `postgresql://u:Pw/x@h/d` as host `u`, port `Pw`: its message, which
    the 400 quoted, gave the password's first part ("Port could not be cast to integer value
    as 'Pw'")."""
    for url in ("postgresql://u:S3cr3tPart/x@h/d", "postgresql://u:S3cr3tPart#x@h/d",
                "postgresql://u:S3cr3tPart?x@h/d", "postgresql://[S3cr3tPart@h/d"):  # fmt: skip
        with pytest.raises(InvalidInput) as bad:
            check_database_url(url)
        assert "S3cr3tPart" not in bad.value.message and "percent-encoded" in bad.value.message
    with pytest.raises(InvalidInput, match="out of range"):
        check_database_url("postgresql://u@h:99999/d")


def test_a_url_whose_password_has_an_unencoded_at_is_refused_without_quoting_it() -> None:
    """libpq reads `postgresql://u:S3cr3t@Part@h/d` as password `S3cr3t`, host `Part@h`
    (the first @), urlsplit as host `h` (the last): it was accepted, and the password's
    tail shown as the host in the listing, its errors and the log (attack 08:12)."""
    for url in ("postgresql://u:S3cr3t@Part@127.0.0.1:5432/d", "postgres://u@x@h/d",
                "postgresql://u:S3cr3t@Part@h1,h2/d"):  # fmt: skip
        with pytest.raises(InvalidInput) as bad:
            check_database_url(url)
        message = bad.value.message
        assert "S3cr3t" not in message and "Part" not in message, message
        assert "%40" in message
    url = "postgresql://u:S3cr3t%40Part@127.0.0.1:5432/d"
    assert check_database_url(url) == url


def test_the_cli_list_warns_when_the_registry_is_read_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sources list` said nothing of a registry open read-only (a start on a full disk):
    the operator learnt it from the 503 of the next change. Now a warning on stderr."""
    from sync_engine.tenants import cli

    listing = {"sources": [], "registry": {"read_only": "OperationalError: disk is full"}}
    monkeypatch.setattr(cli, "_request", lambda *a, **k: listing)
    assert cli.main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "No sources registered" in out and "read-only" not in out
    assert "read-only (OperationalError: disk is full)" in err
    listing["registry"] = {"read_only": None}
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().err == ""

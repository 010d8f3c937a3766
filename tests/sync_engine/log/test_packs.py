"""Snapshot packs: many shapes' last chunks and markers in one file, checked, retired, loaded.

Real files in a temporary directory, no Postgres: what a restart finds after packs were
written, shapes retired, or bytes torn or damaged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import struct
import subprocess
from pathlib import Path

import pytest

import sync_engine.log.store as store_module
from sync_engine.log.files import LogDamaged, LogWriteError, ShapeLog
from sync_engine.log.packs import MAGIC, PACK_END, encode_retired, encode_shape, scan_pack
from sync_engine.log.store import PackBuilder, ShapeStore, count_on_disk


def _store(tmp_path: Path) -> ShapeStore:
    (tmp_path / "shapes").mkdir(exist_ok=True)
    return ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)


def _chunk(handle: str) -> bytes:
    return b'{"key":"' + handle.encode() + b'","value":{}}'


def _pack(store: ShapeStore, *handles: str) -> list[ShapeLog]:
    """One pack holding a one-chunk snapshot for each handle."""
    builder = PackBuilder()
    logs = [store.new_log(h) for h in handles]
    for log in logs:
        builder.add(log, 1, _chunk(log.handle), {"handle": log.handle, "n": 1})
    builder.write(fsync=False)
    assert builder.publish() == logs
    return logs


def test_records_round_trip_and_a_torn_tail_is_dropped() -> None:
    rec_a, at_a = encode_shape(b'{"handle":"a"}', b"chunk a")
    rec_b, _ = encode_shape(b'{"handle":"b"}', b"chunk b")
    data = MAGIC + rec_a + encode_retired("x") + rec_b
    contents = scan_pack(data)
    assert [e.handle for e in contents.entries] == ["a", "b"] and contents.retired == {"x"}
    first = contents.entries[0]
    assert data[first.offset : first.offset + first.size] == b"chunk a"
    assert first.offset == len(MAGIC) + at_a and contents.error is None
    torn = scan_pack(data[:-3])
    assert [e.handle for e in torn.entries] == ["a"] and "torn" in (torn.error or "")
    damaged = bytearray(data)
    damaged[len(MAGIC) + 12] ^= 0x01
    assert scan_pack(bytes(damaged)).entries == []
    assert scan_pack(b"not a pack").error == "not a snapshot pack"


def test_shapes_of_one_pack_load_with_their_markers_and_one_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _pack(store, "1-1", "1-2", "1-3")
    assert len(os.listdir(store.directory)) == 1
    loaded = {log.handle: log for log in store.load()}
    assert sorted(loaded) == ["1-1", "1-2", "1-3"]
    for handle, log in loaded.items():
        assert log.snapshot_complete and log.snapshot_chunks == 1
        assert log.marker is not None and log.marker["n"] == 1
        assert log.read_snapshot_chunk(0) == _chunk(handle)
    assert count_on_disk(store.directory) == 3


def test_retired_shapes_stay_retired_and_the_last_one_deletes_the_pack(tmp_path: Path) -> None:
    store = _store(tmp_path)
    a, b = _pack(store, "1-1", "1-2")
    b.append_transaction(100, [(0, b'{"key":"k","value":{}}')])
    _, token = b.take_dirty()
    b.publish(token)
    store.retire(b)
    assert [log.handle for log in store.load()] == ["1-1"]
    assert not list(store.directory.glob("1-2.*"))  # its transaction log is gone too
    store.retire(a)
    assert os.listdir(store.directory) == [] and store.load() == []


def test_a_shape_retired_while_its_pack_was_written_is_not_loaded(tmp_path: Path) -> None:
    store = _store(tmp_path)
    builder = PackBuilder()
    logs = [store.new_log(h) for h in ("1-1", "1-2")]
    for log in logs:
        builder.add(log, 1, _chunk(log.handle), {"handle": log.handle})
    builder.write(fsync=False)
    store.retire(logs[1])
    assert builder.publish() == logs[:1]
    assert [log.handle for log in store.load()] == ["1-1"]


def test_files_of_unfinished_snapshots_and_damaged_shapes_are_deleted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    unfinished = store.new_log("1-9")
    unfinished.write_snapshot_chunk(0, _chunk("x") * 10)  # its pack was never written
    big = store.new_log("1-5")
    big.write_snapshot_chunk(0, _chunk("y") * 10)
    builder = PackBuilder()
    builder.add(big, 2, _chunk("1-5"), {"handle": "1-5"})
    builder.write(fsync=False)
    builder.publish()
    assert [log.handle for log in store.load()] == ["1-5"]
    assert not list(store.directory.glob("1-9.*"))
    os.truncate(store.directory / "1-5.snapshot.00000.json", 5)
    assert store.load() == []  # its first chunk does not have the marker's size
    assert os.listdir(store.directory) == []


def test_a_packed_chunk_damaged_after_loading_is_never_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _pack(store, "1-1")
    (log,) = store.load()
    damage: list[str] = []
    log.on_damage = damage.append
    (pack,) = store.directory.glob("*.pack")
    data = bytearray(pack.read_bytes())
    data[-3] ^= 0x01  # inside the chunk, the last bytes of the pack
    pack.write_bytes(bytes(data))
    with pytest.raises(LogDamaged):
        log.read_snapshot_chunk(0)
    assert damage and "checksum" in damage[0]


def test_a_retirement_after_a_torn_tail_is_not_lost(tmp_path: Path) -> None:
    """A crash in the middle of appending a retirement record leaves a torn tail. Loading
    cuts it off, so the next retirement's record lands where the next load reads it;
    behind the torn bytes it was never seen, and the retired shape came back."""
    store = _store(tmp_path)
    _pack(store, "1-1", "1-2")
    (pack,) = store.directory.glob("*.pack")
    with open(pack, "ab") as f:
        f.write(encode_retired("1-2")[:5])  # torn: 1-2 was not retired after all
    loaded = {log.handle: log for log in store.load()}
    assert sorted(loaded) == ["1-1", "1-2"]
    store.retire(loaded["1-1"])
    assert [log.handle for log in store.load()] == ["1-2"]


def _append(log: ShapeLog, lsn: int) -> None:
    log.append_transaction(lsn, [(0, b'{"key":"k' + str(lsn).encode() + b'"}')])
    log.publish(log.take_dirty()[1])


@pytest.mark.parametrize("began", ["after the pack", "before the pack", "while packing"])
def test_a_log_whose_only_chunk_file_was_deleted_is_found_on_load(
    tmp_path: Path, began: str
) -> None:
    """A log deleted whole (its only chunk file) looked like a log that never began: the
    shape loaded, served without the changes it had. Its pack now says the log began
    (its marker, or an `L` record appended when it begins after the pack): it is found,
    with the LSN the slot must send again from (else the replicator retires the shape)."""
    store = _store(tmp_path)
    log, other = store.new_log("1-1"), store.new_log("1-2")
    builder = PackBuilder()
    if began == "before the pack":
        _append(log, 100)
    for each in (log, other):
        builder.add(each, 1, _chunk(each.handle), {"handle": each.handle})
    if began == "while packing":
        _append(log, 100)
    builder.write(fsync=False)
    builder.publish()
    if began == "after the pack":
        _append(log, 100)
    _append(log, 200)
    log.close()
    loaded = {each.handle: each for each in store.load()}
    assert loaded["1-1"].damage is None and loaded["1-1"].last_lsn == 200
    assert loaded["1-2"].damage is None and loaded["1-2"].repaired_from is None
    (chunk,) = store.directory.glob("1-1.log.*")
    chunk.unlink()
    loaded = {each.handle: each for each in store.load()}
    assert loaded["1-1"].damage is not None and "missing" in loaded["1-1"].damage
    assert loaded["1-1"].repaired_from == 100
    assert loaded["1-2"].damage is None and loaded["1-2"].repaired_from is None
    # a replay rebuilds it: the next load finds nothing wrong
    again = loaded["1-1"]
    _append(again, 100)
    _append(again, 200)
    again.close()
    assert {each.handle: each for each in store.load()}["1-1"].damage is None


def _records(pack: Path) -> list[tuple[bytes, int]]:
    """(kind, start) of each record of a pack, by their lengths."""
    data = pack.read_bytes()
    out, pos = [], len(MAGIC)
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        out.append((data[pos + 8 : pos + 9], pos))
        pos += 8 + length
    return out


@pytest.mark.parametrize("fault", ["a byte of another shape's record", "cut at the R record"])
def test_a_pack_that_lost_records_loads_none_of_its_shapes(tmp_path: Path, fault: str) -> None:
    """A retired shape's `R` record lies after every `S` record of its pack. A pack damaged
    before it (the scan stops there), or cut at a record boundary before it (every record
    left whole), loaded the retired shape again, stale, and cut the pack there. It cannot
    say which of its shapes were retired: none is loaded (their clients get 409)."""
    store = _store(tmp_path)
    a, b, c = _pack(store, "1-1", "1-2", "1-3")
    _append(b, 100)  # (an `L` record: 1-2's log began)
    store.retire(a)
    (pack,) = store.directory.glob("*.pack")
    kinds = _records(pack)
    assert [k for k, _ in kinds] == [b"S", b"S", b"S", b"L", b"R"]
    data = bytearray(pack.read_bytes())
    if fault.startswith("cut"):
        del data[kinds[-1][1] :]
    else:
        data[kinds[1][1] + 20] ^= 0x04
    with open(pack, "r+b") as f:  # (in place: the same file)
        f.write(data)
        f.truncate(len(data))
    assert count_on_disk(store.directory) == 0
    assert store.load() == []
    assert os.listdir(store.directory) == []  # the pack and 1-2's log file went with it


def test_a_torn_tail_of_a_pack_that_does_not_note_its_end_loads_none(tmp_path: Path) -> None:
    """Without its note (an older engine, a filesystem without user attributes) a torn tail
    cannot be told from damage before a retirement record: nothing is loaded."""
    store = _store(tmp_path)
    _pack(store, "1-1", "1-2")
    (pack,) = store.directory.glob("*.pack")
    with contextlib.suppress(OSError):  # (an older engine's pack has none)
        os.removexattr(pack, PACK_END)
    with open(pack, "ab") as f:
        f.write(encode_retired("1-2")[:5])
    assert store.load() == [] and os.listdir(store.directory) == []


def test_a_retirement_not_recorded_keeps_the_shapes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retirement deleted the shape's files first, then appended its `R` record: one that
    failed (a full disk; tried again later) or a crash between left a shape its pack says
    is live with its log gone, loaded as if its log had never begun. The record goes first,
    and the files stay until it is there."""
    store = _store(tmp_path)
    a, b = _pack(store, "1-1", "1-2")
    _append(b, 100)
    _append(b, 200)
    b.close()

    def full(path: str, handle: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(store_module, "append_retired", full)
        store.retire(b)
        assert list(store.directory.glob("1-2.log.*"))  # kept: the pack does not say yet
        loaded = {log.handle: log for log in store.load()}  # (a crash now: the old state)
        assert loaded["1-2"].last_lsn == 200 and loaded["1-2"].damage is None
        with pytest.raises(LogWriteError):
            asyncio.run(store.settle())
    asyncio.run(store.settle())
    assert not list(store.directory.glob("1-2.*"))
    assert [log.handle for log in store.load()] == ["1-1"]


def _fill(path: Path) -> None:
    """Write `path` until the disk it is on is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (64 << 10, 4096):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)
def test_the_note_that_a_log_began_is_not_lost_to_a_full_disk(tmp_path: Path) -> None:
    """A log's beginning is noted in its shape's pack (an `L` record), so that a log whose
    chunk files are all lost is found on load. On a full disk the note failed after chunk 0
    was written; it was tried again only when chunk 0 was made again: the log went on
    without it, and lost whole later it loaded as a log that never began (its shape served
    without its changes, no 409). Now the append fails whole (chunk 0 cut back) and the
    replay notes it once there is room.

    A real full disk: a 1 MiB tmpfs filled up but for one page, the pack ending at a page
    boundary: chunk 0's first record takes the last page, the note finds none."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        # The snapshot's chunk sized so that the pack ends at a page boundary.
        def packed(directory: Path, pad: int) -> ShapeLog:
            store = ShapeStore(directory, 1 << 20, fsync=False)
            log = store.new_log("1-1")
            builder = PackBuilder()
            chunk = _chunk("1-1")[:-1] + b',"pad":"' + b"x" * pad + b'"}'
            builder.add(log, 1, chunk, {"handle": "1-1", "n": 1})
            builder.write(fsync=False)
            builder.publish()
            return log

        pad = 0
        for n in range(3):
            (tmp_path / f"probe{n}").mkdir()
            probe = packed(tmp_path / f"probe{n}", pad)
            assert probe.packed is not None
            pad += -os.path.getsize(probe.packed.pack.path) % 4096
        log = packed(mnt, pad)
        assert log.packed is not None
        pack = Path(log.packed.pack.path)
        assert pack.stat().st_size % 4096 == 0
        store = ShapeStore(mnt, 1 << 20, fsync=False)
        filler = mnt / "filler"
        _fill(filler)
        os.truncate(filler, filler.stat().st_size - 4096)  # (one page free)
        try:
            _append(log, 100)
        except LogWriteError as failed:  # (the append fails whole: the slot sends it again)
            assert failed.disk_full
            assert not list(mnt.glob("1-1.log.*"))  # cut back: nothing to publish
            filler.unlink()
            _append(log, 100)  # (the replay, with room)
        else:  # (the old way: written, its note lost)
            filler.unlink()
        _append(log, 200)
        log.close()
        assert scan_pack(pack.read_bytes()).begun == {"1-1": 100}
        (only,) = mnt.glob("1-1.log.*")
        only.unlink()  # (the log lost whole: found, not taken for one never begun)
        (again,) = store.load()
        assert again.damage is not None and again.repaired_from == 100
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up (CI runs as root)"
)
@pytest.mark.parametrize("then", ["room again", "a restart, then room"])
def test_a_note_that_failed_when_the_snapshot_was_packed_is_written_with_no_more_appends(
    tmp_path: Path, then: str
) -> None:
    """A log that began while its snapshot was being packed (its marker made without
    `log_from`) notes its beginning once the pack is durable. On a full disk that note
    failed silently and was tried again only at the log's next append: a shape with no
    more changes never had it, and its log lost whole later loaded as one that never began
    (served without its changes). A restart dropped the retry too. Now the store's
    `settle` (which the replicator runs before it confirms the slot) writes it, failing
    with the disk full (the replicator pauses), and a load finds a log that began with no
    note and notes it the same way.

    A real full disk: a 1 MiB tmpfs, the pack ending at a page boundary, then filled."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:

        def packing(directory: Path, pad: int) -> tuple[ShapeLog, PackBuilder]:
            store = ShapeStore(directory, 1 << 20, fsync=False)
            log = store.new_log("1-1")
            builder = PackBuilder()
            chunk = _chunk("1-1")[:-1] + b',"pad":"' + b"x" * pad + b'"}'
            builder.add(log, 1, chunk, {"handle": "1-1", "n": 1})
            return log, builder

        pad = 0
        for n in range(3):  # (the pad that ends the pack at a page boundary)
            (tmp_path / f"probe{n}").mkdir()
            probe, builder = packing(tmp_path / f"probe{n}", pad)
            builder.write(fsync=False)
            builder.publish()
            assert probe.packed is not None
            pad += -os.path.getsize(probe.packed.pack.path) % 4096
        shapes = mnt / "shapes"  # (a load deletes what is not a shape's: not the filler)
        shapes.mkdir()
        log, builder = packing(shapes, pad)
        _append(log, 100)  # (the log begins while the snapshot is being packed)
        builder.write(fsync=False)
        assert log.packed is None
        filler = mnt / "filler"
        _fill(filler)
        builder.publish()  # (the pack is durable: its note finds no room)
        assert log.packed is not None
        pack = Path(log.packed.pack.path)
        assert pack.stat().st_size % 4096 == 0 and scan_pack(pack.read_bytes()).begun == {}
        store = ShapeStore(shapes, 1 << 20, fsync=False)
        if then == "a restart, then room":
            log.close()
            (log,) = store.load()  # (the state a crash leaves)
            assert log.last_lsn == 100 and log.damage is None
        with pytest.raises(LogWriteError) as failed:
            asyncio.run(store.settle())  # (the replicator pauses, tries again)
        assert failed.value.disk_full
        filler.unlink()
        asyncio.run(store.settle())
        assert not store.unsettled
        assert scan_pack(pack.read_bytes()).begun == {"1-1": 100}
        log.close()
        (only,) = shapes.glob("1-1.log.*")
        only.unlink()  # (the log lost whole: found, not taken for one never begun)
        (again,) = store.load()
        assert again.damage is not None and again.repaired_from == 100
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)

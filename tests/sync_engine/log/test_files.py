"""Shape log files: appends are all or nothing, and damaged bytes are never served.

Real files in a temporary directory; the crash and corruption cases are made by cutting
or editing the files as a crash or a bad disk would leave them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from sync_engine.log import fds
from sync_engine.log.files import LogDamaged, LogWriteError, ShapeLog
from sync_engine.log.framing import HEADER_SIZE, encode_record, scan, seed_of
from sync_engine.log.offsets import SNAPSHOT_END, LogOffset
from sync_engine.log.store import PackBuilder, ShapeStore
from sync_engine.replication.replicator import _fsync_paths


def _entry(lsn: int, i: int, size: int = 20) -> bytes:
    return orjson.dumps({"key": f"k{lsn}-{i}", "value": {"t": "x" * size}})


def _tx(lsn: int, n: int = 2, size: int = 20) -> list[tuple[int, bytes]]:
    return [(2 * i, _entry(lsn, i, size)) for i in range(n)]


def _commit(log: ShapeLog) -> None:
    """What the replicator does after a batch: fsync (here: nothing), then publish."""
    _, token = log.take_dirty()
    log.publish(token)


def _read_all(log: ShapeLog, offset: LogOffset = SNAPSHOT_END) -> tuple[list[bytes], list[int]]:
    """Follow the log response by response, like a client; returns entries and sizes."""
    out: list[bytes] = []
    sizes: list[int] = []
    while True:
        entries, end = log.read_after(offset)
        if not entries:
            return out, sizes
        out += entries
        sizes.append(sum(len(e) + 1 for e in entries))
        assert end > offset
        offset = end


SEED = seed_of("shape")  # (the handle of `_new`'s log)


def _new(tmp_path: Path, chunk_bytes: int = 1 << 20) -> ShapeLog:
    (tmp_path / "shapes").mkdir(parents=True)
    return ShapeLog(tmp_path / "shapes" / "shape", chunk_bytes, fsync=False)


def _reload(log: ShapeLog) -> ShapeLog:
    log.close()
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=False)
    again.load_transactions()
    return again


def test_an_append_is_invisible_until_published(tmp_path: Path) -> None:
    log = _new(tmp_path)
    log.append_transaction(100, _tx(100))
    assert log.read_after(SNAPSHOT_END) == ([], SNAPSHOT_END)
    assert log.latest_offset == SNAPSHOT_END
    assert log.last_lsn == 100  # a replay of it is skipped meanwhile
    files, token = log.take_dirty()  # a new chunk: its directory entry is synced too
    assert files == {str(log.directory / "shape.log.00000000.log"), str(log.directory)}
    log.publish(token)
    assert log.read_after(SNAPSHOT_END) == ([e for _, e in _tx(100)], LogOffset(100, 2))
    assert _reload(log).read_after(SNAPSHOT_END)[0] == [e for _, e in _tx(100)]


def test_rollback_cuts_the_staged_bytes_off(tmp_path: Path) -> None:
    log = _new(tmp_path)
    log.append_transaction(100, _tx(100))
    _commit(log)
    size = os.path.getsize(tmp_path / "shapes" / "shape.log.00000000.log")
    log.append_transaction(200, _tx(200))
    _, stale = log.take_dirty()
    log.rollback()
    assert not log.publish(stale)  # a token from before the rollback publishes nothing
    assert os.path.getsize(tmp_path / "shapes" / "shape.log.00000000.log") == size
    assert log.last_lsn == 100
    # the replay appends it again, once
    log.append_transaction(200, _tx(200))
    _commit(log)
    entries, _ = _read_all(_reload(log))
    assert entries == [e for _, e in _tx(100) + _tx(200)]


def test_a_torn_tail_is_cut_back_to_the_last_whole_transaction(tmp_path: Path) -> None:
    log = _new(tmp_path)
    for lsn in (100, 200, 300):
        log.append_transaction(lsn, _tx(lsn))
    _commit(log)
    path = tmp_path / "shapes" / "shape.log.00000000.log"
    good = os.path.getsize(path)
    log.append_transaction(400, _tx(400, size=500))
    log.close()
    with open(path, "r+b") as f:  # the crash came in the middle of the write
        f.truncate(good + HEADER_SIZE + 100)
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=False)
    again.load_transactions()
    assert again.damage is not None
    assert os.path.getsize(path) == good
    assert again.latest_offset == LogOffset(300, 2) and again.last_lsn == 300
    assert again.repaired_from == 400  # the replicator checks the slot replays from there
    again.repair_checked()  # it did: nothing is left to check
    assert again.repaired_from is None
    assert _read_all(again)[0] == [e for lsn in (100, 200, 300) for _, e in _tx(lsn)]


def test_a_torn_transaction_across_chunks_is_cut_whole(tmp_path: Path) -> None:
    log = _new(tmp_path, chunk_bytes=1000)
    log.append_transaction(100, _tx(100))
    _commit(log)
    log.append_transaction(200, _tx(200, n=40, size=60))  # spans several chunks
    log.close()
    files = sorted((tmp_path / "shapes").glob("shape.log.*.log"))
    assert len(files) >= 3
    os.truncate(files[-1], os.path.getsize(files[-1]) - 1)
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=False)
    again.load_transactions()
    assert sorted((tmp_path / "shapes").glob("shape.log.*.log")) == files[:1]
    assert _read_all(again)[0] == [e for _, e in _tx(100)]
    assert again.repaired_from == 200


def test_a_transaction_written_in_parts_is_cut_whole_if_its_last_part_never_came(
    tmp_path: Path,
) -> None:
    """A big transaction is written a part at a time (`Replicator._deliver_big`); killed
    before its last part, the parts are intact records that do not end it: cut on load,
    and the slot sends it again from its LSN. Written whole, it reads as one."""
    log = _new(tmp_path, chunk_bytes=1000)
    log.append_transaction(100, _tx(100))
    _commit(log)
    entries = _tx(200, n=40, size=60)
    parts = [entries[:15], entries[15:30], entries[30:]]
    for part in parts[:2]:  # the second part spans chunks
        log.append_transaction(200, part, ends=False)
    assert log.read_after(LogOffset(100, 2))[0] == []
    log.close()  # (SIGKILL: no flush, no publish, no rollback)
    files = sorted((tmp_path / "shapes").glob("shape.log.*.log"))
    assert len(files) >= 3
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=False)
    again.load_transactions()
    assert sorted((tmp_path / "shapes").glob("shape.log.*.log")) == files[:1]
    assert again.last_lsn == 100 and again.repaired_from == 200
    assert _read_all(again)[0] == [e for _, e in _tx(100)]
    for n, part in enumerate(parts):  # the slot sends it again: written whole this time
        again.append_transaction(200, part, ends=n == len(parts) - 1)
    _commit(again)
    for log_now in (again, _reload(again)):
        assert _read_all(log_now)[0] == [e for _, e in _tx(100) + entries]
        assert log_now.latest_offset == LogOffset(200, entries[-1][0])


def test_a_chunk_cut_at_a_record_boundary_is_found_by_the_next_chunk(tmp_path: Path) -> None:
    """A chunk file that lost its last records whole (a lost write, a partial copy) holds
    only intact records; the next chunk's first record says how long it was, so the hole
    is found and everything from it cut (never served around). Before, the log was served
    without the lost transactions."""
    lsns = range(100, 4000, 100)
    full = [e for lsn in lsns for _, e in _tx(lsn, size=30)]
    for boundary in range(1, 6):
        log = _new(tmp_path / str(boundary), chunk_bytes=1000)
        for lsn in lsns:
            log.append_transaction(lsn, _tx(lsn, size=30))
            _commit(log)
        log.close()
        files = sorted(log.directory.glob("shape.log.*.log"))
        assert len(files) >= 3
        records = scan(files[1].read_bytes(), SEED).records
        assert len(records) > boundary
        os.truncate(files[1], records[-boundary][0])  # the last `boundary` records lost
        again = _reload(log)
        lost = records[-boundary][3]
        assert again.damage is not None and again.repaired_from is not None
        assert again.repaired_from <= lost
        served = _read_all(again)[0]
        assert served == full[: len(served)]  # a prefix, and none of the lost part
        assert all(int(orjson.loads(e)["key"][1:].split("-")[0]) < lost for e in served)
        assert sorted(log.directory.glob("shape.log.*.log")) == files[:2]


def test_the_last_chunk_cut_at_a_record_boundary_is_found_by_its_durable_size(
    tmp_path: Path,
) -> None:
    """The last chunk file has no next one to say how long it was: the size it was made
    durable at (noted by the replicator's fsync) does. Cut shorter at a record boundary, it
    is found and the log cut from there; cut back by the engine itself (a rollback, a torn
    tail), it is not damage the next time."""
    log = _new(tmp_path, chunk_bytes=1 << 20)
    for lsn in range(100, 1100, 100):
        log.append_transaction(lsn, _tx(lsn))
    files, token = log.take_dirty()
    _fsync_paths(files)
    log.publish(token)
    log.close()
    (path,) = log.directory.glob("shape.log.*.log")
    records = scan(path.read_bytes(), SEED).records
    os.truncate(path, records[-3][0])  # the last three transactions lost whole
    again = _reload(log)
    assert again.damage is not None
    assert again.repaired_from is not None and again.repaired_from <= records[-3][3]
    assert _read_all(again)[0] == [e for lsn in range(100, 800, 100) for _, e in _tx(lsn)]
    # cut back to its last whole transaction: the next load finds nothing wrong
    assert _reload(again).damage is None
    # a rollback's cut is no damage either
    again.append_transaction(800, _tx(800))
    files, token = again.take_dirty()
    _fsync_paths(files)
    again.append_transaction(900, _tx(900))
    again.rollback()
    assert _reload(again).damage is None


def _sync_and_publish(log: ShapeLog) -> None:
    files, token = log.take_dirty()
    _fsync_paths(files)
    log.publish(token)


@pytest.mark.parametrize("deleted", ["last", "middle", "first"])
def test_a_deleted_chunk_file_is_found_on_load(tmp_path: Path, deleted: str) -> None:
    """A transaction chunk deleted outright (not cut short) is missing from the log: a
    finished chunk notes that a next one exists (`NEXT_CHUNK`), so a missing last chunk is
    found as a gap in the numbering is. The log is served up to the hole, never around it,
    and says from which LSN the slot must replay (else the replicator retires the shape)."""
    log = _new(tmp_path, chunk_bytes=1000)
    lsns = [lsn * 100 for lsn in range(1, 41)]
    full = []
    for lsn in lsns:
        log.append_transaction(lsn, _tx(lsn, size=30))
        full += [e for _, e in _tx(lsn, size=30)]
        _sync_and_publish(log)
    log.close()
    files = sorted(log.directory.glob("shape.log.*.log"))
    assert len(files) >= 3
    victim = {"last": files[-1], "middle": files[1], "first": files[0]}[deleted]
    first_lost = scan(victim.read_bytes(), SEED).records[0][3]
    victim.unlink()
    again = _reload(log)
    assert again.damage is not None
    assert again.repaired_from is not None and again.repaired_from <= first_lost
    served = _read_all(again)[0]
    assert served == full[: len(served)]  # a prefix, and none of the lost part
    assert all(int(orjson.loads(e)["key"][1:].split("-")[0]) < first_lost for e in served)
    # cut back to what is whole: the next load finds nothing wrong, and appends go on
    again = _reload(again)
    assert again.damage is None
    again.append_transaction(9000, _tx(9000, size=30))
    _sync_and_publish(again)
    assert _read_all(again)[0] == served + [e for _, e in _tx(9000, size=30)]
    assert _reload(again).damage is None


@pytest.mark.parametrize("spanning", [True, False])
def test_a_chunk_rolled_back_to_is_no_deleted_chunk(tmp_path: Path, spanning: bool) -> None:
    """A rollback of the records that began a new chunk makes the one before it the last
    again: it is not taken for a chunk whose next one was deleted, whether the rolled back
    transaction had records in it too (`spanning`) or began the new chunk whole."""
    log = _new(tmp_path, chunk_bytes=1000)
    n = 4 if spanning else 1  # (one entry cannot be split across chunks)

    def chunks() -> list[Path]:
        return sorted(log.directory.glob("shape.log.*.log"))

    lsn = 100
    while True:
        size = chunks()[-1].stat().st_size if chunks() else 0
        count = len(chunks())
        log.append_transaction(lsn, _tx(lsn, n=n, size=30))
        lsn += 100
        if count >= 2 and len(chunks()) == 3:
            break
        _sync_and_publish(log)
    assert (chunks()[1].stat().st_size > size) == spanning
    log.rollback()  # (its fsync failed)
    assert len(chunks()) == 2
    assert _reload(log).damage is None
    log.append_transaction(lsn, _tx(lsn, n=n, size=30))
    _sync_and_publish(log)
    again = _reload(log)
    assert again.damage is None
    assert again.last_lsn == lsn


@pytest.mark.parametrize("where", [0.005, 0.3, 0.5, 0.9, 0.999])
def test_a_flipped_byte_inside_a_chunk_is_detected_on_load(tmp_path: Path, where: float) -> None:
    """Wherever it is (a length, an LSN, a value), load finds it, serves nothing from that
    transaction on, and says from which LSN the slot must replay for a repair (else the
    replicator retires the shape)."""
    log = _new(tmp_path)
    lsns = [lsn * 100 for lsn in range(1, 41)]
    for lsn in lsns:
        log.append_transaction(lsn, _tx(lsn))
    _commit(log)
    log.close()
    path = tmp_path / "shapes" / "shape.log.00000000.log"
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    damaged = sum(1 for start, *_ in scan(bytes(data), SEED).records if start <= at) - 1
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=False)
    again.load_transactions()
    assert again.damage is not None and "mismatch" in again.damage
    # the damaged record's LSN when its header is intact, else just after the last good one
    assert again.repaired_from in (lsns[damaged], (lsns[damaged - 1] if damaged else 0) + 1)
    assert _read_all(again)[0] == [e for lsn in lsns[:damaged] for _, e in _tx(lsn)]
    assert again.last_lsn == (lsns[damaged - 1] if damaged else 0)


def test_damage_found_while_reading_retires_the_shape_and_serves_nothing(tmp_path: Path) -> None:
    log = _new(tmp_path)
    for lsn in range(1, 10):
        log.append_transaction(lsn * 100, _tx(lsn * 100))
    _commit(log)
    damaged: list[str] = []
    log.on_damage = damaged.append
    path = tmp_path / "shapes" / "shape.log.00000000.log"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LogDamaged):
        log.read_after(SNAPSHOT_END)
    assert damaged and "checksum" in damaged[0]
    # and a file cut short under it
    log2 = _new(tmp_path / "b")
    log2.append_transaction(100, _tx(100))
    _commit(log2)
    os.truncate(log2.directory / "shape.log.00000000.log", 10)
    with pytest.raises(LogDamaged):
        log2.read_after(SNAPSHOT_END)


def test_snapshot_chunks_are_checked(tmp_path: Path) -> None:
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    log = store.new_log("h")
    chunk = b'{"key":"a","value":{}}' * 50
    log.write_snapshot_chunk(0, chunk)
    pack = PackBuilder()
    pack.add(log, 2, chunk, {"handle": "h"})
    pack.write(fsync=False)
    assert pack.publish() == [log]
    (again,) = store.load()
    assert again.snapshot_complete and again.snapshot_chunks == 2
    assert again.read_snapshot_chunk(0) == again.read_snapshot_chunk(1) == chunk
    path = tmp_path / "shapes" / "h.snapshot.00000.json"
    data = bytearray(path.read_bytes())
    data[300] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LogDamaged):
        again.read_snapshot_chunk(0)  # same size: found by its checksum
    os.truncate(path, 100)
    assert store.load() == []  # a size that differs from the marker's is found on load
    assert os.listdir(tmp_path / "shapes") == []  # and the shape is discarded


def test_big_chunk_files_are_written_in_pieces_and_read_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file's page cache is sized by the write: chunk files and packs go to the kernel
    `WRITE_PIECE` bytes at a time (see `fds.WRITE_PIECE`), and a short write (the kernel
    took less) is continued, so the file holds every byte and passes its check."""
    sizes: list[int] = []
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data)[: 7 * len(data) // 8 or 1])  # short, as the kernel may

    monkeypatch.setattr(os, "write", write)
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    log = store.new_log("h")
    big = b"".join(b'{"key":"%d","value":{"t":"row %d"}},' % (i, i) for i in range(60_000))
    assert len(big) > 4 * fds.WRITE_PIECE
    log.write_snapshot_chunk(0, big)
    assert sizes and max(sizes) <= fds.WRITE_PIECE and sum(sizes) > len(big)
    assert (tmp_path / "shapes" / "h.snapshot.00000.json").read_bytes() == big
    sizes.clear()
    last = big[: 2 * fds.WRITE_PIECE + 5]  # inlined in the pack
    pack = PackBuilder()
    pack.add(log, 2, last, {"handle": "h"})
    pack.write(fsync=False)
    assert sizes and max(sizes) <= fds.WRITE_PIECE
    assert pack.publish() == [log]
    monkeypatch.undo()
    (again,) = store.load()
    assert again.read_snapshot_chunk(0) == big and again.read_snapshot_chunk(1) == last


def test_big_transactions_are_cut_into_chunk_sized_responses(tmp_path: Path) -> None:
    chunk_bytes = 10_000
    log = _new(tmp_path, chunk_bytes)
    log.append_transaction(100, _tx(100))
    big = _tx(200, n=60, size=1000)  # ~6x the chunk size in one transaction
    log.append_transaction(200, big)
    log.append_transaction(300, _tx(300))
    _commit(log)
    entries, sizes = _read_all(log)
    assert entries == [e for lsn, n, s in ((100, 2, 20), (200, 60, 1000), (300, 2, 20))
                       for _, e in _tx(lsn, n, s)]  # fmt: skip
    assert len(sizes) >= 5
    assert max(sizes) <= chunk_bytes + 1100  # at most one entry over the threshold
    # an offset inside the transaction names the entries up to it; `<lsn>_0` its end
    assert log.read_after(LogOffset(200, 10))[0][0] == big[6][1]
    assert log.read_after(LogOffset(200, 0))[0] == [e for _, e in _tx(300)]
    # SSE reads to the transaction's end
    whole, end = log.read_after(LogOffset(100, 2), whole_transactions=True)
    assert whole == [e for _, e in big] and end == LogOffset(200, 118)
    assert _read_all(_reload(log))[0] == entries


def test_a_chunk_is_never_cut_right_after_an_op_0_entry(tmp_path: Path) -> None:
    log = _new(tmp_path, chunk_bytes=100)
    log.append_transaction(100, [(0, _entry(100, 0, 200)), (2, _entry(100, 1))])
    _commit(log)
    entries, end = log.read_after(SNAPSHOT_END)
    assert len(entries) == 2 and end == LogOffset(100, 2)


def _fill(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mount_tmpfs(directory: Path, size: str) -> None:
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True)  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_fails_the_append_whole_and_then_recovers(tmp_path: Path) -> None:
    import subprocess

    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "1m,nr_inodes=1000")
    try:
        log = ShapeLog(mnt / "shape", 1 << 20, fsync=True)
        log.append_transaction(100, _tx(100))
        _commit(log)
        size = os.path.getsize(mnt / "shape.log.00000000.log")
        filler = mnt / "filler"
        _fill(filler)
        with pytest.raises(LogWriteError) as info:
            log.append_transaction(200, _tx(200, n=20, size=1000))
        assert info.value.disk_full
        assert os.path.getsize(mnt / "shape.log.00000000.log") == size
        assert log.last_lsn == 100 and log.latest_offset == LogOffset(100, 2)
        assert _read_all(log)[0] == [e for _, e in _tx(100)]
        filler.unlink()
        log.append_transaction(200, _tx(200, n=20, size=1000))
        _commit(log)
        assert _read_all(_reload(log))[0] == [e for _, e in _tx(100) + _tx(200, 20, 1000)]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_recent_small_chunks_are_kept_in_memory_up_to_a_bound_least_recent_dropped(
    tmp_path: Path,
) -> None:
    store = ShapeStore(tmp_path, 1 << 20, fsync=False)
    chunk = b"x" * (1 << 20)  # 1 MiB each; 16 MiB are kept in all
    logs = [store.new_log(f"1-{i}") for i in range(20)]
    logs[0].remember_snapshot_chunk(0, chunk)
    for log in logs[1:16]:
        log.remember_snapshot_chunk(0, chunk)
    assert logs[0].fresh_snapshot_chunk(0) == chunk  # read: now the most recent
    for log in logs[16:]:
        log.remember_snapshot_chunk(0, chunk)
    assert logs[0].fresh_snapshot_chunk(0) == chunk
    assert [log.fresh_snapshot_chunk(0) is None for log in logs[1:6]] == [True] * 4 + [False]
    assert all(log.fresh_snapshot_chunk(0) == chunk for log in logs[16:])
    too_big = store.new_log("2-0")
    too_big.remember_snapshot_chunk(0, b"x" * ((1 << 20) + 1))  # over the per-chunk limit
    assert too_big.fresh_snapshot_chunk(0) is None


def test_a_chunk_file_of_another_shape_copied_over_one_is_found_on_load(tmp_path: Path) -> None:
    """Its records are whole and intact, but not this shape's: their header checksums are
    seeded with another handle. (They used to load, and be served as this shape's.)"""
    log = _new(tmp_path)
    other = ShapeLog(tmp_path / "shapes" / "other", log.chunk_bytes, fsync=False)
    for lsn in (100, 200, 300):
        log.append_transaction(lsn, _tx(lsn))
        other.append_transaction(lsn, _tx(lsn))
    _commit(log)
    _commit(other)
    other.close()
    mine = tmp_path / "shapes" / "shape.log.00000000.log"
    shutil.copyfile(tmp_path / "shapes" / "other.log.00000000.log", mine)
    again = _reload(log)
    assert again.damage is not None and "mismatch" in again.damage
    assert _read_all(again)[0] == []
    # read while running (not loaded again): found too
    log2 = _new(tmp_path / "b")
    log2.append_transaction(100, _tx(100))
    _commit(log2)
    path = tmp_path / "b" / "shapes" / "shape.log.00000000.log"
    path.write_bytes(encode_record(100, _tx(100), seed_of("other"))[0])
    with pytest.raises(LogDamaged):
        log2.read_after(SNAPSHOT_END)


def test_records_written_without_a_seed_are_still_read(tmp_path: Path) -> None:
    """A log written by an engine before the seeded header checksums loads and reads."""
    (tmp_path / "shapes").mkdir()
    path = tmp_path / "shapes" / "shape.log.00000000.log"
    path.write_bytes(b"".join(encode_record(lsn, _tx(lsn))[0] for lsn in (100, 200)))
    log = ShapeLog(tmp_path / "shapes" / "shape", 1 << 20, fsync=False)
    log.load_transactions()
    assert log.damage is None
    assert _read_all(log)[0] == [e for lsn in (100, 200) for _, e in _tx(lsn)]


def _one_chunk_full(tmp_path: Path) -> ShapeLog:
    """A log whose only chunk ends exactly with a whole transaction (its last entry brings
    it to `chunk_bytes`): the next transaction starts a chunk file of its own."""
    log = _new(tmp_path, chunk_bytes=1000)
    log.append_transaction(100, _tx(100, n=10, size=60))
    _sync_and_publish(log)
    assert [p.name for p in log.directory.glob("shape.log.*.log")] == ["shape.log.00000000.log"]
    return log


def test_a_chunk_file_made_and_never_written_is_no_cut(tmp_path: Path) -> None:
    """SIGKILLed between making a chunk file and writing its first record (a transaction
    that starts a chunk): the empty file held nothing, so the load cuts nothing. It set
    `repaired_from` to "after the last whole transaction", which the slot was confirmed
    past, and the replicator retired the shape: a 409 and a refetch for its clients after
    a crash that lost nothing (test_kill_big_transactions, ci83)."""
    log = _one_chunk_full(tmp_path)
    log.close()
    empty = log.directory / "shape.log.00000001.log"
    empty.touch()  # (what the kill left: `_fd` made it, the write never ran)
    again = _reload(log)
    assert again.damage is None and again.repaired_from is None
    assert not empty.exists()
    assert _read_all(again)[0] == [e for _, e in _tx(100, n=10, size=60)]
    again.append_transaction(200, _tx(200))  # (the slot sends it again: a new chunk 1)
    _sync_and_publish(again)
    expected = [e for _, e in _tx(100, n=10, size=60) + _tx(200)]
    assert _read_all(_reload(again))[0] == expected


def test_an_empty_chunk_file_that_was_written_to_is_still_a_cut(tmp_path: Path) -> None:
    """An empty last chunk whose records were written (the chunk before it notes it has a
    next one) lost them: still cut from after the last whole transaction (the shape is
    retired if the slot will not send that again)."""
    log = _one_chunk_full(tmp_path)
    log.append_transaction(200, _tx(200))
    _sync_and_publish(log)
    log.close()
    last = log.directory / "shape.log.00000001.log"
    os.truncate(last, 0)
    os.removexattr(last, "user.shapegate.durable")
    again = _reload(log)
    assert again.repaired_from is not None and again.repaired_from <= 200
    assert _read_all(again)[0] == [e for _, e in _tx(100, n=10, size=60)]


def test_a_big_record_cut_short_by_a_crash_names_its_transaction(tmp_path: Path) -> None:
    """A record of `PACE_BYTES` or more is written in steps (the loop runs between them).
    Killed in the middle, the load cuts it and names its transaction (`repaired_from`),
    which the slot sends again. Its header was written last: the hole where it goes had
    no LSN, the cut was "after the last whole transaction", which the slot was confirmed
    past, and the shape was retired (its clients refetched) after a crash that lost
    nothing durable."""
    log = _new(tmp_path, chunk_bytes=8 << 20)
    log.append_transaction(100, _tx(100))
    _sync_and_publish(log)
    big = _tx(200, n=3, size=1 << 20)  # (one record of ~3 MiB)
    path = log.directory / "shape.log.00000000.log"
    before = path.stat().st_size
    steps = log._append(200, big, True, paced=True)
    while path.stat().st_size <= before + HEADER_SIZE:
        next(steps)  # (until part of its body is written; then the kill)
    assert path.stat().st_size < before + HEADER_SIZE + sum(len(e) for _, e in big)
    log.close()
    again = _reload(log)
    assert again.damage is not None and again.repaired_from == 200
    assert _read_all(again)[0] == [e for _, e in _tx(100)]
    again.append_transaction(200, big)  # (the slot sends it again)
    _sync_and_publish(again)
    assert _read_all(_reload(again))[0] == [e for _, e in _tx(100) + big]


def test_a_transaction_written_but_never_fsynced_is_made_durable_before_it_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing a transaction to its chunk and the fsync after it, the engine
    leaves the bytes in the page cache, whole: the next load reads them back as a whole
    transaction and serves it (the slot's replay of it is then skipped for this shape), so
    it must fsync them first, or the slot is confirmed past bytes a power cut still loses.
    Chunks already durable at their size are not fsynced again."""
    log = _new(tmp_path)
    log.append_transaction(100, _tx(100))
    _sync_and_publish(log)
    log.append_transaction(200, _tx(200))  # (written; the kill comes before its fsync)
    log.close()
    (path,) = log.directory.glob("shape.log.*.log")
    assert int(os.getxattr(path, "user.shapegate.durable")) < path.stat().st_size

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    again = ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=True)
    again.load_transactions()
    assert again.damage is None
    assert _read_all(again)[0] == [e for lsn in (100, 200) for _, e in _tx(lsn)]
    assert str(path) in synced and str(log.directory) in synced
    assert int(os.getxattr(path, "user.shapegate.durable")) == path.stat().st_size
    # durable at its size now: the next load fsyncs nothing
    again.close()
    synced.clear()
    ShapeLog(log.directory / log.handle, log.chunk_bytes, fsync=True).load_transactions()
    assert synced == []

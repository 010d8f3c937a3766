"""Where each shape's log ended when made durable, noted apart from its files (`log/ends.py`):
a log found shorter is cut there, from the right LSN, and a whole one is left alone.

The real path (an engine process, an older copy of a chunk with its xattrs) is
tests/faults/test_older_copies.py; these pin the arithmetic and the file's own damage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sync_engine.log import ends as ends_module
from sync_engine.log.ends import LogEnds
from sync_engine.log.files import ShapeLog
from sync_engine.log.store import ShapeStore
from tests.sync_engine.log.test_files import _commit, _new, _reload, _tx


def _flush(log: ShapeLog, ends: LogEnds) -> None:
    """What the replicator's flush does: note the end, fsync (here: nothing), publish."""
    end = log.durable_end()
    assert end is not None
    ends.note([(log.handle, end)])
    _commit(log)


def test_an_older_copy_of_the_chunk_is_cut_from_past_its_end(tmp_path: Path) -> None:
    log = _new(tmp_path)
    ends = LogEnds(str(log.directory), fsync=False)
    for lsn in (100, 200):
        log.append_transaction(lsn, _tx(lsn))
        _flush(log, ends)
    chunk = log.directory / "shape.log.00000000.log"
    shutil.copy2(chunk, tmp_path / "old")  # (its xattrs with it)
    for lsn in (300, 400):
        log.append_transaction(lsn, _tx(lsn))
        _flush(log, ends)
    shutil.copy2(tmp_path / "old", chunk)
    again = _reload(log)
    assert again.repaired_from is None  # (the file alone looks whole)
    noted = LogEnds(str(log.directory), fsync=False).read()
    assert noted["shape"] == (300, 400, 400)
    assert again.check_end(noted["shape"])
    assert again.repaired_from == 201  # (anything after its end: 300 and 400 were lost)
    assert again.damage is not None and "older copy" in again.damage


def test_a_crash_during_a_flush_cuts_from_its_first_lsn_only(tmp_path: Path) -> None:
    """Its records were never published, so the slot sends them again: the cut is a repair
    unless the slot is past them (then they were published, and the loss is real)."""
    log = _new(tmp_path)
    ends = LogEnds(str(log.directory), fsync=False)
    log.append_transaction(100, _tx(100))
    _flush(log, ends)
    size = (log.directory / "shape.log.00000000.log").stat().st_size
    for lsn in (300, 400):
        log.append_transaction(lsn, _tx(lsn))
    end = log.durable_end()
    assert end == (100, 300, 400)
    ends.note([("shape", end)])
    os.truncate(log.directory / "shape.log.00000000.log", size)  # (the crash: not on disk)
    again = _reload(log)
    assert again.check_end(LogEnds(str(log.directory), fsync=False).read()["shape"])
    assert again.repaired_from == 300


def test_a_whole_log_is_left_alone(tmp_path: Path) -> None:
    log = _new(tmp_path)
    ends = LogEnds(str(log.directory), fsync=False)
    for lsn in range(100, 600, 100):
        log.append_transaction(lsn, _tx(lsn))
        _flush(log, ends)
    again = _reload(log)
    assert not again.check_end(LogEnds(str(log.directory), fsync=False).read()["shape"])
    assert again.repaired_from is None and again.damage is None


def test_damaged_lines_are_skipped_and_the_file_is_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ends = LogEnds(str(tmp_path), fsync=False)
    ends.note([("a", (0, 10, 10)), ("b", (0, 20, 20))])
    ends.note([("a", (10, 30, 30))])
    with open(ends.path, "ab") as f:
        f.write(b"a 1e 50 50 00000000\nb 14 28 2")  # (a line that fails its crc, a torn one)
    again = LogEnds(str(tmp_path), fsync=False)
    assert again.read() == {"a": (10, 30, 30), "b": (0, 20, 20)}
    # Past its bound it is rewritten with one line per shape kept.
    monkeypatch.setattr(ends_module, "COMPACT_MIN", 0)
    again.forget("b")
    for n in range(40, 400, 10):
        again.note([("a", (n - 10, n, n))])
    assert os.path.getsize(again.path) < 64 * 5
    assert LogEnds(str(tmp_path), fsync=False).read() == {"a": (380, 390, 390)}


def test_a_cut_noted_at_load_is_found_again_by_the_next_load(tmp_path: Path) -> None:
    """The load rewrites log-ends before the slot is asked about its cuts: each cut pending
    is noted there (`cut_end`), so a start ended in between leaves the next load the same
    cut, never a log that looks whole (chaos 19:37)."""
    log = _new(tmp_path)
    ends = LogEnds(str(log.directory), fsync=False)
    for lsn in (100, 200):
        log.append_transaction(lsn, _tx(lsn))
        _flush(log, ends)
    again = _reload(log)
    assert again.cut_end() is None  # (nothing cut: no note of its own)
    assert again.unverified("log-ends: missing")  # (the note was lost)
    assert again.repaired_from == 201
    end = again.cut_end()
    assert end is not None
    third = _reload(again)  # (the next start: the cut is not in the files)
    assert third.repaired_from is None
    assert third.check_end(end)
    assert third.repaired_from == 201


async def test_a_retired_shapes_noted_end_stays_until_its_retirement_is_on_disk(
    tmp_path: Path,
) -> None:
    """The slot check retires some cut shapes and keeps others (the slot replays theirs),
    whose noted cut it drops with a rewrite (`cuts_replayed`): that rewrite must keep the
    retired ones' lines until their retirement is on disk, else a crash in between loads
    them again with nothing to say their log was cut (chaos 19:48)."""
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    store.ends.ends = {"retired": (100, 201, 201), "kept": (300, 401, 401)}
    store.ends.rewrite()
    store.retire(store.new_log("retired"))
    store.cuts_replayed(["kept"])
    on_disk = LogEnds(str(tmp_path), fsync=False).read()
    assert on_disk == {"retired": (100, 201, 201)}
    await store.settle()
    assert store.ends.ends == {}

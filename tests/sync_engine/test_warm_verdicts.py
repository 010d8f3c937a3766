"""A send that skips the check before it (a kept verdict stands: `ShapeLog.snapshot_check_kept`)
must check the bytes it sends (`ShapeLog.send_check` armed), whatever the verdict caches
evicted meanwhile (review 11:35: `holds` refreshed its entry's recency and `passed` did not,
so after MAX_KEPT other checks a hot chunk was "kept" but not "passed": sent by `sendfile`
unchecked, the chaos 10:57 hole). The caches are made small here (MAX_KEPT 2) and the
device quiet (nothing read since the checks: every kept verdict stands)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cachetools import LRUCache

from sync_engine.log import verdicts
from sync_engine.log.store import PackBuilder, ShapeStore


def test_a_hot_chunk_skipping_its_check_before_the_send_always_checks_it_while_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in list(vars(verdicts).items()):
        if isinstance(value, LRUCache):
            monkeypatch.setattr(verdicts, name, LRUCache(2))
    monkeypatch.setattr(verdicts, "stamp", lambda dev: (1, 1))
    store = ShapeStore(tmp_path / "shapes", 1 << 20, fsync=False)
    (tmp_path / "shapes").mkdir()
    log = store.new_log("h")
    chunks = [b'{"key":"%d","value":{}}' % i * 40 for i in range(6)]
    for i, chunk in enumerate(chunks[:-1]):
        log.write_snapshot_chunk(i, chunk)
    pack = PackBuilder()
    pack.add(log, len(chunks), chunks[-1], {"handle": "h"})
    pack.write(fsync=False)
    assert pack.publish() == [log]
    (again,) = store.load()
    fds = [os.open(tmp_path / "shapes" / f"h.snapshot.{i:05d}.json", os.O_RDONLY) for i in range(5)]
    try:
        stats = [os.fstat(fd) for fd in fds]
        again.check_snapshot_file(0, fds[0])
        for i in range(1, 5):
            again.check_snapshot_file(i, fds[i])  # (another region checked: evicts)
            # chunk 0 is hot (sent between any two other checks), the others cold
            for j in (i, 0) if i % 2 else (0,):
                if again.snapshot_check_kept(j, stats[j]):  # (a send skipping its check)
                    armed = again.send_check(stats[j], 0, len(chunks[j]))
                    assert armed is not None, f"chunk {j} skips both checks"
        assert again.snapshot_check_kept(0, stats[0])  # (its verdict kept: what is tested)
    finally:
        for fd in fds:
            os.close(fd)

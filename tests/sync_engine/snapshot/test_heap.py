"""The heap is kept while any whole-table snapshot of more than one chunk is read, and
given back when the last one ends (`snapshot/heap.py`): overlapping snapshots must not put
the threshold back while another still reads, nor leave it raised after."""

from __future__ import annotations

import pytest

from sync_engine.snapshot import heap


@pytest.mark.skipif(heap.trim_threshold_now() is None, reason="not glibc")
def test_the_heap_is_kept_until_the_last_snapshot_ends() -> None:
    assert heap.trim_threshold_now() == heap.DEFAULT_TRIM
    first = heap.heap_kept()
    first.__enter__()
    assert heap.trim_threshold_now() == heap.KEPT_BYTES
    with heap.heap_kept():
        assert heap.trim_threshold_now() == heap.KEPT_BYTES
    assert heap.trim_threshold_now() == heap.KEPT_BYTES  # the first still reads
    first.__exit__(None, None, None)
    assert heap.trim_threshold_now() == heap.DEFAULT_TRIM
    with pytest.raises(RuntimeError), heap.heap_kept():
        raise RuntimeError("a snapshot that fails")
    assert heap.trim_threshold_now() == heap.DEFAULT_TRIM

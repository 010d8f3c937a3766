"""The reconnect policy: backoff within an episode of failures, permanent ones said once."""

from __future__ import annotations

import psycopg

from sync_engine.replication.failures import (
    FIRST_DELAY,
    MAX_DELAY,
    PERMANENT_DELAY,
    STABLE_AFTER,
    Failure,
    Retries,
    describe_failure,
)

LOST = Failure("server closed the connection", permanent=False)
NO_SLOT = Failure('replication slot "s" does not exist', permanent=True, fix="restart")


def test_transient_failures_back_off_doubling_up_to_the_cap() -> None:
    retries = Retries()
    waits = [retries.failed(LOST, now=float(i), started_at=None).wait for i in range(8)]
    assert waits[0] == FIRST_DELAY
    assert waits[1] == 2 * FIRST_DELAY
    assert max(waits) == MAX_DELAY and waits[-1] == MAX_DELAY
    assert waits == sorted(waits)
    assert retries.attempts == 8


def test_a_stream_that_starts_and_fails_at_once_keeps_backing_off() -> None:
    retries = Retries()
    first = retries.failed(LOST, now=0.0, started_at=None)
    second = retries.failed(LOST, now=1.0, started_at=0.9)  # ran 0.1 s
    assert second.wait == 2 * first.wait


def test_a_stream_that_ran_a_while_starts_a_new_episode() -> None:
    retries = Retries()
    for i in range(5):
        retries.failed(LOST, now=float(i), started_at=None)
    again = retries.failed(LOST, now=100.0, started_at=100.0 - STABLE_AFTER)
    assert again.wait == FIRST_DELAY and retries.attempts == 1


def test_recovery_is_told_once_per_episode_with_its_duration() -> None:
    retries = Retries()
    assert retries.started(now=0.0) is None  # nothing failed: nothing to tell
    retries.failed(LOST, now=10.0, started_at=None)
    retries.failed(LOST, now=11.0, started_at=None)
    assert retries.started(now=12.5) == 2.5 and retries.attempts == 2
    assert retries.started(now=13.0) is None


def test_a_permanent_failure_retries_slowly_and_is_reported_once_per_reason() -> None:
    retries = Retries()
    first = retries.failed(NO_SLOT, now=0.0, started_at=None)
    second = retries.failed(NO_SLOT, now=30.0, started_at=None)
    assert (first.wait, first.report) == (PERMANENT_DELAY, True)
    assert (second.wait, second.report) == (PERMANENT_DELAY, False)
    other = Failure("permission denied", permanent=True)
    assert retries.failed(other, now=60.0, started_at=None).report is True
    assert retries.failed(LOST, now=90.0, started_at=None).report is True


def test_a_slot_of_another_database_says_to_give_each_engine_its_own_stream_id() -> None:
    """Postgres's 55000 for a slot made in another database (another engine with the same
    stream id) was told as "set wal_level = logical": a fix that fixes nothing."""
    exc = psycopg.errors.ObjectNotInPrerequisiteState(
        'replication slot "shapegate_slot_default" was not created in this database'
    )
    failure = describe_failure(exc)
    assert failure.permanent
    assert "--replication-stream-id" in failure.fix and "wal_level" not in failure.fix

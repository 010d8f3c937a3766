"""Why replication failed, and how soon to try again.

A failure that someone has to fix (a wrong password, a dropped slot, `wal_level`) is told
apart from one that goes away by itself (a restart, a network blip): the first is retried
slowly and logged once as an error with what to fix, the second with a growing backoff.
`Retries` is that policy, without I/O or clock: the replicator feeds it what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import psycopg

from .stream import ReplicationConnectionError

__all__ = ["Failure", "Retries", "Retry", "describe_failure"]

#: Backoff between attempts: replication reconnects and, while writes fail, space probes.
FIRST_DELAY: Final = 0.25
MAX_DELAY: Final = 5.0
#: Slow retry for failures that need someone to fix something (wrong password, ...).
PERMANENT_DELAY: Final = 30.0
#: A stream that ran this long before failing starts a new episode (backoff from the start).
STABLE_AFTER: Final = 10.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Why replication failed, and whether retrying can help without someone fixing it."""

    reason: str
    permanent: bool
    fix: str = ""


# SQLSTATEs (and, for connection failures, where libpq gives no SQLSTATE, message
# fragments) of failures no retry can cure, with what to fix.
_AUTH_FIX = (
    "check the user and password in the database URL and pg_hba.conf; the role needs the"
    " REPLICATION attribute (ALTER ROLE ... REPLICATION)"
)
#: A slot of this engine's name in another database of the cluster (another engine with
#: the same stream id): SQLSTATE 55000 as a wrong wal_level is, with another fix.
_SLOT_ELSEWHERE_FIX = (
    "another engine uses this slot name on another database of the same Postgres cluster:"
    " give each engine its own --replication-stream-id (env SYNC_ENGINE_REPLICATION_STREAM_ID)"
)
_PERMANENT_STATES = {
    "28000": _AUTH_FIX,
    "28P01": _AUTH_FIX,
    "3D000": "create the database or fix its name in the database URL",
    "42501": _AUTH_FIX,
    "42704": (
        "the replication slot or publication was dropped: restart the engine, which"
        " recreates them (clients then refetch their shapes)"
    ),
    "55000": "set wal_level = logical in postgresql.conf and restart Postgres",
}
_PERMANENT_TEXT = (
    ("does not exist", "create the database or role, or fix its name in the database URL"),
    ("password authentication failed", _AUTH_FIX),
    ("no password supplied", _AUTH_FIX),
    ("authentication failed", _AUTH_FIX),
    ("no pg_hba.conf entry", _AUTH_FIX),
    ("must be superuser or replication role", _AUTH_FIX),
    ("permission denied", _AUTH_FIX),
    ("sslmode", "fix sslmode (disable, allow, prefer, require, verify-ca, verify-full)"),
    ("does not support ssl", "set sslmode=disable, or enable SSL on the server"),
    ("invalid uri", "fix the database URL"),
    ("invalid connection option", "fix the database URL"),
    ("invalid dsn", "fix the database URL"),
    ("wal_level", "set wal_level = logical in postgresql.conf and restart Postgres"),
)


def describe_failure(exc: BaseException) -> Failure:
    """Classify a replication failure by SQLSTATE, psycopg error class or libpq message."""
    cause: BaseException = exc
    while isinstance(cause, ReplicationConnectionError) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split())
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.replace(prefix, "")
    sqlstate = getattr(cause, "sqlstate", None)
    if "was not created in this database" in text:  # (55000 too: not a wal_level matter)
        return Failure(text, True, _SLOT_ELSEWHERE_FIX)
    if sqlstate in _PERMANENT_STATES:
        return Failure(text, True, _PERMANENT_STATES[sqlstate])
    if isinstance(cause, (RuntimeError, ValueError)) and not isinstance(cause, psycopg.Error):
        # The engine's own checks (wal_level, a slot of the wrong kind): the message says it.
        return Failure(text, True, "the reason says what to change")
    if isinstance(cause, psycopg.Error) and sqlstate is None:
        lowered = text.lower()
        for fragment, fix in _PERMANENT_TEXT:
            if fragment in lowered:
                return Failure(text, True, fix)
        if isinstance(cause, (psycopg.ProgrammingError, psycopg.InterfaceError)):
            return Failure(text, True, "fix the database URL")
    return Failure(text or type(exc).__name__, False)


@dataclass(frozen=True, slots=True)
class Retry:
    """What to do after a failure: wait `wait` seconds; `report` says whether this failure
    is news worth a log line (a permanent one is reported once, until its reason changes)."""

    wait: float
    report: bool


class Retries:
    """The reconnect policy over one *episode* of failures.

    An episode starts with a failure after a stream that ran `STABLE_AFTER` seconds (or the
    first failure ever); within it, transient failures wait `FIRST_DELAY`, doubling up to
    `MAX_DELAY` (also when a stream starts and fails at once: no fixed fast loop), and
    permanent ones wait `PERMANENT_DELAY`.
    """

    def __init__(self) -> None:
        self._delay = FIRST_DELAY
        self._since: float | None = None  # start of the current episode of failures
        self.attempts = 0
        self._last_permanent: str | None = None
        self._announced = False

    def started(self, now: float) -> float | None:
        """A stream started at `now`: the seconds it took to recover, the first time in an
        episode (to be logged with `attempts`), else None."""
        if self._since is None or self._announced:
            return None
        self._announced = True
        return now - self._since

    def failed(self, failure: Failure, now: float, started_at: float | None) -> Retry:
        """A stream failed at `now` (`started_at`: when it had started, None if it never did)."""
        if started_at is not None and now - started_at >= STABLE_AFTER:
            self._since = None  # it ran fine for a while: a new episode
        if self._since is None:
            self._since, self.attempts, self._delay = now, 0, FIRST_DELAY
            self._last_permanent, self._announced = None, False
        self.attempts += 1
        if failure.permanent:
            report = failure.reason != self._last_permanent
            self._last_permanent = failure.reason
            return Retry(PERMANENT_DELAY, report)
        wait = self._delay
        self._delay = min(self._delay * 2, MAX_DELAY)
        return Retry(wait, True)

"""A source's raw error (from Postgres or the network) -> a reason a person can act on.

Pure functions: the text of the error in, a short code and a sentence saying what is wrong
and what to do out. Codes: unreachable, auth_failed, database_missing, wal_level,
encoding, no_replication_role, no_replication_slots, no_wal_senders, permission, other.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dburl import describe_target, user_of


@dataclass(frozen=True, slots=True)
class Diagnosis:
    code: str
    message: str


_LOST = (
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "connection is lost",
    "consuming input failed",
    "the database system is shutting down",
    "the database system is starting up",
)
_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "failed to resolve host",
    "name or service not known",
    "could not translate host name",
    "no route to host",
    "network is unreachable",
    "timeout expired",
    "connection timed out",
    "no such file or directory",
)


#: What a replication stream that stopped says of itself (`replication/stream.py`): the
#: connection went, or went silent.
_STREAM_LOST = (
    "replication connection lost",
    "replication connection is closed",
    "replication stream was closed",
    "ended the replication stream",
    "stopped answering",
    "no answer in",
    "reading the replication stream failed",
    "standby status update failed",
)

#: What a public answer (a shape request's 503) says of each kind of error, in place of the
#: error's text: a category and configuration facts, never a host, port, role, database name
#: or PID (that text is Postgres's and libpq's, which name them: `connection to server at
#: "10.1.2.3", port 5432 failed: FATAL: password authentication failed for user "app"`), and
#: the engine's answers reach browsers through the proxy. The full text is in the engine's
#: log and, behind the admin token, in the admin API (`explain`).
PUBLIC_REASONS = {
    "connecting": "connecting to the database",
    "wal_level": "the database's wal_level is not logical",
    "encoding": "the database's encoding is SQL_ASCII, not UTF8",
    "no_replication_role": "the engine's database role lacks the REPLICATION attribute",
    "no_replication_slots": "the database has no free replication slot (max_replication_slots)",
    "no_wal_senders": "the database has no free WAL sender (max_wal_senders)",
    "auth_failed": "the database refused the engine's credentials",
    "database_missing": "the engine's database does not exist",
    "permission": "the engine's database role lacks a privilege it needs",
    "slot_in_use": "the replication slot is in use by another connection",
    "slot_other_database": (
        "the replication slot belongs to another database of the cluster"
        " (give each engine its own --replication-stream-id)"
    ),
    "lost": "the connection to the database was lost; reconnecting",
    "unreachable": "the database is unreachable",
    "other": "the engine cannot use its database now (its log says why)",
}


def _classify(low: str) -> str:
    """The kind of a (lowercased, one-line) error: a code of the module docstring, or
    `slot_in_use` / `lost` (an `unreachable` of a connection that was up)."""
    if "wal_level" in low:
        return "wal_level"
    if low.startswith("the database's encoding is"):  # (`pg.encoding`)
        return "encoding"
    if (
        "replication role" in low
        or "must be superuser or have replication" in low
        or "permission denied to create replication slot" in low
        or "permission denied to start walsender" in low
        or ("replication" in low and "rolreplication" in low)
    ):
        return "no_replication_role"
    if "all replication slots are in use" in low or "max_replication_slots" in low:
        return "no_replication_slots"
    if "max_wal_senders" in low or ("wal sender" in low and "exceeds" in low):
        return "no_wal_senders"
    if (
        "password authentication failed" in low
        or "no pg_hba.conf entry" in low
        or ("authentication failed" in low)
    ):
        return "auth_failed"
    if "replication slot" in low and "belongs to database" in low:  # (`replication.slot`)
        return "slot_other_database"
    if "does not exist" in low and "database" in low:
        return "database_missing"
    if "permission denied" in low or "must be owner" in low:
        return "permission"
    if "replication slot" in low and "is active for pid" in low:
        return "slot_in_use"
    if any(p in low for p in _LOST):
        return "lost"
    if any(p in low for p in _UNREACHABLE):
        return "unreachable"
    return "other"


def public_reason(error: str | None) -> str:
    """What a public answer may say of a source's error (`PUBLIC_REASONS`): its kind, not
    its text. None: not failed yet (connecting)."""
    if error is None:
        return PUBLIC_REASONS["connecting"]
    low = " ".join(error.split()).lower()
    code = _classify(low)
    if code == "other" and any(p in low for p in _STREAM_LOST):
        code = "lost"
    return PUBLIC_REASONS[code]


def explain(error: str, database_url: str) -> Diagnosis:
    raw = " ".join(error.split())
    code = _classify(raw.lower())
    target = describe_target(database_url)
    user = user_of(database_url) or "<role>"
    if code == "no_replication_role":
        return Diagnosis(
            code,
            f"role {user} lacks the REPLICATION attribute: as a superuser run"
            f" ALTER ROLE {user} WITH REPLICATION; (Postgres said: {raw})",
        )
    if code == "no_replication_slots":
        return Diagnosis(
            code,
            "too few replication slots: every slot allowed by max_replication_slots is in"
            " use. Raise max_replication_slots in postgresql.conf and restart Postgres, or drop"
            " unused slots (see pg_replication_slots where active is false)."
            f" (Postgres said: {raw})",
        )
    if code == "no_wal_senders":
        return Diagnosis(
            code,
            "too few WAL senders: raise max_wal_senders in postgresql.conf and restart Postgres."
            f" (Postgres said: {raw})",
        )
    if code == "auth_failed":
        return Diagnosis(
            code,
            f"{target} refused the login: check the user and password in the connection"
            f" string and that pg_hba.conf admits the engine's address. (Postgres said: {raw})",
        )
    if code == "database_missing":
        return Diagnosis(
            code,
            f"the database of {target} does not exist: create it or fix the name in the"
            f" connection string. (Postgres said: {raw})",
        )
    if code == "permission":
        return Diagnosis(
            code,
            f"role {user} lacks a privilege the engine needs: it must be able to create a"
            f" publication (GRANT CREATE ON DATABASE ... TO {user}) and own the synced tables."
            f" (Postgres said: {raw})",
        )
    if code == "lost":
        return Diagnosis(
            "unreachable",
            f"lost the connection to {target} (Postgres restarting or the connection was"
            f" terminated); retrying. (Error: {raw})",
        )
    if code == "unreachable":
        return Diagnosis(
            code,
            f"cannot reach {target}: check that Postgres is running, listens on that host and"
            " port (listen_addresses) and that no firewall blocks the engine."
            f" (Error: {raw})",
        )
    # (wal_level, encoding, a slot in use, other: the text says it)
    return Diagnosis("other" if code in ("slot_in_use", "slot_other_database") else code, raw)

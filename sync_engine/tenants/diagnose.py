"""A source's raw error (from Postgres or the network) -> a reason a person can act on.

Pure functions: the text of the error in, a short code and a sentence saying what is wrong
and what to do out. Codes: unreachable, auth_failed, database_missing, wal_level,
no_replication_role, no_replication_slots, no_wal_senders, permission, other.
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


def explain(error: str, database_url: str) -> Diagnosis:
    raw = " ".join(error.split())
    low = raw.lower()
    target = describe_target(database_url)
    user = user_of(database_url) or "<role>"
    if "wal_level" in low:
        return Diagnosis("wal_level", raw)
    if (
        "replication role" in low
        or "must be superuser or have replication" in low
        or "permission denied to create replication slot" in low
        or "permission denied to start walsender" in low
        or ("replication" in low and "rolreplication" in low)
    ):
        return Diagnosis(
            "no_replication_role",
            f"role {user} lacks the REPLICATION attribute: as a superuser run"
            f" ALTER ROLE {user} WITH REPLICATION; (Postgres said: {raw})",
        )
    if "all replication slots are in use" in low or "max_replication_slots" in low:
        return Diagnosis(
            "no_replication_slots",
            "too few replication slots: every slot allowed by max_replication_slots is in"
            " use. Raise max_replication_slots in postgresql.conf and restart Postgres, or drop"
            " unused slots (see pg_replication_slots where active is false)."
            f" (Postgres said: {raw})",
        )
    if "max_wal_senders" in low or ("wal sender" in low and "exceeds" in low):
        return Diagnosis(
            "no_wal_senders",
            "too few WAL senders: raise max_wal_senders in postgresql.conf and restart Postgres."
            f" (Postgres said: {raw})",
        )
    if (
        "password authentication failed" in low
        or "no pg_hba.conf entry" in low
        or ("authentication failed" in low)
    ):
        return Diagnosis(
            "auth_failed",
            f"{target} refused the login: check the user and password in the connection"
            f" string and that pg_hba.conf admits the engine's address. (Postgres said: {raw})",
        )
    if "does not exist" in low and "database" in low:
        return Diagnosis(
            "database_missing",
            f"the database of {target} does not exist: create it or fix the name in the"
            f" connection string. (Postgres said: {raw})",
        )
    if "permission denied" in low or "must be owner" in low:
        return Diagnosis(
            "permission",
            f"role {user} lacks a privilege the engine needs: it must be able to create a"
            f" publication (GRANT CREATE ON DATABASE ... TO {user}) and own the synced tables."
            f" (Postgres said: {raw})",
        )
    if any(p in low for p in _LOST):
        return Diagnosis(
            "unreachable",
            f"lost the connection to {target} (Postgres restarting or the connection was"
            f" terminated); retrying. (Error: {raw})",
        )
    if any(p in low for p in _UNREACHABLE):
        return Diagnosis(
            "unreachable",
            f"cannot reach {target}: check that Postgres is running, listens on that host and"
            " port (listen_addresses) and that no firewall blocks the engine."
            f" (Error: {raw})",
        )
    return Diagnosis("other", raw)

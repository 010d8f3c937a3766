"""Why a snapshot query failed, as the answer its requests get: the user's fault or ours.

A where clause the engine accepted can still fail when Postgres runs it over the rows:
`id / 0 = 1`, `title::int4 = 1` on a row whose title is not a number, an integer overflow,
an `ARRAY` of seven dimensions. Retrying does not help (the same rows give the same error),
so these are a 400 for the field at fault, never a 503 that clients retry forever. The
message is built from the SQLSTATE and its condition name: Postgres's own text can quote
row values (`invalid input syntax for type integer: "<a title>"`), which belong to rows the
requester may not be allowed to see; only a parse-time refusal (class 42) adds its words.

Everything else (connection lost, Postgres restarting or out of disk, a timeout) is
transient: a 503 with Retry-After. A table dropped since the catalog lookup is a 400 for
`table`; a column dropped or retyped since is a 409, after which the client starts over and
the fresh catalog says what is wrong.
"""

from __future__ import annotations

import errno
import re
from typing import Literal

import psycopg
import psycopg.errors

from ..errors import EngineError, InvalidRequest, ServiceUnavailable, ShapeGone

#: SQLSTATE classes whose errors come from the query itself, deterministically: 0A feature
#: not supported, 21 cardinality violation, 22 data exception, 42 syntax error or access
#: rule violation, 54 program limit exceeded (e.g. too many array dimensions).
USER_CLASSES = frozenset({"0A", "21", "22", "42", "54"})
UNDEFINED_TABLE = "42P01"
#: The catalog changed under the query: a column or type the where clause named is gone.
SCHEMA_CHANGED = frozenset({"42703", "42704"})
#: Not the requester's fault: the engine's role lacks a privilege (an operator must act).
INSUFFICIENT_PRIVILEGE = "42501"
#: A statement cancelled: by its `statement_timeout` (`Settings.snapshot_timeout`), or by
#: a cancel request.
QUERY_CANCELED = "57014"
#: Seconds a client is asked to wait before it asks again for a snapshot that ran out of
#: time (Electric's answer to a slow snapshot query: 503 with Retry-After 10).
TIMED_OUT_RETRY = 10

#: The `code` of the 503 for a snapshot the engine's disk had no room for (ENOSPC, EDQUOT).
DISK_FULL = "disk_full"
#: Seconds a client is asked to wait before it asks again for a snapshot the disk refused
#: (`source.DISK_FULL_WAIT`: no new snapshot is tried before then, unless space comes back).
DISK_FULL_RETRY = 5

Kind = Literal["user", "table_gone", "schema_changed", "transient"]


class Abandoned(Exception):
    """No request waited for the snapshots of a batch, which was cancelled for that
    (`scheduler.ABANDONED_AFTER`). A request that came for one of its shapes while the cancel
    was on its way is told to refetch (409), its shape made again (`http.shape._successor`),
    rather than given the cancel's 503 and a Retry-After for a query it never asked to stop.
    """


def sqlstate(exc: BaseException) -> str | None:
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    return None


def kind(exc: BaseException) -> Kind:
    """Whose fault a snapshot error is (see the module docstring)."""
    code = sqlstate(exc)
    if code is None or code == INSUFFICIENT_PRIVILEGE:
        return "transient"
    if code == UNDEFINED_TABLE:
        return "table_gone"
    if code in SCHEMA_CHANGED:
        return "schema_changed"
    if code[:2] in USER_CLASSES:
        return "user"
    return "transient"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is the disk (or the data directory's quota) refusing a write."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(retry_after: int = DISK_FULL_RETRY) -> ServiceUnavailable:
    """The 503 of a request whose shape's snapshot the engine's disk has no room for: a
    stable `code` (`DISK_FULL`) and words, as the engine's other 503s (`snapshot_timeout`,
    `database_unreachable`, ...), whichever write failed and whether the snapshot failed
    now or a while ago (`Source._check_snapshot_room`)."""
    return ServiceUnavailable(
        "Could not take the shape's snapshot: No space left on device (the engine's disk is"
        " full), please retry",
        retry_after,
        code=DISK_FULL,
    )


def condition(code: str) -> str:
    """Postgres's condition name for a SQLSTATE (`22012` -> `division_by_zero`)."""
    try:
        cls = psycopg.errors.lookup(code)
    except KeyError:
        return "unknown error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.rstrip("_")).lower()


def describe(exc: BaseException) -> str:
    """A one-line description that quotes no data: condition and SQLSTATE, or the OS error."""
    code = sqlstate(exc)
    if code is not None:
        return f"{condition(code).replace('_', ' ')} (SQLSTATE {code})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # without the file name
    if isinstance(exc, psycopg.Error):
        return "the database connection failed"
    return type(exc).__name__


def user_message(exc: BaseException) -> str:
    """The 400's text: `describe`, and for a clause Postgres refused when it parsed it
    (SQLSTATE class 42: an undefined function or operator, a type mismatch) Postgres's own
    words, which name only the query's functions, operators and types (parse analysis reads
    no row), so that the requester can tell what to change. Not for any other class: a
    data exception can quote a row's value."""
    said = f"Postgres could not evaluate the query over the table's rows: {describe(exc)}"
    code = sqlstate(exc)
    if (
        isinstance(exc, psycopg.Error)
        and code is not None
        and code[:2] == "42"
        and code != INSUFFICIENT_PRIVILEGE
        and exc.diag.message_primary
    ):
        said += f": {exc.diag.message_primary}"
    return said


def table_missing_message(schema: str, name: str) -> str:
    return (
        f'Table "{schema}"."{name}" does not exist. If the table name contains capitals or'
        " special characters you must quote it."
    )


def to_engine_error(
    exc: BaseException, *, field: str, schema: str, table: str, subset: bool = False
) -> EngineError:
    """The answer for requests of a shape (or a subset) whose query failed with `exc`.

    `field` is the parameter a deterministic failure is blamed on (`where`, or `table` when
    the shape has none); `subset` nests it under `subset` as Electric does for subsets.
    """
    if isinstance(exc, Abandoned):
        return ShapeGone(None)
    if _row_security(exc):
        refused: dict[str, object] = {
            "table": [
                f'Table "{schema}"."{table}" has row-level security that applies to the'
                " engine's role (FORCE ROW LEVEL SECURITY on a table it owns): its policies"
                " would filter the snapshot but not the replication stream. Run ALTER TABLE"
                " ... NO FORCE ROW LEVEL SECURITY, or give the role BYPASSRLS (the engine"
                " syncs every row; restrict rows with the shape's where, or the proxy's"
                " policies)"
            ]
        }
        return InvalidRequest({"subset": refused} if subset else refused)
    k = kind(exc)
    if k == "user":
        errors: dict[str, object] = {field: [user_message(exc)]}
        return InvalidRequest({"subset": errors} if subset else errors)
    if k == "table_gone":
        return InvalidRequest({"table": [table_missing_message(schema, table)]})
    if k == "schema_changed":
        return ShapeGone(None)
    if timed_out(exc):
        what = "subset" if subset else "snapshot"
        return ServiceUnavailable(
            f"The {what} query took too long and was cancelled (the engine's"
            " --snapshot-timeout): its where clause costs too much over this table's rows."
            " Please use a cheaper where clause, or one an index serves.",
            TIMED_OUT_RETRY,
            code="snapshot_timeout",
        )
    if is_disk_full(exc):
        return disk_full_error()
    return ServiceUnavailable(f"Could not take the shape's snapshot: {describe(exc)}", 5)


def _row_security(exc: BaseException) -> bool:
    """Whether `exc` is Postgres refusing a query that row-level security would filter
    (`row_security = off`, `pg.session.ENGINE_SETTINGS`)."""
    return (
        isinstance(exc, psycopg.Error)
        and exc.sqlstate == INSUFFICIENT_PRIVILEGE
        and "row-level security" in (exc.diag.message_primary or "")
    )


def timed_out(exc: BaseException) -> bool:
    """Whether `exc` is a statement cancelled by its `statement_timeout` (not by a cancel
    request: the same SQLSTATE, told apart by Postgres's words)."""
    return (
        isinstance(exc, psycopg.Error)
        and exc.sqlstate == QUERY_CANCELED
        and "statement timeout" in (exc.diag.message_primary or "")
    )

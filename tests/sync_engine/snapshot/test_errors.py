"""Whose fault a failed snapshot query is, and the answer its requests get (snapshot/errors).

The real-path cases (a where failing in Postgres is a 400, a dropped table a 400) are in
test_bad_input.py; here every class of error is mapped, with Postgres's own error classes.
"""

from __future__ import annotations

import asyncio
import errno

import psycopg
import psycopg.errors
import pytest
from psycopg import pq

from sync_engine.errors import InvalidRequest, ServiceUnavailable, ShapeGone
from sync_engine.snapshot import scheduler as snapshots
from sync_engine.snapshot.errors import to_engine_error
from tests.support.waiting import wait_until_async
from tests.sync_engine.engine_harness import Engine
from tests.sync_engine.http.test_bad_input import assert_untouched, make_items, request


def pg_error(
    sqlstate: str, message: str = 'invalid input syntax for type integer: "secret"'
) -> Exception:
    return psycopg.errors.lookup(sqlstate)(message)


@pytest.mark.parametrize(
    ("exc", "kind", "fragment"),
    [
        (pg_error("22012"), InvalidRequest, "division by zero (SQLSTATE 22012)"),
        (pg_error("22P02"), InvalidRequest, "invalid text representation (SQLSTATE 22P02)"),
        (pg_error("22003"), InvalidRequest, "numeric value out of range (SQLSTATE 22003)"),
        (pg_error("2202E"), InvalidRequest, "array subscript error (SQLSTATE 2202E)"),
        (pg_error("54000"), InvalidRequest, "program limit exceeded (SQLSTATE 54000)"),
        (pg_error("42883"), InvalidRequest, "undefined function (SQLSTATE 42883)"),
        (pg_error("0A000"), InvalidRequest, "feature not supported (SQLSTATE 0A000)"),
        (pg_error("21000"), InvalidRequest, "cardinality violation (SQLSTATE 21000)"),
        (pg_error("42P01"), InvalidRequest, 'Table "public"."items" does not exist'),
        (pg_error("42703"), ShapeGone, ""),
        (pg_error("42501"), ServiceUnavailable, "insufficient privilege (SQLSTATE 42501)"),
        (pg_error("57P01"), ServiceUnavailable, "admin shutdown (SQLSTATE 57P01)"),
        (pg_error("57014"), ServiceUnavailable, "query canceled (SQLSTATE 57014)"),
        (pg_error("53100"), ServiceUnavailable, "disk full (SQLSTATE 53100)"),
        (pg_error("08006"), ServiceUnavailable, "connection failure (SQLSTATE 08006)"),
        (pg_error("XX000"), ServiceUnavailable, "internal error (SQLSTATE XX000)"),
        (psycopg.OperationalError("server closed the connection"), ServiceUnavailable,
         "the database connection failed"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/secret/chunk"),
         ServiceUnavailable, "No space left on device"),
    ],
)  # fmt: skip
def test_snapshot_error_mapping(exc: Exception, kind: type, fragment: str) -> None:
    err = to_engine_error(exc, field="where", schema="public", table="items")
    assert type(err) is kind
    text = str(getattr(err, "errors", "")) + getattr(err, "message", "")
    assert fragment in text, text
    assert "secret" not in text  # neither the row value in Postgres's message nor a path
    if isinstance(err, ServiceUnavailable):
        assert err.retry_after > 0
    if isinstance(err, InvalidRequest) and "SQLSTATE" in fragment:
        assert list(err.errors) == ["where"]


def test_subset_errors_nest_under_subset() -> None:
    err = to_engine_error(pg_error("22012"), field="where", schema="s", table="t", subset=True)
    assert isinstance(err, InvalidRequest)
    assert list(err.errors) == ["subset"] and "22012" in str(err.errors)


async def test_connections_killed_under_the_engine_cost_no_request(engine: Engine) -> None:
    """Every engine connection terminated (as when Postgres restarts): the idle snapshot
    connections and the catalog connection are replaced on their next use, so new shapes
    are not failed (and never a 400), then sync as usual."""
    make_items(engine)
    await engine.sync(table="items", where="n > 0")  # snapshot connections now open and idle
    await engine.sync(table="items", where="n > 1")
    engine.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    expected = {"n > 10": 2, "n > 20": 1, "n > 30": 0}
    answers = await asyncio.gather(
        *(request(engine, params={"table": "items", "offset": "-1", "where": w}) for w in expected)
    )
    assert [status for status, _, _ in answers] == [200, 200, 200], answers
    for where, count in expected.items():
        rows, _, _ = await engine.sync(table="items", where=where)
        assert len(rows) == count
    engine.source.registry.rotate_all("test cleanup")
    await assert_untouched(engine)


async def test_a_retry_after_a_killed_connection_runs_on_a_fresh_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminated backend may still look alive when the next batch is sent (the signal is
    not yet acted on): here the idle check never notices, as under load. The batch dies on
    one killed connection; its one retry must not be spent on another killed idle one."""
    monkeypatch.setattr(
        snapshots, "closed_by_server", lambda conn: conn.pgconn.status != pq.ConnStatus.OK
    )
    make_items(engine)
    await engine.sync(table="items", where="n > 0")
    # The first snapshot opened the pool; its other connections finish opening in the
    # background (under load, after the first batch is done) and then sit idle.
    await wait_until_async(
        lambda: engine.source.snapshots.idle_connections > 1, message="idle snapshot connections"
    )
    engine.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    status, _, raw = await request(
        engine, params={"table": "items", "offset": "-1", "where": "n > 10"}
    )
    assert status == 200, raw
    rows, _, _ = await engine.sync(table="items", where="n > 10")
    assert len(rows) == 2
    engine.source.registry.rotate_all("test cleanup")
    await assert_untouched(engine)


def test_a_clause_postgres_refuses_at_parse_time_says_why(db_url: str) -> None:
    """A where clause the engine accepted but Postgres's parse analysis refuses (an operator
    or function it does not have for those types) gets Postgres's words in its 400, not
    just "undefined function (SQLSTATE 42883)": they name no row value. A data exception's
    words, which quote one, still stay out."""
    with psycopg.connect(db_url) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT 1 WHERE ARRAY[1] = 'x'::text")
        conn.rollback()
        with pytest.raises(psycopg.Error) as data:
            conn.execute("SELECT 'secret'::int")
    answer = to_engine_error(refused.value, field="where", schema="public", table="items")
    assert isinstance(answer, InvalidRequest)
    message = answer.errors["where"][0]  # type: ignore[index]
    assert "(SQLSTATE 42883): operator does not exist: integer[] = text" in message, message
    answer = to_engine_error(data.value, field="where", schema="public", table="items")
    assert isinstance(answer, InvalidRequest)
    assert "secret" not in str(answer.errors), answer.errors

"""LIKE and ILIKE: the engine's matching is Postgres's, and never takes exponential time.

Differential: random patterns over a small alphabet (so `%`, `_`, the escape character and
letters meet often, in every order) against random texts over the same alphabet, each
verdict compared with Postgres's. Then the patterns that made a backtracking regex run
for ever (`'%a%a%a%a%a%a%a%a%b%'` against a long run of `a`s): evaluated live on the
replication loop, one such row stopped every shape of the source.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import psycopg
import pytest

from sync_engine.pg.session import with_display_settings
from sync_engine.shapes.where import WhereError, parse_where
from tests.sync_engine.engine_harness import Engine, apply
from tests.sync_engine.shapes.where.columns import column_map, engine_verdict

ALPHABET = "aAb%_\\!é"


@pytest.fixture
def table(db_url: str) -> Iterator[tuple[psycopg.Connection[Any], Any, dict[int, str]]]:
    url = with_display_settings(db_url)
    rng = random.Random(7)
    texts = {i: "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))) for i in range(300)}
    texts[300] = ""
    texts[301] = "a" * 3000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE d (id int PRIMARY KEY, t text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO d VALUES (%s, %s)", list(texts.items()))

        yield conn, column_map(url), texts


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_like_verdicts_equal_postgres(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    conn, columns, texts = table
    rng = random.Random(11)
    compared = 0
    for _ in range(400):
        pattern = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6)))
        op = rng.choice(["LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"])
        escape = rng.choice(["", " ESCAPE '!'", " ESCAPE ''"])
        clause = f"t {op} {_literal(pattern)}{escape}"
        try:
            where = parse_where(clause, {}, columns)
        except WhereError as e:
            # Postgres fails only on a row whose match reaches the trailing escape character;
            # the engine refuses such a pattern outright (a 400, never a wrong verdict)
            assert "must not end with escape character" in str(e), (clause, e)
            assert pattern.endswith("!" if "'!'" in escape else "" if "''" in escape else "\\")
            continue
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {clause}")}
        got = {i for i, t in texts.items() if where.matches({"id": str(i), "t": t})}
        assert got == expected, (clause, sorted(got ^ expected)[:5])
        compared += 1
    assert compared >= 300
    # the pattern taken per row (like(t, t)): every text as a pattern for itself. A text
    # ending in the escape character fails in Postgres (the whole query); so does the
    # engine, as for every row a clause fails on (Where.matches: ClauseFails)
    where = parse_where("like(t, t) OR t ILIKE lower(t)", {}, columns)
    for i, t in texts.items():
        try:
            with conn.transaction():
                row = conn.execute(f"SELECT {where.sql} FROM d WHERE id = %s", (i,)).fetchone()
            expected_one = "true" if row and row[0] else "false"
        except psycopg.errors.InvalidEscapeSequence:
            expected_one = "error"
        assert engine_verdict(where, {"id": str(i), "t": t}) == expected_one, t


_PAIR_VERDICTS = """
CREATE FUNCTION pair_verdicts(clause text) RETURNS TABLE(rid int, verdict text) AS $$
DECLARE r record; res boolean;
BEGIN
  FOR r IN SELECT id FROM pairs LOOP
    BEGIN
      EXECUTE 'SELECT (' || clause || ') FROM pairs WHERE id = $1' INTO res USING r.id;
      rid := r.id; verdict := coalesce(res::text, 'null'); RETURN NEXT;
    EXCEPTION WHEN invalid_escape_sequence THEN
      rid := r.id; verdict := 'error'; RETURN NEXT;
    END;
  END LOOP;
END $$ LANGUAGE plpgsql
"""


def test_a_pattern_ending_in_its_escape_fails_only_where_postgres_reaches_it(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    """A pattern taken per row that ends in its escape character: Postgres fails only where
    its matching reaches that end with text left (`'ab' LIKE 'a\\'`), and elsewhere
    answers (`'b' LIKE 'a\\'` is false, so NOT LIKE is true; `'%\\'` fails on every
    non-empty text, `'' LIKE '%\\'` is false). The engine failed on every row (no match
    for NOT LIKE either). Its own MatchText follows Postgres's search order; each row's
    verdict (true, false or the failure) compared."""
    conn, _columns, _texts = table
    rng = random.Random(13)
    letters = "aAbé%_"
    pairs = {}
    for i in range(400):
        escape = rng.choice(["\\", "!"])
        body = "".join(rng.choice(letters + escape) for _ in range(rng.randint(0, 5)))
        text = "".join(rng.choice("aAbé%_\\!") for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.5:  # texts that follow the pattern, so matching gets far
            text = body.replace("%", "a").replace("_", "b").replace(escape, "") + text[:2]
        pairs[i] = (text, body + escape)
    conn.execute("CREATE TABLE pairs (id int PRIMARY KEY, t text, p text)")
    conn.execute(_PAIR_VERDICTS)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pairs VALUES (%s, %s, %s)", [(i, *v) for i, v in pairs.items()]
        )
    columns = column_map(conn.info.dsn, "pairs")
    seen: dict[str, int] = {}
    for clause in ["t LIKE p", "t NOT LIKE p", "t ILIKE p", "t NOT ILIKE p",
                   "t LIKE p ESCAPE '!'", "t NOT ILIKE p ESCAPE '!'"]:  # fmt: skip
        where = parse_where(clause, {}, columns)
        verdicts = dict(conn.execute("SELECT * FROM pair_verdicts(%s)", (where.sql,)).fetchall())
        for i, (t, pattern) in pairs.items():
            row = {"id": str(i), "t": t, "p": pattern}
            if verdicts[i] == "error":
                with pytest.raises(ValueError, match="must not end with escape character"):
                    where.value(row)
            else:
                assert where.value(row) is (verdicts[i] == "true"), (clause, t, pattern)
            seen[verdicts[i]] = seen.get(verdicts[i], 0) + 1
    assert min(seen.get(v, 0) for v in ("true", "false", "error")) >= 100, seen


def test_escape_null_makes_like_null(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    """`t LIKE p ESCAPE NULL` is NULL (like_escape is strict): no row matches, nor with NOT.
    The engine read ESCAPE NULL as "no escape character" and matched `t LIKE 'a'`."""
    conn, columns, texts = table
    for clause in ["t LIKE 'a' ESCAPE NULL", "t NOT LIKE 'a' ESCAPE NULL",
                   "t ILIKE '%' ESCAPE NULL", "(t LIKE 'a' ESCAPE NULL) IS NULL",
                   "NOT (t LIKE 'b%' ESCAPE NULL) OR t = 'a'"]:  # fmt: skip
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {i for i, t in texts.items() if where.matches({"id": str(i), "t": t})}
        assert got == expected, (clause, sorted(got ^ expected)[:5])


def test_like_any_of_a_constant_pattern_ending_in_its_escape_is_refused_as_like_is(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]],
) -> None:
    """`t LIKE ANY(ARRAY['a\\'])`: Postgres's planner runs the LIKE of each constant element
    on the column's statistics and fails there, so the same query on a row that never
    reaches the pattern's end answers before ANALYZE and fails after it. The engine
    refuses it, as it refuses `t LIKE 'a\\'`; it answered per row."""
    conn, columns, texts = table
    conn.execute("CREATE TABLE lk (id int PRIMARY KEY, t text) WITH (autovacuum_enabled = off)")
    conn.execute("INSERT INTO lk SELECT i, 'a' || i FROM generate_series(1, 99) i")
    conn.execute("INSERT INTO lk VALUES (100, 'b')")
    query = "SELECT id FROM lk WHERE id = 100 AND t LIKE ANY(ARRAY['a\\'])"
    assert conn.execute(query).fetchall() == []
    conn.execute("ANALYZE lk")
    with pytest.raises(psycopg.errors.InvalidEscapeSequence):
        conn.execute(query)
    for clause in [
        "t LIKE ANY(ARRAY['a\\'])",
        "t NOT ILIKE ALL(ARRAY['%', 'b\\'])",
        "t LIKE ANY(ARRAY[t, 'a' || '\\'])",
        "t LIKE ANY('{\"a\\\\\"}')",
        "t LIKE ANY(ARRAY[['a\\']]::text[])",
    ]:
        with pytest.raises(WhereError, match="must not end with escape character"):
            parse_where(clause, {}, columns)
    for clause in ["t LIKE ANY(ARRAY['a\\\\%', 'b_'])", "t LIKE ANY('{\"a\\\\\\\\\"}')"]:
        where = parse_where(clause, {}, columns)
        expected = {r[0] for r in conn.execute(f"SELECT id FROM d WHERE {where.sql}")}
        got = {i for i, t in texts.items() if where.matches({"id": str(i), "t": t})}
        assert got == expected, clause


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("LIKE evaluation did not finish")


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds`, and give the real-time timer back.

    pytest-timeout's alarm is the same ITIMER_REAL: `signal.alarm(0)` here cancelled it for
    the rest of the test, so a hang in its teardown was never timed out. Its remaining time
    (less what the block took; at once if that ran out) is armed again on the way out, and
    its handler put back. Ours never outlasts it: if it has less time left, ours fires then.
    """
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < outer < seconds:
        signal.setitimer(signal.ITIMER_REAL, outer)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            left = outer - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)


@pytest.mark.parametrize(
    "clause",
    [
        "t LIKE '%a%a%a%a%a%a%a%a%a%a%b%'",
        "t ILIKE '%A%a%A%a%A%a%A%a%A%a%B%'",
        "t NOT LIKE '%a%a%a%a%a%a%a%a%a%a%b%'",
        "t LIKE '%a_a_a_a_a_a%a_a_a_a_a_a%b%'",
    ],
)
def test_patterns_that_backtrack_finish(
    table: tuple[psycopg.Connection[Any], Any, dict[int, str]], clause: str
) -> None:
    conn, columns, texts = table
    where = parse_where(clause, {}, columns)
    row = {"id": "301", "t": texts[301]}
    one = conn.execute(f"SELECT {where.sql} FROM d WHERE id = 301").fetchone()
    assert one is not None
    expected = bool(one[0])
    handler = signal.getsignal(signal.SIGALRM)
    outer = signal.getitimer(signal.ITIMER_REAL)[0]
    with _within(10):  # the backtracking regex ran for hours here
        assert where.value(row) is expected  # (not matches(), which takes an error for False)
    # pytest-timeout's alarm (same timer) still runs for this test's teardown, as before
    assert signal.getsignal(signal.SIGALRM) is handler
    assert (signal.getitimer(signal.ITIMER_REAL)[0] > 0) == (outer > 0)


def test_within_gives_the_outer_timer_back() -> None:
    """The outer timer (pytest-timeout's) is re-armed with its remaining time and still fires."""
    fired: list[int] = []
    saved_handler = signal.signal(signal.SIGALRM, lambda signum, _frame: fired.append(signum))
    start = time.monotonic()
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 60)
    try:
        with _within(5):
            pass
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < left <= 60
        with pytest.raises(TimeoutError), _within(0.05):
            while True:
                time.sleep(0.01)
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= left
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # the outer one shorter than ours: fires
        with pytest.raises(TimeoutError), _within(30):
            while True:
                time.sleep(0.01)
        # and, its time spent, is given back at once: its own handler runs
        deadline = time.monotonic() + 30
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_handler)
        if saved_timer[0] > 0:
            left = saved_timer[0] - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), saved_timer[1])


async def test_a_long_text_under_a_backtracking_pattern_does_not_stop_the_source(
    engine: Engine,
) -> None:
    engine.sql("CREATE TABLE docs (id int PRIMARY KEY, t text)")
    slow = "t LIKE '%a%a%a%a%a%a%a%a%a%a%b%'"
    _rows, h1, o1 = await engine.sync(table="docs", where=slow)
    other, h2, o2 = await engine.sync(table="docs", where="id > 0")
    engine.sql("INSERT INTO docs VALUES (1, repeat('a', 20000)), (2, repeat('a', 10) || 'b')")
    for _ in range(20):  # the other shape still gets both rows
        status, h, body = await engine.get(
            table="docs", where="id > 0", offset=o2, handle=h2, live="true"
        )
        assert status == 200, body
        apply(other, body)
        o2 = h["electric-offset"]
        if len(other) == 2:
            break
    assert len(other) == 2
    status, h, body = await engine.get(table="docs", where=slow, offset=o1, handle=h1)
    assert status == 200, body
    assert [m["value"]["id"] for m in body if "key" in m] == ["2"]

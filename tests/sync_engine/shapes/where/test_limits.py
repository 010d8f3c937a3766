"""Where clauses at the limits: deep nesting, size, Electric's syntax-error positions.

Before the limits, a clause nested a few hundred levels (`- - - … 1`, `NOT NOT … true`,
`n+1+1+…`) raised RecursionError in the compiler or in pglast's deparser (a 500), and a
left-deep chain of ~30,000 levels crashed the process inside pglast. Every such clause is
now a `WhereError` (a 400) naming the limit; a clause just inside the limit still works
through parse, compile, deparse, evaluation and index extraction.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.shapes.where import (
    MAX_WHERE_DEPTH,
    MAX_WHERE_SIZE,
    WhereError,
    check_where_constructs,
    parse_order_by,
    parse_where,
)
from sync_engine.shapes.where.depth import longest_token_run, runs_longer_than

COLUMNS = {
    "id": ColumnInfo("id", 1, 0, "int4", None, "b", -1, 0, False, 0),
    "name": ColumnInfo("name", 2, 0, "text", None, "b", -1, 0, False, None, False,
                       "c|C.UTF-8|C.UTF-8|t"),
}  # fmt: skip

#: name -> clause nested n levels
DEEP: dict[str, Callable[[int], str]] = {
    "unary minus": lambda n: "- " * n + "id = 1",
    "NOT": lambda n: "NOT " * n + "true",
    "plus chain": lambda n: "id" + "+1" * n + " = 1",
    "right-nested sums": lambda n: "id = " + "(1+" * n + "1" + ")" * n,
    "parenthesised NOT": lambda n: "(NOT " * n + "true" + ")" * n,
    "cast chain": lambda n: "id" + "::int4" * n + " = 1",
    "nested abs": lambda n: "abs(" * n + "id" + ")" * n + " = 1",
    "nested coalesce": lambda n: "coalesce(" * n + "id" + ", 1)" * n + " = 1",
    "nested arrays": lambda n: "ARRAY[" * n + "1" + "]" * n + " IS NULL",
    "concat chain": lambda n: "name" + " || 'x'" * n + " = 'a'",
    "AND of NOTs": lambda n: " AND ".join(["NOT " * 10 + "true"] * 3) + " AND " + "NOT " * n + "true",
}  # fmt: skip


def _refused(sql: str) -> str:
    with pytest.raises(WhereError) as info:
        parse_where(sql, {}, COLUMNS)
    return str(info.value)


@pytest.mark.parametrize("kind", DEEP)
@pytest.mark.parametrize("levels", [300, 3_000])
def test_deep_nesting_is_a_400_naming_the_limit(kind: str, levels: int) -> None:
    sql = DEEP[kind](levels)
    message = _refused(sql)
    assert "nested too deeply" in message or "bigger than maximum size" in message, message
    with pytest.raises(WhereError):
        check_where_constructs(sql)


@pytest.mark.parametrize("kind", ["plus chain", "concat chain", "cast chain"])
def test_longest_chain_that_fits_the_size_limit_is_refused_before_pglast(kind: str) -> None:
    """A left-deep chain is not limited by the parser's own stack: ~30,000 levels overflow
    pglast's C stack. The token scan refuses it before pglast sees it."""
    n = 1
    while len(DEEP[kind](n * 2)) <= MAX_WHERE_SIZE:
        n *= 2
    sql = DEEP[kind](n)
    assert len(sql) <= MAX_WHERE_SIZE
    assert "nested too deeply" in _refused(sql)


def test_redundant_parentheses_are_not_nesting() -> None:
    """`((((id = 1))))` parses to `id = 1`: a few hundred parentheses are harmless."""
    where = parse_where("(" * 300 + "id = 1" + ")" * 300, {}, COLUMNS)
    assert where.sql == "id = 1" and where.matches({"id": "1"})


def test_flat_lists_do_not_count_against_the_depth() -> None:
    # (1,200: 12 times the depth limit, and past Python's recursion limit, should anything
    # recurse per item)
    ids = ", ".join(str(i) for i in range(1_200))
    where = parse_where(f"id IN ({ids})", {}, COLUMNS)
    assert where.matches({"id": "1199"}) and not where.matches({"id": "1200"})
    ors = " OR ".join(f"id = {i}" for i in range(1_200))
    assert parse_where(ors, {}, COLUMNS).matches({"id": "1199"})
    ands = " AND ".join(f"id <> {i}" for i in range(1_200))
    assert parse_where(ands, {}, COLUMNS).matches({"id": "-1"})


@pytest.mark.parametrize("kind", DEEP)
def test_nesting_inside_the_limit_works_end_to_end(kind: str) -> None:
    levels = 6 if kind == "nested arrays" else 20  # (Postgres's arrays have at most 6)
    where = parse_where(DEEP[kind](levels), {}, COLUMNS)
    assert parse_where(where.sql, {}, COLUMNS).sql == where.sql  # deparsed SQL parses back
    where.matches({"id": "1", "name": "a"})  # evaluates without raising


def test_arrays_of_more_than_six_dimensions_are_refused_as_in_postgres() -> None:
    """Postgres's MAXDIM: `ARRAY[...]` nested 7 deep fails every query (54000)."""
    assert "exceeds the maximum allowed (6)" in _refused(DEEP["nested arrays"](7))


def test_proxy_depth_limit_fits_inside_the_engine_limit() -> None:
    """The proxy forwards clauses nested up to its own limit (64 nodes), plus what it adds
    around a policy filter: the engine must accept them."""
    from proxy.limits.clause import MAX_DEPTH as PROXY_MAX_DEPTH

    assert PROXY_MAX_DEPTH + 10 < MAX_WHERE_DEPTH


def test_oversized_clause_names_the_size_limit() -> None:
    sql = "id = 1 OR " * (MAX_WHERE_SIZE // 10 + 1) + "id = 2"
    assert _refused(sql) == f"WHERE clause is bigger than maximum size ({MAX_WHERE_SIZE} bytes)"


def test_order_by_is_bounded_too() -> None:
    with pytest.raises(WhereError, match="nested too deeply"):
        parse_order_by("id" + "+1" * 30_000, COLUMNS)


@pytest.mark.parametrize(
    ("sql", "longest"),
    [
        ("id = 1", 3),
        ("a = 1 OR b = 2 OR c = 3", 3),
        ("x IN (1, 2, 3)", 2),
        ("'a + b + c + d' = t", 3),
        ("E'\\' + 1 + 1 + 1' = t", 4),  # an E'' string ends at the second quote
        ("$q$ + + + + $q$ = t", 3),
        ("/* + + + /* + */ + */ t = 1", 3),
        ("t -- + + + +\n = 1", 3),
        ('"a"" + b" = 1', 3),
    ],
)
def test_token_scan_counts_literals_and_comments_as_one_token(sql: str, longest: int) -> None:
    assert longest_token_run(sql) == longest


def test_the_run_never_exceeds_the_text_length_so_short_texts_skip_the_scan() -> None:
    # runs_longer_than skips the scan for texts no longer than the limit: sound only if no
    # text's run exceeds its length (brackets, one-character tokens, nesting, quotes)
    texts = [build(n) for build in DEEP.values() for n in (1, 5, 40)]
    texts += ["(" * 50, "[[[[", "a", "((a,b),(c))", "x'" + "'" * 9, "$a$ $a$ (((", "-- c\n("]
    texts += [
        "".join(random.Random(seed).choices("()[],; ab'\"$-/*\n", k=60)) for seed in range(300)
    ]
    for text in texts:
        run = longest_token_run(text)
        assert run <= len(text), text
        for limit in (0, run - 1, run, len(text) - 1, len(text)):
            assert runs_longer_than(text, limit) == (run > limit), (text, limit)


# --- Electric's error positions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        # libpg_query's cursorpos (1-based) in the statement parsed, `SELECT 1 WHERE <clause>`
        ("1 x 1", 'At location 17: syntax error at or near "x"'),
        ("id = = 1", 'At location 20: syntax error at or near "="'),
        ("é x", 'At location 17: syntax error at or near "x"'),
        ("id = ", "At location 20: syntax error at end of input"),
        ("id = 1; SELECT 1", 'unescaped ";" causing statement split'),
        # semantic errors are relative to the clause (0-based), as Electric's validator does
        ("foo = 1", "At location 0: unknown reference foo"),
        ("id = 1 AND bar", "At location 11: unknown reference bar"),
    ],
)
def test_error_messages_match_electric(sql: str, message: str) -> None:
    assert _refused(sql) == message


def test_strings_no_utf8_can_hold_are_refused() -> None:
    """A lone surrogate (HTTP and JSON decoding never make one; a caller in the process can)
    is refused as Postgres refuses such bytes, not a UnicodeEncodeError out of pglast."""
    for sql, params in [("name = '\ud800'", {}), ("name = $1", {"1": "\udcff"})]:
        with pytest.raises(WhereError, match='invalid byte sequence for encoding "UTF8"'):
            parse_where(sql, params, COLUMNS)
    with pytest.raises(WhereError, match='invalid byte sequence for encoding "UTF8"'):
        check_where_constructs("name = '\ud800'")


def test_a_subset_clause_skips_the_planner_analysis_only_matches_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clause only Postgres evaluates (`live=False`: a subset's) is not analysed for what
    the planner makes of it (conjunct keys, index arms): only `matches` uses that, and it
    deparsed each arm of an OR for its key, a third of a 64 KB OR chain's 0.5 s parse. Same
    SQL; a live clause is analysed as before."""
    from sync_engine.shapes.where import clause

    deparsed: list[object] = []
    real = clause.sql_text  # type: ignore[attr-defined]

    def counted(node: object) -> str:
        deparsed.append(node)
        return real(node)  # type: ignore[arg-type]

    monkeypatch.setattr(clause, "sql_text", counted)
    chain = " OR ".join(f"id = {n}" for n in range(200))
    subset = clause.full_parse(chain, {}, COLUMNS, allow_enums=True, live=False)
    assert deparsed == []
    live = clause.full_parse(chain, {}, COLUMNS)
    assert len(deparsed) >= 200
    assert subset.sql == live.sql

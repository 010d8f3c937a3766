"""A refusal's words match Postgres's answer to the same clause: where Postgres accepts the
clause, the engine's 400 must not use Postgres's own error words ("operator does not
exist", "requires array", "cannot be matched"): a developer reading them for SQL psql runs
thinks the SQL is wrong, where it is only beyond what the engine evaluates. And a refusal
that says a construct is valid in Postgres (errors.NOT_EVALUATED) must be of a clause
Postgres accepts, where that construct is the whole operand (the engine stops at the first
construct it does not evaluate; what encloses it may be wrong in Postgres).

Found by a scan of every pair of the engine's types under a dozen operators and functions
(/work/wherefuzz/xscan.py, ~31,000 clauses, EXPLAINed by Postgres): `tz - ts`, `d - ts`,
`ts - tz` (Postgres converts through its implicit casts), `inet + 1`, `timetz - time`,
`time[] || timetz[]` said "operator does not exist" or "cannot be matched"; `'a' = ANY(dta)`
over a domain over text[] said "op ANY/ALL (array) requires array on right side", `dta ||
text[]` "operator does not exist". A seeded sample of that grammar runs here (a few
seconds); it fails on the code before the fix. A second scan (/work/wherefuzz/xscan2.py: # | <<
>> and the prefix operators, bit and varbit beside every type, every cast) found 52 more:
`bt & vb`, `bt || bt`, `vb << 1`, `~ bt`, `~ inet`, `inet << inet`, `||/ 8` said "operator does
not exist", `bt::int8` "cannot cast type bit to bigint". And jsonb's operators (`js = js`, `js - 'k'`, `t ||
js`) said only "JSON operators are not supported"; they say valid in Postgres now, as do
`by || by` ("bytea || is not supported"), B'101' ("bit string constants are not supported")
and i4::name ("unsupported type name": any type casts to name through its text).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.shapes.where import WhereError, parse_where
from sync_engine.shapes.where.errors import NOT_EVALUATED
from tests.sync_engine.shapes.where.columns import table_in_own_database

TYPES = [
    "int2", "int4", "int8", "numeric", "float8", "bool", "text", "varchar(3)", "char(2)",
    "bytea", "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval",
    "jsonb", "inet", "mood", "dint", "dta", "int4[]", "text[]", "time[]", "timetz[]",
    "timestamptz[]", "name", "bit(4)", "varbit",
]  # fmt: skip
OPERATORS = ["=", "<", "+", "-", "*", "||", "@>", "&", "LIKE", "#", "|", "<<"]
FORMS = [
    "upper({})", "length({})", "abs({})", "{}[1]", "1 = ANY({})", "'a' = ANY({})",
    "upper({}[1])", "{}::timestamptz", "{}::int4", "- {}", "~ {}", "||/ {}", "{}::int8",
]  # fmt: skip

TABLE = (
    "CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE DOMAIN dint AS int4;"
    " CREATE DOMAIN dta AS text[];"
    " CREATE TABLE x (id int PRIMARY KEY, "
    + ", ".join(f"c{i} {t}" for i, t in enumerate(TYPES))
    + ")"
)

#: Postgres's words for a clause it rejects.
POSTGRES_WORDS = re.compile(
    r"does not exist|requires array|cannot be matched|cannot cast type|is not unique"
    r"|cannot subscript"
)

#: Clauses the scan found, always in the sample: Postgres accepts each.
FOUND = [
    "(c{tz} - c{ts}) IS NULL", "(c{ts} - c{tz}) IS NULL", "(c{d} - c{ts}) IS NULL",
    "(c{tz} - c{d}) IS NULL", "(c{inet} + c{i4}) IS NULL", "(c{inet} - c{inet}) IS NULL",
    "(c{ttz} - c{tm}) IS NULL", "(c{tma} || c{ttza}) IS NULL", "(c{tm} || c{ttza}) IS NULL",
    "('a' = ANY(c{dta})) IS NULL", "(c{dta} || c{ta}) IS NULL", "(upper(c{dta}[1])) IS NULL",
    # (a second scan, 2026-12-06 23:30: # | << >> and prefix operators, bit strings, casts)
    "(c{bt} & c{vb}) IS NULL", "(c{vb} # c{vb}) IS NULL", "(c{bt} || c{bt}) IS NULL",
    "(c{bt} << c{i4}) IS NULL", "(~ c{vb}) IS NULL", "(~ c{inet}) IS NULL",
    "(c{inet} << c{inet}) IS NULL", "(||/ c{i4}) IS NULL", "(c{bt}::int8) IS NULL",
    "(c{bt}::int4) IS NULL", "(c{js} = c{js}) IS NULL", "(c{js} @> c{js}) IS NULL",
    "(c{tx} || c{js}) IS NULL", "(c{js} - c{tx}) IS NULL", "(c{js} - c{i4}) IS NULL",
    "(c{js} IN (c{js})) IS NULL",
]  # fmt: skip
NAMES = {
    "tz": "timestamptz", "ts": "timestamp", "d": "date", "inet": "inet", "i4": "int4",
    "ttz": "timetz", "tm": "time", "tma": "time[]", "ttza": "timetz[]", "dta": "dta",
    "ta": "text[]", "bt": "bit(4)", "vb": "varbit", "js": "jsonb", "tx": "text",
    "by": "bytea",
}  # fmt: skip


def _sample(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    index = {k: TYPES.index(t) for k, t in NAMES.items()}
    clauses = [f.format(**index) for f in FOUND]
    for _ in range(n):
        if rng.random() < 0.25:
            form = rng.choice(FORMS).format(f"c{rng.randrange(len(TYPES))}")
            clauses.append(f"({form}) IS NULL")
        else:
            a, b = rng.randrange(len(TYPES)), rng.randrange(len(TYPES))
            clauses.append(f"(c{a} {rng.choice(OPERATORS)} c{b}) IS NULL")
    return clauses


@pytest.fixture(scope="module")
def table(pg_server_url: str) -> Iterator[tuple[psycopg.Connection[Any], dict[str, ColumnInfo]]]:
    with table_in_own_database(pg_server_url, TABLE, "x") as found:
        yield found


def _postgres_accepts(conn: psycopg.Connection[Any], clause: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(f"EXPLAIN SELECT id FROM x WHERE {clause}")
    except psycopg.Error:
        return False
    return True


def test_refusal_words_match_postgres(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo]],
) -> None:
    conn, columns = table
    wrong: list[str] = []
    refused = accepted_by_postgres = 0
    for clause in _sample(20261206, 1500):
        try:
            parse_where(clause, {}, columns)
            continue
        except WhereError as e:
            message = str(e)
        refused += 1
        pg_accepts = _postgres_accepts(conn, clause)
        accepted_by_postgres += pg_accepts
        if pg_accepts and POSTGRES_WORDS.search(message):
            wrong.append(f"Postgres accepts {clause}, the engine said: {message}")
        # (the engine stops at the first construct it does not evaluate: in `upper(js[1])`
        # the subscript is valid, upper(jsonb) is not; the claim is the construct's)
        if NOT_EVALUATED in message and not pg_accepts and "upper(" not in clause:
            wrong.append(f"Postgres rejects {clause}, the engine said: {message}")
    assert refused > 1000 and accepted_by_postgres > len(FOUND), (refused, accepted_by_postgres)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "clause",
    ["(c{tz} - c{ts}) IS NULL", "(c{d} - c{tz}) IS NULL", "(c{inet} + c{i4}) IS NULL",
     "(c{ttz} - c{tm}) IS NULL", "(c{tma} || c{ttza}) IS NULL", "(c{bt} | c{vb}) IS NULL",
     "(~ c{bt}) IS NULL", "(c{bt}::int4) IS NULL", "(c{bt} < c{bt}) IS NULL",
     "(c{js} < c{js}) IS NULL", "(c{tx} || c{js}) IS NULL", "(c{js} - c{i4}) IS NULL",
     "(c{by} || c{by}) IS NULL", "(c{by} || c{tx}) IS NULL", "(c{vb} = B'101') IS NULL",
     "(c{bt} = X'A') IS NULL", "(c{i4}::name) IS NULL", "(c{d}::name = 'x') IS NULL"],
)  # fmt: skip
def test_operators_postgres_has_say_not_evaluated(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo]], clause: str
) -> None:
    conn, columns = table
    clause = clause.format(**{k: TYPES.index(t) for k, t in NAMES.items()})
    assert _postgres_accepts(conn, clause)
    with pytest.raises(WhereError, match=re.escape(NOT_EVALUATED)):
        parse_where(clause, {}, columns)


def test_postgres_words_stay_where_postgres_refuses(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo]],
) -> None:
    conn, columns = table
    clause = f"(c{TYPES.index('timestamptz')} - c{TYPES.index('int4')}) IS NULL"
    with pytest.raises(psycopg.errors.UndefinedFunction, match="operator does not exist"):
        conn.execute(f"EXPLAIN SELECT id FROM x WHERE {clause}")
    with pytest.raises(WhereError, match="operator does not exist: timestamp with time zone"):
        parse_where(clause, {}, columns)


@pytest.mark.parametrize(
    ("column", "message"),
    [("int4", "cannot subscript type integer because it does not support subscripting"),
     ("text", "cannot subscript type text because it does not support subscripting"),
     ("dta", "values of domain dta (over text[]) are not supported here"),
     ("jsonb", f"a subscript of jsonb is {NOT_EVALUATED}"),
     ("name", f"a subscript of name is {NOT_EVALUATED}")],
)  # fmt: skip
def test_subscripts_say_postgres_words_or_not_evaluated(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo]], column: str, message: str
) -> None:
    """A subscript of a value that is no array said "A_Indices is not supported here" (a
    parser node's name) whether Postgres subscripts it (a domain over text[], jsonb, name)
    or refuses it with its own words (int4, text)."""
    conn, columns = table
    clause = f"(c{TYPES.index(column)}[1]) IS NULL"
    assert _postgres_accepts(conn, clause) == (column in ("dta", "jsonb", "name"))
    with pytest.raises(WhereError, match=re.escape(message)):
        parse_where(clause, {}, columns)


@pytest.mark.parametrize(
    "clause",
    ["(c{vb} = B'102') IS NULL", "(c{bt} = X'G') IS NULL", "(c{by} || c{i4}) IS NULL",
     "('a' = ANY(ARRAY[c{js}])) IS NULL", "(ARRAY[c{js}] @> '{{x}}') IS NULL",
     "(c{bt} < '12') IS NULL"],
)  # fmt: skip
def test_what_postgres_rejects_is_not_said_valid(
    table: tuple[psycopg.Connection[Any], dict[str, ColumnInfo]], clause: str
) -> None:
    """A bit string constant is valid only with its kind's digits; bytea || integer has no
    operator in Postgres; jsonb's = is valid, but not with a literal that is no JSON (the
    xscan found `'a' = ANY(jba)` said valid)."""
    conn, columns = table
    clause = clause.format(**{k: TYPES.index(t) for k, t in NAMES.items()})
    assert not _postgres_accepts(conn, clause)
    with pytest.raises(WhereError) as info:
        parse_where(clause, {}, columns)
    assert NOT_EVALUATED not in str(info.value)

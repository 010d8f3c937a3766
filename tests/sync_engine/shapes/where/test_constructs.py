"""`check_where_constructs`: the schema-free check the proxy runs on a policy's filter.

It must refuse, with a message naming the construct, what the engine refuses whatever the
table; and it must never refuse a clause the engine would accept (checked against the
differential test's random clauses on a table with every supported column type).
"""

from __future__ import annotations

import random

import pytest
from pglast import parse_sql
from pglast.stream import RawStream

from proxy.policy.sql import check_client_where
from sync_engine.pg.catalog import ColumnInfo
from sync_engine.shapes.where import WhereError, check_where_constructs, parse_where
from tests.sync_engine.shapes.where.test_differential import COLUMNS as DIFF_COLUMNS
from tests.sync_engine.shapes.where.test_differential import Grammar

C_UTF8 = "c|C.UTF-8|C.UTF-8|t"


def _columns() -> dict[str, ColumnInfo]:
    out = {}
    for attnum, (name, decl) in enumerate(DIFF_COLUMNS, start=1):
        sql_type = decl.split()[0].split("(")[0]
        elem = None
        type_name = {"varchar": "varchar", "char": "bpchar"}.get(sql_type, sql_type)
        if type_name.endswith("[]"):
            elem = type_name[:-2]
            type_name = "_" + elem
        kind = "e" if type_name == "mood" else "b"
        collation = C_UTF8 if (elem or type_name) in ("text", "varchar", "bpchar") else None
        out[name] = ColumnInfo(name, attnum, 0, type_name, elem, kind, -1, 1 if elem else 0,
                               False, 0 if name == "id" else None, False, collation)  # fmt: skip
    return out


@pytest.mark.parametrize(
    "sql",
    [
        "owner = $1",
        "upper(owner) = upper($1)",  # collation-dependent: left to parse_where
        "org_id = ANY($1) AND NOT archived",
        "title ILIKE $1 OR tags @> ARRAY['x']",
        "created > now_col - interval '1 day'",
        "n BETWEEN $1 AND $2 AND (n % 2) = 0",
        "x LIKE 'a!%' ESCAPE '!'",
        "coalesce(a, b, 'z') IN ('a', 'b') AND a IS NOT DISTINCT FROM b",
        "(a::numeric ^ 2) > 1",  # numeric ^ is refused, but only once types are known
    ],
)
def test_accepted(sql: str) -> None:
    check_where_constructs(sql)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("owner IN (SELECT owner FROM admins)", "subquery"),
        ("a IS DOCUMENT", "XML expression"),
        ("a ~ '^x'", "operator ~"),
        ("a #> '{k}' IS NULL", "JSON operator #>"),
        ("a ~ 'v'", "regular expression operator ~ is not supported"),
        ("md5(a) = 'x'", "md5/1"),
        ("ilike(a, 'x%')", "ilike/2"),
        ("now() > a", "now()"),
        ("count(*) > 1", "aggregate"),
        ("a::numeric(0) = 1", "NUMERIC precision 0 must be between 1 and 1000"),
        ("a::char(0) = 'x'", "length for type char must be at least 1"),
        ("a::json IS NULL", "unsupported type json"),
        ("a COLLATE \"C\" = 'x'", "COLLATE"),
        ("t.a = 1", "unknown reference t.a"),
        ("a = 1 x 1", "syntax error"),
        ("NOT " * 200 + "true", "nested too deeply"),
        ("a = 1; DROP TABLE t", 'unescaped ";"'),
    ],
)
def test_refused_naming_the_construct(sql: str, named: str) -> None:
    with pytest.raises(WhereError) as info:
        check_where_constructs(sql)
    assert named in str(info.value)


def test_never_refuses_what_the_engine_accepts() -> None:
    columns = _columns()
    grammar = Grammar(random.Random(7))
    accepted = 0
    for _ in range(1_500):
        sql = grammar.bool_(grammar.rng.choice([1, 2, 3]))
        try:
            parse_where(sql, {}, columns)
        except WhereError:
            continue
        accepted += 1
        check_where_constructs(sql)  # must not raise
    assert accepted > 500


#: IS [NOT] TRUE / NULL over what binds as loosely as IS: pglast wrote them without the
#: parentheses, another clause (`(NOT b) IS NULL` came out `NOT b IS NULL`, which is
#: NOT (b IS NULL)); the engine refused them, and the proxy, which deparses a client's
#: where with the same printer, forwarded the other clause.
IS_OVER_LOOSER = [
    "(NOT b) IS NULL",
    "(a AND b) IS NULL",
    "(b IS DISTINCT FROM true) IS NOT TRUE",
    "(a IS NOT DISTINCT FROM b) IS NULL",
    "(a IS NULL) IS NOT TRUE",
    "(b IS TRUE) IS NULL",
]


@pytest.mark.parametrize("clause", IS_OVER_LOOSER)
def test_is_over_a_looser_operator_is_written_back_with_its_parentheses(clause: str) -> None:
    def tree(sql: str) -> object:
        return parse_sql("SELECT 1 WHERE " + sql)[0].stmt.whereClause

    original = tree(clause)
    assert tree(RawStream()(original)) == original  # (the printer the proxy uses)
    assert tree(check_client_where(clause, None, what="where").sql) == original
    check_where_constructs(clause)  # (was "cannot be written back as SQL")

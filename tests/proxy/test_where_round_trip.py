"""The proxy forwards a client's where as pglast prints it back, so a printer that drops
parentheses Postgres needs sends another clause: `(NOT b) IS NULL` printed as
`NOT b IS NULL` (where, 2026-12-05, c2f430d: fixed in the printer). Every clause the proxy
prints is now parsed back and compared with what the client sent; one that does not come
back the same is a 400, never another clause. Here pglast's own NullTest printer (the one
that dropped them) is put back for the test: the check must catch it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pglast import ast, parse_sql
from pglast.printers import NODE_PRINTERS
from pglast.printers.dml import null_test

from proxy.errors import BadShapeRequest
from proxy.policy.sql import check_client_where, shift_template


def _tree(text: str) -> ast.Node:
    return parse_sql("SELECT 1 WHERE " + text)[0].stmt.whereClause


@pytest.fixture
def pglast_null_test_printer() -> Iterator[None]:
    ours = NODE_PRINTERS[ast.NullTest]
    NODE_PRINTERS[ast.NullTest] = null_test
    try:
        yield
    finally:
        NODE_PRINTERS[ast.NullTest] = ours


def test_clauses_come_back_as_sent() -> None:
    for text in ("(NOT b) IS NULL", "(a AND b) IS NOT NULL", "x = $1 OR y IN (1, 2)"):
        clause = check_client_where(text, None, param_offset=2, what="where")
        shifted = _tree(text)  # (what the client sent, its $n moved past the policy's two)
        for ref in (n for n in _walk(shifted) if isinstance(n, ast.ParamRef)):
            ref.number += 2
        assert _tree(clause.sql) == shifted


def test_a_printer_that_drops_parentheses_is_refused_not_forwarded(
    pglast_null_test_printer: None,
) -> None:
    with pytest.raises(BadShapeRequest) as refused:
        check_client_where("(NOT b) IS NULL", None, what="where")
    assert refused.value.reason == "invalid_where"
    assert "written back" in str(refused.value)
    # (the policy's own filter, its $n moved for the client's: refused too, never altered)
    with pytest.raises(BadShapeRequest):
        shift_template("(NOT archived) IS NULL AND owner = $1", 1)
    # What needs no parentheses still passes.
    assert check_client_where("b IS NULL", None, what="where").sql == "b IS NULL"


def _walk(node: object) -> Iterator[object]:
    if isinstance(node, ast.Node):
        yield node
        for member in node:
            yield from _walk(getattr(node, member))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)

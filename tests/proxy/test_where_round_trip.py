"""The proxy forwards a client's where as pglast prints it back, so a printer that drops
parentheses Postgres needs sends another clause: `(NOT b) IS NULL` printed as
`NOT b IS NULL` (where, 2026-12-05, c2f430d: fixed in the printer). Every clause the proxy
prints is now parsed back and compared with what the client sent; one that does not come
back the same is a 400, never another clause. Here pglast's own NullTest printer (the one
that dropped them) is put back for the test: the check must catch it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pglast import ast, parse_sql
from pglast.printers import NODE_PRINTERS
from pglast.printers.dml import null_test

from proxy.config.loader import ConfigError, load_config
from proxy.errors import BadShapeRequest
from proxy.policy.sql import check_client_where, compile_template, shift_template


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


#: A policy filter whose claim is bound both into a LIKE pattern (escaped) and elsewhere: the
#: claim gets a second `$n` and the proxy forwards the filter as pglast prints it.
RENUMBERED = "(NOT archived) IS NULL AND (email LIKE {{sub}} OR owner = {{sub}})"


def test_policy_filters_come_back_as_written() -> None:
    compiled = compile_template(RENUMBERED)
    assert compiled.claim_paths == ("sub", "sub")
    assert _tree(compiled.sql) == _tree("(NOT archived) IS NULL AND (email LIKE $1 OR owner = $2)")


def test_a_policy_filter_the_printer_alters_is_a_config_error_at_load(
    pglast_null_test_printer: None,
) -> None:
    # Before: this loaded as `NOT archived IS NULL AND ...` (NOT (archived IS NULL)), another
    # filter than the author's, enforced on every request of the rule.
    with pytest.raises(ValueError, match=r"'NOT archived IS NULL'.*written back"):
        compile_template(RENUMBERED)
    # (no claim renumbered: the proxy forwards it reprinted after a client's own params)
    with pytest.raises(ValueError, match="written back"):
        compile_template("(NOT archived) IS NULL AND owner = {{sub}}")
    assert compile_template("archived IS NULL AND owner = {{sub}}").sql == (
        "archived IS NULL AND owner = $1"
    )


async def test_a_reload_with_such_a_filter_keeps_the_last_good_policy(
    pglast_null_test_printer: None,
    tmp_path: Path,
    config_data: dict[str, Any],
    environ: dict[str, str],
    make_proxy: Any,
) -> None:
    path = tmp_path / "proxy.yaml"
    config_data["server"] = {"reload_interval": 0.05}
    _write_yaml(path, config_data)
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    token = proxy.tokens.make(role="member", org_id=7)
    shape = "/v1/shape?table=items&offset=-1"
    assert (await proxy.get(shape, token=token)).status == 200
    assert proxy.engine.requests[-1].url.query["where"] == "org_id = $1"

    rules = config_data["tables"]["items"]["allow"]
    rules[1]["where"] = "(NOT archived) IS NULL AND (title LIKE {{org_id}} OR org_id = {{org_id}})"
    _write_yaml(path, config_data)
    with pytest.raises(ConfigError, match=r"allow\.1 \(rule 'member'\)\.where: .*written back"):
        load_config(path, environ)
    for _ in range(100):
        error = (await proxy.get("/healthz")).json()["config_error"]
        if error is not None:
            break
        await asyncio.sleep(0.05)
    assert "rule 'member'" in error and "NOT archived IS NULL" in error
    assert (await proxy.get(shape, token=token)).status == 200
    assert proxy.engine.requests[-1].url.query["where"] == "org_id = $1"  # the old filter


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


def _walk(node: object) -> Iterator[object]:
    if isinstance(node, ast.Node):
        yield node
        for member in node:
            yield from _walk(getattr(node, member))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)

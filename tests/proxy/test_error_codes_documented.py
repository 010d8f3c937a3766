"""docs/proxy-errors.md lists every `code` the proxy can answer: a page branches on them in
its `onError`, so a code added in the source and missing there is a code nobody can rely on.

The codes are read from the source as the proxy raises them: the first argument of every
call of a `ProxyError` subclass (except the two that answer in the engine's words, with no
`code`), and the token checks' table of PyJWT exceptions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "proxy-errors.md"
#: Answered in the engine's own words, with no `code` (`proxy.errors.EngineWords`).
NO_CODE = {"EngineWords", "EngineRefusal", "_invalid"}


def _error_classes(trees: list[ast.Module]) -> set[str]:
    """`ProxyError` and every class deriving from it, however deep."""
    classes = {"ProxyError"}
    grew = True
    while grew:
        grew = False
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in classes:
                    bases = {
                        b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                        for b in node.bases
                    }
                    if bases & classes:
                        classes.add(node.name)
                        grew = True
    return classes


def _codes() -> set[str]:
    sources = sorted((ROOT / "proxy").rglob("*.py"))
    trees = [ast.parse(path.read_text()) for path in sources]
    classes = _error_classes(trees) - NO_CODE
    codes: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if name in classes and isinstance(first, ast.Constant) and isinstance(first.value, str):
                codes.add(first.value)
    claims = (ROOT / "proxy" / "auth" / "claims.py").read_text()
    codes |= set(re.findall(r'\(\s*jwt\.\w+,\s*"([a-z_]+)"', claims))
    return codes


def test_the_scan_finds_the_codes_it_should() -> None:
    """(the scan itself: a known code of each kind is found, so the check below can fail)"""
    codes = _codes()
    assert {"token_expired", "no_matching_rule", "too_many_held_requests", "upstream_busy"} <= codes
    assert "missing_handle" not in codes  # (the engine's words: no code)


def test_every_code_the_proxy_answers_is_documented() -> None:
    page = DOC.read_text()
    missing = sorted(code for code in _codes() if f"`{code}`" not in page)
    assert missing == [], (
        f"codes the proxy answers that docs/proxy-errors.md does not list: {missing}"
    )

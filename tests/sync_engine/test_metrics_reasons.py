"""Every reason the engine retires a shape for has its own `reason` label in
`sync_engine_shapes_retired_total` (`metrics.retire_kind`), not `other`.

The reasons are free text (they name tables and errors), so the label is found from a part of
the text: a reason added or reworded in the engine without a matching part would count as
`other` and an operator would lose why. This reads the engine's source for the reasons it
passes to the registry's retirements and checks each.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sync_engine.metrics import RETIRE_KINDS, retire_kind

ENGINE = Path(__file__).resolve().parents[2] / "sync_engine"
#: Calls that retire shapes with a reason given as text (`ShapeRegistry`, `Source`, `Tables`).
RETIRING = {"rotate", "rotate_table", "rotate_all", "retire_all", "evict", "delete", "changed"}


def _text(node: ast.expr) -> str | None:
    """The text of a string literal, or of an f-string's literal parts (joined)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


def engine_reasons() -> dict[str, str]:
    """Each literal reason given to a retiring call (and each of `tables._drift`'s), with
    where it is."""
    found: dict[str, str] = {}
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            texts: list[ast.expr] = []
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in RETIRING:
                    texts += node.args
                    texts += [k.value for k in node.keywords if k.arg == "reason"]
            elif isinstance(node, ast.FunctionDef) and node.name == "_drift":
                texts += [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value]
            for expr in texts:
                text = _text(expr)
                if text:
                    found[text] = f"{path.relative_to(ENGINE.parent)}:{expr.lineno}"
    return found


def test_every_retirement_reason_in_the_engine_has_a_label() -> None:
    reasons = engine_reasons()
    # (the ones this list was written from: the scan finds them)
    assert "table truncated" in reasons and "deleted through the API" in reasons
    assert "table dropped or renamed" in reasons and len(reasons) >= 20
    unlabelled = {text: where for text, where in reasons.items() if retire_kind(text) == "other"}
    assert not unlabelled, f"add them to metrics.RETIRE_KINDS: {unlabelled}"


def test_labels_are_few_and_prometheus_safe() -> None:
    kinds = {kind for _, kind in RETIRE_KINDS} | {"other", "damaged"}
    assert len(kinds) <= 25
    assert all(k.replace("_", "").isalpha() and k.islower() for k in kinds)
    assert retire_kind('a change of "public"."t" came without its old row') == "old_row_missing"
    assert retire_kind("snapshot failed: permission denied for table t") == "snapshot_failed"

"""The proxy's modules import one another top to bottom: no import circle, `proxy.app` (the
composition root) imported by nothing but the entry point, the upstream layer importing
nothing of the HTTP layer above it but the message types both speak (`proxy.http.wire`).

Imports are read as text (`ast`), those under `TYPE_CHECKING` and inside functions included:
a reader follows them too. Five modules (app, http.fastlane, http.handlers, http.protocol,
upstream.forward) formed one circle before the shared constants moved to
`proxy.connection_terms` and the lower layers were typed against Protocols (`App`,
`LaneApp`, `ServedApp`) instead of `ProxyApp`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import proxy

_ROOT = Path(proxy.__file__).resolve().parent
#: What the upstream layer may take from `proxy.http`: the request and response types.
_UPSTREAM_MAY_IMPORT = frozenset({"proxy.http.wire", "proxy.http.context"})


def _modules() -> dict[str, Path]:
    found = {}
    for path in _ROOT.rglob("*.py"):
        parts = ("proxy", *path.relative_to(_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports() -> dict[str, set[str]]:
    """module -> the proxy modules it imports (a name from a package: the package)."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else node.module
                    if target in modules:
                        edges[name].add(target)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_proxy_modules_form_no_import_circle() -> None:
    assert _cycles(_imports()) == []


def test_only_the_entry_point_imports_the_app() -> None:
    importers = sorted(name for name, targets in _imports().items() if "proxy.app" in targets)
    assert importers == ["proxy.__main__"]


def test_the_upstream_layer_takes_only_the_message_types_from_http() -> None:
    taken = {
        (name, target)
        for name, targets in _imports().items()
        if name.startswith("proxy.upstream")
        for target in targets
        if target.startswith("proxy.http") and target not in _UPSTREAM_MAY_IMPORT
    }
    assert taken == set()

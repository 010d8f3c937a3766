"""docs/policy-reference.md lists every key of the config file as the loader reads it.

The docs listed no keys (newuser, 2026-12-07, MEDIUM): `client_where` and its default
`forbid`, `subset`, `sse`, `replica_full`, `delete`, the issuer's key options were only in
`proxy/config/model.py`. The reference's tables are made from that model
(`proxy.config.reference`); here the file must hold exactly that output, every key must have a
meaning written, and the minimal file the page shows must load. Fails on 2d806b48 (no such
page, keys without a description).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from proxy.config.loader import load_config
from proxy.config.reference import SECTIONS, render, undocumented

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "policy-reference.md"
BLOCK = re.compile(r"<!-- reference:[^\n]*-->\n(.*)<!-- /reference -->", re.S)


def test_the_reference_page_holds_the_models_tables() -> None:
    found = BLOCK.search(DOC.read_text())
    assert found is not None, "docs/policy-reference.md has no generated block"
    assert found.group(1) == render(), (
        "docs/policy-reference.md is stale: regenerate its block with "
        "`python -m proxy.config.reference`"
    )


def test_every_key_has_a_meaning() -> None:
    assert undocumented() == []


def test_every_section_of_the_model_is_on_the_page() -> None:
    """A new section (a sub-model no heading lists) would go undocumented: each model a key
    of a listed section holds is listed itself."""
    listed = {model for _, model in SECTIONS}
    for _, model in SECTIONS:
        for field in model.model_fields.values():
            for inner in _models(field.annotation):
                assert inner in listed, f"{model.__name__} holds {inner.__name__}: add a section"


def _models(annotation: object) -> list[type]:
    out: list[type] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    for arg in get_args(annotation):
        out += _models(arg)
    return out


def test_the_pages_minimal_file_loads(tmp_path: Path) -> None:
    text = DOC.read_text()
    found = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert found is not None
    path = tmp_path / "proxy.yaml"
    path.write_text(found.group(1))
    loaded = load_config(path, {"ENGINE_SECRET": "e" * 32})
    assert loaded.policy.tables

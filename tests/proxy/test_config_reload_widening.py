"""A reload that widens what a rule admits is said at WARNING (attack 15:06's follow-up).

A half-written file is no longer loaded (test_config_reload_partial_real.py), but a writer
that pauses longer than `server.reload_interval`, or a wrong file renamed in, still can be:
the log names each rule that now shows more columns, no longer filters rows, requires fewer
claims or allows more, so the operator sees a widening they did not mean. Narrowing and
unrelated changes say nothing.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import build_config, load_config
from proxy.runtime import widened
from tests.support.waiting import wait_until_async


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)


def test_each_widening_of_a_named_rule_is_named(
    config_data: dict[str, Any], environ: dict[str, str]
) -> None:
    old = build_config(config_data, environ).config
    data = copy.deepcopy(config_data)
    member = data["tables"]["items"]["allow"][1]
    del member["columns"]
    member["when"] = {}
    member["sse"] = True
    member["replica_full"] = True
    data["tables"]["items"]["deny"] = []
    new = build_config(data, environ).config
    assert widened(old, new) == [
        "tables.items: a deny rule was removed",
        "tables.items rule 'member' shows every column (was id, org_id, title)",
        "tables.items rule 'member' no longer requires the claims role",
        "tables.items rule 'member' now allows replica_full",
        # (the named shape on items carries the table's deny too: its removal widens it)
        "shapes.my-items: a deny rule was removed",
    ]
    assert widened(new, old) == []  # (the other way narrows)
    assert widened(old, old) == []


async def test_a_widening_reload_is_logged_at_warning(
    tmp_path: Path,
    config_data: dict[str, Any],
    environ: dict[str, str],
    make_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "proxy.yaml"
    config_data["server"] = {"reload_interval": 0.05}
    _write(path, config_data)
    proxy = await make_proxy(load_config(path, environ), config_path=path, environ=environ)
    reloads = proxy.app.holder._metrics.config_reloads.labels(result="ok")
    caplog.set_level(logging.WARNING, logger="proxy.runtime")

    config_data["tables"]["items"]["allow"][1]["columns"] = ["id", "title"]  # narrower
    _write(path, config_data)
    await wait_until_async(lambda: reloads._value.get() == 1, message="first reload")
    assert not [r for r in caplog.records if "widens" in r.getMessage()]

    config_data["tables"]["items"]["allow"][1]["columns"] = ["id", "title", "org_id", "secret"]
    _write(path, config_data)
    await wait_until_async(lambda: reloads._value.get() == 2, message="second reload")
    said = [r for r in caplog.records if "widens" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "rule 'member' shows more columns: org_id, secret" in said[0].getMessage()

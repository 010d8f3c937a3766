"""Mistakes in the operator's YAML fail closed (config probe, 2026-12-07).

Each of these loaded silently, wider than written, or broke the proxy:

- `<<: [*a, *b]`: PyYAML 6.0.x dedups merged keys by `id()`, so for every real key
  (`columns`, `where`, `name`) the LAST mapping won, against YAML's rule (the first wins):
  a rule showed the columns of the mapping the operator put second. Now a key given by two
  mappings of one merge is refused (which one was meant is easy to misread), unless the
  mapping itself sets it.
- YAML 1.1 numbers: `zip: 01234` (octal: 668), `shift: 12:30` (base 60: 750), `1_000`: a
  deny rule compared the claim with a number the operator did not write and never fired.
  Now refused anywhere in the file, "quote it".
- `columns:` left empty (null; an unset variable after envsubst) showed every column. Now
  refused ("list the columns, or remove the key").
- Nesting thousands of levels deep: a RecursionError escaped the loader (a traceback at start;
  on reload an asyncio traceback and /healthz said all was well). Now a ConfigError naming
  the line.
- The config path a FIFO: the proxy blocked in open() for good at start. Now refused (not a
  regular file). (The reload side reads the file in `proxy.runtime`: bugs-for-proxy.md.)

Real path: a proxy run from a config file in front of a real `sync-engine` and Postgres; the
bad file written over the good one and reloaded: refused, the last good config still serves
(the narrow columns), /healthz and `shape_proxy_config_reloads{result="error"}` say so. At
start: `python -m proxy --config bad.yaml` exits 2 with the file, line and fix, no traceback.
On the old code every reload case loaded (or raised) and every start case started, hung or
printed a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parents[2]
SHAPE = "/v1/shape?table=items&offset=-1"
NARROW = {"id", "org_id", "title"}

#: A rule and what the error must say, appended to the good file's head (no `tables:`).
BAD = {
    "merge_sequence_later_wins": (
        "tables:\n"
        "  other.items:\n"
        "    allow:\n"
        "      - &tenant {name: member, where: 'org_id = {{org_id}}', columns: [id, org_id, title]}\n"
        "  items:\n"
        "    allow:\n"
        "      - <<: [*tenant, {name: defaults, client_where: validated,"
        " columns: [id, org_id, title, secret]}]\n",
        r"line \d+, column \d+: the key 'name' is given by more than one of the mappings merged",
    ),
    "octal_in_deny": (
        "tables:\n"
        "  items:\n"
        "    deny:\n"
        "      - when: {zip: 01234}\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]\n",
        r"line \d+, column \d+: 01234 is 668 in YAML 1\.1 but 1234 in YAML 1\.2: quote it",
    ),
    "base60_in_deny": (
        "tables:\n"
        "  items:\n"
        "    deny:\n"
        "      - when: {shift: 12:30}\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]\n",
        r"12:30 is a number only in YAML 1\.1 \(750; YAML 1\.2 reads the text\): quote it",
    ),
    "columns_null": (
        "tables:\n  items:\n    allow:\n      - where: 'org_id = {{org_id}}'\n        columns:\n",
        r"tables\.items\.allow\.0\.columns \(line @5\): .*empty.*list the columns.*remove the key",
    ),
    "dash_comment_in_folded_where": (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        "      - where: >\n"
        "          org_id = {{org_id}}   -- the caller's organisation\n"
        "          AND title <> 'a1'     -- never the draft row\n"
        "        columns: [id, org_id, title]\n",
        r"tables\.items\.allow\.0\.where \(line @4\): Value error, a `--` comment runs to the "
        r"end of the filter once YAML folds its lines",
    ),
    "yaml_escape_in_where": (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        "      - where: \"org_id = {{org_id}} AND title NOT LIKE 'tmp\\_%'\"\n"
        "        columns: [id, org_id, title]\n",
        r"allow\.0\.where \(line @4\): Value error, holds an invisible character U\+00A0 "
        r"\(NO-BREAK SPACE\).*single quotes or a `\|` block",
    ),
    "invisible_claim_name_in_deny": (
        "tables:\n"
        "  items:\n"
        "    deny:\n"
        "      - when: {account_status\u200b: suspended}\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]\n",
        r"deny\.0\.when \(line @4\): Value error, 'account_status\\u200b': the claim name "
        r"holds an invisible character U\+200B \(ZERO WIDTH SPACE\): retype it",
    ),
    "alias_expansion": (
        "tables:\n"
        "  t0: {allow: &rules [&r0 {when: {role: r0}, where: 'org_id = {{org_id}}',"
        " columns: [id, org_id]}"
        + ", *r0" * 39
        + "]}\n"
        + "".join(f"  t{i}: {{allow: *rules}}\n" for i in range(1, 40))
        + "  items: {allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]}\n",
        r"invalid YAML: aliases \(\*name\) expand this file to [\d,]+ nodes from [\d,]+ written",
    ),
    # (this session's refusals, each also at a reload: the last good config serves)
    "envsubst_empty_item": (
        "tables:\n"
        "  items:\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title, ]}]\n",
        r"line @3, column \d+: tables\.items\.allow\.0\.columns: a comma with nothing after it",
    ),
    "unexpanded_variable": (
        "tables:\n"
        "  items:\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]\n"
        "    deny:\n"
        "      - when:\n"
        "          account_status: ${BANNED}\n",
        r"line @6, column \d+: tables\.items\.deny\.0\.when\.account_status: holds \$\{BANNED\}",
    ),
    "next_line_in_comment": (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        "      # - {all_rows: true} (removed)\u0085      - {all_rows: true}\n"
        "      - {where: 'org_id = {{org_id}}', columns: [id, org_id, title]}\n",
        r"line @4, column \d+: a U\+0085 \(NEXT LINE\) character",
    ),
    "binary_filter": (
        "tables:\n"
        "  items:\n"
        "    allow: [{where: !!binary b3JnX2lkID0ge3tvcmdfaWR9fSBPUiB0cnVl,"
        " columns: [id, org_id, title]}]\n",
        r"line @3, column \d+: !!binary is a YAML 1\.1 type",
    ),
    "deep_nesting": (
        "tables:\n"
        "  items:\n"
        "    allow: [{where: 'org_id = {{org_id}}', columns: [id, org_id, title]}]\n"
        "extra: " + "[" * 5000 + "]" * 5000 + "\n",
        r"line @4, column \d+: nested too deeply: more than \d+ levels",
    ),
}


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, secret text)",
        "INSERT INTO items VALUES (1, 'org-a', 'a1', 's1'), (2, 'org-b', 'b1', 's2')",
    )


def _head(engine: EngineProcess, idp_server: Any) -> str:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    del config["tables"], config["shapes"]
    config["upstream"].update(first_byte_timeout=10)
    return yaml.safe_dump(config)


def _good(engine: EngineProcess, idp_server: Any) -> dict[str, Any]:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    del config["shapes"]
    config["upstream"].update(first_byte_timeout=10)
    config["tables"] = {
        "items": {
            "allow": [{"name": "member", "where": "org_id = {{org_id}}", "columns": sorted(NARROW)}]
        }
    }
    return config


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_bad_file_on_reload_is_refused_and_the_last_good_config_serves(
    case: str, engine: EngineProcess, idp_server: Any, reloadable_proxy: Any
) -> None:
    proxy = await reloadable_proxy(_good(engine, idp_server))
    token = proxy.tokens.make(org_id="org-a", zip="01234", shift="12:30")
    reply = await proxy.get(SHAPE, token=token)
    assert reply.status == 200, reply.body
    assert set(json.loads(reply.headers["electric-schema"])) == NARROW

    text, message = BAD[case]
    lines = _head(engine, idp_server) + text
    written = proxy.path.with_suffix(".next")
    written.write_text(lines)
    os.replace(written, proxy.path)
    holder = proxy.app.holder
    assert holder.reload() is False
    assert holder.last_error is not None
    assert str(proxy.path) in holder.last_error
    offset = _head(engine, idp_server).count("\n")
    shifted = re.sub(r"@(\d+)", lambda m: str(int(m[1]) + offset), message)
    assert re.search(shifted, holder.last_error), holder.last_error
    health = (await proxy.get("/healthz")).json()
    assert health["config_error"] == holder.last_error
    errors = holder._metrics.config_reloads.labels(result="error")._value.get()
    assert errors == 1

    reply = await proxy.get(SHAPE, token=token)
    assert reply.status == 200, reply.body
    assert set(json.loads(reply.headers["electric-schema"])) == NARROW
    assert b"s1" not in reply.body


def _start(path: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(path), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "ENGINE_SECRET": "e" * 32, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "case",
    [
        "deep_nesting",
        "merge_sequence_later_wins",
        "octal_in_deny",
        "envsubst_empty_item",
        "unexpanded_variable",
        "next_line_in_comment",
    ],
)
def test_a_bad_file_at_start_exits_with_where_and_what_no_traceback(
    case: str, tmp_path: Path
) -> None:
    head = yaml.safe_dump(
        {k: v for k, v in base_config("http://127.0.0.1:9", "http://127.0.0.1:9/j").items()
         if k not in ("tables", "shapes")}
    )  # fmt: skip
    path = tmp_path / "proxy.yaml"
    text, message = BAD[case]
    path.write_text(head + text)
    done = _start(path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert str(path) in done.stderr
    assert len(done.stderr.splitlines()) < 5, done.stderr[-2000:]
    assert re.search(re.sub(r"@\d+", r"\\d+", message), done.stderr), done.stderr


def test_a_fifo_as_the_config_file_is_refused_at_start_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    os.mkfifo(path)
    try:
        done = _start(path, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the proxy blocked opening the FIFO")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "not a regular file" in done.stderr
    assert "Traceback" not in done.stderr

"""A flow list item an envsubst left empty is a load error naming the key, not a dropped value.

The policy file kept as a template and filled in by `envsubst` at deploy (as the nginx and
compose recipes do): `deny: [{when: {account_status: [suspended, ${BANNED}]}}]` with
`BANNED` unset became `[suspended, ]`, which YAML reads as a trailing comma: the list
`[suspended]`. The file loaded, and a banned account was served (config probe, 2026-12-07).
Now a comma with nothing after it (or before it: `[${A}, b]`) in a flow list or mapping is a
load error naming the key path and its line; at a reload the last good policy stays.

Real path: the template through the real `envsubst` (a `re.sub` of `${NAME}` where it is not
installed, the same substitution), the file loaded by `load_config`, the proxy from it in
front of a real `sync-engine` and Postgres. On the old code the unset file loaded and the
banned token got its 200.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from proxy.config.loader import ConfigError
from tests.support.engine_process import EngineProcess

SHAPE = "/v1/shape?table=items&offset=-1"

RULES = (
    "tables:\n"
    "  items:\n"
    "    deny:\n"
    "      - when: {account_status: [suspended, ${BANNED}]}\n"
    "    allow: [{all_rows: true}]\n"
)


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        "INSERT INTO items VALUES (1, 'one')",
    )


def _envsubst(template: str, env: dict[str, str]) -> str:
    """`template` as `envsubst` fills it in: every `${NAME}`, an unset one as nothing."""
    tool = shutil.which("envsubst")
    if tool is None:
        return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), template)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    done = subprocess.run(
        [tool], input=template, env={**keep, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout


async def test_an_unset_variable_in_a_flow_list_fails_the_load_naming_the_key(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    template = proxy_from_yaml.head(engine.url) + RULES
    line = template.count("\n") - 1  # (the `- when:` line)
    unset = _envsubst(template, {})
    assert "[suspended, ]" in unset  # (what the operator's deploy produced)
    with pytest.raises(ConfigError) as err:
        proxy_from_yaml.load(unset, name="unset")
    said = str(err.value)
    assert f"at line {line}, column" in said, said
    assert "tables.items.deny.0.when.account_status: a comma with nothing after it" in said, said
    assert "give the value, or remove the comma" in said, said

    # set, the same template serves as written: the banned account refused, others served
    proxy = await proxy_from_yaml(_envsubst(template, {"BANNED": "banned"}))
    for status, want in (("banned", 403), ("suspended", 403), ("active", 200)):
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(account_status=status))
        assert reply.status == want, (status, reply.status, reply.body)

    # the unset file written over it at a reload: refused, the deny still holds
    written = proxy.path.with_suffix(".next")
    written.write_text(unset)
    os.replace(written, proxy.path)
    holder = proxy.app.holder
    assert holder.reload() is False
    assert holder.last_error is not None and "deny.0.when.account_status" in holder.last_error
    reply = await proxy.get(SHAPE, token=proxy.tokens.make(account_status="banned"))
    assert reply.status == 403, reply.body


@pytest.mark.parametrize(
    ("rules", "key", "what"),
    [
        ("{account_status: [${BANNED}, suspended]}", "deny.0.when.account_status", "before it"),
        ("{account_status: [suspended, ${A}, ${B}]}", "deny.0.when.account_status", "before it"),
        ("{account_status: suspended, ${EXTRA}}", "deny.0.when", "after it before '}'"),
    ],
)
def test_other_items_left_empty_are_load_errors(
    proxy_from_yaml: Any, rules: str, key: str, what: str
) -> None:
    template = proxy_from_yaml.head("http://127.0.0.1:9") + RULES.replace(
        "{account_status: [suspended, ${BANNED}]}", rules
    )
    with pytest.raises(ConfigError, match=rf"tables\.items\.{re.escape(key)}: a comma with "
                       rf"nothing {re.escape(what)}"):  # fmt: skip
        proxy_from_yaml.load(_envsubst(template, {}))


async def test_a_file_deployed_without_its_envsubst_fails_the_load(
    engine: EngineProcess, proxy_from_yaml: Any
) -> None:
    """The template loaded as it was (the deploy's envsubst step skipped): `${BANNED}` was the
    text of a deny condition no token has, and on the old code the banned account was served
    (200). Now any `${NAME}` left in the file is a load error naming the key and line."""
    block = RULES.replace(
        "      - when: {account_status: [suspended, ${BANNED}]}\n",
        "      - when:\n          account_status: ${BANNED}\n",
    )
    text = proxy_from_yaml.head(engine.url) + block
    line = text.count("\n") - 1  # (the `account_status:` line)
    try:
        proxy = await proxy_from_yaml(text)
    except ConfigError as exc:
        said = str(exc)
        assert f"at line {line}, column" in said, said
        assert "tables.items.deny.0.when.account_status: holds ${BANNED}" in said, said
        assert "envsubst" in said, said
    else:
        reply = await proxy.get(SHAPE, token=proxy.tokens.make(account_status="banned"))
        assert reply.status == 403, reply.body  # (the old code: 200)
        pytest.fail("loaded")
    for value in ('"${BANNED}"', "[suspended, '${BANNED:-banned}']"):
        with pytest.raises(ConfigError, match=r"holds \$\{BANNED\}, a variable reference"):
            proxy_from_yaml.load(text.replace("${BANNED}", value, 1))

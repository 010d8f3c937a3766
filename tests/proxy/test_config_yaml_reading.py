"""How the loader reads YAML the operator may mean two ways (config probe, 2026-12-07): merge
sequences, numbers YAML 1.1 and 1.2 read differently, `columns:` left empty, deep nesting, a
FIFO at the config path. Each is refused at load with the line or key path and what to write
instead; what is unambiguous still loads. The real-path tests (a proxy in front of a real
engine, reload and start) are in `test_config_yaml_fail_closed_real.py`."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.loader import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    ConfigError,
    build_config,
    load_config,
    parse_yaml,
    read_config_file,
)
from proxy.config.model import AccessRule, CorsConfig, DenyRule, IssuerConfig, UpstreamConfig
from tests.proxy.proxy_fakes import base_config

ENV = {"ENGINE_SECRET": "e" * 32}


def _head() -> str:
    config = base_config("http://127.0.0.1:3000", "https://idp.example/jwks.json")
    del config["tables"], config["shapes"]
    return yaml.safe_dump(config)


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "proxy.yaml"
    path.write_text(_head() + text)
    return load_config(path, ENV)


def _line(text: str, needle: str) -> int:
    """The line of `needle` in the file `_load` writes for `text`."""
    full = _head() + text
    return full[: full.index(needle)].count("\n") + 1


# -- merges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # YAML: the mapping's own keys win over merged ones; merged keys follow.
        ("x: &x {k: 1, j: 2}\na: {<<: *x, k: 3}\n", {"k": 3, "j": 2}),
        # A merge sequence whose mappings share no key: each one's keys.
        ("a: {<<: [{k: 1}, {j: 2}]}\n", {"k": 1, "j": 2}),
        # A key two of them give but the mapping sets itself: the mapping's.
        ("a: {<<: [{name: x}, {name: y}], name: z}\n", {"name": "z"}),
        # Merged mappings that merge themselves.
        ("a: {<<: [{<<: {k: 1}, j: 2}, {m: 3}]}\n", {"k": 1, "j": 2, "m": 3}),
    ],
)
def test_merges_that_mean_one_thing_load(text: str, want: dict[str, Any]) -> None:
    assert parse_yaml(text)["a"] == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # PyYAML 6.0.x: {'ab': 2} (the last); YAML's rule: 1 (the first). Refused.
        ("a: {<<: [{ab: 1}, {ab: 2}]}\n", "the key 'ab' is given by more than one"),
        ("a: {<<: [{k: 1}, {j: 2, <<: {k: 3}}]}\n", "the key 'k' is given by more than one"),
        ("a: {<<: {k: 1, k: 2}}\n", "found the key 'k' twice"),
        ("a: {<<: {k: 1}, <<: {j: 2}}\n", r"merge key '<<' twice: merge a list instead"),
    ],
)
def test_merges_read_two_ways_are_refused(text: str, message: str) -> None:
    with pytest.raises(yaml.YAMLError, match=message):
        parse_yaml(text)


def test_a_merge_sequence_giving_a_rule_two_column_lists_is_refused_naming_the_line(
    tmp_path: Path,
) -> None:
    text = (
        "tables:\n"
        "  other.items:\n"
        "    allow:\n"
        "      - &tenant {name: member, where: 'org_id = {{org_id}}', columns: [id, title]}\n"
        "  items:\n"
        "    allow:\n"
        "      - <<: [*tenant, {name: defaults, columns: [id, title, secret]}]\n"
    )
    line = _line(text, "<<")
    with pytest.raises(
        ConfigError,
        match=rf"proxy\.yaml: invalid YAML at line {line}, column 9: the key 'name' is given by "
        rf"more than one of the mappings merged here \(lines {line - 3} and {line}\): YAML takes "
        r"the first one's, .*set it in this mapping itself, or leave it in only one of them",
    ):
        _load(tmp_path, text)
    # Said once, in the rule itself: loads, with what the rule says.
    fixed = text.replace("<<: [*tenant,", "<<: [*tenant,").replace(
        "{name: defaults, columns: [id, title, secret]}]", "{client_where: validated}]"
    )
    loaded = _load(tmp_path, fixed + "        name: member2\n")
    rule = loaded.config.tables["items"].allow[0]
    assert (rule.name, rule.columns, rule.client_where) == ("member2", ["id", "title"], "validated")


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scalar", "message"),
    [
        ("01234", "01234 is 668 in YAML 1.1 but 1234 in YAML 1.2"),
        ("12:30", "12:30 is a number only in YAML 1.1 (750; YAML 1.2 reads the text)"),
        ("1_000", "1_000 is a number only in YAML 1.1 (1000;"),
        ("0b101", "0b101 is a number only in YAML 1.1 (5;"),
        ("-0x1F", "-0x1F is a number only in YAML 1.1 (-31;"),
        ("1:30.5", "1:30.5 is a number only in YAML 1.1 (90.5;"),
        ("089", "089 is a number only in YAML 1.2 (89; YAML 1.1 reads the text)"),
        ("0o17", "0o17 is a number only in YAML 1.2 (15;"),
        ("1e3", "1e3 is a number only in YAML 1.2 (1000.0;"),
        ("2026-12-07", "2026-12-07 is a date only in YAML 1.1 (YAML 1.2 reads the text)"),
    ],
)
def test_a_number_yaml_1_1_and_1_2_read_differently_is_refused(
    scalar: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(yaml.YAMLError, match=f"^{_re(message)}.*: quote it \\('{_re(scalar)}'\\)"):
        parse_yaml(f"a: {scalar}\n")
    assert parse_yaml(f"a: '{scalar}'\n") == {"a": scalar}  # (quoted: the text)
    # In a deny condition, the file and line named (a deny that never fires fails open).
    text = (
        "tables:\n"
        "  items:\n"
        "    deny:\n"
        f"      - when: {{zip: {scalar}}}\n"
        "    allow: [{where: 'org_id = {{org_id}}'}]\n"
    )
    line = _line(text, "- when")
    with pytest.raises(ConfigError, match=rf"proxy\.yaml: invalid YAML at line {line}, column 21"):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("0", 0),
        ("-0", 0),
        ("+12", 12),
        ("1234", 1234),
        ("0x1F", 31),
        ("1.5", 1.5),
        ("1.", 1.0),
        (".5", 0.5),
        ("1.0e+3", 1000.0),
        (".inf", float("inf")),
        ("-.Inf", float("-inf")),
        ("abc", "abc"),
        ("1.2.3", "1.2.3"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("~", None),
        ("true", True),
        ("NO", "NO"),
    ],
)
def test_what_both_read_the_same_loads(scalar: str, value: object) -> None:
    assert parse_yaml(f"a: {scalar}\n") == {"a": value}


def test_a_quoted_number_in_a_deny_condition_loads(tmp_path: Path) -> None:
    text = (
        "tables:\n"
        "  items:\n"
        "    deny:\n"
        "      - when: {zip: '01234', shift: '12:30'}\n"
        "    allow: [{where: 'org_id = {{org_id}}'}]\n"
    )
    deny = _load(tmp_path, text).config.tables["items"].deny[0]
    assert deny.when == {"zip": "01234", "shift": "12:30"}


# -- columns: null ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", " ~", " null"])
def test_columns_left_empty_is_refused_not_every_column(value: str, tmp_path: Path) -> None:
    text = (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        "      - where: 'org_id = {{org_id}}'\n"
        f"        columns:{value}\n"
    )
    line = _line(text, "columns:")
    with pytest.raises(
        ConfigError,
        match=rf"proxy\.yaml: tables\.items\.allow\.0\.columns \(line {line}\): Value error, "
        r"empty \(null\): list the columns to show, e.g\. columns: \[id, title\], or remove the "
        r"key to show every column",
    ):
        _load(tmp_path, text)
    # Without the key: every column, as documented.
    rule = _load(tmp_path, text.replace(f"        columns:{value}\n", "")).config
    assert rule.tables["items"].allow[0].columns is None


def test_a_validation_error_names_the_line_of_the_key(tmp_path: Path) -> None:
    text = "tables:\n  items:\n    allow:\n      - where: 'org_id = {{org_id}}'\n        colums: [id]\n"
    line = _line(text, "colums")
    with pytest.raises(ConfigError, match=rf"allow\.0\.colums \(line {line}\): Extra inputs"):
        _load(tmp_path, text)


# -- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_deep_nesting_is_a_config_error_naming_the_line(opening: str, tmp_path: Path) -> None:
    if opening == "- ":
        deep = "extra:\n" + "".join(f"{'  ' * (i + 1)}-\n" for i in range(300))
    else:
        closing = "]" if opening == "[" else "}"
        deep = "extra: " + opening * 5000 + "1" + closing * 5000 + "\n"
    text = "tables:\n  items:\n    allow: [{where: 'org_id = {{org_id}}'}]\n" + deep
    with pytest.raises(ConfigError, match=rf"invalid YAML at line \d+, column \d+: nested too "
                       rf"deeply: more than {MAX_DEPTH} levels"):  # fmt: skip
        _load(tmp_path, text)


def test_nesting_up_to_the_bound_loads() -> None:
    depth = MAX_DEPTH - 1
    assert parse_yaml("a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n") is not None


# -- the file itself ----------------------------------------------------------------------


def test_a_fifo_at_the_config_path_is_refused_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    os.mkfifo(path)
    result: list[object] = []

    def load() -> None:
        try:
            load_config(path, ENV)
        except ConfigError as exc:
            result.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        # (unblock it: a writer lets its open() return)
        with open(path, "wb"):
            pass
        pytest.fail("load_config blocked opening a FIFO")
    assert len(result) == 1
    assert str(result[0]) == (
        f"{path} is not a regular file (a FIFO, device or directory): give the path of the "
        "file itself"
    )


def test_a_directory_or_missing_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config_file(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot read \(No such file or directory\)"):
        read_config_file(tmp_path / "missing.yaml")


def test_a_file_too_large_is_read_only_one_byte_past_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES * 3))
    assert len(read_config_file(path)) == MAX_CONFIG_BYTES + 1
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path, ENV)


def _re(text: str) -> str:
    return re.escape(text)


# -- what YAML does to a where, claim names, conditions ----------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "org_id = {{org_id}} -- tenant AND title <> 'o'",
        "org_id = {{org_id}} /* a */ -- b",
        "org_id = {{org_id}} AND title = E'\\'' -- c",
    ],
)
def test_a_dash_dash_comment_in_a_where_is_refused(where: str) -> None:
    with pytest.raises(ValueError, match=r"a `--` comment runs to the end of the filter"):
        AccessRule(where=where)


@pytest.mark.parametrize(
    "where",
    [
        "org_id = {{org_id}} AND title <> '--'",
        "org_id = {{org_id}} AND title <> 'it''s -- no'",
        'org_id = {{org_id}} AND "a--b" = 1',
        "org_id = {{org_id}} /* -- /* nested */ -- */ AND id > 0",
        "org_id = {{org_id}} AND id - -1 > 0",
        "org_id = {{org_id}}\nAND title <> 'x'\n",
        "org_id = {{org_id}} AND title = 'café'",
    ],
)
def test_a_where_without_a_line_comment_or_hidden_character_is_kept(where: str) -> None:
    assert AccessRule(where=where).where == where


@pytest.mark.parametrize(
    ("char", "named"),
    [
        ("\xa0", "U+00A0 (NO-BREAK SPACE)"),
        ("\x85", "U+0085"),
        ("\u2028", "U+2028 (LINE SEPARATOR)"),
        ("\u2029", "U+2029 (PARAGRAPH SEPARATOR)"),
        ("\t", "U+0009"),
        ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
    ],
)
def test_a_where_holding_an_invisible_character_is_refused(char: str, named: str) -> None:
    with pytest.raises(ValueError, match=rf"invisible character {re.escape(named)}"):
        AccessRule(where=f"org_id = {{{{org_id}}}} AND title NOT LIKE 'tmp{char}%'")


def test_the_yaml_escape_that_made_a_no_break_space_is_named_in_the_error(tmp_path: Path) -> None:
    text = (
        "tables:\n"
        "  items:\n"
        "    allow:\n"
        "      - where: \"org_id = {{org_id}} AND title NOT LIKE 'tmp\\_%'\"\n"
    )
    with pytest.raises(ConfigError, match=r"from a YAML escape such as \\_ in a double-quoted"):
        _load(tmp_path, text)
    quoted = text.replace('where: "', "where: '").replace("'tmp\\_%'\"", "''tmp\\_%'''")
    rule = _load(tmp_path, quoted).config.tables["items"].allow[0]
    assert rule.where == "org_id = {{org_id}} AND title NOT LIKE 'tmp\\_%'"


@pytest.mark.parametrize("name", ["role\u200b", "\ufeffrole", " role", "role "])
def test_a_claim_name_no_one_can_see_is_refused_in_deny_allow_and_require(name: str) -> None:
    with pytest.raises(ValueError, match="the claim name"):
        DenyRule(when={name: "x"})
    with pytest.raises(ValueError, match="the claim name"):
        AccessRule(when={name: "x"}, all_rows=True)
    issuer = {"issuer": "i", "audience": "a", "algorithms": ["RS256"], "jwks_url": "https://i/j"}
    with pytest.raises(ValueError, match="the claim name"):
        IssuerConfig.model_validate({**issuer, "require": [name]})


@pytest.mark.parametrize(("value", "what"), [(None, "null"), (1.5, "float"), ({"a": 1}, "dict")])
def test_a_condition_no_token_can_match_says_so_in_one_line(value: object, what: str) -> None:
    with pytest.raises(ValueError, match=rf"role: a {what} matches no token") as info:
        DenyRule.model_validate({"when": {"role": value}})
    assert str(info.value).count("\n") <= 3


def test_a_public_key_file_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo)
    config = base_config("http://127.0.0.1:3000", "https://idp.example/jwks.json")
    config["issuers"][0].pop("jwks_url")
    config["issuers"][0]["keys"] = [{"public_key_file": str(fifo)}]
    result: list[BaseException] = []

    def load() -> None:
        try:
            build_config(config, ENV)
        except ConfigError as exc:
            result.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail("build_config blocked opening a FIFO")
    assert f"issuers.0.keys.0.public_key_file: {fifo} is not a regular file" in str(result[0])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"a: 1\n---\nb: 2\n", "line 2, column 1: expected a single document in the stream"),
        (b"a:\n\tb: 1\n", r"line 2, column 1: found character '\\t' that cannot start any token"),
        (
            b"a: \xe9t\xe9\n",
            r"at line 1 \(byte 3\): invalid continuation byte: the file must be UTF-8",
        ),
        # (a control character was "at byte N: special characters are not allowed (the file
        # must be UTF-8 text)": a character index, and not an encoding problem at all)
        (
            b"a: 1\nb: \x1b[31mred\n",
            r"at line 2, column 4: a control character U\+001B, which YAML",
        ),
        (b"\xef\xbb\xbfa: 1\nb: \x07\n", r"at line 2, column 4: a control character U\+0007"),
        (b"a: !custom x\n", "could not determine a constructor for the tag '!custom'"),
    ],
)
def test_a_yaml_error_says_what_is_wrong_without_quoting_the_file(
    raw: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, ENV)
    assert "b: 1" not in str(info.value)


def test_aliases_expanding_to_thousands_of_rules_are_refused_at_once() -> None:
    rule = "[&r0 {when: {role: r0}, where: 'org_id = {{org_id}}', columns: [id, org_id]}"
    text = "tables:\n  t0: {allow: &rules " + rule + ", *r0" * 99 + "]}\n"
    text += "".join(f"  t{i}: {{allow: *rules}}\n" for i in range(1, 100))
    with pytest.raises(yaml.YAMLError, match=r"aliases \(\*name\) expand this file to 110,403"):
        parse_yaml(text)
    # A rule reused a few times is fine.
    few = "tables:\n  t0: {allow: &rules " + rule + "]}\n  t1: {allow: *rules}\n"
    assert parse_yaml(few)["tables"]["t1"]["allow"][0]["columns"] == ["id", "org_id"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:3000/v1/shape", "http://127.0.0.1:3000/v1/", "http://e/p/v1"]
)
def test_an_upstream_url_with_the_shape_path_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="the proxy appends /v1/shape itself"):
        UpstreamConfig(url=url)
    assert UpstreamConfig(url="http://e/prefix/").url == "http://e/prefix"


@pytest.mark.parametrize(
    "origin", ["app.example.com", "https://app.example.com/", "https://App.example.com", ""]
)
def test_a_cors_origin_no_browser_sends_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin as browsers send it"):
        CorsConfig(allow_origins=[origin])


@pytest.mark.parametrize(
    "origin", ["*", "null", "https://app.example.com", "http://localhost:5173", "tauri://localhost"]
)
def test_a_cors_origin_as_browsers_send_it_loads(origin: str) -> None:
    assert CorsConfig(allow_origins=[origin]).allow_origins == [origin]


def test_a_named_shape_with_columns_left_empty_is_refused(tmp_path: Path) -> None:
    text = (
        "tables:\n  items:\n    allow: [{where: 'org_id = {{org_id}}'}]\n"
        "shapes:\n  mine:\n    table: items\n    allow:\n"
        "      - where: 'org_id = {{org_id}}'\n        columns:\n"
    )
    with pytest.raises(ConfigError, match=r"shapes\.mine\.allow\.0\.columns \(line \d+\): .*empty"):
        _load(tmp_path, text)


@pytest.mark.parametrize(
    ("change", "warned"),
    [
        (
            lambda c: c["issuers"][0].update(jwks_url="http://idp.example/jwks.json"),
            "issuers.0.jwks_url is plain http to another host",
        ),
        (
            lambda c: c.update(server={"trusted_proxies": ["0.0.0.0/0"]}),
            "server.trusted_proxies: 0.0.0.0/0 trusts every address",
        ),
        (
            lambda c: c.update(server={"trusted_proxies": ["::/0"]}),
            "server.trusted_proxies: ::/0 trusts every address",
        ),
        # (two halves are every address too: not warned on 83a9801a)
        (
            lambda c: c.update(server={"trusted_proxies": ["0.0.0.0/1", "128.0.0.0/1"]}),
            "server.trusted_proxies: 0.0.0.0/1, 128.0.0.0/1 trusts every address",
        ),
        (
            lambda c: c.update(server={"trusted_proxies": ["10.0.0.0/8", "0.0.0.0/1"]}),
            "trusts half of all addresses or more",
        ),
    ],
)
def test_a_setting_that_hands_outsiders_a_lever_is_warned_at_load(
    change: Any, warned: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = base_config("http://127.0.0.1:3000", "https://idp.example/jwks.json")
    build_config(config, ENV)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    change(config)
    build_config(config, ENV)
    assert any(warned in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_plain_http_keys_on_this_host_are_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    for url in ("http://127.0.0.1:9/jwks.json", "http://localhost:9/j", "http://[::1]:9/j"):
        build_config(base_config("http://127.0.0.1:3000", url), ENV)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_table_name_with_unquoted_capitals_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    config = base_config("http://127.0.0.1:3000", "https://idp.example/jwks.json")
    config["tables"]["User"] = {"allow": [{"all_rows": True}]}
    config["tables"]['"Post"'] = {"allow": [{"all_rows": True}]}
    build_config(config, ENV)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    assert "tables.User: User names user (Postgres folds unquoted names" in warned[0]
    assert """quote it: '"User"'""" in warned[0]

from __future__ import annotations

import pytest

from proxy.errors import BadShapeRequest, Forbidden
from proxy.policy.evaluate import _like_literal, _param_from_claim
from proxy.policy.sql import (
    check_client_where,
    check_order_by,
    compile_template,
    parse_identifier_list,
    parse_table_name,
)


def test_template_placeholders_become_numbered_params() -> None:
    t = compile_template("org_id = {{org_id}} AND (owner = {{ sub }} OR org_id = {{org_id}})")
    assert t.sql == "org_id = $1 AND (owner = $2 OR org_id = $1)"
    assert t.claim_paths == ("org_id", "sub")


@pytest.mark.parametrize(
    "template",
    [
        "name = '{{sub}}'",
        "org_id = {{org_id}}) OR (1=1",
        "a = {{x}}; DROP TABLE t",
        "a = {{x",
        "id IN (SELECT 1) AND a = {{x}} UNION SELECT 2",
    ],
)
def test_bad_templates_refused(template: str) -> None:
    with pytest.raises(ValueError):
        compile_template(template)


def test_client_where_is_deparsed_and_renumbered() -> None:
    c = check_client_where("title = $1 AND id > $2", {"id", "title"}, param_offset=1, what="where")
    assert c.sql == "title = $2 AND id > $3"
    assert c.param_count == 2


@pytest.mark.parametrize(
    "clause",
    [
        "1=1) OR (1=1",
        "true; DELETE FROM items",
        "id IN (SELECT id FROM secrets)",
        "pg_sleep(10) IS NULL",
        "EXISTS (SELECT 1)",
        "true UNION SELECT 1",
        "t.id = 1",
        "",
    ],
)
def test_client_where_escapes_refused(clause: str) -> None:
    with pytest.raises(BadShapeRequest):
        check_client_where(clause, None, what="where")


def test_client_where_comment_cannot_hide_anything() -> None:
    # A trailing comment parses, but the deparsed text drops it, so it cannot swallow the
    # closing parenthesis the proxy adds.
    assert check_client_where("id = 1 --x", None, what="where").sql == "id = 1"


def test_client_where_hidden_column_forbidden() -> None:
    with pytest.raises(Forbidden) as info:
        check_client_where("salary > 100", {"id", "title"}, what="where")
    assert info.value.reason == "column_not_allowed"


def test_a_case_expression_is_the_engines_to_judge_and_reads_only_visible_columns() -> None:
    """CASE is no longer refused as a node the proxy does not know (the engine evaluates it,
    wherefuzz 01:58): it goes to the engine, which serves it or refuses it in its words; a
    hidden column in any arm is forbidden."""
    clause = "(CASE WHEN title = 'a' THEN 1 ELSE 2 END) = 1"
    assert "CASE WHEN" in check_client_where(clause, {"id", "title"}, what="where").sql
    for hidden in (
        "(CASE WHEN salary > 1 THEN 1 ELSE 2 END) = 1",
        "(CASE WHEN title = 'a' THEN salary ELSE 2 END) = 1",
        "(CASE title WHEN 'a' THEN 1 ELSE salary END) = 1",
        "(CASE salary WHEN 1 THEN 1 END) = 1",
    ):
        with pytest.raises(Forbidden):
            check_client_where(hidden, {"id", "title"}, what="where")


def test_quoted_column_names_keep_case() -> None:
    check_client_where('"Title" = $1', {"Title"}, what="where")
    with pytest.raises(Forbidden):
        check_client_where("Title = $1", {"Title"}, what="where")


def test_order_by() -> None:
    assert check_order_by("title DESC, id", {"id", "title"}, what="o") == "title DESC, id"
    with pytest.raises(Forbidden):
        check_order_by("salary", {"id"}, what="o")
    with pytest.raises(BadShapeRequest):
        check_order_by("id LIMIT 1", None, what="o")


def test_identifiers() -> None:
    assert parse_identifier_list('"id","Title",org_id') == ("id", "Title", "org_id")
    assert parse_identifier_list('"a,b"') == ("a,b",)
    assert parse_table_name("Items") == ("public", "items")
    assert parse_table_name('"Sch"."T.x"') == ("Sch", "T.x")
    # as listed: the engine counts `id` once, and names it twice if it refuses the list
    assert parse_identifier_list("id,title,id") == ("id", "title", "id")
    for bad in ("", '"', "a b", '"x"y"', "ÀBC"):
        with pytest.raises(ValueError):
            parse_identifier_list(bad)
    for bad in ("a.b.c", "Ítems", '"', "items."):
        with pytest.raises(ValueError):
            parse_table_name(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b.c", "Invalid relation identifier, too many delimiters: a.b.c"),
        ("items\ufffd", "Invalid unquoted identifier contains special characters: items\ufffd"),
        ('"items', 'Invalid identifier, unterminated quote: "items'),
        ('""', "Invalid zero-length delimited identifier"),
        ("a" * 64, "Identifier is too long (max length is 63)"),
    ],
)
def test_table_names_are_refused_in_the_engines_words(text: str, message: str) -> None:
    """The proxy reads `table` and `columns` with the engine's parser: same names, same errors."""
    from sync_engine.pg.identifiers import parse_relation

    with pytest.raises(ValueError) as proxy_error:
        parse_table_name(text)
    with pytest.raises(ValueError) as engine_error:
        parse_relation(text)
    assert str(proxy_error.value) == str(engine_error.value) == message


def test_clause_cache_parses_each_text_once_and_remembers_refusals() -> None:
    from proxy.policy.sql import ClauseCache

    cache = ClauseCache()
    cols = frozenset({"id", "title"})
    first = cache.client_where("title = $1", cols, param_offset=1, what="where")
    again = cache.client_where("title = $1", cols, param_offset=1, what="where")
    assert first is again and first.sql == "title = $2"
    # What the result depends on is part of the key.
    assert cache.client_where("title = $1", cols, param_offset=0, what="where").sql == "title = $1"
    with pytest.raises(Forbidden):
        cache.client_where("secret = 1", cols, what="where")
    with pytest.raises(Forbidden):  # remembered, raised afresh
        cache.client_where("secret = 1", cols, what="where")
    for _ in range(2):
        with pytest.raises(BadShapeRequest):
            cache.client_where("1=1) OR (1=1", cols, what="where")
    assert cache.order_by("id desc", cols, what="order_by") == "id DESC"


@pytest.mark.parametrize("clause", ["2", "4 DESC", "id, 3", "1 NULLS FIRST"])
def test_positional_order_by_is_refused(clause: str) -> None:
    """A position names a column of the engine's SELECT without naming it: the column check
    could not see which one, so it is refused before the engine (which refuses it too)."""
    with pytest.raises(BadShapeRequest) as info:
        check_order_by(clause, {"id", "title"}, what="subset order_by")
    assert info.value.message == "A_Const expressions are not allowed in ORDER BY clauses"


@pytest.mark.parametrize(
    ("clause", "blanked"),
    [
        ("title COLLATE \"C\" > 'a'", "title             > 'a'"),
        ('upper(t COLLATE pg_catalog."C") = $1', "upper(t" + " " * 23 + ") = $1"),
        ("é COLLATE ucs_basic = 'collate'", "é                   = 'collate'"),
        ("title = 'COLLATE \"C\"'", "title = 'COLLATE \"C\"'"),
    ],
)
def test_without_collate_blanks_only_collate_clauses_keeping_locations(
    clause: str, blanked: str
) -> None:
    from proxy.policy.sql import without_collate

    assert without_collate(clause) == blanked
    assert len(without_collate(clause)) == len(clause)


def test_claims_in_like_patterns_are_bound_escaped() -> None:
    """A claim in a LIKE/ILIKE pattern is marked to be bound with its wildcards escaped; used
    elsewhere too, it gets a second `$n` bound as is (the filter regenerated)."""
    plain = compile_template("email LIKE {{email}}")
    assert (plain.sql, plain.like_escapes) == ("email LIKE $1", ("\\",))
    mixed = compile_template("owner = {{sub}} OR email ILIKE lower({{sub}}) || '%'")
    assert mixed.claim_paths == ("sub", "sub")
    assert mixed.sql == "owner = $2 OR email ILIKE lower($1) || '%'"
    assert mixed.like_escapes == ("\\", None)
    custom = compile_template("a NOT LIKE {{x}} ESCAPE '#'")
    assert custom.like_escapes == ("#",)
    assert compile_template("{{x}} LIKE email").like_escapes == ()  # the column is the pattern
    # the LIKE functions' patterns too (`like(email, {{email}})` was bound unescaped)
    for function in ("like(a, {{x}})", "pg_catalog.like(a, {{x}} || '%')", "notlike(a, {{x}})",
                     "texticlike(a, lower({{x}}))", "bpcharlike(a, like_escape({{x}}, '#'))"):  # fmt: skip
        assert compile_template(function).like_escapes in (("\\",), ("#",)), function
    assert compile_template("like({{x}}, a)").like_escapes == ()
    for refused in ("a LIKE {{x}} ESCAPE ''", "a LIKE substr({{x}}, 2)", "a ~~ {{x}}[1]",
                    "like(a, substr({{x}}, 2))"):  # fmt: skip
        with pytest.raises(ValueError, match="pattern of a LIKE"):
            compile_template(refused)


def test_like_literal_escapes_its_wildcards() -> None:
    assert _like_literal("a_b%c\\d", "\\") == "a\\_b\\%c\\\\d"
    assert _like_literal("50%#_", "#") == "50#%###_"
    # a list is bound (each item escaped) only where the filter reads it whole as an array;
    # anywhere else it is refused (b215cab8: as text it was compared as one value)
    listed = _param_from_claim({"x": ["a_", "b"]}, "x", "\\", listable=True)
    assert listed == '{"a\\\\_","b"}'
    with pytest.raises(Forbidden):
        _param_from_claim({"x": ["a_", "b"]}, "x", "\\")


def test_a_claim_as_the_subject_of_a_regex_is_no_pattern() -> None:
    """(the refusal of claims in regex patterns, test_policy_like_claims_real.py, reads the
    pattern side only)"""
    assert compile_template("{{email}} ~ note").sql == "$1 ~ note"
    assert compile_template("regexp_like({{email}}, 'a')").sql == "regexp_like($1, 'a')"


@pytest.mark.parametrize(
    ("template", "slots"),
    [
        ("org_id = ANY({{orgs}})", {0}), ("org_id <> ALL({{orgs}}::text[])", {0}),
        ("tags && {{tags}}::text[]", {0}), ("ARRAY[x] <@ {{orgs}}", {0}),
        ("CAST({{orgs}} AS int[]) @> ia", {0}), ("org_id = {{o}} OR org_id = ANY({{orgs}})", {1}),
        ("x = ANY({{p}}) AND x LIKE {{p}}", {1}),  # (the LIKE's copy is $1, escaped)
        ("tags @> ARRAY[{{t}}]", set()), ("js @> {{j}}", set()), ("org_id = {{o}}", set()),
        ("x = ANY(ARRAY[{{a}}, {{b}}])", set()),
    ],
)  # fmt: skip
def test_array_slots_name_the_claims_read_as_arrays(template: str, slots: set[int]) -> None:
    """`CompiledTemplate.array_slots`: which claims the engine reads as an array, so the
    proxy can refuse a claim that is no list there (a scalar `orgs` in `= ANY({{orgs}})`
    was the engine's 400 'malformed array literal', blaming a where the client never sent:
    attack 07:58 via proxy)."""
    compiled = compile_template(template)
    assert compiled.array_slots == slots
    for i in slots:  # (each slot is a claim the template reads)
        assert i < len(compiled.claim_paths)


def test_a_template_continued_across_a_comment_compiles_and_its_slots_read() -> None:
    """A `--` comment inside a string constant continued on the next line (Postgres reads
    `'x' -- c<newline>'y'` as 'xy'): the template compiles, and the slots' parse of it
    (`single_value_slots`) reads it too instead of raising pglast's ParseError at load."""
    from proxy.policy.slots import single_value_slots

    compiled = compile_template("org_id = {{org}} AND title <> 'x' -- c\n'y'")
    assert single_value_slots(compiled.sql) == frozenset({0})

"""Decide what a client may sync: (claims, client shape request) -> Decision.

Pure and synchronous: no I/O, no clock. Default deny: an unknown table, a table without a
matching allow rule, or a matching deny rule is a `Forbidden`; a request without a token that
no `anonymous` rule serves is an `Unauthenticated`. The enforced filter is always present
(unless the rule says `all_rows: true`); the client can only narrow it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.config.model import ClaimMatch, Scalar
from proxy.errors import BadShapeRequest, EngineWords, Forbidden, ProxyError, Unauthenticated
from proxy.limits.config import RuleLimits
from proxy.policy.blame import PolicyWhere
from proxy.policy.compiled import CompiledPolicy, CompiledRule, CompiledTable
from proxy.policy.sql import (
    ClauseCache,
    ClientClause,
    CombinedWhere,
    order_by_may_go,
    parse_identifier_list,
    parse_table_name,
    quote_identifier,
    shown_columns,
    tables_read_by,
)
from proxy.policy.tables import format_table
from proxy.shape_request import ShapeRequest, SubsetRequest

Claims = Mapping[str, Any]
_MISSING = object()
_AMBIGUOUS = object()
_UNREADABLE = object()


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed shape, ready to become an upstream URL."""

    table: str
    rule: str
    where: str | None
    params: tuple[str, ...]
    columns: tuple[str, ...] | None
    queryable_columns: tuple[str, ...] | None
    replica: str | None
    protocol: tuple[tuple[str, str], ...]
    subset: SubsetRequest | None
    #: The answer does not depend on who asks (see `CompiledTable.shared`): its engine cache
    #: headers may stay public so a CDN shares it.
    shared: bool = False
    limits: RuleLimits | None = None  # the rule's overrides of the per-principal limits
    #: The client's `columns` as written, sent as is when the rule hides no column.
    columns_text: str | None = None
    #: The client's `queryable_columns` as written, sent as is when the rule hides no column
    #: (else `queryable_columns` go: the client's list when every name in it is one the rule
    #: shows, the rule's when it sent none; the client may narrow the rule, never widen it).
    queryable_columns_text: str | None = None
    #: The columns the rule shows (None: all), to name the rule when the engine refuses a
    #: shape for want of a primary key column the rule hides (`rule_columns_error`).
    rule_columns: tuple[str, ...] | None = None
    #: The engine's refusals of `columns` are the client's `queryable_columns`'s: the client
    #: sent a list to query and no `columns` under a rule that hides columns, so the proxy
    #: sends that list as `columns` too (the rows never rest on the engine's default).
    columns_are_queryable: bool = False
    #: The proxy's refusal of the request, said only if the engine does not refuse it first
    #: (its 400 names the first fault, in its order of checks, some of which only the column
    #: types show): a where calling a function the engine never evaluates, a subset whose
    #: `order_by` is no plain column. The engine refuses both whatever the table.
    unless_engine_refuses: BadShapeRequest | None = None
    #: Set when a client's where was ANDed with the enforced one: how to put the engine's
    #: errors about it back in the client's terms (`proxy.policy.sql.remap_where_error`).
    combined: CombinedWhere | None = None
    #: Set when the rule has an enforced filter: how to tell the engine's errors about it
    #: from those about the client's where (`proxy.policy.blame`).
    policy_where: PolicyWhere | None = None
    #: The keys of the first `params` (the client's) as it wrote them, when one is not the
    #: plain number (`ShapeRequest.param_keys`): sent so, the engine answers its own 400.
    param_keys: tuple[str, ...] | None = None


def claim_value(claims: Claims, path: str) -> Any:
    """Look up `path` in the claims: the exact key (URL-shaped claim names such as
    `https://example.com/roles`) or, for a dotted path, the nested one.

    When both exist and say different things (`{"org.id": 1, "org": {"id": 2}}`) the path is
    ambiguous and the answer is `_AMBIGUOUS`: which of the two the operator meant is not
    known, so no allow rule matches on it, every deny rule naming it does, and a filter that
    binds it refuses (fail closed). A dotted path that runs into a value it cannot go into
    (`{"account": "closed"}` for `account.status`) is `_UNREADABLE`, treated the same way:
    the claim is there, in a form the rule did not expect.
    """
    exact = claims[path] if path in claims else _MISSING
    nested: Any = _MISSING
    if "." in path:
        nested = claims
        for part in path.split("."):
            if not isinstance(nested, Mapping):
                nested = _UNREADABLE
                break
            if part not in nested:
                nested = _MISSING
                break
            nested = nested[part]
    if exact is _MISSING:
        return nested
    if nested is not _MISSING and (nested is _UNREADABLE or not _same_value(exact, nested)):
        return _AMBIGUOUS
    return exact


#: Claim lookups that found something no condition can compare (`claim_value`).
_UNUSABLE = (_AMBIGUOUS, _UNREADABLE)


def _same_value(a: object, b: object) -> bool:
    """`_same_json`, with values nested too deep to compare (a token's JSON may nest as
    deep as its parser allows) taken as different."""
    try:
        return _same_json(a, b)
    except RecursionError:
        return False


def _same_json(a: object, b: object) -> bool:
    """Equal as JSON values: types kept apart (`true` is not `1`, `"1"` is not `1`)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _norm(value: object) -> str:
    """A claim value as the text of a filter parameter."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Claim conditions (`when:`) -- what an operator who writes `role: admin`, `org_id: 7` or
# `mfa: false` expects, failing closed where a token's claim is not what the rule names:
#
# - An allow rule's condition matches only a claim of the same JSON type and value: a string
#   equal code point for code point, a number numerically equal (7 and 7.0), a boolean. `"7"`
#   does not match 7, `"true"` does not match true, `"Admin"` does not match admin: a token
#   whose claim has another type or spelling gains nothing. A list claim matches when one of
#   its scalar items does (`roles: [admin, dev]`). A missing, null or object claim, or a path
#   the claims answer two ways (`claim_value`), matches nothing.
# - A deny rule's condition matches every claim an allow condition would, and also what
#   could be the same value written another way: the same text after Unicode NFKC, case
#   folding and trimming (`"ADMIN"`, fullwidth `admin`), a number written as text (`"7"`,
#   `"7.0"`), a boolean as text or 0/1 (`"false"`, `0`, `"no"`). A claim the rule cannot
#   compare -- null, an object, a list holding one, an ambiguous path, a dotted path through a
#   value that is not an object -- matches too: present but unreadable is refused, not waved
#   through. Only a missing claim (or an empty list) does not match a deny condition: a rule
#   that must see a claim says so in its allow `when`, or the issuer's `require`.
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


def _strict(actual: object, expected: Scalar) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is bool and actual is expected
    if isinstance(expected, int):
        return isinstance(actual, int | float) and actual == expected
    return isinstance(actual, str) and actual == expected


#: Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt, Unicode 15.1)
#: that are not format characters (Cf): a combining grapheme joiner, variation selectors,
#: Hangul fillers, Mongolian selectors, Khmer inherent vowels... Renderers show them as
#: nothing, and NFKC keeps them.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
)
#: What `_fold` drops: those, and control characters (C0, DEL, C1), which show as nothing too.
_INVISIBLE = {
    code: None
    for low, high in (*_IGNORABLE_RANGES, (0x00, 0x1F), (0x7F, 0x9F))
    for code in range(low, high + 1)
}


def _fold(text: str) -> str:
    """`text` as a deny rule compares it: NFKC, case-folded, trimmed, and without what shows
    as nothing: format characters (zero-width spaces and joiners, soft hyphens, a byte order
    mark: category Cf), the other default-ignorable code points (a combining grapheme joiner,
    variation selectors, Hangul fillers) and control characters. Each survives NFKC, and made
    `ban\u200bned`, `ban\u034fned` or `ban\x7fned` another word than `banned`."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if not folded.isascii() or not folded.isprintable():
        folded = "".join(
            ch for ch in folded.translate(_INVISIBLE) if unicodedata.category(ch) != "Cf"
        )
    return folded.strip()


def _as_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = _fold(value)
    else:
        return None
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _loose(actual: object, expected: Scalar) -> bool:
    if actual is None or isinstance(actual, Mapping | list) or actual in _UNUSABLE:
        return True  # present but not comparable: a deny fails closed
    if _strict(actual, expected):
        return True
    if isinstance(expected, bool):
        words = _TRUE_WORDS if expected else _FALSE_WORDS
        if isinstance(actual, bool):
            return False
        if isinstance(actual, int | float):
            return actual == (1 if expected else 0)
        return isinstance(actual, str) and _fold(actual) in words
    if isinstance(expected, int):
        number = _as_number(actual)
        return number is not None and number == expected
    text = _norm(actual) if isinstance(actual, bool) else actual
    if isinstance(text, str):
        return _fold(text) == _fold(expected)
    number = _as_number(actual)  # a number, against a string condition "7"
    return number is not None and number == _as_number(expected)


def _condition_matches(actual: object, expected: ClaimMatch, *, deny: bool) -> bool:
    wanted = expected if isinstance(expected, list) else [expected]
    items = actual if isinstance(actual, list) else [actual]
    compare = _loose if deny else _strict
    return any(compare(item, want) for item in items for want in wanted)


def _matches(claims: Claims, when: Mapping[str, ClaimMatch], *, deny: bool = False) -> bool:
    for path, expected in when.items():
        actual = claim_value(claims, path)
        if actual is _MISSING:
            return False
        if actual in _UNUSABLE or actual is None or isinstance(actual, Mapping):
            if deny:
                continue  # fail closed: this condition holds
            return False
        if not _condition_matches(actual, expected, deny=deny):
            return False
    return True


def _text_param(value: object, path: str) -> str:
    if isinstance(value, float) and value.is_integer():
        # JSON has one kind of number: `7.0` is the number 7 (as conditions read it), bound
        # as "7" so an integer column reads it (it refused "7.0") and a text one matches "7".
        value = int(value)
    text = _norm(value)
    if "\x00" in text:
        # Postgres text holds no NUL: the engine would refuse the params, in words about
        # params the client never sent.
        raise Forbidden("claim_unusable", f"claim {path!r} holds a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (`"\ud800"` in the token's JSON): no UTF-8 text, and the URL
            # builder drops it, so "org-\ud800a" was bound as "org-a", another org's value.
            raise Forbidden("claim_unusable", f"claim {path!r} is not valid Unicode text") from None
    return text


def _pg_array(values: list[Any], path: str, like_escape: str | None = None) -> str:
    items = []
    for v in values:
        if isinstance(v, dict | list) or v is None:
            raise Forbidden("claim_unusable", "a claim list may hold only scalar values")
        text = _text_param(v, path)
        if like_escape is not None:
            text = _like_literal(text, like_escape)
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        items.append(f'"{text}"')
    return "{" + ",".join(items) + "}"


def _like_literal(text: str, escape: str) -> str:
    """`text` as a LIKE pattern that matches `text` only: its `escape`, `%` and `_` escaped."""
    for ch in dict.fromkeys((escape, "%", "_")):
        text = text.replace(ch, escape + ch)
    return text


def _param_from_claim(
    claims: Claims,
    path: str,
    like_escape: str | None = None,
    *,
    array: bool = False,
    single: bool = False,
    listable: bool = False,
) -> str:
    """A claim as the text of a filter parameter; `like_escape`: it is (part of) a LIKE
    pattern, so each text gets its wildcards escaped (a claim is a literal, never a pattern);
    `array`: the filter reads it as an array (`CompiledTemplate.array_slots`); `single`: it
    reads it as one value wherever it uses it (`CompiledRule.single_slots`)."""
    value = claim_value(claims, path)
    if value is _AMBIGUOUS:
        raise Forbidden(
            "claim_ambiguous",
            f"the token's {path!r} claim is given both as a key and as a nested path",
        )
    if value is _UNREADABLE:
        raise Forbidden("claim_unusable", f"the token's {path!r} claim cannot be read as a value")
    if value is _MISSING or value is None:
        raise Forbidden("missing_claim", f"the token has no {path!r} claim, which this shape needs")
    if isinstance(value, list):
        if not (array or listable):
            # Bound anywhere but where the filter reads an array (`= ANY({{orgs}})`,
            # `tags && {{tags}}`, `{{orgs}}::text[]`: `CompiledRule.list_slots`), an array
            # literal was compared as the text `{"a","b"}`: no rows, a row holding that
            # text, or for `<>` every other org's rows (`org_id <> {{org}}`, proxycfg
            # 13:18; inside a function, `org_id <> lower({{org}})`, review 14:27).
            raise Forbidden(
                "claim_unusable",
                f"the token's {path!r} claim is a list; this shape's filter needs one value",
            )
        return _pg_array(value, path, like_escape)
    if isinstance(value, dict):
        raise Forbidden("claim_unusable", f"claim {path!r} is an object, not a value")
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "[") and (array or not single):
        # Bound where the filter wants an array (`= ANY({{orgs}})`), Postgres would read this
        # text as an array literal (`{org-a,org-b}`): a one-value claim holding many. A list
        # must come as a JSON array (bound element by element, each quoted). Where the
        # filter only compares it (`t = {{s}}`, `t IN (...)`), it is one value: "[team] x".
        raise Forbidden(
            "claim_unusable",
            f"the token's {path!r} claim is text in Postgres's array syntax; "
            "a list claim must be a JSON array",
        )
    if array:
        # `org_id = ANY({{orgs}})` with `"orgs": "org-a"` (or 7): the engine's 400 was
        # 'malformed array literal' about a `where` the client never sent, at the claim's
        # location in the hidden filter. The claim is what is wrong: said before the engine.
        raise Forbidden(
            "claim_unusable", f"the token's {path!r} claim must be a JSON array for this shape"
        )
    text = _text_param(value, path)
    return text if like_escape is None else _like_literal(text, like_escape)


def _sign_in() -> Unauthenticated:
    """Default deny for a caller without a token, said the way a client can act on: sign in
    (Electric's client refreshes its token on a 401 in `onError`)."""
    return Unauthenticated("missing_token", "a bearer token is required for this shape")


def _select_rule(table: CompiledTable, claims: Claims, *, anonymous: bool) -> CompiledRule:
    for deny in table.deny:
        if _matches(claims, deny.when, deny=True):
            raise Forbidden("denied_by_rule", f"access to this shape is denied ({deny.reason})")
    for rule in table.allow:
        if (rule.anonymous or not anonymous) and _matches(claims, rule.when):
            return rule
    if anonymous:
        raise _sign_in()
    raise Forbidden("no_matching_rule", "no policy rule allows this user to sync this shape")


def why_no_rule(
    policy: CompiledPolicy,
    claims: Claims,
    request: ShapeRequest,
    *,
    shape_name: str | None = None,
    anonymous: bool = False,
) -> list[dict[str, str]]:
    """For `explain` on `no_matching_rule` (newuser LOW): each allow rule of the shape's table
    with the first reason it does not serve `claims` (the first `when` condition that fails,
    the claim it misses). A local tool's words: the 403 a client gets stays as it is."""
    try:
        table, _ = _find_table(policy, request, shape_name)
    except ProxyError:
        return []
    return [{"rule": rule.name, "why": _why_not(rule, claims, anonymous)} for rule in table.allow]


def _shown(value: object) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)[:200]


def _why_not(rule: CompiledRule, claims: Claims, anonymous: bool) -> str:
    if anonymous and not rule.anonymous:
        return "needs a token (the rule is not anonymous: true)"
    for path, expected in rule.when.items():
        actual = claim_value(claims, path)
        if actual is _MISSING:
            return f"when {path}: the token has no {path} claim (wants {_shown(expected)})"
        if actual in _UNUSABLE or actual is None or isinstance(actual, Mapping):
            shown = "unusable" if actual in _UNUSABLE else _shown(actual)
            return f"when {path}: the claim is {shown}, which no condition matches"
        if not _condition_matches(actual, expected, deny=False):
            return f"when {path}: the claim is {_shown(actual)}, the rule wants {_shown(expected)}"
    return "its when conditions match"


def _shows_at_least(rule: CompiledRule, other: CompiledRule) -> bool:
    """`rule` shows every row and column `other` shows (for the same claims): all rows, or the
    same filter; all columns, or at least `other`'s."""
    rows = rule.template is None or rule.template == other.template
    columns = rule.columns is None or (other.columns is not None and other.columns <= rule.columns)
    return rows and columns


def _listings(policy: CompiledPolicy, table: CompiledTable) -> list[list[CompiledTable]]:
    """What the policy lists besides the pattern `table`, grouped by what a caller may see
    of one table: a listed table's rules and the named shapes on it are one group (a caller
    may see of it what the most open of them shows); so are the named shapes on a table not
    under `tables:` with the patterns that serve that table itself (this one too: through it,
    the table is open already). Every other pattern is a group of its own."""
    groups: dict[tuple[str, str], list[CompiledTable]] = {}
    for listed in (*policy.tables.values(), *policy.shapes.values()):
        groups.setdefault(listed.key, []).append(listed)
    for key, group in groups.items():
        if key not in policy.tables:
            group.extend(p for p in policy.patterns if p.pattern.matches(key))
    return [*groups.values(), *([other] for other in policy.patterns if other is not table)]


def _refuse_unsafe_pattern(
    policy: CompiledPolicy,
    table: CompiledTable,
    rule: CompiledRule,
    claims: Claims,
    *,
    anonymous: bool,
) -> None:
    """A table reached only through a pattern (`public.*`) could be a partition or an
    inheritance child (or parent) of a listed table: its rows are that table's rows. The proxy
    has no catalog to tell, so it serves the pattern's rule only when every other listed table
    (by its rules or a named shape on it) and pattern shows these claims at least as much
    (fail closed): else one whose rules filter rows, hide columns or refuse this caller could
    be read around by naming its partition. A table listed by name gets its own rule (the
    operator says what it is)."""
    if table.pattern.exact:
        return
    for group in _listings(policy, table):
        if not any(_shows_caller(other, rule, claims, anonymous=anonymous) for other in group):
            raise Forbidden(
                "pattern_not_safe",
                "this table is reached only through a table pattern, and the policy shows this "
                "caller less of another table, of which this one could be a partition or "
                "inheritance child (or parent): the policy must name this table to serve it",
                field="table",
            )


def _shows_caller(
    other: CompiledTable, rule: CompiledRule, claims: Claims, *, anonymous: bool
) -> bool:
    """`other` serves these claims, with a rule that shows at least what `rule` shows."""
    try:
        other_rule = _select_rule(other, claims, anonymous=anonymous)
    except (Forbidden, Unauthenticated):
        return False
    return _shows_at_least(other_rule, rule)


def _pattern_shared(policy: CompiledPolicy, table: CompiledTable) -> bool:
    """Whether `_refuse_unsafe_pattern` lets every caller through, so that a served answer
    may be shared: every other listed table (or a named shape on it) and pattern shows
    everyone, without a deny rule, at least what this pattern shows. Else some caller is
    refused what another is served, and a shared cache in front of the proxy must not hand
    the answer to the first."""
    if table.pattern.exact:
        return True
    rule = table.allow[0]
    return all(
        any(
            not other.deny
            and other.allow[0].caller_independent
            and _shows_at_least(other.allow[0], rule)
            for other in group
        )
        for group in _listings(policy, table)
    )


def _find_table(
    policy: CompiledPolicy, request: ShapeRequest, shape_name: str | None
) -> tuple[CompiledTable, str]:
    """The table's rules and the engine's `table` parameter for it."""
    if shape_name is not None:
        table = policy.shapes.get(shape_name)
        if table is None:
            raise Forbidden("unknown_shape", f"there is no named shape {shape_name!r}")
        if (
            request.where is not None
            or request.params
            or request.columns_text is not None
            or request.queryable_columns_text is not None
        ):
            raise BadShapeRequest(
                "named_shape_definition",
                "a named shape takes no where, params, columns or queryable_columns",
            )
        if request.table is not None and _table_key(request.table) != table.key:
            raise BadShapeRequest(
                "named_shape_definition", "table does not match the named shape", field="table"
            )
        return table, table.table
    if request.table is None:
        # Electric's (and the engine's) words for a request without a table
        raise BadShapeRequest("missing_table", "can't be blank", field="table")
    key = _table_key(request.table)
    found = policy.tables.get(key)
    if found is not None:
        return found, found.table
    for candidate in policy.patterns:
        if candidate.pattern.matches(key):
            return candidate, format_table(key)
    raise Forbidden("table_not_allowed", "this table may not be synced", field="table")


def _table_key(text: str) -> tuple[str, str]:
    try:
        return parse_table_name(text)
    except ValueError as exc:
        raise BadShapeRequest("invalid_table", str(exc), field="table") from None


def _queryable_columns(rule: CompiledRule, request: ShapeRequest) -> tuple[str, ...] | None:
    """The client's `queryable_columns` under a rule that hides columns: its names, each one
    the rule shows (a hidden one refused as in `columns`: a client may narrow what the rule
    lets it query, never widen it). None when the rule hides nothing (the text goes as
    written) or the client sent none (a blank value is none to the engine too)."""
    text = request.queryable_columns_text
    if rule.columns is None or text is None or text == "":
        return None
    try:
        names = parse_identifier_list(text)
    except ValueError as exc:
        # (the engine's words for the same list: it reads it with the same parser)
        raise EngineWords("invalid_columns", str(exc), field="queryable_columns") from None
    _refuse_hidden(names, rule.columns, "queryable_columns")
    return names


def _refuse_hidden(names: tuple[str, ...], shown: frozenset[str], field: str) -> None:
    """A list (`columns`, `queryable_columns`) naming a column the rule hides: a 403 naming
    those names and the rule's (a typo and a hidden column read alike)."""
    hidden = [c for c in names if c not in shown]
    if hidden:
        raise Forbidden(
            "column_not_allowed",
            f"{field} not allowed: {', '.join(hidden)}{shown_columns(shown)}",
            field=field,
        )


def _ordered(params: Mapping[Any, str]) -> tuple[str, ...]:
    """Params numbered 1..n (checked by `http.params`) as the tuple for `$1..$n`."""
    by_number = {int(k): v for k, v in params.items()}
    return tuple(by_number[i] for i in range(1, len(by_number) + 1))


def _refuse_missing(clause: ClientClause, given: int, field: str) -> None:
    """A `$n` with no param: the engine's error (`At location L: parameter $n was not
    provided`), said before the enforced params shift the client's numbers."""
    missing = clause.missing_param(given)
    if missing is not None:
        raise EngineWords("invalid_params", missing, field=field)


def _build_where(
    rule: CompiledRule, claims: Claims, request: ShapeRequest, clauses: ClauseCache
) -> tuple[
    str | None, tuple[str, ...], CombinedWhere | None, PolicyWhere | None, BadShapeRequest | None
]:
    """The where and params to send, how to read the engine's errors about them, and the
    proxy's refusal of a function in the client's where left for after the engine's answer
    (`ClientClause.refused`: the engine, knowing the columns' types, may name another fault
    of the clause first, as it would of this request)."""
    template = rule.template
    slots = template.array_slots if template else frozenset()
    enforced_params = tuple(
        _param_from_claim(
            claims,
            p,
            template.escape_of(i) if template else None,
            array=i in slots,
            single=i in rule.single_slots,
            listable=i in rule.list_slots,
        )
        for i, p in enumerate(rule.claim_paths)
    )
    enforced_sql = rule.template.sql if rule.template else None
    if request.where is None:
        # Params without a where mean nothing to the engine, which ignores them: so does
        # the proxy (they never reach the engine, whose `$1..$n` are the enforced ones).
        if enforced_sql is None:
            return None, enforced_params, None, None, None
        policy = PolicyWhere(enforced_sql, False, 0, rule.claim_paths)
        return enforced_sql, enforced_params, None, policy, None
    if rule.client_where == "forbid":
        raise Forbidden(
            "client_where_not_allowed", "this shape does not accept a client where", field="where"
        )
    client_params = _ordered(request.params)
    if rule.client_where == "passthrough":
        # No enforced filter and no hidden column (checked at load): the engine checks it.
        return request.where, client_params, None, None, None
    clause = clauses.client_where(request.where, rule.columns, what="where", defer_functions=True)
    _refuse_missing(clause, len(client_params), "where")
    if enforced_sql is None:
        # Nothing to AND it with: the text as the client wrote it, which the engine parses
        # into the very tree checked here (both use pglast), so its errors locate the
        # client's own text.
        return request.where, client_params, None, None, clause.refused
    # The client's clause as written, with its own `$1..$k`, reached only for rows the
    # enforced filter admits (`guarded_and`); the enforced filter's params after the
    # client's. The engine's errors about the client's part then name what the client
    # sent, once its offset is taken off their locations (`remap_where_error`).
    combined = clauses.combined(clause, enforced_sql, len(client_params))
    if clause.refused is not None and combined.client_at is None:
        # The client's text could not go verbatim (`trim(x)` is sent as `pg_catalog.btrim`):
        # the engine's locations would count in the regenerated where, which the client
        # never wrote and whose length tells the enforced filter's (hostile 23:12). The
        # proxy's refusal, located in the client's own text, goes at once.
        raise clause.refused.copy()
    policy = PolicyWhere(combined.sql, True, len(client_params), rule.claim_paths)
    return combined.sql, client_params + enforced_params, combined, policy, clause.refused


def _check_subset(
    rule: CompiledRule, subset: SubsetRequest, clauses: ClauseCache
) -> tuple[SubsetRequest, BadShapeRequest | None]:
    """The subset to send, and the refusal of its where's function or of its `order_by` left
    for after the engine's answer (`Decision.unless_engine_refuses`), if any."""
    if not rule.subset:
        raise Forbidden(
            "subset_not_allowed", "this shape does not accept subset requests", field="subset"
        )
    if rule.client_where == "passthrough":
        return subset, None
    where = None
    deferred = None
    params: Mapping[str, str] = {}
    if subset.where is not None:
        clause = clauses.client_where(
            subset.where, rule.columns, what="subset where", defer_functions=True
        )
        _refuse_missing(clause, len(subset.params), "subset.where")
        deferred = clause.refused
        # As written: the engine parses it into the tree checked here, and its errors then
        # locate what the client sent (the regenerated text moves every position).
        where = clause.text
        params = subset.params
    # (subset params without a subset where: ignored, as the engine ignores them)
    order_by = None
    if subset.order_by is not None:
        try:
            order_by = clauses.order_by(subset.order_by, rule.columns, what="subset order_by")
        except EngineWords as exc:
            if exc.reason != "invalid_order_by" or not order_by_may_go(
                subset.order_by, rule.columns
            ):
                raise
            # The engine checks the shape (its columns, its where) and the subset's where
            # (their types, their params) before the order_by, and the proxy cannot see all
            # their faults: the list goes as written, for the engine to name the first fault,
            # as it would of this request (an order_by that is no plain column, which it
            # refuses by the same rule). Whatever else the engine answers, the client gets
            # this refusal (transparency LOW, 11 of 250).
            order_by, deferred = subset.order_by, deferred or exc
    checked = SubsetRequest(
        where=where,
        params=params,
        limit=subset.limit,
        offset=subset.offset,
        order_by=order_by,
    )
    return checked, deferred


def _check_subquery_tables(
    policy: CompiledPolicy, claims: Claims, request: ShapeRequest, *, anonymous: bool
) -> bool:
    """A clause forwarded as written may read other tables through a subquery: each must be
    one these claims may sync whole (all rows, all columns), else it could leak what the
    policy hides there. True when every table read is also shared (the same for everyone):
    else the answer depends on who asks, and a shared cache must not hand it to others."""
    shared = True
    texts = [(request.where, False)]
    if request.subset is not None:
        texts += [(request.subset.where, False), (request.subset.order_by, True)]
    for text, order_by in texts:
        if text is None:
            continue
        for schema, name in tables_read_by(text, order_by=order_by):
            try:
                table, _ = _find_table(
                    policy,
                    ShapeRequest(table=f"{quote_identifier(schema)}.{quote_identifier(name)}"),
                    None,
                )
                rule = _select_rule(table, claims, anonymous=anonymous)
                _refuse_unsafe_pattern(policy, table, rule, claims, anonymous=anonymous)
            except (Forbidden, Unauthenticated, BadShapeRequest):
                rule = None
            if rule is None or rule.template is not None or rule.columns is not None:
                raise Forbidden(
                    "subquery_not_allowed",
                    f"a subquery may not read {schema}.{name} for this caller",
                    field="where",
                )
            shared = shared and table.shared and _pattern_shared(policy, table)
    return shared


def evaluate(
    policy: CompiledPolicy,
    claims: Claims,
    request: ShapeRequest,
    *,
    shape_name: str | None = None,
    anonymous: bool = False,
    delete: bool = False,
) -> Decision:
    """Authorise `request` for `claims`, returning the shape to request from the engine.

    `anonymous` requests (no token; `claims` is empty) are served only by rules marked
    `anonymous: true`, else refused with a 401 (sign in). `delete` asks to delete the shape
    (`DELETE /v1/shape`), which the rule must allow. Raises `Forbidden` (403) when the policy
    refuses and `BadShapeRequest` (400) when the request is malformed in a way only the
    policy can see (e.g. a `$n` in a client where with no param for it).
    """
    try:
        table, upstream_table = _find_table(policy, request, shape_name)
    except Forbidden:
        if anonymous:
            raise _sign_in() from None
        raise
    rule = _select_rule(table, claims, anonymous=anonymous)
    _refuse_unsafe_pattern(policy, table, rule, claims, anonymous=anonymous)
    if delete and not rule.delete:
        raise Forbidden("delete_not_allowed", "this shape may not be deleted through the proxy")
    where, params, combined, policy_where, where_refused = _build_where(
        rule, claims, request, policy.clauses
    )
    shared = table.shared and _pattern_shared(policy, table)
    if rule.client_where == "passthrough":
        # A clause that reads other tables answers by what the caller may read there too:
        # shared (publicly cacheable) only when every table it reads is.
        shared = _check_subquery_tables(policy, claims, request, anonymous=anonymous) and shared
    columns = request.columns
    columns_text = None
    if request.columns_error is not None and rule.columns is not None:
        raise BadShapeRequest("invalid_columns", request.columns_error, field="columns")
    if rule.columns is None and request.columns_text is not None:
        # Nothing hidden: the list goes as written, and the engine reads (or refuses) it.
        columns, columns_text = None, request.columns_text
    if rule.columns is not None and columns is not None:
        _refuse_hidden(columns, rule.columns, "columns")
    queryable = _queryable_columns(rule, request)
    columns_are_queryable = columns is None and queryable is not None
    if columns is None:
        columns = queryable if queryable is not None else rule.column_order
    if request.replica not in (None, "default", "full"):
        raise BadShapeRequest("invalid_replica", "is invalid", field="replica")
    if request.replica == "full" and not rule.replica_full:
        raise Forbidden(
            "replica_full_not_allowed",
            "replica=full is not allowed for this shape",
            field="replica",
        )
    if request.wants_sse and not rule.sse:
        raise Forbidden(
            "sse_not_allowed",
            "SSE is not allowed for this shape; use long-polling",
            field="live_sse",
        )
    subset, deferred = (
        _check_subset(rule, request.subset, policy.clauses)
        if request.subset is not None
        else (None, None)
    )
    # (the engine reads the shape's where before the subset's: its refusal first)
    deferred = where_refused or deferred
    return Decision(
        table=upstream_table,
        rule=rule.name,
        where=where,
        params=params,
        columns=columns,
        columns_text=columns_text,
        queryable_columns_text=(request.queryable_columns_text if rule.columns is None else None),
        queryable_columns=queryable if queryable is not None else rule.column_order,
        rule_columns=rule.column_order,
        columns_are_queryable=columns_are_queryable,
        unless_engine_refuses=deferred,
        replica=request.replica,
        protocol=request.protocol,
        subset=subset,
        shared=shared,
        limits=rule.limits,
        combined=combined,
        policy_where=policy_where,
        # (the client's params lead `params` whenever they are sent: with its where)
        param_keys=request.param_keys if request.where is not None else None,
    )


_PK_MISSING = "The list of columns must include all primary key columns, missing: "


def rule_columns_error(message: str, rule: str, rule_columns: tuple[str, ...] | None) -> str | None:
    """The engine's refusal of a shape's columns for want of its primary key, when the key is
    not among the columns the policy rule shows: no request of the rule can succeed, and the
    engine's words (about a `columns` the client may not even have sent) blame the client.
    Then this says whose mistake it is, naming the rule (the key's columns the client may not
    see are not named: the operator finds them in the proxy's log). None otherwise (the
    client may add the key's columns to its own `columns`)."""
    if rule_columns is None or not message.startswith(_PK_MISSING):
        return None
    missing = [name.strip() for name in message[len(_PK_MISSING) :].split(",")]
    if all(name in rule_columns for name in missing):
        return None
    return (
        f"the proxy's policy rule {rule!r} shows this table without all of its primary key "
        "columns, which every shape must include: no request of this rule can be served until "
        "the proxy's configuration lists them under the rule's columns"
    )


def is_delete_by_handle(request: ShapeRequest, shape_name: str | None) -> bool:
    """`DELETE /v1/shape?handle=H` with no shape definition: Electric deletes that shape.

    Electric's own client test suite clears shapes this way (the handle alone, since the
    definition may hold more than a table).
    """
    return (
        shape_name is None
        and request.table is None
        and request.where is None
        and not request.params
        and request.columns_text is None
        and request.queryable_columns_text is None
        and request.replica is None
        and request.subset is None
        and "handle" in dict(request.protocol)
    )


def evaluate_delete_by_handle(
    policy: CompiledPolicy, claims: Claims, *, anonymous: bool = False
) -> CompiledRule:
    """Authorise deleting a shape named only by its handle; returns the catch-all rule.

    A handle does not say which table or rows it holds, so the caller must be allowed to
    delete every shape there is: the policy has a catch-all `*.*` table, and for these
    claims every table, pattern and named shape selects a rule that allows DELETE with all
    rows and all columns. Otherwise the answer is the 400 a table-less request always got.
    """
    refused = BadShapeRequest(
        "missing_table",
        "the table parameter is required (a DELETE by handle alone needs a rule that lets "
        "this caller delete every shape)",
        field="table",
    )
    catch_all = next(
        (p for p in policy.patterns if p.pattern.schema == "*" and p.pattern.table == "*"), None
    )
    if catch_all is None:
        raise refused
    everything = [*policy.tables.values(), *policy.patterns, *policy.shapes.values()]
    for table in everything:
        try:
            rule = _select_rule(table, claims, anonymous=anonymous)
        except (Forbidden, Unauthenticated):
            raise refused from None
        if not rule.delete or rule.template is not None or rule.columns is not None:
            raise refused
    return _select_rule(catch_all, claims, anonymous=anonymous)


def delete_by_handle_shared(policy: CompiledPolicy) -> bool:
    """Whether a DELETE by handle alone is answered the same whoever asks: every table,
    pattern and named shape is `shared` (as a DELETE naming its table is then). Its answer
    then keeps the engine's headers; else it is private (`private, no-cache`, `Vary`)."""
    everything = [*policy.tables.values(), *policy.patterns, *policy.shapes.values()]
    return all(table.shared for table in everything)


def subset_body(subset: SubsetRequest) -> bytes:
    """The JSON body for a POST subset request: only the subset keys, never shape keys.

    Electric merges unknown body keys into the query params, so forwarding the client's
    body as-is would let it override `table` or `where`.
    """
    body: dict[str, object] = {}
    if subset.where is not None:
        body["where"] = subset.where
    if subset.params:
        body["params"] = dict(subset.params)
    for key in ("limit", "offset", "order_by"):
        value = getattr(subset, key)
        if value is not None:
            body[key] = value
    if not body:  # a subset of nothing in particular: still a subset to the engine
        body["where"] = None
    return json.dumps(body, separators=(",", ":")).encode()

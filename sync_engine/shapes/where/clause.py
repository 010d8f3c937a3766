"""The public entry points: `parse_where` (-> `Where`) and `parse_order_by`."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

from pglast import ast
from pglast.enums import A_Expr_Kind, NullTestType, SortByDir

from sync_engine.pg.catalog import ColumnInfo
from sync_engine.pg.types import BOOL, UNKNOWN
from sync_engine.pg.values import UnrepresentableValue, Value

from .compiler import Compiler
from .depth import runs_longer_than
from .errors import PREFIX, WhereError
from .expr import Eval, Expr, and_expr, apply, const, negation, or_expr, planner_const
from .parse import (
    MAX_TOKEN_RUN,
    MAX_WHERE_SIZE,
    construct_name,
    count_columns,
    deparse,
    parse_clause,
    qualify_enums,
    refuse_newer_numbers,
    refuse_unencodable,
    sql_text,
    substitute_params,
    walk,
)
from .template import Pending, Skeleton, Template, Templates, cache_key, skeleton


class ClauseFails(UnrepresentableValue):
    """The where clause fails on a row where Postgres's scan would fail too (`Where.matches`):
    the shape's snapshot cannot be taken while the row is there. An UnrepresentableValue,
    so that the replicator asks Postgres about the row (`pg/row_where.py`), which then
    retires the shape (`Unevaluable`) if Postgres fails on it as well."""


@dataclass(frozen=True)
class Where:
    """A validated, compiled where clause (see the package docstring)."""

    source: str
    sql: str
    referenced_columns: frozenset[str]
    index: tuple[str, frozenset[Value]] | None
    _fn: Eval = field(repr=False, compare=False)
    #: The zones its AT TIME ZONEs name: Postgres must read them as the engine does before
    #: a shape uses the clause (zones.ZoneAgreement).
    zones: frozenset[str] = frozenset()
    #: The top-level conjuncts Postgres makes of the clause (`_top_conjuncts`), each
    #: evaluated alone only on a row the clause fails on (`matches`); None: not known, or
    #: Postgres reads no row (a constant false of its equivalence classes).
    _conjuncts: tuple[Conjunct, ...] | None = field(default=None, repr=False, compare=False)

    def value(self, row: Mapping[str, str | None]) -> object:
        """The clause's SQL value for `row`: True, False or None (NULL), unlike `matches`
        which folds NULL into "no match". Errors propagate (Postgres would fail the query)."""
        return self._fn(row, {})

    def matches(self, row: Mapping[str, str | None]) -> bool:
        """True only when the clause is SQL-true for `row` (Postgres text values).

        Raises `UnrepresentableValue` when `row` holds a value Postgres accepts but the engine
        cannot represent (a BC date, a year past 9999): the answer is unknown, so the caller
        must not guess (the replicator asks Postgres about the row, `pg/row_where.py`).

        A row on which the clause fails (division by zero, overflow, a value that does not
        cast) is in no answer of Postgres: a snapshot meeting it fails (a 400). Where
        Postgres's scan would certainly fail on it, `ClauseFails` (an UnrepresentableValue)
        is raised: the replicator asks Postgres, which fails too, and the shape is retired,
        so its clients refetch and get the snapshot's 400 (as a new client does) rather than
        following a shape Postgres can no longer answer; Electric instead drops the row
        silently (`WhereClause.includes_record?` is false on an error). "Certainly": every
        top-level conjunct Postgres's planner makes of the clause (`_top_conjuncts`: NOT
        pushed down, ANDs flattened, an OR's common factors pulled out) is true or fails,
        and one fails. Where one is false or NULL, Postgres stops at it or at a failing one
        by its cost order (`order_qual_clauses`), which the engine does not reproduce: the
        row does not match, as in Postgres when it stops first.
        Nothing else raised here may stop the replication stream: every other exception is
        "no match".
        """
        try:
            return self._fn(row, {}) is True
        except UnrepresentableValue:
            raise
        except Exception:
            if self._may_stop_before_failing(row):
                return False
            raise ClauseFails(
                "the where clause fails on a row (division by zero, overflow, a bad cast):"
                " Postgres fails the shape's snapshot with it"
            ) from None

    def _may_stop_before_failing(self, row: Mapping[str, str | None]) -> bool:
        """Whether Postgres's scan may stop on `row` before a part that fails: a top-level
        conjunct is false or NULL, or none fails alone (see `matches`)."""
        if self._conjuncts is None:
            return True
        failing = False
        for conjunct, negated, unsure, arms in self._conjuncts:
            try:
                value = conjunct(row, {})
            except UnrepresentableValue:
                raise
            except Exception:
                if unsure:  # (Postgres may evaluate another conjunct instead)
                    return True
                if arms is not None and not any(_arm_admits(arm, row) for arm in arms):
                    return True  # (a bitmap OR of index scans never reads this row)
                failing = True
                continue
            if negated and isinstance(value, bool):
                value = not value
            if value is not True:
                return True
        return not failing


#: Templates of the clauses seen, shared by every table (the key holds the columns).
TEMPLATES = Templates()


def parse_where(
    sql: str,
    params: Mapping[str, str],
    columns: Mapping[str, ColumnInfo],
    *,
    allow_enums: bool = False,
    allow_subqueries: bool = False,
    live: bool = True,
) -> Where:
    """Parse and validate a shape's where clause against the table's columns.

    `live=False` is for a clause only Postgres evaluates (a subset query): what is refused
    only because live filtering could not reproduce it (text ordering or case mapping under
    a collation the engine does not know) is accepted, and `matches` must not be used.

    The same as `full_parse`, faster for a clause of a form seen before (`template.py`)."""
    full = functools.partial(
        full_parse,
        sql,
        params,
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        live=live,
    )
    # (the size limits first: libpg_query must not meet a clause that overflows its stack)
    # (libpg_query reads a NUL byte as the text's end: `b\\0` would be `b`'s template)
    if params or len(sql) > MAX_WHERE_SIZE or runs_longer_than(sql, MAX_TOKEN_RUN) or "\0" in sql:
        return full()
    refuse_newer_numbers(PREFIX + sql)  # a template of `id = 16` would serve `id = 0x10`
    shape = skeleton(PREFIX + sql)
    if shape is None:
        return full()
    key = cache_key(shape, columns, (allow_enums, allow_subqueries, live))
    template = TEMPLATES.get(key)
    holes = template.fill(shape.values) if template is not None else None
    if template is not None and holes is not None:
        where = _from_template(
            template, sql, shape, holes, columns, allow_enums, allow_subqueries, live
        )
        if where is not None:
            TEMPLATES.hits += 1
            return where
    return full(learn=(shape, key) if template is None else None)


def _from_template(
    template: Template,
    sql: str,
    shape: Skeleton,
    holes: tuple[int, ...],
    columns: Mapping[str, ColumnInfo],
    allow_enums: bool,
    allow_subqueries: bool,
    live: bool,
) -> Where | None:
    """The clause `sql` (of skeleton `shape`) from its form's template; None when the full
    path must tell: the text does not parse back to the clause, or the compile fails (the
    error's location would be the template's, not the clause's)."""
    text = template.text(holes)
    if text != sql:  # (the same text has the same skeleton: nothing to check)
        again = skeleton(PREFIX + text)
        if again is None or again.key != shape.key or again.values != shape.values:
            return None
    compiler = Compiler(
        {},
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        ref_counts=template.ref_counts,
        live=live,
    )
    try:
        return _finish(compiler, template.tree(holes), text)
    except WhereError:
        return None


def full_parse(
    sql: str,
    params: Mapping[str, str],
    columns: Mapping[str, ColumnInfo],
    *,
    allow_enums: bool = False,
    allow_subqueries: bool = False,
    live: bool = True,
    learn: tuple[Skeleton, object] | None = None,
) -> Where:
    """`parse_where` the long way: parse with pglast, check, compile, deparse. `learn`: the
    clause's skeleton and cache key, to leave a template for clauses of the same form."""
    stmt = parse_clause(sql)
    for value in params.values():
        refuse_unencodable(value)
    clause = stmt.whereClause
    if clause is None:
        raise WhereError("malformed query ending with SQL clauses")
    ref_counts = count_columns(clause)
    compiler = Compiler(
        params,
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        ref_counts=ref_counts,
        live=live,
    )
    expr = _check(compiler, compiler.compile(clause))
    if params:
        _refuse_unused(params, clause)
    if params:  # without params, a `$n` has already failed to compile
        substitute_params(stmt, params, compiler.param_types)
    schemas = {c.base_type: c.type_schema for c in columns.values() if c.is_enum and c.type_schema}
    if schemas:
        qualify_enums(stmt.whereClause, schemas)
    text = deparse(stmt.whereClause, sql)
    if learn is not None and not params:
        TEMPLATES.put(learn[1], Pending(clause, PREFIX + sql, learn[0], text, ref_counts))
    return _where(compiler, expr, text)


def _refuse_unused(params: Mapping[str, str], clause: ast.Node) -> None:
    """A param the clause never names is an error, as in Electric (`At location 0: parameter
    value for $2 was not used`; the first in its order of keys, text order)."""
    used = {str(node.number) for node in walk(clause) if isinstance(node, ast.ParamRef)}
    unused = sorted(k for k in params if k not in used)
    if unused:
        raise WhereError(f"At location 0: parameter value for ${unused[0]} was not used")


def _finish(compiler: Compiler, clause: ast.Node, text: str) -> Where:
    return _where(compiler, _check(compiler, compiler.compile(clause)), text)


def _check(compiler: Compiler, expr: Expr) -> Expr:
    if expr.type == UNKNOWN and expr.text is not None:
        expr = compiler.coerce(expr, BOOL)
    if expr.type != BOOL:
        raise WhereError("WHERE clause must return a boolean")
    return expr


#: A conjunct Postgres's planner makes of the clause: a compiled node's value, negated or
#: not, whether its equivalence class may replace it (`_equivalence_classes`), and for an
#: OR each of whose arms has a possible index condition, those conditions (`_index_arms`).
IndexArm = tuple[tuple[Eval, bool], ...]
Conjunct = tuple[Eval, bool, bool, tuple[IndexArm, ...] | None]


def _arm_admits(arm: IndexArm, row: Mapping[str, str | None]) -> bool:
    """Whether an index scan for this arm's conditions may return `row` (each true, or
    failing: then the engine cannot tell)."""
    for fn, negated in arm:
        try:
            value = fn(row, {})
        except UnrepresentableValue:
            raise
        except Exception:  # noqa: S112  (failing: the scan may return it)
            continue
        if negated and isinstance(value, bool):
            value = not value
        if value is not True:
            return False
    return True


def _top_conjuncts(keys: _Keys, expr: Expr) -> list[tuple[Expr, bool]]:
    """The top-level conjuncts Postgres's planner makes of the clause compiled to `expr`,
    which its scan evaluates in an order of its own (see `Where.matches`): NOT pushed down
    through AND and OR (De Morgan, eval_const_expressions' negate_clause), ANDs flattened
    (BETWEEN is one, NOT IN of columns one of `<>`s), and the factors common to every arm
    of an OR pulled out as conjuncts beside it (canonicalize_qual's process_duplicate_ors:
    `(a AND b) OR (a AND c)` is `a AND (b OR c)`)."""
    found: list[tuple[Expr, bool]] = []
    stack: list[tuple[Expr, bool]] = [(expr, False)]
    while stack:
        e, negated = stack.pop()
        if e.bool_op == "not":
            stack.append((e.parts[0], not negated))
            continue
        if e.bool_op == ("or" if negated else "and"):  # AND, or NOT (OR)
            stack.extend((part, negated) for part in reversed(e.parts))
            continue
        if e.bool_op == "or":  # (not negated) its common factors, and itself
            found.extend((f, False) for f in _common_factors(keys, e))
        found.append((e, negated))
    return found


#: What Postgres's `equal()` compares of a conjunct, as far as the engine tells (`_Keys`).
Key = tuple[object, ...]


#: Operators and their negators (pg_operator.oprnegate), as negate_clause writes `NOT (a < b)`.
_NEGATORS = {"=": "<>", "<>": "=", "<": ">=", ">=": "<", ">": "<=", "<=": ">",
             "~~": "!~~", "!~~": "~~", "~~*": "!~~*", "!~~*": "~~*"}  # fmt: skip
_A_EXPR_OPS = (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE)
#: IS TRUE and IS NOT TRUE, ... (BooleanTest), IS NULL and IS NOT NULL (NullTest).
_BOOL_TESTS = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}


def _negated_key(k: Key) -> Key:
    """The key of NOT `k`, as eval_const_expressions' negate_clause writes it: an operator
    with a negator is that operator (`NOT (a ILIKE b)` is `a NOT ILIKE b`), a test its
    opposite, NOT NOT x is x."""
    if k[0] == "op" and k[1] in _NEGATORS:
        return ("op", _NEGATORS[k[1]], *k[2:])
    if k[0] == "null":
        return ("null", not k[1], k[2])
    if k[0] == "bool":
        return ("bool", _BOOL_TESTS[int(k[1])], k[2])  # type: ignore[call-overload]
    if k[0] == "not":
        return k[1]  # type: ignore[return-value]
    return ("not", k)


class _Keys:
    """Keys of conjuncts: equal keys where Postgres's `equal()` finds the nodes equal (its
    canonicalize_qual and equivalence classes compare with it), None where the engine
    cannot tell. A constant the planner made by its value (`NULL::bool` and `1 = NULL::int4`
    are the same constant); a comparison by its operator and operands' SQL texts, wherever
    it was built (a written `x = y`, an IN list's `x = y`, BETWEEN's `x >= lo`); NOT of one
    as negate_clause writes it; an AND / OR by its arguments'; any other node compiled on
    its own by its SQL text."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.cache: dict[int, tuple[Expr, Key | None]] = {}
        #: operand texts that are literals (a string, a number, a cast of one)
        self.literals: set[str] = set()

    def get(self, e: Expr) -> Key | None:
        hit = self.cache.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        key = self._key(e)
        self.cache[id(e)] = (e, key)
        return key

    def _key(self, e: Expr) -> Key | None:
        if planner_const(e):
            return ("const", e.type.sql_name, repr(e.value))
        if e.key is not None:
            name, left, right = e.key
            return ("op", name, self.operand(left), self.operand(right))
        if e.bool_op in ("and", "or"):
            keys = [self.get(p) for p in e.parts]
            return None if any(k is None for k in keys) else (e.bool_op, tuple(keys))
        if e.bool_op == "not":
            inner = self.get(e.parts[0])
            return None if inner is None else _negated_key(inner)
        node = e.node
        if node is None or self.compiler.compiled.get(id(node)) is not e:
            return None
        if (
            isinstance(node, ast.A_Expr)
            and node.kind in _A_EXPR_OPS
            and node.lexpr is not None
            and len(node.name) == 1
            and not isinstance(node.rexpr, list | tuple)
        ):
            name = getattr(node.name[0], "sval", "")
            if name in ("=", "<>") and node.kind == A_Expr_Kind.AEXPR_OP:
                boolean = self._boolean_equality(name, node)
                if boolean is not None:
                    return boolean[0]
            return ("op", name, self.operand(node.lexpr), self.operand(node.rexpr))
        if isinstance(node, ast.NullTest) and not node.argisrow:
            return ("null", node.nulltesttype == NullTestType.IS_NULL, sql_text(node.arg))
        if isinstance(node, ast.BooleanTest):
            return ("bool", int(node.booltesttype), sql_text(node.arg))
        return ("text", sql_text(node))

    def _boolean_equality(self, name: str, node: ast.A_Expr) -> tuple[Key | None] | None:
        """`x = true` is x to the planner, `x = false` NOT x, `x <> true` NOT x
        (eval_const_expressions' simplify_boolean_equality): the key of what it becomes,
        so that `(false = (t LIKE 'a%'))` and `(1 > 2) = (t LIKE 'a%')` are one factor (seed
        9125 of the long fuzz). None: not such a comparison."""
        found = _bool_constant_side(self.compiler.compiled, node)
        if found is None:
            return None
        side, other = found
        k = self.get(other)
        if k is None:
            return (None,)
        return (_negated_key(k) if (name == "=") != side.value else k,)

    def operand(self, node: ast.Node) -> str:
        e = self.compiler.compiled.get(id(node))
        if e is not None and planner_const(e):
            # (by its value: `-2 << 65535` and `0 << 7` are the one constant 0 to the
            # planner, which folds them before comparing; seed 9243 of the long fuzz)
            text = f"\0{e.type.sql_name}:{e.value!r}"
            self.literals.add(text)
            return text
        text = sql_text(node)
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if isinstance(node, ast.A_Const):
            self.literals.add(text)
        return text


def _arms(expr: Expr) -> list[tuple[Expr, ...]]:
    """The conjuncts of each arm of the OR `expr`."""
    return [arm.parts if arm.bool_op == "and" else (arm,) for arm in expr.parts]


def _common_factors(keys: _Keys, expr: Expr) -> list[Expr]:
    """The conjuncts every arm of the OR `expr` has (`_Keys`), each from its first arm."""
    if not any(arm.bool_op == "and" for arm in expr.parts):
        return []  # (`a OR b OR ...`: only identical arms would share one; no deparse)
    arms = _arms(expr)
    common = set.intersection(*({keys.get(c) for c in arm} for arm in arms))
    return [c for c in arms[0] if keys.get(c) in common - {None}]


def _not(expr: Expr) -> Expr:
    """NOT `expr`, as Postgres's planner writes it: a constant it made, negated; NOT NOT x
    as x."""
    if planner_const(expr):
        value = None if expr.value is None else not expr.value
        return const(BOOL, value, expr.node, folded=True)
    if expr.bool_op == "not":
        return expr.parts[0]
    return negation(expr, apply(BOOL, operator.not_, [expr], expr.node))


def _bool_equality_operand(keys: _Keys, expr: Expr) -> Expr | None:
    """What eval_const_expressions' simplify_boolean_equality makes of `x = true` (x),
    `x = false` and `x <> true` (NOT x), `x <> false` (x), with the constant one the
    planner made; None for anything else. `(a BETWEEN b AND c) = true` is the AND of two
    comparisons, which the scan then evaluates in its cost order (the engine kept the `=`
    whole and said a row failed on the costlier half; corner fuzz seed 82046)."""
    node = expr.node
    if expr.bool_op is not None or not isinstance(node, ast.A_Expr):
        return None
    if node.kind != A_Expr_Kind.AEXPR_OP or len(node.name) != 1 or node.lexpr is None:
        return None
    name = getattr(node.name[0], "sval", "")
    compiled = keys.compiler.compiled
    if name not in ("=", "<>") or compiled.get(id(node)) is not expr:
        return None
    found = _bool_constant_side(compiled, node)
    if found is None or planner_const(found[1]):
        return None  # (two constants: the planner folds the comparison whole)
    side, other = found
    return other if (name == "=") == side.value else _not(other)


def _bool_constant_side(compiled: Mapping[int, Expr], node: ast.A_Expr) -> tuple[Expr, Expr] | None:
    """(side, other) when one side of the comparison `node` is a boolean constant the
    planner made (`side`, its value True or False, not NULL) and the other a boolean
    expression: what simplify_boolean_equality rewrites. The left side is tried first.
    None: not such a comparison (or a side not compiled)."""
    sides = [compiled.get(id(node.lexpr)), compiled.get(id(node.rexpr))]
    for side, other in (sides, sides[::-1]):
        if (
            side is not None
            and other is not None
            and planner_const(side)
            and isinstance(side.value, bool)
            and other.type == BOOL
        ):
            return side, other
    return None


def _flattened(keys: _Keys, expr: Expr) -> list[Expr]:
    """The arms of the AND / OR `expr` as eval_const_expressions leaves them, before
    canonicalize_qual looks for common factors: nested ANDs in an AND and ORs in an OR
    merged into it, NOT pushed down where that makes one (NOT (a AND b) in an OR is NOT a,
    NOT b; NOT NOT a is a). So `t = 'x' OR ((X AND b) OR b)` is the OR of `t = 'x'`,
    `X AND b` and `b`, none common to all: Postgres evaluates X (the engine had reduced the
    inner OR to b first, and said true where Postgres fails; corner fuzz seed 80275)."""
    op = expr.bool_op
    dual = "and" if op == "or" else "or"
    out: list[Expr] = []
    stack = list(reversed(expr.parts))
    while stack:
        e = stack.pop()
        plain = _bool_equality_operand(keys, e)
        if plain is not None:
            stack.append(plain)
            continue
        if not planner_const(e):
            if e.bool_op == op:
                stack.extend(reversed(e.parts))
                continue
            if e.bool_op == "not":
                inner = e.parts[0]
                if inner.bool_op == "not" and not planner_const(inner):
                    stack.append(inner.parts[0])
                    continue
                if inner.bool_op == dual and not planner_const(inner):
                    stack.extend(reversed([_not(p) for p in inner.parts]))
                    continue
        out.append(e)
    return out


def _qual(keys: _Keys, expr: Expr) -> Expr:
    """The clause as Postgres's planner makes a WHERE qual of it before reading a row
    (canonicalize_qual's find_duplicate_ors, through ANDs and ORs from the top): in an OR,
    a constant false or NULL arm is dropped (a qual's NULL is as good as false), a constant
    true makes it true; in an AND, a constant true is dropped, a constant false or NULL
    makes it false; then an OR's factors common to every arm are pulled out, and an OR with
    an arm made only of them is just them. `(10 / v > 1 AND t = 'x') OR t = 'x'` is
    `t = 'x'`, `(-i2 > 3 AND a) OR (NULL AND b)` is `-i2 > 3 AND a`, its conjuncts then in
    Postgres's cost order: the engine had evaluated the parts Postgres drops, failed, and
    not matched rows Postgres returns (or retired the shape)."""
    plain = _bool_equality_operand(keys, expr)
    if plain is not None:
        return _qual(keys, plain)
    if expr.bool_op == "not" and not planner_const(expr):
        inner = expr.parts[0]
        if inner.bool_op == "not":  # NOT NOT x: x
            return _qual(keys, inner.parts[0])
        if inner.bool_op in ("and", "or") and not planner_const(inner):
            # De Morgan, as eval_const_expressions pushes NOT down: NOT (a OR b) is
            # NOT a AND NOT b (`x NOT IN (1, NULL, y)` is x <> ANY... AND x <> y)
            flipped = [_not(p) for p in inner.parts]
            build = or_expr if inner.bool_op == "and" else and_expr
            return _qual(keys, build(flipped, expr.node))
    if planner_const(expr) or expr.bool_op not in ("and", "or"):
        return expr
    is_or = expr.bool_op == "or"
    args: list[Expr] = []
    for part in _flattened(keys, expr):
        part = _qual(keys, part)
        if planner_const(part):
            if (part.value is True) == is_or:  # (OR: true; AND: false or NULL)
                return const(BOOL, is_or, expr.node, folded=True)
            continue
        args.extend(part.parts if part.bool_op == expr.bool_op else (part,))
    if not is_or:
        if not args:
            return const(BOOL, True, expr.node, folded=True)
        if len(args) == 1:
            return args[0]
        same = len(args) == len(expr.parts) and all(
            a is b for a, b in zip(args, expr.parts, strict=True)
        )
        return expr if same else and_expr(args, expr.node)
    if not args:
        return const(BOOL, False, expr.node, folded=True)
    if len(args) == 1:
        return args[0]
    if not any(a.bool_op == "and" for a in args):  # (see _common_factors)
        same = len(args) == len(expr.parts) and all(
            a is b for a, b in zip(args, expr.parts, strict=True)
        )
        return expr if same else or_expr(args, expr.node)
    arms = [a.parts if a.bool_op == "and" else (a,) for a in args]
    arm_keys = [[keys.get(c) for c in arm] for arm in arms]
    common = set.intersection(*(set(k) for k in arm_keys)) - {None}
    if not common:
        same = len(args) == len(expr.parts) and all(
            a is b for a, b in zip(args, expr.parts, strict=True)
        )
        return expr if same else or_expr(args, expr.node)
    shortest = min(range(len(arms)), key=lambda i: len(arms[i]))
    winners, seen = [], set()
    for c, k in zip(arms[shortest], arm_keys[shortest], strict=True):
        if k in common and k not in seen:
            seen.add(k)
            winners.append(c)
    rests = []
    for arm, ks in zip(arms, arm_keys, strict=True):
        rest = [c for c, k in zip(arm, ks, strict=True) if k not in common]
        if not rest:  # (this arm is the winners alone: the OR is redundant)
            return winners[0] if len(winners) == 1 else and_expr(winners, expr.node)
        rests.append(rest[0] if len(rest) == 1 else and_expr(rest, expr.node))
    return and_expr([*winners, or_expr(rests, expr.node)], expr.node)


def _may_be_equality(keys: _Keys, e: Expr, negated: bool) -> bool:
    """Whether the conjunct `e` (NOT `e` when `negated`) may have an `=` key (`_Keys`)."""
    while e.bool_op == "not":
        e, negated = e.parts[0], not negated
    wanted = "<>" if negated else "="
    if e.key is not None:
        return e.key[0] == wanted
    node = e.node
    return (
        isinstance(node, ast.A_Expr)
        and node.kind == A_Expr_Kind.AEXPR_OP
        and len(node.name) == 1
        and getattr(node.name[0], "sval", "") == wanted
        and keys.compiler.compiled.get(id(node)) is e
    )


def _equivalence_classes(keys: _Keys, found: list[tuple[Expr, bool]]) -> set[int] | None:
    """Which top-level conjuncts Postgres's equivalence classes may replace, or None where
    they make the clause a constant false before any row is read.

    Each top-level `a = b` (mergejoinable, as nearly every `=` is) merges a and b into one
    class; the planner then drops those conjuncts and generates its own: each member equal
    to one constant of the class, or (none) a chain of members, and a comparison of two
    constants folded before the scan (`(d - d) = 0 AND (d - d) = 1` is `0 = 1`, false: no
    row is read, nothing fails; seed 8101 of the long fuzz). A conjunct of a class of three
    or more members may so become another one (`a = X AND X = 5` is `a = 5 AND X = 5`,
    false first where a is 3 and X fails): where it fails, the engine cannot say that
    Postgres does. Two literals in one class: taken as a constant false (two equal ones,
    `x = 1 AND x = 1::int8`, are not, but then a row does not match either way)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    equalities: list[tuple[int, str]] = []
    for i, (e, negated) in enumerate(found):
        if not _may_be_equality(keys, e, negated):
            continue  # (no deparse for the others)
        k = keys.get(e)
        if k is not None and negated:
            k = _negated_key(k)
        if k is None or k[0] != "op" or k[1] != "=" or k[2] == k[3]:
            continue  # (x = x is x IS NOT NULL to the planner: no class)
        left, right = str(k[2]), str(k[3])
        parent[find(left)] = find(right)
        equalities.append((i, left))
    members: dict[str, set[str]] = {}
    for x in parent:
        members.setdefault(find(x), set()).add(x)
    unsure = set()
    for i, member in equalities:
        group = members[find(member)]
        if len(group & keys.literals) >= 2:
            return None
        if len(group) >= 3:
            unsure.add(i)
    return unsure


#: Comparisons an index condition may be (`column op literal`), and what it may imply.
_INDEX_OPS = frozenset({"=", "<", "<=", ">", ">=", "<>"})


def _all_empty(e: Expr, negated: bool) -> bool:
    """`x op ALL('{}')`: true whatever x, unless x fails (predtest: an AND of no items)."""
    return not negated and e.key is not None and e.key[0].endswith(" ALL empty")


def _implied_by_index(keys: _Keys, found: list[tuple[Expr, bool]]) -> set[int]:
    """Which top-level conjuncts an index scan may drop unevaluated.

    create_indexscan_plan omits a restriction that predicate_implied_by proves from the
    scan's index conditions: `x < ALL('{}')` (implied by anything), an OR with an arm
    implied by one (`id = 4 AND (10 / v > 1 OR id > 0)` is `id = 4` to an index on id).
    Whether an index scan is chosen, and on which index, the engine cannot tell: where
    such a conjunct fails, a sequential scan fails and an index scan does not (seed 9005 of
    the long fuzz), so the engine does not claim Postgres fails. An arm counts as implied
    when it compares (or tests for NULL) a column another top-level conjunct compares with
    a literal (a possible index condition), whatever the operators."""

    def arms(e: Expr, negated: bool) -> list[tuple[Expr, bool]]:
        if e.bool_op == ("and" if negated else "or"):
            return [(p, negated) for p in e.parts]
        return []

    candidates = [i for i, (e, neg) in enumerate(found) if _all_empty(e, neg) or arms(e, neg)]
    if not candidates:
        return set()  # (no deparse for the others)
    columns = keys.compiler.columns

    def column_of(e: Expr, negated: bool) -> str | None:
        k = keys.get(e)
        if k is not None and negated:
            k = _negated_key(k)
        if k is None:
            return None
        if k[0] == "null" and k[2] in columns:
            return str(k[2])
        if k[0] == "op" and k[1] in _INDEX_OPS:
            left, right = str(k[2]), str(k[3])
            if left in columns and right in keys.literals:
                return left
            if right in columns and left in keys.literals:
                return right
        return None

    indexed = {column_of(e, neg) for i, (e, neg) in enumerate(found) if i not in candidates} - {
        None
    }
    if not indexed:
        return set()  # (no index condition: a sequential scan evaluates every conjunct)
    dropped = set()
    for i in candidates:
        e, neg = found[i]
        if _all_empty(e, neg) or any(
            _all_empty(p, n) or column_of(p, n) in indexed for p, n in arms(e, neg)
        ):
            dropped.add(i)
    return dropped


def _index_arms(keys: _Keys, e: Expr, negated: bool) -> tuple[IndexArm, ...] | None:
    """For a top-level OR each of whose arms has conjuncts that may be index conditions
    (`column op literal`): those, per arm. Postgres may scan such an OR as a bitmap OR of
    index scans, one per arm, and evaluate the OR only on the rows they return: a row none
    of them returns is never read, and a part of the OR that fails on it fails nothing
    (seed 9573 of the long fuzz: `(tz IS NULL AND -1 = id) OR (f4 * 3 ... AND -65535 = id)`
    read no row). Whether it does is the planner's choice: the engine then claims no
    failure. None: not such an OR."""
    if e.bool_op != ("and" if negated else "or"):
        return None
    columns = keys.compiler.columns
    arms: list[IndexArm] = []
    for arm in e.parts:
        parts = arm.parts if arm.bool_op == ("or" if negated else "and") else (arm,)
        conditions = []
        for p in parts:
            k = keys.get(p)
            if k is not None and negated:
                k = _negated_key(k)
            if k is None or k[0] != "op" or k[1] not in _INDEX_OPS:
                continue
            left, right = str(k[2]), str(k[3])
            if (left in columns and right in keys.literals) or (
                right in columns and left in keys.literals
            ):
                conditions.append((p.fn, negated))
        if not conditions:
            return None
        arms.append(tuple(conditions))
    return tuple(arms)


def _where(compiler: Compiler, expr: Expr, text: str) -> Where:
    conjuncts = None
    if compiler.live:
        # (what the planner makes of the clause matters only to `matches`, which a clause
        # only Postgres evaluates never uses: a subset's 64 KB OR chain spent a third of
        # its parse here, deparsing each arm for its key)
        keys = _Keys(compiler)
        expr = _qual(keys, expr)
        found = _top_conjuncts(keys, expr)
        unsure = _equivalence_classes(keys, found)
        if unsure is not None:
            unsure |= _implied_by_index(keys, found)
        if unsure is not None:
            conjuncts = tuple(
                (e.fn, negated, i in unsure, _index_arms(keys, e, negated))
                for i, (e, negated) in enumerate(found)
            )
    fn = expr.fn
    if expr.is_const:
        value = expr.value
        fn = lambda _row, _cache: value  # noqa: E731
    index = expr.index
    if index is not None:
        col = compiler.columns[index[0]]
        if col.value_type != col.pg_type:
            # (a domain read as its base type: its keys are its base type's values, the
            # router's keys for the column its text: the shape is not filed under them)
            index = None
    return Where(
        source=text,
        sql=text,
        referenced_columns=frozenset(compiler.referenced),
        index=index,
        _fn=fn,
        zones=frozenset(compiler.zones),
        _conjuncts=conjuncts,
    )


def parse_order_by(sql: str, columns: Mapping[str, ColumnInfo]) -> str:
    """Validate a subset ORDER BY (plain columns, ASC/DESC, NULLS FIRST/LAST); canonical SQL."""
    stmt = parse_clause(sql, "SELECT 1 ORDER BY ")
    prefix_len = len("SELECT 1 ORDER BY ")
    if stmt.whereClause is not None or not stmt.sortClause:
        raise WhereError("malformed query ending with SQL clauses")
    parts = []
    for sort in stmt.sortClause:
        node = sort.node
        loc = getattr(node, "location", None)
        at = ""
        if isinstance(loc, int) and loc >= prefix_len:
            at = f"At location {loc - prefix_len}: "
        if isinstance(node, ast.ParamRef):
            raise WhereError(f"{at}parameter ${node.number} is not supported in ORDER BY clauses")
        if not isinstance(node, ast.ColumnRef):
            raise WhereError(
                f"{at}{construct_name(node)} expressions are not allowed in ORDER BY clauses"
            )
        names = [getattr(f, "sval", "*") for f in node.fields]
        if len(names) != 1 or names[0] not in columns:
            raise WhereError(f"{at}unknown reference {'.'.join(names)}")
        if sort.sortby_dir == SortByDir.SORTBY_USING:
            raise WhereError(f"{at}ORDER BY ... USING is not allowed in ORDER BY clauses")
        parts.append(sql_text(sort))
    return ", ".join(parts)

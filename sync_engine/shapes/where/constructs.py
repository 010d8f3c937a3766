"""The schema-free check: which constructs a where clause uses that the engine always refuses.

The proxy checks a policy's filter when it loads the policy, before any table is known, so
this check needs no columns: it refuses only what `parse_where` refuses whatever the
columns' types (unsupported node kinds, operators and functions, casts to types the engine
does not evaluate, the size / nesting limits, a syntax error, SQL that cannot be written
back unambiguously). What depends on types or on the database's collation (`numeric ^`,
text `<` or `upper()` under a collation the engine does not reproduce, an operator between
incompatible types) is left to `parse_where` when a shape is created: a 400 then.
"""

from __future__ import annotations

from collections.abc import Sequence

from pglast import ast
from pglast.enums import A_Expr_Kind

from sync_engine.pg.types import BPCHAR, VARCHAR, PgType

from .errors import WhereError, error_at, not_evaluated
from .functions import AGGREGATES, FUNCTIONS, NON_DETERMINISTIC
from .operators import (
    A_EXPR_HANDLERS,
    BINARY_OPERATORS,
    JSON_FIELD_OPERATORS,
    JSON_OPERATORS,
    LIKE_OPERATORS,
    PREFIX_OPERATORS,
    REGEX_OPERATORS,
)
from .parse import construct_name, deparse, parse_clause, walk
from .resolution import CAST_TARGET_NAMES
from .semantics import COMPARISONS

_NODES = (
    ast.ColumnRef, ast.A_Const, ast.ParamRef, ast.BoolExpr, ast.NullTest, ast.BooleanTest,
    ast.A_Expr, ast.TypeCast, ast.A_ArrayExpr, ast.A_Indirection, ast.CoalesceExpr,
    ast.MinMaxExpr, ast.FuncCall, ast.TypeName, ast.String, ast.Integer, ast.Float,
    ast.Boolean, ast.A_Indices, ast.CaseExpr, ast.CaseWhen,
)  # fmt: skip


def check_where_constructs(where_sql: str) -> None:
    """Raise `WhereError` naming the first construct the engine refuses regardless of the
    table (see the module docstring); `$1..$n` placeholders are allowed."""
    stmt = parse_clause(where_sql)
    root = stmt.whereClause
    if root is None:
        raise error_at("malformed query ending with SQL clauses")
    for node in walk(root):
        _check_node(node)
    deparse(root, where_sql)


def constant_refusal(val: object, node: ast.Node) -> WhereError:
    """The refusal of a constant the engine does not read: a bit string (B'101', X'1F') is
    valid in Postgres where its digits are (bit_in checks them: B'102' fails)."""
    if isinstance(val, ast.BitString):
        text = val.bsval or ""
        kind, digits = text[:1].lower(), text[1:]
        if (kind == "b" and set(digits) <= set("01")) or (
            kind == "x" and set(digits.lower()) <= set("0123456789abcdef")
        ):
            return not_evaluated("a bit string constant", node)
    return error_at(f"{construct_name(val)} constants are not supported", node)


def _check_node(node: ast.Node) -> None:
    if not isinstance(node, _NODES):
        raise error_at(f"{construct_name(node)} is not supported", node)
    if isinstance(node, ast.ColumnRef):
        parts = [getattr(f, "sval", "*") for f in node.fields]
        if len(parts) != 1 or parts[0] == "*":
            raise error_at(f"unknown reference {'.'.join(parts)}", node)
    elif isinstance(node, ast.A_Const) and not node.isnull:
        if not isinstance(node.val, (ast.Integer, ast.Float, ast.Boolean, ast.String)):
            raise constant_refusal(node.val, node)
    elif isinstance(node, ast.A_Expr):
        _check_operator(node)
    elif isinstance(node, ast.TypeName):
        _check_type(node)
    elif isinstance(node, ast.FuncCall):
        _check_function(node)
    elif isinstance(node, ast.A_Indirection):
        for ind in node.indirection:
            if not isinstance(ind, ast.A_Indices):
                raise error_at(f"{construct_name(ind)} is not supported here", node)


def _check_operator(node: ast.A_Expr) -> None:
    names = [n.sval for n in node.name]
    if len(names) != 1:
        raise error_at(f"qualified operator {'.'.join(names)} is not supported", node)
    name, kind = names[0], node.kind
    if kind not in A_EXPR_HANDLERS:
        raise error_at(f"{kind.name.removeprefix('AEXPR_')} expressions are not supported", node)
    if name in JSON_OPERATORS and not (name in JSON_FIELD_OPERATORS and node.lexpr is not None):
        raise error_at(f"JSON operator {name} is not supported", node)
    if kind == A_Expr_Kind.AEXPR_OP:
        if node.lexpr is not None and name in REGEX_OPERATORS:
            raise error_at(
                f"regular expression operator {name} is not supported (LIKE and ILIKE are)", node
            )
        allowed = PREFIX_OPERATORS if node.lexpr is None else BINARY_OPERATORS
        if name not in allowed and not (name in JSON_FIELD_OPERATORS and node.lexpr is not None):
            raise error_at(f"operator {name} is not supported", node)
    elif kind in (A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL):
        if name not in COMPARISONS and name not in LIKE_OPERATORS:
            raise error_at(f"operator {name} is not supported with ANY/ALL", node)
    elif kind in (A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT) and name != "=":
        raise error_at(f"operator {name} is not supported with IS DISTINCT FROM", node)
    if kind == A_Expr_Kind.AEXPR_IN and isinstance(node.rexpr, ast.SubLink):
        raise error_at("subquery is not supported", node)


def _check_type(tn: ast.TypeName) -> None:
    names = [n.sval for n in tn.names]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if string_length(tn) is not None or numeric_typmod(tn) is not None:
        return  # varchar(n), char(n), numeric(p, s)
    if tn.typmods:
        raise typmods_refused(names[-1], tn)
    if len(names) != 1 or tn.setof or tn.pct_type or names[0] not in CAST_TARGET_NAMES:
        raise type_refusal(names, tn)


def type_refusal(names: list[str], tn: ast.TypeName) -> WhereError:
    """The refusal of a type the engine does not cast to: `name` is valid in Postgres from
    any type (a string type: through the value's text)."""
    if names == ["name"] and not tn.arrayBounds and not tn.setof and not tn.pct_type:
        return not_evaluated("casting to name", tn)
    return error_at(f"unsupported type {'.'.join(names)}", tn)


def _check_function(node: ast.FuncCall) -> None:
    names = [n.sval for n in node.funcname]
    if names == ["pg_catalog", "like_escape"]:
        return  # how the parser spells LIKE ... ESCAPE
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    name = ".".join(names)
    if node.over is not None:
        raise error_at(f"window functions are not supported ({name})", node)
    if node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter:
        raise error_at(f"aggregate functions are not supported ({name})", node)
    if name in AGGREGATES:
        raise error_at(f"aggregate functions are not supported ({name})", node)
    if node.func_variadic:
        raise error_at("VARIADIC function calls are not supported", node)
    if name in NON_DETERMINISTIC:
        raise error_at(f"non-deterministic function {name}() is not supported", node)
    n_args = len(node.args or ())
    if (name, n_args) in FUNCTIONS or (name, -1) in FUNCTIONS:
        return
    if name in CAST_TARGET_NAMES and n_args == 1:
        return
    raise error_at(f"unknown or unsupported function {name}/{n_args}", node)


#: Postgres's names (format_type) of the types a cast may give a length or precision.
SIZED_NAMES = {
    "bpchar": "character({})", "varchar": "character varying({})", "numeric": "numeric({})",
    "timestamp": "timestamp({}) without time zone", "timestamptz": "timestamp({}) with time zone",
    "time": "time({}) without time zone", "timetz": "time({}) with time zone",
    "interval": "interval with fields or a precision", "bit": "bit({})",
    "varbit": "bit varying({})",
}  # fmt: skip


def sized_type_name(name: str, typmods: Sequence[ast.Node]) -> str:
    """A type with its modifiers as Postgres prints it (`char(2)` is `character(2)`)."""
    mods = ",".join(str(getattr(getattr(m, "val", m), "ival", "?")) for m in typmods)
    return SIZED_NAMES.get(name, name + "({})").format(mods)


#: A length no value reaches: `bpchar` without one (`N'..'`, `x::bpchar`) cuts nothing.
UNLIMITED = 1 << 30


def string_length(tn: ast.TypeName) -> tuple[PgType, int] | None:
    """(varchar or bpchar, n) for a cast to varchar(n), char(n) or bpchar (no length:
    `UNLIMITED`), else None."""
    names = [getattr(n, "sval", "") for n in tn.names]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if names == ["bpchar"] and not tn.typmods and not tn.arrayBounds:
        return BPCHAR, UNLIMITED
    if names not in (["varchar"], ["bpchar"]) or tn.arrayBounds or len(tn.typmods or ()) != 1:
        return None
    (mod,) = tn.typmods
    n = getattr(getattr(mod, "val", mod), "ival", None)
    if not isinstance(n, int):
        return None
    what = "char" if names == ["bpchar"] else "varchar"
    if n < 1:
        raise error_at(f"length for type {what} must be at least 1", tn)
    if n > 10485760:
        raise error_at(f"length for type {what} cannot exceed 10485760", tn)
    return (VARCHAR if names == ["varchar"] else BPCHAR), n


def numeric_typmod(tn: ast.TypeName) -> tuple[int, int] | None:
    """(precision, scale) of a cast to numeric(p, s) or numeric(p) (scale 0), `decimal`
    too, or an array of one; None for any other type, or modifiers that are not integer
    constants (`numeric('5')`: refused). A precision or scale Postgres refuses is refused
    in its words (numerictypmodin), as it refuses the clause before reading a row."""
    names = [getattr(n, "sval", "") for n in tn.names]
    if len(names) == 2 and names[0] == "pg_catalog":
        names = names[1:]
    if names != ["numeric"] or not tn.typmods:
        return None
    mods = []
    for m in tn.typmods:
        val = getattr(m, "val", None) if isinstance(m, ast.A_Const) else None
        if not isinstance(val, ast.Integer) or not isinstance(val.ival, int):
            return None
        mods.append(val.ival)
    if len(mods) > 2:
        raise error_at("invalid NUMERIC type modifier", tn)
    precision, scale = mods[0], (mods[1] if len(mods) == 2 else 0)
    if not 1 <= precision <= 1000:
        raise error_at(f"NUMERIC precision {precision} must be between 1 and 1000", tn)
    if not -1000 <= scale <= 1000:
        raise error_at(f"NUMERIC scale {scale} must be between -1000 and 1000", tn)
    return precision, scale


def typmods_refused(name: str, tn: ast.TypeName) -> WhereError:
    """The 400 for a cast to a type with modifiers other than varchar(n), char(n) and
    numeric(p, s)."""
    shown = sized_type_name(name, tn.typmods or ()) + ("[]" if tn.arrayBounds else "")
    return error_at(
        f"casting to {shown} is not supported (the engine applies no precision or fields;"
        " varchar(n), char(n) and numeric(p, s) are supported)",
        tn,
    )

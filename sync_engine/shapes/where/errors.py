"""WhereError, the one exception of the package, and clause-relative error positions.

Clauses are parsed inside `PREFIX + clause`; pglast reports positions in that statement, and
`error_at` turns a node's location into the "At location N: ..." prefix clients see.
"""

from __future__ import annotations

PREFIX = "SELECT 1 WHERE "


class WhereError(ValueError):
    """A where clause the engine cannot accept; `str(e)` is the message for the client."""

    located: bool = False


def error_at(message: str, node: object = None) -> WhereError:
    """Build an error, prefixed with the clause-relative location of `node` when known."""
    loc = getattr(node, "location", None) if node is not None else None
    if isinstance(loc, int) and loc >= len(PREFIX):
        error = WhereError(f"At location {loc - len(PREFIX)}: {message}")
        error.located = True
        return error
    return WhereError(message)


#: What a refusal says when Postgres accepts the construct and only the engine does not
#: evaluate it: a developer who reads "operator does not exist" for SQL psql runs thinks
#: the SQL is wrong. Postgres's own errors keep Postgres's words.
NOT_EVALUATED = "valid in Postgres, but shapegate does not evaluate it in a where clause"


def not_evaluated(what: str, node: object = None) -> WhereError:
    """A refusal of `what`, which Postgres accepts, but the engine does not evaluate."""
    return error_at(f"{what} is {NOT_EVALUATED}", node)


_TIME, _TIMETZ, _TS, _TSTZ = (
    "time without time zone",
    "timetz",
    "timestamp without time zone",
    "timestamp with time zone",
)
_INTS = ("smallint", "integer", "bigint")
_BITS = ("bit", "varbit")

#: Operators Postgres resolves (through its implicit casts: timestamp -> timestamptz, date ->
#: timestamp, time -> timetz) on types the engine knows, which the engine does not evaluate:
#: (left, operator, right) as the refusal names them. From a scan of every pair of the
#: engine's types under + - * / || & % LIKE @> && < = against PostgreSQL 15 (the others the
#: engine refuses with "operator does not exist" Postgres refuses too).
POSTGRES_OPERATORS = frozenset(
    {
        *((a, "-", b) for a in ("date", _TS, _TSTZ) for b in ("date", _TS, _TSTZ) if a != b),
        *(("inet", op, i) for op in "+-" for i in _INTS),
        *((i, "+", "inet") for i in _INTS),
        ("inet", "-", "inet"),
        ("inet", "&", "inet"),
        ("inet", "|", "inet"),
        ("date", "+", _TIMETZ),
        (_TIME, "+", _TIMETZ),
        (_TIMETZ, "+", "date"),
        (_TIMETZ, "+", _TIME),
        (_TIMETZ, "-", _TIME),
        (_TIMETZ, "+", "interval"),
        (_TIMETZ, "-", "interval"),
        ("interval", "+", _TIMETZ),
        (_TIME, "||", _TIMETZ + "[]"),
        (_TIMETZ, "||", _TIME + "[]"),
        (_TIME + "[]", "||", _TIMETZ),
        (_TIMETZ + "[]", "||", _TIME),
        (_TIME + "[]", "||", _TIMETZ + "[]"),
        (_TIMETZ + "[]", "||", _TIME + "[]"),
        # bit strings (bit converts to varbit and back implicitly): from a second scan of
        # # | << >> ^ and the prefix operators over the engine's types, with bit and varbit
        *((a, op, b) for a in _BITS for op in ("&", "|", "#", "||") for b in _BITS),
        *((a, op, i) for a in _BITS for op in ("<<", ">>") for i in ("smallint", "integer")),
        *((a, "||", b + "[]") for a in _BITS for b in _BITS if a != b),
        *((a + "[]", "||", b) for a in _BITS for b in _BITS if a != b),
        ("inet", "<<", "inet"),
        ("inet", ">>", "inet"),
    }
)

#: Prefix operators Postgres resolves that the engine does not evaluate: (operator, type).
POSTGRES_PREFIX_OPERATORS = frozenset(
    {
        *(("~", t) for t in (*_BITS, "inet")),
        *(("||/", t) for t in (*_INTS, "numeric", "real", "double precision")),
    }
)


def no_operator_text(left: str, name: str, right: str) -> str:
    """The refusal of `left name right` (types' SQL names): Postgres's "operator does not
    exist" where it has none, else that the engine does not evaluate it (`tz - ts` said
    "operator does not exist", which psql runs)."""
    if (left, name, right) in POSTGRES_OPERATORS:
        return f"operator {left} {name} {right} is {NOT_EVALUATED}"
    return f"operator does not exist: {left} {name} {right}"


def no_operator(left: str, name: str, right: str, node: object = None) -> WhereError:
    """`no_operator_text` as an error at `node`."""
    return error_at(no_operator_text(left, name, right), node)


def no_prefix_operator(name: str, typ: str, node: object = None) -> WhereError:
    """The refusal of the prefix operator `name typ`, worded as `no_operator_text`'s:
    `~ bit` and `||/ integer` said "operator does not exist", which psql runs."""
    if (name, typ) in POSTGRES_PREFIX_OPERATORS:
        return error_at(f"operator {name} {typ} is {NOT_EVALUATED}", node)
    return error_at(f"operator does not exist: {name} {typ}", node)


_STRINGS = ("text", "character varying", "character", "name")
_ORDERING = ("=", "<>", "<", "<=", ">", ">=")

#: Operators on json/jsonb Postgres resolves (a scan of json, jsonb and jsonb[] beside the
#: engine's types, EXPLAINed): jsonb's comparisons and containment, jsonb[]'s array ones,
#: jsonb - key / index / keys, and || of a string with json or jsonb (text concatenation,
#: `anynonarray || text`) or of two jsonb.
POSTGRES_JSON_OPERATORS = frozenset(
    {
        *(("jsonb", op, "jsonb") for op in (*_ORDERING, "@>", "<@", "||")),
        *(("jsonb[]", op, "jsonb[]") for op in (*_ORDERING, "@>", "<@", "&&")),
        ("jsonb", "||", "jsonb[]"),
        ("jsonb[]", "||", "jsonb"),
        *(("jsonb", "-", t) for t in (*_STRINGS, "unknown", "smallint", "integer", "text[]")),
        *((j, "||", t) for j in ("json", "jsonb") for t in _STRINGS),
        *((t, "||", j) for j in ("json", "jsonb") for t in _STRINGS),
        ("json", "||", "unknown"),
        ("unknown", "||", "json"),
    }
)


def json_operator(left: str, name: str, right: str, shown: str, node: object = None) -> WhereError:
    """The refusal of `left name right` with json or jsonb on a side (`shown`, the type the
    neutral wording names): valid in Postgres where it has the operator (`js = js`, `js - 'k'`,
    `t || js` said only "JSON operators are not supported")."""
    if (left, name, right) in POSTGRES_JSON_OPERATORS:
        return error_at(f"operator {left} {name} {right} is {NOT_EVALUATED}", node)
    return error_at(f"JSON operators are not supported ({shown} {name})", node)

"""Shape `where` clauses: parse, validate against the supported SQL subset, compile.

A client's clause is parsed by the real Postgres parser (pglast) as
`SELECT 1 WHERE <clause>`, type-checked against the table's columns, and turned into
- `Where.sql`: the clause deparsed from the validated AST, `$n` placeholders replaced by
  explicitly cast, quoted literals. Nothing the client typed is pasted into SQL, so
  `1=1) OR (1=1` or `'); DROP TABLE t; --` cannot escape (the snapshot session must keep
  Postgres's default `standard_conforming_strings=on`, which the engine never changes);
- `Where.matches(row)`: a tree of Python closures built once, evaluating the clause with
  SQL three-valued logic on replication rows (Postgres text values);
- `Where.index`: an equality / IN conjunct the router can use to skip the shape cheaply.

One job a module:
- `errors`    WhereError and clause-relative error positions;
- `depth`     nesting limits, measured without recursion (shared with the proxy);
- `parse`     pglast parsing, the statement shape check, AST walks, `$n` substitution;
- `resolution` groups of types, implicit conversion and common-type resolution (types are
              `sync_engine.pg.types.PgType`);
- `semantics` numeric and comparison semantics (NaN order, integer overflow, division);
- `datetimes` date, timestamp and interval arithmetic;
- `casts`     the implicit and explicit conversion tables;
- `text`      type output functions (`::text`, `||`, concat) and LIKE;
- `arrays`    array operators and functions, ANY/ALL;
- `expr`      `Expr`, the typed compiled node, and the closures that combine them;
- `compiler`  the AST walk that checks each node and builds its `Expr`: coercion, casts,
              the collation's text rules;
- `operators` operator expressions (comparisons, arithmetic, `||`, arrays, IN, LIKE, ...);
- `functions` the table of supported functions;
- `index`     the equality / IN keys the router files shapes under;
- `collation` which text semantics the table's collations let the engine reproduce;
- `constructs` `check_where_constructs`, the schema-free check for policy filters;
- `guard`     `guarded_and`: `first AND then` with `then` never evaluated where `first` fails;
- `template`  clauses of a form seen before (the same parse tree but for integer literals)
              built without pglast's parse and deparse, exactly as the full path would;
- `clause`    the public entry points `parse_where`, `parse_order_by`, `Where`.
"""

from .clause import Where, parse_order_by, parse_where
from .constructs import check_where_constructs
from .errors import WhereError
from .guard import guarded_and
from .index import index_key
from .parse import MAX_WHERE_DEPTH, MAX_WHERE_SIZE
from .text import like_pattern

__all__ = [
    "MAX_WHERE_DEPTH",
    "MAX_WHERE_SIZE",
    "Where",
    "WhereError",
    "check_where_constructs",
    "guarded_and",
    "index_key",
    "like_pattern",
    "parse_order_by",
    "parse_where",
]

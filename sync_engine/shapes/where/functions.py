"""The table of supported functions: `(name, arity) -> builder(compiler, args, node)`.

Arity -1 accepts any number of arguments. Non-deterministic functions and aggregates are
named so the compiler can refuse them with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from pglast import ast

from sync_engine.pg import values as pgv
from sync_engine.pg.types import (
    BPCHAR,
    BYTEA,
    DATE,
    FLOAT8,
    INT4,
    INTERVAL,
    NAME,
    NUMERIC,
    TEXT,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    UNKNOWN,
    VARCHAR,
    PgType,
)
from sync_engine.pg.values import Value

from . import operators
from .arrays import array_append, array_cat, array_ndims_nullable, array_prepend
from .datetimes import (
    justify_days,
    justify_hours,
    justify_interval,
    local_to_tstz,
    tstz_to_local,
)
from .errors import error_at
from .expr import Cache, Expr, Row, apply, apply_nullable, const
from .resolution import INT_TYPES, NUMERIC_ORDER, STRING_TYPES
from .semantics import checked_int
from .zones import zone, zone_key

if TYPE_CHECKING:
    from .compiler import Compiler

Builder = Callable[["Compiler", list[Expr], ast.Node], Expr]
"""Checks a function call's arguments and builds its `Expr`."""

NON_DETERMINISTIC = frozenset(
    {
        "now",
        "random",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuid_generate_v4",
        "setseed",
        "nextval",
        "currval",
        "lastval",
        "txid_current",
        "pg_current_xact_id",
        "current_setting",
        "pg_backend_pid",
    }
)


AGGREGATES = frozenset(
    {
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "json_agg",
        "jsonb_agg",
        "json_object_agg",
        "jsonb_object_agg",
        "stddev",
        "variance",
        "bit_and",
        "bit_or",
    }
)


def _case_func(which: str) -> Builder:
    """upper() / lower(): the collation's per-character mapping (see collation.py)."""

    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        args = [c.text_of_char(args[0])]  # (lower(text): "char" converts implicitly)
        # (the argument's type first: `upper(1)` does not exist, whatever the collation)
        if args[0].type not in STRING_TYPES and args[0].type != UNKNOWN:
            raise error_at(f"function {which}({args[0].type.sql_name}) does not exist", node)
        func = c.case_function(which, node, c.input_collation(args, node))
        return apply(TEXT, func, [c.coerce(args[0], TEXT)], node)

    return build


#: The other argument types Postgres has an overload of length() / octet_length() for
#: (bit, tsvector, lseg, path): refused rather than reproduced.
_OTHER_LENGTH_OVERLOADS = frozenset({"bit", "varbit", "tsvector", "lseg", "path"})


def _length_builder(name: str, octets: bool, of_bytea: bool) -> Builder:
    """length() / char_length() / character_length() (`octets` False) and octet_length()
    (`octets` True), by the overload Postgres resolves to:

    - text (varchar, name and an untyped literal or parameter are read as text): characters,
      or bytes in the database encoding, which must be known to be UTF8;
    - bpchar: bpcharlen counts the characters without the trailing spaces (the engine
      keeps a char(n) value trimmed of exactly those), bpcharoctetlen the stored bytes
      with the padding (a plain char(n) column only: see `Compiler.padded`);
    - bytea (length and octet_length, not char_length): its bytes.

    Other types are a 400 (bit, tsvector, lseg and path have overloads the engine does not
    reproduce; the rest none). All are immutable and strict (NULL in, NULL out)."""

    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        arg = c.text_of_char(args[0])  # (length(text): "char" converts implicitly)
        if arg.type == BYTEA and of_bytea:
            return apply(INT4, len, [arg], node)
        if arg.type in (TEXT, VARCHAR, NAME, UNKNOWN, BPCHAR):
            if not c.collations.utf8:
                raise error_at(
                    f"{name}() of text is not supported here (the database encoding, in"
                    " which Postgres counts, is not known to be UTF8)",
                    node,
                )
            if arg.type == BPCHAR:
                if not octets:
                    return apply(INT4, len, [arg], node)  # (kept trimmed: bpcharlen)
                arg = c.padded(arg, node, f"{name}()")
            else:
                arg = c.coerce(arg, TEXT)
            func: Callable[[str], int] = _utf8_octets if octets else len
            return apply(INT4, func, [arg], node)
        typ = arg.type.sql_name
        if (
            not arg.type.array
            and arg.type.name in _OTHER_LENGTH_OVERLOADS
            and (octets or name == "length")
        ):
            raise error_at(f"function {name}({typ}) is not supported", node)
        raise error_at(f"function {name}({typ}) does not exist", node)

    return build


def _utf8_octets(text: str) -> int:
    return len(text.encode())


#: pg_char_to_encoding's table (src/common/encnames.c): each name as clean_encoding_name
#: makes it (ASCII letters and digits, lower case) -> the encoding's own name. All of them:
#: any other name is 'invalid encoding name'.
_ENCODING_NAMES: dict[str, str] = {
    "abc": "WIN1258", "alt": "WIN866", "big5": "BIG5", "euccn": "EUC_CN",
    "eucjis2004": "EUC_JIS_2004", "eucjp": "EUC_JP", "euckr": "EUC_KR", "euctw": "EUC_TW",
    "gb18030": "GB18030", "gbk": "GBK", "iso88591": "LATIN1", "iso885910": "LATIN6",
    "iso885913": "LATIN7", "iso885914": "LATIN8", "iso885915": "LATIN9",
    "iso885916": "LATIN10", "iso88592": "LATIN2", "iso88593": "LATIN3", "iso88594": "LATIN4",
    "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6", "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8", "iso88599": "LATIN5", "johab": "JOHAB", "koi8": "KOI8R",
    "koi8r": "KOI8R", "koi8u": "KOI8U", "latin1": "LATIN1", "latin10": "LATIN10",
    "latin2": "LATIN2", "latin3": "LATIN3", "latin4": "LATIN4", "latin5": "LATIN5",
    "latin6": "LATIN6", "latin7": "LATIN7", "latin8": "LATIN8", "latin9": "LATIN9",
    "mskanji": "SJIS", "muleinternal": "MULE_INTERNAL", "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004", "sjis": "SJIS", "sqlascii": "SQL_ASCII",
    "tcvn": "WIN1258", "tcvn5712": "WIN1258", "uhc": "UHC", "unicode": "UTF8", "utf8": "UTF8",
    "vscii": "WIN1258", "win": "WIN1251", "win1250": "WIN1250", "win1251": "WIN1251",
    "win1252": "WIN1252", "win1253": "WIN1253", "win1254": "WIN1254", "win1255": "WIN1255",
    "win1256": "WIN1256", "win1257": "WIN1257", "win1258": "WIN1258", "win866": "WIN866",
    "win874": "WIN874", "win932": "SJIS", "win936": "GBK", "win949": "UHC", "win950": "BIG5",
    "windows1250": "WIN1250", "windows1251": "WIN1251", "windows1252": "WIN1252",
    "windows1253": "WIN1253", "windows1254": "WIN1254", "windows1255": "WIN1255",
    "windows1256": "WIN1256", "windows1257": "WIN1257", "windows1258": "WIN1258",
    "windows866": "WIN866", "windows874": "WIN874", "windows932": "SJIS",
    "windows936": "GBK", "windows949": "UHC", "windows950": "BIG5",
}  # fmt: skip
#: The encodings of more than one byte a character other than UTF8, whose validation
#: (pg_wchar.c's verifiers) the engine does not reproduce.
_MULTIBYTE = frozenset({"BIG5", "EUC_CN", "EUC_JIS_2004", "EUC_JP", "EUC_KR", "EUC_TW",
                        "GB18030", "GBK", "JOHAB", "MULE_INTERNAL", "SJIS", "SHIFT_JIS_2004",
                        "UHC"})  # fmt: skip


def _count_in_encoding(encoding: str) -> Callable[[bytes], int]:
    """length_in_encoding's count for one encoding: pg_verify_mbstr_len, which fails on a
    zero byte in any encoding and on a sequence the encoding does not hold (for UTF8 what
    Python's strict decoder refuses too: overlong forms, surrogates, beyond U+10FFFF)."""

    def invalid(byte: int) -> ValueError:
        return ValueError(f'invalid byte sequence for encoding "{encoding}": 0x{byte:02x}')

    def count(data: bytes) -> int:
        if b"\0" in data:
            raise invalid(0)
        if encoding != "UTF8":
            return len(data)  # (one byte a character)
        try:
            return len(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise invalid(data[e.start]) from None

    return count


def _length_in_encoding(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    """length(bytea, name): the characters `bytes` holds in the encoding named (stable in
    Postgres, so never folded by its planner; strict). The name must be a constant (an
    untyped literal or parameter); UTF8 and the encodings of one byte a character are
    counted, the other multibyte encodings refused."""
    data, enc = args
    if data.type not in (BYTEA, UNKNOWN) or enc.type not in (NAME, TEXT, VARCHAR, UNKNOWN):
        raise error_at(
            f"function length({data.type.sql_name}, {enc.type.sql_name}) does not exist", node
        )
    data = c.coerce(data, BYTEA)
    enc = c.coerce(enc, NAME) if enc.type == UNKNOWN else enc  # (text's name(): the same)
    if not enc.is_const:
        raise error_at("length(bytea, name) is supported with a constant encoding name", node)
    if enc.value is None:
        return const(INT4, None, node)  # (strict: NULL before any row)
    name = str(enc.value)[:63]  # (namein and name(text) cut to NAMEDATALEN - 1 bytes)
    if not name.isascii():
        raise error_at(f'length(bytea, name): encoding name "{name}" is not supported', node)
    encoding = _ENCODING_NAMES.get("".join(ch for ch in name.lower() if ch.isalnum()))
    if encoding is None:
        raise error_at(f'invalid encoding name "{name}"', node)
    if encoding in _MULTIBYTE:
        raise error_at(f"length(bytea, name) in encoding {encoding} is not supported", node)
    count = _count_in_encoding(encoding)
    if data.is_const:
        # (stable: Postgres runs it per row; the engine refuses a constant that fails)
        if data.value is None:
            return const(INT4, None, node)
        try:
            value = count(data.value)
        except ValueError as e:
            raise error_at(str(e), node) from None
        return Expr(INT4, lambda _row, _cache: value, node=node)
    return apply(INT4, count, [data], node)


def _concat_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    if not args:  # (VARIADIC "any": one argument at least)
        raise error_at("function concat() does not exist", node)
    # concat() prints each argument with its output function: char(n) keeps its padding
    parts = [c.as_text(c.padded(a, node, "concat()")) for a in args]
    fns = [p.fn for p in parts]

    def concat(row: Row, cache: Cache) -> str:
        out = []
        for f in fns:
            v = f(row, cache)
            if v is not None:
                out.append(v)
        return "".join(out)

    return Expr(TEXT, concat, node=node)


def _like_builder(ignore_case: bool) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        # like(text, text): a char(n) argument is cast to text (padding trimmed) first
        args = [c.text_of_char(a) for a in args]
        state = c.input_collation(args, node)
        subject = c.coerce(args[0], TEXT) if args[0].type == BPCHAR else args[0]
        return operators.like(c, subject, args[1], None, ignore_case, False, node, state)

    return build


def _array_builder(kind: str) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        a, b = args
        if kind == "cat":
            typ, (a, b) = c.unify([a, b], "array_cat", node)
            if not typ.array:
                raise error_at("array_cat needs arrays", node)
            return apply_nullable(typ, array_cat, [a, b], node)

        def missing() -> str:
            return f"function array_{kind}({a.type.sql_name}, {b.type.sql_name}) does not exist"

        if kind == "append":
            if not a.type.array:
                raise error_at(
                    f"function array_append({a.type.sql_name}, ...) does not exist", node
                )
            elem = operators.compatible_element(c, [a.type.element, b.type], node, missing)
            a, b = c.coerce(a, elem.array_of()), c.coerce(b, elem)
            return apply_nullable(elem.array_of(), array_append, [a, b], node)
        if not b.type.array:
            raise error_at(f"function array_prepend(..., {b.type.sql_name}) does not exist", node)
        elem = operators.compatible_element(c, [a.type, b.type.element], node, missing)
        a, b = c.coerce(a, elem), c.coerce(b, elem.array_of())
        return apply_nullable(elem.array_of(), array_prepend, [a, b], node)

    return build


def _ndims_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    if not args[0].type.array:
        raise error_at(f"function array_ndims({args[0].type.sql_name}) does not exist", node)
    return apply_nullable(INT4, array_ndims_nullable, args, node)


def _justify_builder(func: Callable[[pgv.Interval], pgv.Interval]) -> Builder:
    def build(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
        return apply(INTERVAL, func, [c.coerce(args[0], INTERVAL)], node)

    return build


def _abs_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    arg = args[0] if args[0].type != UNKNOWN else c.coerce(args[0], FLOAT8)
    if arg.type not in NUMERIC_ORDER:
        raise error_at(f"function abs({arg.type.sql_name}) does not exist", node)
    func: Callable[[Value], Value] = abs
    if arg.type in INT_TYPES:
        func = checked_int(arg.type, abs)
    elif arg.type == NUMERIC:
        func = Decimal.copy_abs  # abs() would round to the context's 28 digits
    return apply(arg.type, func, [arg], node)


_TIMETZ = PgType("timetz")


def _message_name(typ: PgType) -> str:
    return "time with time zone" if typ == _TIMETZ else typ.sql_name


#: CoercionForm.COERCE_SQL_SYNTAX: a FuncCall the grammar made of SQL syntax (AT TIME ZONE).
_SQL_SYNTAX = 3


def _timezone_builder(c: Compiler, args: list[Expr], node: ast.Node) -> Expr:
    """`x AT TIME ZONE 'Area/Location'` (timezone(zone, x)) for timestamp and timestamptz.

    The zone must be a constant full zone name: see datetimes.py for why abbreviations and
    POSIX specs, which Postgres reads by rules of its own, are refused rather than guessed.
    """
    zone_arg, subject = args
    # (refusals name what the client wrote, and say "does not exist" only where Postgres
    # has no timezone() for the types: it has (text | interval, timestamp | timestamptz |
    # timetz), a time and a date read as timetz and timestamptz)
    syntax = "AT TIME ZONE" if getattr(node, "funcformat", 0) == _SQL_SYNTAX else "timezone()"
    zone_type, subject_type = zone_arg.type, subject.type
    has_overload = (zone_type in STRING_TYPES or zone_type in (UNKNOWN, INTERVAL)) and (
        subject_type in (UNKNOWN, DATE, TIMESTAMP, TIMESTAMPTZ, TIME, _TIMETZ)
    )
    if not has_overload:
        raise error_at(
            f"function timezone({zone_type.sql_name}, {subject_type.sql_name}) does not exist",
            node,
        )
    if zone_type == INTERVAL:
        raise error_at(
            f"{syntax} with an interval offset is not supported: use a zone name such as"
            " 'America/New_York', or 'UTC'",
            zone_arg.node,
        )
    if not zone_arg.is_const:
        raise error_at(f"{syntax} needs a constant zone name", zone_arg.node)
    if subject.type in (UNKNOWN, DATE):
        subject = c.coerce(subject, TIMESTAMPTZ)  # Postgres's preferred datetime type
    if subject.type == TIMESTAMP:
        result, convert = TIMESTAMPTZ, local_to_tstz
    elif subject.type == TIMESTAMPTZ:
        result, convert = TIMESTAMP, tstz_to_local
    else:
        why = (
            " (Postgres takes the zone's offset on the day the query runs, so the answer"
            " changes with the date)"
            if subject.type in (TIME, _TIMETZ)
            else ""
        )
        raise error_at(
            f"{syntax} on {_message_name(subject.type)} is not supported{why}; on timestamp"
            " and timestamp with time zone it is",
            node,
        )
    name = c.coerce(zone_arg, TEXT).value
    if name is None:
        return const(result, None, node)
    key = zone_key(str(name))
    if key is None:
        raise error_at(
            f'time zone "{name}" is not supported: use a full zone name such as'
            " 'America/New_York', or 'UTC'",
            zone_arg.node,
        )
    c.zones.add(key)  # Postgres must read it as the engine does (zones.ZoneAgreement)
    tz = zone(key)
    return apply(result, lambda value: convert(tz, value), [subject], node)


FUNCTIONS: dict[tuple[str, int], Builder] = {
    ("lower", 1): _case_func("lower"),
    ("upper", 1): _case_func("upper"),
    ("concat", -1): _concat_builder,
    ("length", 1): _length_builder("length", octets=False, of_bytea=True),
    ("length", 2): _length_in_encoding,
    ("char_length", 1): _length_builder("char_length", octets=False, of_bytea=False),
    ("character_length", 1): _length_builder("character_length", octets=False, of_bytea=False),
    ("octet_length", 1): _length_builder("octet_length", octets=True, of_bytea=True),
    ("like", 2): _like_builder(False),
    ("array_cat", 2): _array_builder("cat"),
    ("array_append", 2): _array_builder("append"),
    ("array_prepend", 2): _array_builder("prepend"),
    ("array_ndims", 1): _ndims_builder,
    ("justify_days", 1): _justify_builder(justify_days),
    ("justify_hours", 1): _justify_builder(justify_hours),
    ("justify_interval", 1): _justify_builder(justify_interval),
    ("abs", 1): _abs_builder,
    ("timezone", 2): _timezone_builder,
}

"""A new shape's initial data: one REPEATABLE READ transaction, COPY, chunk files.

Runs in a worker thread on a synchronous psycopg connection: libpq hands COPY data one row
at a time, and the async API would await once per row (4x slower, measured in
reference/postgres-and-replication.md). The thread only creates new files in the shape's
snapshot directory and reports progress to the event loop through callbacks.

Stitching with the replication stream follows Electric: the transaction's
`pg_current_snapshot()` is reported before any row is read, and the stream then skips every
transaction already visible in it (see `SnapshotInfo.visible`).

Postgres renders each row's values as JSON (`row_to_json` of the columns cast to text) and
the key's variable part; Python adds the constant parts. COPY's text format doubles
backslashes (JSON text holds no tabs or newlines), so un-escaping is one `bytes.replace`.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import pq, sql

from ..log.entries import relation_prefix, snapshot_end_message

if TYPE_CHECKING:
    from ..log.files import ShapeLog
    from ..pg.catalog import ColumnInfo, TableInfo


# Types whose cast to text differs from their output function, which is what pgoutput
# sends: bpchar (the cast strips padding), bool (`true` vs `t`), inet (`/32` appended).
_OUTPUT_FUNCTION_TYPES = frozenset({"bpchar", "bool", "inet"})


def _text_expr(col: ColumnInfo) -> sql.Composable:
    """The column as Postgres text, exactly as pgoutput renders it (keys must agree)."""
    ident = sql.Identifier(col.name)
    if col.type_name in _OUTPUT_FUNCTION_TYPES:
        return sql.SQL("CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}, '') END").format(c=ident)
    return sql.SQL("{c}::text").format(c=ident)


# Primary-key types whose text never needs JSON escaping nor `/` doubling: keys for them
# are assembled in Python from the bare value, which keeps the bytes Postgres sends small.
_PLAIN_KEY_TYPES = frozenset({"int2", "int4", "int8", "uuid", "numeric", "date", "oid"})


@dataclass(frozen=True, slots=True)
class RowQuery:
    """A query yielding `key part \t value json` per row, and how to finish each line.

    `sql` selects the key part (the bare primary-key text when `plain_key`, else the whole
    key already JSON-encoded) and `row_to_json` of the selected columns as text; `finish`
    turns one COPY line into the log entry's JSON.
    """

    sql: sql.Composed
    plain_key: bool
    key_open: bytes
    suffix: bytes

    @property
    def _middle(self) -> bytes:
        return (b'\\""' if self.plain_key else b"") + b',"value":'

    def line_overhead(self) -> int:
        """Bytes a finished entry adds to its COPY line (for cutting chunks by size)."""
        head = len(self.key_open) if self.plain_key else len(b'{"key":')
        return head + len(self._middle) + len(self.suffix) - 1  # - tab, + comma - newline

    def finish_block(self, copy_lines: bytes) -> bytes:
        """Many COPY lines (`key \t value \n` each) -> entries joined by commas.

        JSON text holds no raw tab or newline, so the field separator and row terminator
        are the only such bytes: whole chunks are finished with three C-level replaces
        instead of per-row Python work.
        """
        if not copy_lines:
            return b""
        data = copy_lines[:-1]
        if b"\\" in data:
            data = data.replace(b"\\\\", b"\\")
        head = self.key_open if self.plain_key else b'{"key":'
        data = data.replace(b"\t", self._middle).replace(b"\n", self.suffix + b"," + head)
        return head + data + self.suffix

    def assemble(self, key: bytes, value: bytes) -> bytes:
        """The entry JSON from the query's two fields (already free of COPY escaping)."""
        if self.plain_key:
            return self.key_open + key + b'\\""' + b',"value":' + value + self.suffix
        return b'{"key":' + key + b',"value":' + value + self.suffix


def row_json_sql(
    table: TableInfo,
    columns: Sequence[ColumnInfo],
    pk: Sequence[str],
    where_sql: str | None,
    *,
    order_by: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> RowQuery:
    """`SELECT <key part>, row_to_json(r) FROM (SELECT <columns as text> ...) r`.

    Every name goes through `sql.Identifier` / `sql.Literal`; `where_sql` is the engine's
    own deparse of a validated where clause (`shapes/where.py`), never request text.
    Postgres renders values (its output functions, under the session's display settings);
    the constant parts of each line are added in Python.
    """
    prefix = relation_prefix(table.schema, table.name)
    by_name = {c.name: c for c in columns}
    inner = sql.SQL(", ").join(
        sql.SQL("{v} AS {n}").format(v=_text_expr(c), n=sql.Identifier(c.name)) for c in columns
    )
    source: sql.Composable = sql.SQL("{}.{}").format(
        sql.Identifier(table.schema), sql.Identifier(table.name)
    )
    if where_sql:
        source = sql.SQL("{} WHERE {}").format(source, sql.SQL(where_sql))
    if order_by is not None or limit is not None or offset is not None:
        # Ordering must see the columns' own types, not their text casts: sort and cut in
        # an inner query over the table, then render.
        inner_q = sql.SQL("SELECT * FROM {}").format(source)
        if order_by:
            inner_q = sql.SQL("{} ORDER BY {}").format(inner_q, sql.SQL(order_by))
        if limit is not None:
            inner_q = sql.SQL("{} LIMIT {}").format(inner_q, sql.Literal(limit))
        if offset is not None:
            inner_q = sql.SQL("{} OFFSET {}").format(inner_q, sql.Literal(offset))
        source = sql.SQL("({}) AS {}").format(inner_q, sql.Identifier(table.name))
    sub = sql.SQL("SELECT {cols} FROM {source}").format(cols=inner, source=source)
    plain = all(by_name[p].type_name in _PLAIN_KEY_TYPES for p in pk)
    refs = [sql.SQL("r.{}").format(sql.Identifier(p)) for p in pk]
    if plain:
        key = sql.SQL(" || '\\\"/\\\"' || ").join(refs)
    else:
        parts: list[sql.Composable] = [sql.Literal(prefix)]
        for ref in refs:
            parts.append(
                sql.SQL("""'/' || coalesce('"' || replace({v}, '/', '//') || '"', '_')""").format(
                    v=ref
                )
            )
        key = sql.SQL("to_json({})::text").format(sql.SQL(" || ").join(parts))
    query = sql.SQL("SELECT {key}, row_to_json(r)::text FROM ({sub}) r").format(key=key, sub=sub)
    key_open = b'{"key":' + orjson.dumps(prefix + '/"')[:-1]
    suffix = (
        b',"headers":{"operation":"insert","relation":'
        + orjson.dumps([table.schema, table.name])
        + b"}}"
    )
    return RowQuery(query, plain, key_open, suffix)


def run_snapshot(
    conn: psycopg.Connection[Any],
    log: ShapeLog,
    query: RowQuery | None,
    chunk_bytes: int,
    on_snapshot: Callable[[str], None],
    on_chunk: Callable[[int, bool], None],
) -> int:
    """Write the shape's snapshot chunks; returns the number of chunks. Blocking.

    `conn` is an autocommit connection with the engine's display settings (from the
    source's pool). `query` is None for `log=changes_only`: the snapshot is then only its
    `snapshot-end`.
    """
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    assert row is not None
    snap_text = str(row[0])
    on_snapshot(snap_text)
    xmin, xmax, xip = snap_text.split(":")
    end = snapshot_end_message(int(xmin), int(xmax), [int(x) for x in xip.split(",") if x])
    index = 0
    tail = b""
    if query is not None:
        rows: list[bytes] = []
        size = 0
        overhead = query.line_overhead()
        for data in _copy_rows(conn, sql.SQL("COPY ({}) TO STDOUT").format(query.sql)):
            rows.append(data)
            size += len(data) + overhead
            if size >= chunk_bytes:
                log.write_snapshot_chunk(index, query.finish_block(b"".join(rows)))
                on_chunk(index + 1, False)
                index += 1
                rows, size = [], 0
        tail = query.finish_block(b"".join(rows))
    conn.execute("COMMIT")
    log.write_snapshot_chunk(index, tail + b"," + end if tail else end)
    log.mark_snapshot_complete(index + 1)
    on_chunk(index + 1, True)
    return index + 1


def _copy_rows(conn: psycopg.Connection[Any], copy: sql.Composed) -> Iterator[bytes]:
    """The rows of `COPY ... TO STDOUT`, driven at the libpq level.

    psycopg's Copy iterator costs ~2 µs per row; libpq's own blocking calls would hold the
    GIL while Postgres works (freezing the event loop and every other thread), so the
    connection is used non-blocking and waits happen in `select`, which releases it.
    """
    pgconn = conn.pgconn
    sock = pgconn.socket
    pgconn.send_query(copy.as_bytes(conn))
    while pgconn.flush():
        select.select([], [sock], [])
    res = _next_result(pgconn, sock)
    if res is None or res.status != pq.ExecStatus.COPY_OUT:
        _drain_results(pgconn, sock)
        raise _result_error(res)
    while True:
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes > 0:
            yield bytes(data)
        elif nbytes == 0:
            select.select([sock], [], [])
            pgconn.consume_input()
        else:
            break
    final = _next_result(pgconn, sock)
    _drain_results(pgconn, sock)
    if final is None or final.status != pq.ExecStatus.COMMAND_OK:
        raise _result_error(final)


def _next_result(pgconn: pq.abc.PGconn, sock: int) -> pq.abc.PGresult | None:
    while pgconn.is_busy():
        select.select([sock], [], [])
        pgconn.consume_input()
    return pgconn.get_result()


def _drain_results(pgconn: pq.abc.PGconn, sock: int) -> None:
    while _next_result(pgconn, sock) is not None:
        pass


def _result_error(res: pq.abc.PGresult | None) -> psycopg.Error:
    if res is None:
        return psycopg.OperationalError("the snapshot query returned no result")
    return psycopg.errors.error_from_result(res, encoding="utf-8")

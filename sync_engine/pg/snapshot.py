"""A new shape's initial data: one REPEATABLE READ transaction, COPY, chunk files.

Runs in a worker thread on a synchronous psycopg connection: libpq hands COPY data one row
at a time, and the async API would await once per row (4x slower, measured in
reference/postgres-and-replication.md). The thread only creates new files in the shape's
snapshot directory and reports progress to the event loop through callbacks.

Stitching with the replication stream follows Electric: the transaction's
`pg_current_snapshot()` is reported before any row is read, and the stream then skips every
transaction already visible in it (see `SnapshotInfo.visible`).

Rows are built as JSON in SQL, so each COPY line is a finished log entry. COPY's text format
escapes backslashes (and nothing else occurs in JSON text), so un-escaping is one
`bytes.replace` per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson
import psycopg
from psycopg import sql

from ..log.entries import snapshot_end_message

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


def row_json_sql(
    table: TableInfo, columns: Sequence[ColumnInfo], pk: Sequence[str], where_sql: str | None
) -> sql.Composed:
    """`SELECT <one JSON log line per row> FROM table [WHERE ...]`.

    Every name goes through `sql.Identifier` / `sql.Literal`; `where_sql` is the engine's
    own deparse of a validated where clause (`shapes/where.py`), never request text.
    """
    prefix = '"' + table.schema.replace('"', '""') + '"."' + table.name.replace('"', '""') + '"'
    by_name = {c.name: c for c in table.columns}
    key_parts: list[sql.Composable] = [sql.Literal(prefix)]
    for name in pk:
        key_parts.append(
            sql.SQL("""'/' || coalesce('"' || replace({v}, '/', '//') || '"', '_')""").format(
                v=_text_expr(by_name[name])
            )
        )
    value_parts: list[sql.Composable] = []
    for i, col in enumerate(columns):
        name_json = orjson.dumps(col.name).decode()
        value_parts.append(
            sql.SQL("{lead} || coalesce(to_json({v})::text, 'null')").format(
                lead=sql.Literal(("," if i else "") + name_json + ":"), v=_text_expr(col)
            )
        )
    relation = orjson.dumps([table.schema, table.name]).decode()
    line = sql.SQL(
        """'{{"key":' || to_json({key})::text || ',"value":{{' || {values} || """
        """'}},"headers":{{"operation":"insert","relation":' || {rel} || '}}}}'"""
    ).format(
        key=sql.SQL(" || ").join(key_parts),
        values=sql.SQL(" || ").join(value_parts) if value_parts else sql.Literal(""),
        rel=sql.Literal(relation),
    )
    query = sql.SQL("SELECT {line} FROM {schema}.{table}").format(
        line=line, schema=sql.Identifier(table.schema), table=sql.Identifier(table.name)
    )
    if where_sql:
        query = sql.SQL("{q} WHERE {w}").format(q=query, w=sql.SQL(where_sql))
    return query


def run_snapshot(
    dsn: str,
    log: ShapeLog,
    query: sql.Composed | None,
    chunk_bytes: int,
    on_snapshot: Callable[[str], None],
    on_chunk: Callable[[int], None],
) -> int:
    """Write the shape's snapshot chunks; returns the number of chunks. Blocking.

    `query` is None for `log=changes_only`: the snapshot is then only its `snapshot-end`.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        assert row is not None
        snap_text = str(row[0])
        on_snapshot(snap_text)
        xmin, xmax, xip = snap_text.split(":")
        end = snapshot_end_message(int(xmin), int(xmax), [int(x) for x in xip.split(",") if x])
        index = 0
        rows: list[bytes] = []
        size = 0
        if query is not None:
            with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
                for data in copy:
                    b = bytes(data)
                    rows.append(b)
                    size += len(b)
                    if size >= chunk_bytes:
                        log.write_snapshot_chunk(index, _chunk_bytes(rows, None))
                        on_chunk(index + 1)
                        index += 1
                        rows, size = [], 0
        conn.execute("COMMIT")
    log.write_snapshot_chunk(index, _chunk_bytes(rows, end))
    log.mark_snapshot_complete(index + 1)
    on_chunk(index + 1)
    return index + 1


def _chunk_bytes(rows: list[bytes], tail: bytes | None) -> bytes:
    """COPY lines (`json\\n`, backslashes doubled) -> `json,json,...` (+ `,tail`)."""
    data = b"".join(rows)
    if data:
        data = data[:-1].replace(b"\n", b",").replace(b"\\\\", b"\\")
    if tail is not None:
        data = data + b"," + tail if data else tail
    return data

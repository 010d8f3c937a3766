"""Row changes -> the JSON log lines the client reads (pure; orjson).

Keys must be byte-identical to the ones the snapshot query builds in SQL
(`snapshot/query.py`), so both are derived from `relation_prefix` and the same escaping rule:
each primary-key value wrapped in double quotes with `/` doubled, NULL written as `_`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from ..pg.xid_snapshot import XidSnapshot


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def relation_prefix(schema: str, table: str) -> str:
    """`"schema"."table"`, the part of every key before the primary-key values."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def build_key(prefix: str, pk: Sequence[str], row: Mapping[str, str | None]) -> str:
    parts = [prefix]
    for col in pk:
        v = row.get(col)
        parts.append("_" if v is None else '"' + v.replace("/", "//") + '"')
    return "/".join(parts)


def change_message(
    key: str,
    operation: str,
    relation: tuple[str, str],
    value: Mapping[str, str | None],
    *,
    txid: int,
    lsn: int,
    op_position: int,
    last: bool,
    old_value: Mapping[str, str | None] | None = None,
    key_change_to: str | None = None,
    key_change_from: str | None = None,
) -> bytes:
    headers: dict[str, object] = {
        "operation": operation,
        "relation": relation,
        "txids": [txid],
        "lsn": str(lsn),
        "op_position": op_position,
    }
    if last:
        headers["last"] = True
    if key_change_to is not None:
        headers["key_change_to"] = key_change_to
    if key_change_from is not None:
        headers["key_change_from"] = key_change_from
    msg: dict[str, object] = {"key": key, "value": value, "headers": headers}
    if old_value is not None:
        msg["old_value"] = old_value
    return orjson.dumps(msg)


def up_to_date_message(global_last_seen_lsn: int) -> bytes:
    return (
        b'{"headers":{"control":"up-to-date","global_last_seen_lsn":"'
        + str(global_last_seen_lsn).encode()
        + b'"}}'
    )


def snapshot_end_message(snapshot: XidSnapshot) -> bytes:
    return orjson.dumps(
        {
            "headers": {
                "control": "snapshot-end",
                "xmin": str(snapshot.xmin),
                "xmax": str(snapshot.xmax),
                "xip_list": [str(x) for x in sorted(snapshot.xip)],
            }
        }
    )


MUST_REFETCH_BODY = b'[{"headers":{"control":"must-refetch"}}]'

"""Row changes -> the JSON log lines the client reads (pure; orjson).

Keys must be byte-identical to the ones the snapshot query builds in SQL
(`snapshot/query.py`), so both are derived from `relation_prefix` and the same escaping rule:
each primary-key value wrapped in double quotes with `/` doubled, NULL written as `_`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import orjson

from ..pg.xid_snapshot import XidSnapshot

_dumps = orjson.dumps


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


ChangeEntry: TypeAlias = tuple[
    int, str, str, Mapping[str, str | None], Mapping[str, str | None] | None, str | None, str | None
]
"""One log entry of a change, before it is serialised: (op position, key, operation, value,
old_value, key_change_to, key_change_from); the last three are None when absent."""


def change_messages(
    relation: tuple[str, str],
    txid: int,
    lsn: int,
    entries: Sequence[ChangeEntry],
    ends: bool = True,
) -> list[tuple[int, bytes]]:
    """One transaction's entries for one shape as `(op, JSON line)`, the last one marked
    `"last": true` (what tells the client the transaction ends there) unless `ends` is
    False: a big transaction is encoded a part at a time, and only its last part ends it.

    A transaction at a time, so that what its entries share (the relation, txids, LSN) is
    built once: this runs for every change a shape gets.
    """
    txids = [txid]
    lsn_text = str(lsn)
    last_i = len(entries) - 1 if ends else -1
    out: list[tuple[int, bytes]] = []
    for i, (op, key, operation, value, old_value, key_change_to, key_change_from) in enumerate(
        entries
    ):
        headers: dict[str, object] = {
            "operation": operation,
            "relation": relation,
            "txids": txids,
            "lsn": lsn_text,
            "op_position": op,
        }
        if i == last_i:
            headers["last"] = True
        if key_change_to is not None:
            headers["key_change_to"] = key_change_to
        if key_change_from is not None:
            headers["key_change_from"] = key_change_from
        msg: dict[str, object] = {"key": key, "value": value, "headers": headers}
        if old_value is not None:
            msg["old_value"] = old_value
        out.append((op, _dumps(msg)))
    return out


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

"""`change_messages` puts each JSON line together from pieces: byte for byte what orjson makes
of the message as a dict (`message_dict`), for every kind of entry (what it costs against the
dicts: `benchmarks/encode_entries.py`; timings are no pass/fail test).

The lines are what clients read and caches keep (responses are immutable): a byte that
differed from what the engine wrote before would change a body served at the same URL.
"""

from __future__ import annotations

import itertools

import orjson

from sync_engine.log.entries import ChangeEntry, change_messages, message_dict

RELATIONS: list[tuple[str, str]] = [
    ("public", "items"),
    ('we"ird', "tab\\le"),
    ("schéma", "表/名"),
]
#: Values a column's text can hold: empty, quotes, backslashes, control characters, slashes,
#: non-ASCII, a lone surrogate's neighbours, long text.
TEXTS: list[str | None] = [
    None,
    "",
    "plain",
    'a "quoted" \\ value',
    "line\nbreak\ttab\x00nul\x1f\x7f",
    "é 表 🎉 \u2028\u2029",
    "/slashes//",
    "x" * 5000,
]


def _entries() -> list[ChangeEntry]:
    out: list[ChangeEntry] = []
    ops = itertools.count(0, 2)
    for text in TEXTS:
        key = '"public"."items"/"' + (text or "_") + '"'
        value = {"id": "1", "body": text}
        for operation in ("insert", "update", "delete"):
            out.append((next(ops), key, operation, value, None, None, None))
        out.append((next(ops), key, "update", value, {"body": text}, None, None))
        out.append((next(ops), key, "delete", value, None, key + "2", None))
        out.append((next(ops), key, "insert", value, None, None, key + "1"))
        out.append((next(ops), key, "update", {}, {}, key, key))
    out.append((2**31 + 1, "k", "insert", {"a": None, "b": "é"}, None, None, None))
    return out


def _reference(
    relation: tuple[str, str], txid: int, lsn: int, entries: list[ChangeEntry], ends: bool
) -> list[tuple[int, bytes]]:
    last = len(entries) - 1 if ends else -1
    return [
        (e[0], orjson.dumps(message_dict(relation, txid, lsn, e, i == last)))
        for i, e in enumerate(entries)
    ]


def test_lines_are_byte_for_byte_orjsons_of_the_message() -> None:
    entries = _entries()
    for relation in RELATIONS:
        for txid, lsn in ((7, 1000), (2**32 + 5, 2**63 - 1)):
            for ends in (True, False):
                got = change_messages(relation, txid, lsn, entries, ends)
                assert got == _reference(relation, txid, lsn, entries, ends)
                for _, line in got:  # (and each is the message a client parses)
                    assert isinstance(orjson.loads(line), dict)
    # One entry, ending the transaction or not; none.
    one = entries[:1]
    assert change_messages(RELATIONS[0], 1, 2, one) == _reference(RELATIONS[0], 1, 2, one, True)
    assert change_messages(RELATIONS[0], 1, 2, one, False)[0][1].count(b'"last"') == 0
    assert change_messages(RELATIONS[0], 1, 2, []) == []

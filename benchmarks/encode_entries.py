"""What a big transaction's change lines cost to encode: `change_messages` (lines put together
from pieces) against the former way (two dicts and an `orjson.dumps` per entry), side by side
in one run. Byte-for-byte equality is `tests/sync_engine/log/test_entries.py`'s.

    .venv/bin/python benchmarks/encode_entries.py [--rows 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import orjson

from sync_engine.log.entries import ChangeEntry, change_messages, message_dict

Encode = Callable[[tuple[str, str], int, int, list[ChangeEntry], bool], list[tuple[int, bytes]]]


def dicts(
    relation: tuple[str, str], txid: int, lsn: int, entries: list[ChangeEntry], ends: bool
) -> list[tuple[int, bytes]]:
    """The former encoding: a message dict per entry, dumped by orjson."""
    last = len(entries) - 1 if ends else -1
    return [
        (e[0], orjson.dumps(message_dict(relation, txid, lsn, e, i == last)))
        for i, e in enumerate(entries)
    ]


def best_of(encode: Encode, entries: list[ChangeEntry], rounds: int) -> float:
    relation = ("public", "t0")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(0, len(entries), 1000):
            encode(relation, 745, 123456, entries[i : i + 1000], False)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    entries: list[ChangeEntry] = [
        (
            i * 2,
            f'"public"."t0"/"{i}"',
            "insert",
            {"id": str(i), "body": "x" * 200},
            None,
            None,
            None,
        )
        for i in range(a.rows)
    ]
    old = best_of(dicts, entries, a.rounds)
    new = best_of(change_messages, entries, a.rounds)
    print(
        f"load average {os.getloadavg()[0]:.1f}; {a.rows} inserts of ~200 bytes, best of {a.rounds}"
    )
    print("| encoding | µs per entry | / dicts |\n|---|---|---|")
    print(f"| dicts + orjson.dumps (before) | {old / a.rows * 1e6:.2f} | 1.00x |")
    print(f"| change_messages (pieces) | {new / a.rows * 1e6:.2f} | {new / old:.2f}x |")


if __name__ == "__main__":
    main()

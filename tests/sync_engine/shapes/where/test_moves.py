"""Rows moving in and out of shapes by UPDATE, through the engine, against Postgres.

A client following a shape live must hold, after each transaction, exactly the rows
Postgres's `SELECT ... WHERE <where>` returns, with their current values: an UPDATE that
takes a row into the where is an insert (the whole row), one that takes it out a delete,
one that keeps it inside an update, and one that changes its primary key a delete of the
old key and (if the new row matches) an insert of the new one. Seeded random
transactions of updates (of every column type the where reads, a domain's and the key
included), inserts and deletes run under several shapes at once (two of them filed under
the router's equality keys), each with `replica=default` and
`replica=full`; the client applies the log strictly (an insert of a row it holds, or an
update or delete of one it does not, is a protocol error) and is compared with Postgres
after every transaction. `WHERE_MOVES_SEED` / `WHERE_MOVES_TXNS` explore further.
"""

from __future__ import annotations

import os
import random
from typing import Any

import psycopg

from sync_engine.pg.session import with_display_settings
from tests.sync_engine.engine_harness import Engine

TABLE = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN intarr AS int4[];
CREATE TABLE m (id int PRIMARY KEY, i int4, n numeric, f float8, t text, c char(3), b bool,
                d date, ts timestamptz, iv interval, u uuid, ia int4[], e mood, tm time,
                dm posint, i8 int8, f4 float4, v varchar(5), tsn timestamp, by bytea,
                ta text[], i2 int2, da intarr)
"""

VALUES: dict[str, list[str | None]] = {
    "i": ["0", "1", "2", "3", "-3", "2147483647", None],
    "n": ["0", "1.5", "1.50", "2", "NaN", "-0.5", None],
    "f": ["0", "-0", "99.5", "100", "1e300", "NaN", "Infinity", None],
    "t": ["a", "A", "abc", "Ab", "b", "", "ß", None],
    "c": ["ab", "ab ", "a", "abc", "", None],
    "b": ["t", "f", None],
    "d": ["2023-12-31", "2024-01-01", "2024-02-29", "infinity", None],
    "ts": ["2024-01-01 00:00+00", "2024-05-31 23:00-02", "2024-06-01 00:00+00", "-infinity",
           None],
    "iv": ["1 day", "24 hours", "25 hours", "1 mon", "-1 day", "0", None],
    "u": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000", None],
    "ia": ["{}", "{1,2}", "{2}", "{NULL}", "{3,NULL}", None],
    "e": ["sad", "ok", "happy", None],
    "tm": ["00:00", "12:00", "23:59:59.999999", "24:00", None],
    "dm": ["1", "5", "6", None],
    "i8": ["0", "9223372036854775807", "-1", None],
    "f4": ["0.1", "1.5", "1.4999999", "NaN", None],
    "v": ["a", "ab", "B", "", None],
    "tsn": ["2024-01-01 00:00", "2023-12-31 23:59:59.999999", "infinity", None],
    "by": ["\\x41", "\\x", "\\x4142", None],
    "ta": ["{}", "{x}", '{"x y",NULL}', "{a,x}", None],
    "i2": ["0", "32767", "-32768", None],
    "da": ["{}", "{2}", "{3,2}", "{NULL,3}", None],
}  # fmt: skip
COLUMNS = list(VALUES)

#: Each shape's where, OR `id >= 1000000` (the markers, written after each transaction),
#: but for the equalities the router files shapes under (INDEXED), which the markers match
#: by their values (i = 3, dm = 1).
WHERES = [
    "i % 3 = 0 AND b",
    "t ILIKE 'a%' OR c = 'ab'",
    "n > 1.5 AND f < 100",
    "d >= '2024-01-01' AND ts < '2024-06-01 00:00+00'",
    "iv > interval '1 day' OR u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "2 = ANY(ia) OR e::text = 'ok' OR tm > '12:00'",
    "b IS NOT TRUE AND i IS DISTINCT FROM 3",
    "f4 < 1.5 OR v LIKE 'a%' OR tsn > '2024-01-01' OR i8 = 9223372036854775807",
    "by = '\\x41' OR 'x' = ANY(ta) OR i2 + 1 > 0",
    "da @> '{2}' OR da[1] = 3",  # a domain over int4[], read as int4[]
    # equalities the router files the shape under (its index keys), one on a domain
    "i = 3",
    "dm IN (1, 5)",
]
INDEXED = {"i = 3", "dm IN (1, 5)"}
MARKER = 1_000_000
SEED = 20261205


def _row_values(rng: random.Random) -> dict[str, str | None]:
    return {col: rng.choice(pool) for col, pool in VALUES.items()}


def _transaction(engine: Engine, rng: random.Random, keys: set[int], next_key: list[int]) -> None:
    """1 to 4 statements in one transaction: mostly updates (some of the key)."""
    statements: list[tuple[str, list[Any]]] = []
    pending = set(keys)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.15 or not pending:
            key = next_key[0]
            next_key[0] += 1
            values = _row_values(rng)
            names = ", ".join(["id", *values])
            holes = ", ".join(["%s"] * (len(values) + 1))
            statements.append(
                (f"INSERT INTO m ({names}) VALUES ({holes})", [key, *values.values()])
            )
            pending.add(key)
        elif roll < 0.25:
            key = rng.choice(sorted(pending))
            statements.append(("DELETE FROM m WHERE id = %s", [key]))
            pending.discard(key)
        elif roll < 0.35:
            key = rng.choice(sorted(pending))
            new = next_key[0]
            next_key[0] += 1
            sets = [("id", new)] + [(c, rng.choice(VALUES[c])) for c in rng.sample(COLUMNS, 1)]
            statements.append(
                (
                    "UPDATE m SET " + ", ".join(f"{c} = %s" for c, _v in sets) + " WHERE id = %s",
                    [v for _c, v in sets] + [key],
                )
            )
            pending.discard(key)
            pending.add(new)
        else:
            key = rng.choice(sorted(pending))
            cols = rng.sample(COLUMNS, rng.randint(1, 3))
            statements.append(
                (
                    "UPDATE m SET " + ", ".join(f"{c} = %s" for c in cols) + " WHERE id = %s",
                    [rng.choice(VALUES[c]) for c in cols] + [key],
                )
            )
    with psycopg.connect(engine.db_url) as conn:  # one transaction
        for query, params in statements:
            conn.execute(query, params)
    keys.clear()
    keys.update(pending)


def _strict_apply(
    rows: dict[str, dict[str, Any]], messages: list[dict[str, Any]], where: str
) -> None:
    for m in messages:
        if "key" not in m:
            continue
        op, key = m["headers"]["operation"], m["key"]
        if op == "insert":
            assert key not in rows, (where, "insert of a row the client holds", m)
            rows[key] = dict(m["value"])
        elif op == "update":
            assert key in rows, (where, "update of a row the client lacks", m)
            rows[key].update(m["value"])
        else:
            assert key in rows, (where, "delete of a row the client lacks", m)
            del rows[key]


def _postgres_rows(conn: psycopg.Connection[Any], where: str) -> dict[str, dict[str, Any]]:
    select = ", ".join(
        f"CASE WHEN {n} IS NULL THEN NULL ELSE concat({n}, '') END" for n in ["id", *COLUMNS]
    )
    out = {}
    for r in conn.execute(f"SELECT {select} FROM m WHERE ({where}) AND id < {MARKER}"):
        out[r[0]] = dict(zip(["id", *COLUMNS], r, strict=True))
    return out


async def test_rows_moving_in_and_out_by_update_equal_postgres(engine: Engine) -> None:
    engine.sql(TABLE)
    seed = int(os.environ.get("WHERE_MOVES_SEED", SEED))
    txns = int(os.environ.get("WHERE_MOVES_TXNS", 16))
    rng = random.Random(seed)
    keys: set[int] = set()
    for key in range(12):
        values = _row_values(rng)
        cols = ", ".join(["id", *values])
        holes = ", ".join(["%s"] * (len(values) + 1))
        engine.sql(f"INSERT INTO m ({cols}) VALUES ({holes})", [key, *values.values()])
        keys.add(key)
    next_key = [100]
    shapes: list[list[Any]] = []
    for where in WHERES:
        full = where if where in INDEXED else f"({where}) OR id >= {MARKER}"
        for replica in ("default", "full"):
            params = {"table": "m", "where": full, "replica": replica}
            rows: dict[str, dict[str, Any]] = {}
            status, h, body = await engine.get(offset="-1", **params)
            assert status == 200, body
            handle, offset = h["electric-handle"], h["electric-offset"]
            _strict_apply(rows, body, where)
            while "electric-up-to-date" not in h:
                status, h, body = await engine.get(offset=offset, handle=handle, **params)
                assert status == 200, body
                _strict_apply(rows, body, where)
                offset = h["electric-offset"]
            shapes.append([where, params, handle, offset, rows])
    moves = 0
    # (under the engine's session settings: the values as the replication stream has them;
    # one connection for every comparison)
    conn = psycopg.connect(with_display_settings(engine.db_url), autocommit=True)
    for n in range(txns):
        _transaction(engine, rng, keys, next_key)
        marker = MARKER + n
        engine.sql("INSERT INTO m (id, i, dm) VALUES (%s, 3, 1)", [marker])
        for shape in shapes:
            where, params, handle, offset, rows = shape
            before = set(rows)
            for _ in range(20):
                status, h, body = await engine.get(
                    offset=offset, handle=handle, live="true", **params
                )
                assert status == 200, (where, body)
                _strict_apply(rows, body, where)
                offset = h["electric-offset"]
                if f'"public"."m"/"{marker}"' in rows:
                    break
            shape[3] = offset
            got = {
                v["id"]: {k: v.get(k) for k in ["id", *COLUMNS]}
                for v in rows.values()
                if int(v["id"]) < MARKER
            }
            expected = _postgres_rows(conn, where)
            diff = {
                (k, c): ((got.get(k) or {}).get(c), (expected.get(k) or {}).get(c))
                for k in set(got) | set(expected)
                for c in ["id", *COLUMNS]
                if (got.get(k) or {}).get(c) != (expected.get(k) or {}).get(c)
            }
            assert not diff, (seed, n, where, params["replica"], diff)
            moves += len(before ^ set(rows))
    conn.close()
    assert moves >= txns, moves  # rows did move in and out

"""Exactly the rows a user may see, never more: random client filters through the proxy,
checked row by row against PostgreSQL itself.

A member of `org-a` may see the rows with `org_id = 'org-a'` and the columns id, org_id,
title (not salary). Seeded random where clauses over those columns (and attempts at the
hidden one or at the other org) go through the proxy to `sync-engine` on a real Postgres,
as a shape's where and as a subset's where; each answer must equal what Postgres returns for
`org_id = 'org-a' AND (<clause>)`, with only the visible columns. Then random writes move
rows between organisations, change titles, insert and delete, and every shape is caught up
through the proxy (the engine's own evaluation of the clause on changes) and checked again.

`PROXY_ORACLE_SEED` picks another seed; `PROXY_ORACLE_CLAUSES` more clauses.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from proxy.config.loader import build_config
from tests.proxy.proxy_fakes import base_config
from tests.support.engine_process import EngineProcess, apply_messages

SEED = int(os.environ.get("PROXY_ORACLE_SEED", "20261204"))
CLAUSES = int(os.environ.get("PROXY_ORACLE_CLAUSES", "24"))
VISIBLE = ("id", "org_id", "title")

ATOMS = [
    "id > {n}", "id <= {n}", "id = {n}", "id <> {n}", "id IN ({n}, {m})", "id NOT IN ({n})",
    "id BETWEEN {n} AND {m}", "id % 3 = {k}", "title IS NULL", "title IS NOT NULL",
    "title LIKE '{c}%'", "title ILIKE '%{C}%'", "title = 't{n}'", "title > 't{n}'",
    "org_id = 'org-b'", "org_id <> 'org-a'", "org_id IN ('org-a', 'org-b')",
    "COALESCE(title, 'none') = 'none'", "title IS DISTINCT FROM 't{n}'", "true", "false",
    "id = $1", "id < $1", "lower(title) = 't{n}'", "upper(title) LIKE 'T{k}%'",
    "greatest(id, {n}) = {n}", "abs(id - 20) < {n}",
]  # fmt: skip


def _atom(rng: random.Random) -> str:
    n, m = rng.randint(0, 40), rng.randint(0, 40)
    return rng.choice(ATOMS).format(
        n=n, m=m, k=rng.randint(0, 2), c=rng.choice("ta"), C=rng.choice("T1")
    )


def _clause(rng: random.Random, depth: int = 0) -> str:
    if depth >= 2 or rng.random() < 0.4:
        atom = _atom(rng)
        return f"NOT ({atom})" if rng.random() < 0.15 else atom
    op = rng.choice([" AND ", " OR "])
    return "(" + op.join(_clause(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"


def _params(clause: str, rng: random.Random) -> list[str]:
    if "$1" not in clause:
        return []
    return [str(rng.randint(0, 40))]  # `$1` is only ever compared with id


@pytest.fixture
def engine(start_engine: Any) -> EngineProcess:
    return start_engine(
        "CREATE TABLE items (id int PRIMARY KEY, org_id text NOT NULL, title text, salary int)",
        "INSERT INTO items SELECT i, CASE WHEN i % 3 = 0 THEN 'org-b' ELSE 'org-a' END,"
        " CASE WHEN i % 7 = 0 THEN NULL WHEN i % 2 = 0 THEN 'T' || i ELSE 't' || i END,"
        " i * 100 FROM generate_series(1, 40) i",
    )


def _expected(conn: psycopg.Connection[Any], clause: str, params: list[str]) -> dict[str, Any]:
    for i, value in enumerate(params, start=1):  # an untyped literal, as the engine binds `$n`
        clause = clause.replace(f"${i}", sql.Literal(value).as_string(conn))
    rows = conn.execute(
        f"SELECT id, org_id, title FROM items WHERE org_id = 'org-a' AND ({clause})"
    ).fetchall()
    return {str(i): {"id": str(i), "org_id": o, "title": t} for i, o, t in rows}


def _by_id(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {value["id"]: value for value in rows.values()}


class Follower:
    """One shape followed through the proxy as the client's `ShapeStream` does."""

    def __init__(self, proxy: Any, token: str, definition: str) -> None:
        self.proxy, self.token, self.definition = proxy, token, definition
        self.rows: dict[str, dict[str, Any]] = {}
        self.handle: str | None = None
        self.offset = "-1"

    async def catch_up(self) -> None:
        for _ in range(50):
            handle = f"&handle={self.handle}" if self.handle else ""
            reply = await self.proxy.get(
                f"/v1/shape?table=items{self.definition}&offset={self.offset}{handle}",
                token=self.token,
            )
            if reply.status == 409:  # must-refetch: start over, as the client does
                self.rows, self.handle, self.offset = {}, None, "-1"
                continue
            assert reply.status == 200, (self.definition, reply.status, reply.body)
            apply_messages(self.rows, reply.json())
            self.handle = reply.headers["electric-handle"]
            self.offset = reply.headers["electric-offset"]
            if "electric-up-to-date" in reply.headers:
                return
        raise AssertionError(f"never up to date: {self.definition}")


async def test_random_filters_return_exactly_the_policys_rows(
    engine: EngineProcess, db_url: str, idp_server: Any, environ: dict[str, str], make_proxy: Any
) -> None:
    config = base_config(engine.url, str(idp_server.make_url("/jwks.json")))
    config["upstream"].update(first_byte_timeout=10)
    proxy = await make_proxy(build_config(config, environ))
    member = proxy.tokens.make(org_id="org-a")
    rng = random.Random(SEED)
    followers: list[tuple[Follower, str, list[str]]] = []
    refused = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(CLAUSES):
            clause = _clause(rng)
            params = _params(clause, rng)
            definition = f"&where={quote(clause)}" + "".join(
                f"&params[{i}]={quote(p)}" for i, p in enumerate(params, start=1)
            )
            follower = Follower(proxy, member, definition)
            await follower.catch_up()
            assert _by_id(follower.rows) == _expected(conn, clause, params), clause
            followers.append((follower, clause, params))

            subset = f"&subset__where={quote(clause)}"
            if params:
                subset += f"&subset__params={quote(json.dumps(dict(enumerate(params, 1))))}"
            reply = await proxy.get(f"/v1/shape?table=items&offset=-1{subset}", token=member)
            assert reply.status == 200, (clause, reply.body)
            got = {m["value"]["id"]: m["value"] for m in reply.json()["data"]}
            assert got == _expected(conn, clause, params), clause

            # A subset of a filtered shape: the member's filter, the shape's and the subset's.
            if followers[:-1]:
                _, outer, outer_params = rng.choice(followers[:-1])
                if not outer_params and not params:
                    both = f"&where={quote(outer)}&subset__where={quote(clause)}"
                    reply = await proxy.get(f"/v1/shape?table=items&offset=-1{both}", token=member)
                    assert reply.status == 200, (outer, clause, reply.body)
                    got = {m["value"]["id"]: m["value"] for m in reply.json()["data"]}
                    assert got == _expected(conn, f"({outer}) AND ({clause})", []), both

            hidden = await proxy.get(
                f"/v1/shape?table=items&offset=-1&where={quote(f'({clause}) OR salary > 0')}",
                token=member,
            )
            assert hidden.status == 403, hidden.body
            refused += 1

        for _ in range(30):
            i = rng.randint(1, 45)
            action = rng.random()
            if action < 0.35:
                conn.execute(
                    "UPDATE items SET org_id = CASE org_id WHEN 'org-a' THEN 'org-b'"
                    " ELSE 'org-a' END WHERE id = %s",
                    (i,),
                )
            elif action < 0.65:
                title = rng.choice([None, f"t{rng.randint(0, 40)}", f"T{rng.randint(0, 40)}"])
                conn.execute("UPDATE items SET title = %s WHERE id = %s", (title, i))
            elif action < 0.85:
                conn.execute(
                    "INSERT INTO items VALUES (%s, %s, %s, 1) ON CONFLICT (id) DO NOTHING",
                    (i, rng.choice(["org-a", "org-b"]), f"t{i}"),
                )
            else:
                conn.execute("DELETE FROM items WHERE id = %s", (i,))
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone() or ("",)
        for follower, clause, params in followers:
            # Catch up until the engine has seen the last write (its up-to-date promises
            # every change up to the offset it names; the writes above were committed first).
            for _ in range(20):
                await follower.catch_up()
                if _by_id(follower.rows) == _expected(conn, clause, params):
                    break
                live = await proxy.get(
                    f"/v1/shape?table=items{follower.definition}&offset={follower.offset}"
                    f"&handle={follower.handle}&live=true&cursor=1",
                    token=member,
                )
                if live.status == 200:
                    apply_messages(follower.rows, live.json())
                    follower.offset = live.headers["electric-offset"]
            assert _by_id(follower.rows) == _expected(conn, clause, params), (clause, lsn)
    assert refused == CLAUSES

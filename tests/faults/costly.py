"""A where clause cheap to send but costly per row, and a table it is costly on: what the
snapshot-timeout and snapshot-abandonment tests make Postgres chew on."""

from __future__ import annotations

import psycopg


def _concat(leaves: int) -> str:
    if leaves == 1:
        return "name"
    return f"({_concat(leaves // 2)}||{_concat(leaves - leaves // 2)})"


#: A balanced tree of concatenations of `name` (a few KB in a URL): every row becomes a copy
#: hundreds of times its size, seconds per few hundred rows of `wide_items`.
COSTLY = f"length({_concat(500)}) > 0"


def wide_items(db_url: str, rows: int) -> None:
    """`items (id, name)` with `rows` rows of 5,000 characters each."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute(
            "INSERT INTO items SELECT g, repeat('a', 5000) FROM generate_series(1, %s) g",
            (rows,),
        )


def busy_backends(db_url: str) -> int:
    """Backends of this database running a statement with COSTLY in it now."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'active' AND pid <> pg_backend_pid() AND query LIKE %s",
            ("%length(%",),
        ).fetchone()
    assert row is not None
    return int(row[0])

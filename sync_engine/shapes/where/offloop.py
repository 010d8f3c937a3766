"""Long clauses parsed off the event loop.

Parsing and compiling a clause costs ~10-15 us a character (pglast's parse and deparse of
each arm, the compiler, the template): a 64 KB `id = 1 OR id = 2 OR ...` chain took 0.5-1 s
of the event loop, and eight in flight stalled every client of the engine (deliveries and
/v1/health) for seconds. A clause over `INLINE_CHARS` is parsed in one of two threads of its
own (`PARSERS`): a flood of them waits its turn there, and while one is parsed the loop gets
the GIL at every switch interval. Shorter ones are parsed inline (a thread hop would cost
more than the parse).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sync_engine.pg.catalog import ColumnInfo

from .clause import Where, parse_where

#: Clauses up to this many characters are parsed on the event loop (~20-30 ms at most).
INLINE_CHARS = 2048

#: The threads longer clauses are parsed in, for the whole process.
PARSERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="where-parse")

T = TypeVar("T")


async def off_loop(size: int, work: Callable[[], T]) -> T:
    """`work()`, in `PARSERS` when `size` (the clause's characters) passes `INLINE_CHARS`."""
    if size <= INLINE_CHARS:
        return work()
    return await asyncio.get_running_loop().run_in_executor(PARSERS, work)


async def parse_where_async(
    sql: str,
    params: Mapping[str, str],
    columns: Mapping[str, ColumnInfo],
    *,
    allow_enums: bool = False,
    allow_subqueries: bool = False,
    live: bool = True,
) -> Where:
    """`parse_where`, in a thread of `PARSERS` for a long clause: for a request handler."""
    work = functools.partial(
        parse_where,
        sql,
        params,
        columns,
        allow_enums=allow_enums,
        allow_subqueries=allow_subqueries,
        live=live,
    )
    return await off_loop(len(sql) + sum(len(v) for v in params.values()), work)

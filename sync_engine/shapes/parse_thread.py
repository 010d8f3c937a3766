"""Long where clauses (a shape's, a subset's) parsed off the event loop: one thread, a bound.

Parsing, checking, compiling and deparsing a clause is pure Python, linear in its size:
~170 µs a term of `i4 = 1 OR i4 = 2 OR …` (5,000 terms, the most 64 KiB holds, ~0.85 s;
about a third each pglast's parse, the compiler, pglast's deparse). A clause of a few KB or
more is parsed in a worker thread so the loop keeps serving other clients, but the thread
takes the GIL from the loop as long as it runs:
- one thread, shared by shape wheres and subsets: a second one parses no faster (the GIL)
  and halves the loop's share again (8 concurrent 5,000-term subsets: the loop's worst
  answer 212-232 ms and another shape's live change 420-500 ms late with two threads for
  subsets alone; 98 ms and 170 ms with one, the eight done in the same time);
- at most `MAX_WAITING` such parses queued or running: one more is a 503 with Retry-After
  (Electric's answer to too many concurrent requests), not one more second of GIL for every
  client of the engine. A request whose client left while it waited takes its place back
  (its queued parse is cancelled; one already running ends first, and is counted till then).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import ServiceUnavailable

T = TypeVar("T")

#: A clause (with its params, or a subset's where with its order_by and params) of this
#: many characters or more is parsed in the thread; shorter ones (what clients send nearly
#: always, ~1 ms or less) on the loop, where the where templates' cache speeds repeats.
PARSE_IN_THREAD = 2048
#: Long parses queued or running at once; more are refused with `TOO_MANY` (a 503).
MAX_WAITING = 16
#: Seconds a refused client is asked to wait (about what the queue takes to drain a little).
RETRY_AFTER = 2
TOO_MANY = (
    "too many long where clauses are being parsed at once (the limit is {limit}); please retry"
)

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_waiting = 0


def waiting() -> int:
    """Long parses queued or running now."""
    return _waiting


def executor() -> ThreadPoolExecutor:
    """The one thread long parses run in (made on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="where-parse")
        return _executor


def _done(_future: Future[Any]) -> None:
    global _waiting
    with _lock:
        _waiting -= 1


async def parse_off_loop(parse: Callable[[], T]) -> T:
    """`parse()` in the parse thread; ServiceUnavailable if `MAX_WAITING` are already there.

    Counted from submission to the end of the work itself (`_done`, the thread's future),
    not to this coroutine's end: a client that leaves cancels this await at once, while its
    parse may still be running."""
    global _waiting
    pool = executor()
    with _lock:
        if _waiting >= MAX_WAITING:
            raise ServiceUnavailable(TOO_MANY.format(limit=MAX_WAITING), RETRY_AFTER)
        _waiting += 1
    try:
        future = pool.submit(parse)
    except BaseException:
        with _lock:
            _waiting -= 1
        raise
    future.add_done_callback(_done)
    # (cancelling the asyncio future cancels `future` too, if it has not started)
    return await asyncio.wrap_future(future)

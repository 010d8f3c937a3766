"""Ending background tasks on shutdown within a bounded time.

A stop (engine, pause, delete of a source) cancels its tasks and waits for them; a task
that misses its cancellation would hold it for ever. Python 3.11's `asyncio.wait_for`
drops a cancellation that arrives while what it waits for has just finished (it returns
the result instead): a loop around it then goes on, and a stop waiting for it hung (a
clean-clone CI, 300 s, in a source's lag watcher). `cancel_and_wait` cancels again the
tasks still running, every `RECANCEL` seconds, and gives up on them after `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a stop waits for its tasks to end before it goes on without them.
STOP_WAIT = 10.0
#: Seconds between cancellations of a task that has not ended yet.
RECANCEL = 1.0
#: The engine process's exit status once it stops: 1 after `stop_process` (a restart is
#: what it needs: a supervisor restarting on failure does it).
exit_status = 0


def stop_process(reason: str) -> None:
    """Stop the engine process cleanly (as SIGTERM does) and have it exit with status 1:
    for a state only a fresh start clears (`Source`: Postgres went back in time under it)."""
    global exit_status
    exit_status = 1
    logger.critical("stopping the engine: %s; start it again (a restart clears it)", reason)
    os.kill(os.getpid(), signal.SIGTERM)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], what: str, timeout: float = STOP_WAIT
) -> set[asyncio.Future[Any]]:
    """Cancel `tasks` and wait until they end, at most `timeout` seconds; returns those
    still running then (logged, as `what`). Their exceptions are retrieved (not logged)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL, left))
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()
    if pending:
        names = sorted(t.get_name() if isinstance(t, asyncio.Task) else "?" for t in pending)
        logger.warning(
            "%s: %d tasks did not end within %.0f s of their cancellation (%s); going on"
            " without them",
            what,
            len(pending),
            timeout,
            ", ".join(names),
        )
    return pending


async def in_own_thread(fn: Callable[[], object], name: str, timeout: float) -> bool:
    """Run `fn` in a thread of its own and wait for it, at most `timeout` seconds; returns
    whether it finished (it goes on in the background otherwise). For the blocking steps
    of a stop: `asyncio.to_thread`'s default executor has few threads (CPUs + 4), which
    other work can all hold (subset queries waiting on a lock, say), and a stop queued
    behind them waited as long as they did."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
        except Exception:
            logger.exception("%s failed", name)
        finally:
            try:
                loop.call_soon_threadsafe(_resolve, finished)
            except RuntimeError:  # the loop is closed: nobody waits
                pass

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(finished)
        return True
    except TimeoutError:
        logger.warning("%s did not finish within %.0f s; going on without it", name, timeout)
        return False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

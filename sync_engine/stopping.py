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
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a stop waits for its tasks to end before it goes on without them.
STOP_WAIT = 10.0
#: Seconds between cancellations of a task that has not ended yet.
RECANCEL = 1.0
#: Seconds the engine process may take to stop once told to (SIGTERM, SIGINT) before it
#: exits at once, with status 1 (`exit_unless_stopped`): above the sum of the stop's own
#: bounds against a silent Postgres (about 50 s for registered sources, then as much again
#: for the single-database source), which must not be cut.
STOP_LIMIT = 120.0
#: Seconds after `STOP_LIMIT` at which faulthandler's own thread ends the process instead,
#: should no Python thread run by then.
GIL_GRACE = 10.0
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


def exit_unless_stopped(loop: asyncio.AbstractEventLoop, limit: float) -> None:
    """End the process if it has not exited `limit` seconds from now. Each step of a stop
    is bounded, and then goes on without what did not end; but the process's own end waited
    with no limit for every task still running (aiohttp's `run_app` cancels them and waits)
    and for every executor thread (Python's exit joins them): one task that misses its
    cancellation, or one thread blocked in a call with no timeout (a subset query waiting
    on a lock did), kept a stopped engine from exiting, and its container needed SIGKILL.
    Past `limit` every thread's stack goes to stderr, what still runs is logged, and the
    process exits with status 1 (a restart recovers it, as after SIGKILL)."""

    def give_up() -> None:
        try:
            pending = sorted(
                f"{t.get_name()} ({getattr(t.get_coro(), '__qualname__', '?')})"
                for t in asyncio.all_tasks(loop)
            )
        except RuntimeError:  # (the loop changed its tasks meanwhile, or is closed)
            pending = []
        threads = sorted(
            t.name for t in threading.enumerate() if t is not threading.current_thread()
        )
        logger.critical(
            "the engine did not stop within %.0f s: exiting now (tasks still running: %s;"
            " threads: %s; their stacks are on stderr)",
            limit,
            ", ".join(pending) or "none",
            ", ".join(threads),
        )
        try:
            for handler in logging.getLogger().handlers:
                handler.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (OSError, ValueError, RuntimeError):  # (no usable stderr: exit all the same)
            pass
        os._exit(1)

    timer = threading.Timer(limit, give_up)
    timer.name = "stop-limit"
    timer.daemon = True
    timer.start()
    # The same without the GIL, a little later, should a thread hold it (a C call that waits
    # without letting it go froze every Python thread once: the timer's too).
    try:
        faulthandler.dump_traceback_later(limit + GIL_GRACE, exit=True, file=sys.stderr)
    except (OSError, ValueError, RuntimeError):  # (no usable stderr)
        pass


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

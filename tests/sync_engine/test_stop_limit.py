"""The engine process exits after SIGTERM even when something in it does not stop.

Each step of the engine's stop is bounded and then goes on without what did not end, but
the process's own end waited with no limit: aiohttp's `run_app` cancels the tasks still
running and waits for them, and Python's exit joins every executor thread. One task that
missed its cancellation, or one thread blocked in a call with no timeout (a subset query
waiting on a lock did: test_subset_sigterm), held a stopped engine forever; its container
needed SIGKILL. Now past `stopping.STOP_LIMIT` seconds after the signal the engine writes
every thread's stack to stderr, logs what still runs, and exits with status 1.

The engine runs as a process (its CLI, a real Postgres) with one thing added that never
ends: a task that ignores its cancellation, an executor thread that sleeps for an hour, or a
thread that keeps the GIL (then faulthandler's own thread ends the process, a little later).
The limit is set to 3 s in that process (120 s in production) so the test is short.
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.blocking_http import ask, sigterm_and_wait
from tests.support.engine_process import EngineProcess
from tests.support.stuck_engine import stuck_engine
from tests.support.waiting import wait_until

#: Seconds the test waits for the engine to exit after SIGTERM (3 s limit + its stop).
EXIT_BOUND = 60

#: The engine's CLI (the arguments after `python -m sync_engine`), with `STOP_LIMIT` at 3 s and
#: something that never ends started with the app (`sys.argv[1]`: "task" or "thread"), or,
#: as its stop begins, a thread that keeps the GIL ("gil": no Python thread runs again).
WRAPPER = """
import asyncio, ctypes, sys, threading, time
from sync_engine import __main__ as main_module, app as app_module, stopping

stopping.STOP_LIMIT = 3.0
stopping.GIL_GRACE = 2.0
kind = sys.argv[1]
args = sys.argv[sys.argv.index("sync_engine") + 1 :]  # (after `python -m sync_engine`)
real_build_app = app_module.build_app


def build_app(settings):
    app = real_build_app(settings)

    async def never_ending(app):
        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass

        loop = asyncio.get_running_loop()
        if kind in ("task", "gil"):  # ("gil": so that the stop does not end before)
            app["stubborn"] = loop.create_task(stubborn(), name="stubborn")
        elif kind == "thread":
            loop.run_in_executor(None, time.sleep, 3600)

    async def hold_the_gil(app):
        def hold():
            time.sleep(1)  # (the stop's limit is armed by then)
            ctypes.PyDLL(None).sleep(3600)  # a C call that keeps the GIL while it waits

        threading.Thread(target=hold, daemon=True).start()

    app.on_startup.append(never_ending)
    if kind == "gil":
        app.on_shutdown.append(hold_the_gil)
    return app


app_module.build_app = build_app
main_module.main(args)
"""


@pytest.mark.parametrize("kind", ["task", "thread", "gil"])
def test_the_engine_exits_after_sigterm_though_something_does_not_stop(
    kind: str, db_url: str, tmp_path: Path
) -> None:
    wrapper = tmp_path / "engine_with_a_stubborn_part.py"
    wrapper.write_text(WRAPPER)
    engine = EngineProcess(db_url, tmp_path / "data", wrapper=(sys.executable, str(wrapper), kind))
    engine.start()
    try:
        status = sigterm_and_wait(engine, EXIT_BOUND, f"{kind} that never ends")
        assert status == 1, engine.log_tail()
        said = engine.log_tail(20000)
        if kind == "gil":  # (faulthandler's thread: every stack, then the exit)
            assert "Timeout (0:00:05)!" in said, said
        else:
            assert "the engine did not stop within 3 s: exiting now" in said, said
        if kind == "task":
            assert "stubborn" in said, said
    finally:
        engine.stop()


#: Seconds a clean stop may take: past `STOP_LIMIT` the engine exits with status 1 instead.
CLEAN_STOP_BOUND = 150


def _parked(engine: EngineProcess) -> int:
    with urllib.request.urlopen(f"{engine.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return int(float(text.rsplit("sync_engine_parked_requests", 1)[1].split()[0]))


@pytest.mark.timeout(400)
@pytest.mark.parametrize("postgres", ["locked", "silent"])
def test_a_stop_with_held_requests_and_snapshots_waiting_in_postgres_is_clean(
    postgres: str, tmp_path: Path
) -> None:
    """SIGTERM while 10 long-polls are held, a new shape's snapshot and a subset query wait
    on a lock in Postgres, and (`silent`) every Postgres process is stopped (SIGSTOP): the
    engine stops cleanly (status 0, "stopped" logged), within its own bounds, not cut
    off by `STOP_LIMIT`. The subset query held the old engine's exit 300 s."""
    with stuck_engine(tmp_path) as stuck:
        engine = stuck.engine
        shape, handle, offset = stuck.shape, stuck.handle, stuck.offset
        for _ in range(10):
            live = f"{shape}&offset={offset}&handle={handle}&live=true"
            threading.Thread(target=ask, args=(live, CLEAN_STOP_BOUND), daemon=True).start()
        stuck.lock_items()
        subset = f"{shape}&offset={offset}&handle={handle}&subset__where=v%20%3D%200"
        for url in (f"{shape}&offset=-1&where=v%20%3D%201", subset):
            threading.Thread(target=ask, args=(url, CLEAN_STOP_BOUND), daemon=True).start()
        stuck.wait_for_lock_waiters(2, "the snapshot and the subset query waiting on the lock")
        wait_until(lambda: _parked(engine) >= 10, timeout=30, message="10 long-polls held")
        if postgres == "silent":
            stuck.silence_postgres()
        status = sigterm_and_wait(engine, CLEAN_STOP_BOUND, f"Postgres {postgres}")
        said = engine.log_tail(20000)
        assert status == 0, said
        assert '"message": "stopped"' in said, said

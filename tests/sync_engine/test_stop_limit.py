"""The engine process exits after SIGTERM even when something in it does not stop.

Each step of the engine's stop is bounded and then goes on without what did not end, but
the process's own end waited with no limit: aiohttp's `run_app` cancels the tasks still
running and waits for them, and Python's exit joins every executor thread. One task that
missed its cancellation, or one thread blocked in a call with no timeout (a subset query
waiting on a lock did: test_subset_sigterm), held a stopped engine forever; its container
needed SIGKILL. Now past `stopping.STOP_LIMIT` seconds after the signal the engine writes
every thread's stack to stderr, logs what still runs, and exits with status 1.

The engine runs as a process (its CLI, a real Postgres) with one thing added that never
ends: a task that ignores its cancellation, or an executor thread that sleeps for an hour.
The limit is set to 3 s in that process (60 s in production) so the test is short.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.engine_process import EngineProcess

#: Seconds the test waits for the engine to exit after SIGTERM (3 s limit + its stop).
EXIT_BOUND = 60

#: The engine's CLI (the arguments after `python -m sync_engine`), with `STOP_LIMIT` at 3 s and
#: something that never ends started with the app (`sys.argv[1]`: "task" or "thread").
WRAPPER = """
import asyncio, sys, time
from sync_engine import __main__ as main_module, app as app_module, stopping

stopping.STOP_LIMIT = 3.0
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
        if kind == "task":
            app["stubborn"] = loop.create_task(stubborn(), name="stubborn")
        else:
            loop.run_in_executor(None, time.sleep, 3600)

    app.on_startup.append(never_ending)
    return app


app_module.build_app = build_app
main_module.main(args)
"""


@pytest.mark.parametrize("kind", ["task", "thread"])
def test_the_engine_exits_after_sigterm_though_something_does_not_stop(
    kind: str, db_url: str, tmp_path: Path
) -> None:
    wrapper = tmp_path / "engine_with_a_stubborn_part.py"
    wrapper.write_text(WRAPPER)
    engine = EngineProcess(db_url, tmp_path / "data", wrapper=(sys.executable, str(wrapper), kind))
    engine.start()
    try:
        assert engine.proc is not None
        engine.proc.send_signal(signal.SIGTERM)
        try:
            engine.proc.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the engine had not exited {EXIT_BOUND} s after SIGTERM ({kind} that never"
                f" ends):\n{engine.log_tail()}"
            )
        assert engine.proc.returncode == 1, engine.log_tail()
        said = engine.log_tail(20000)
        assert "the engine did not stop within 3 s: exiting now" in said, said
        if kind == "task":
            assert "stubborn" in said, said
    finally:
        engine.stop()

"""A log line per event, up to a few per interval, then one summary of the rest.

Refusing a connection's request (malformed, its head too slow, its head dropped for room)
costs the engine little; it wrote one INFO line for each, so anyone able to reach the port
could fill the engine's log, and the disk it shares, at the rate they open connections,
and bury every other line. Each kind of refusal now logs its first `first` events of an
interval as before, then counts the rest and says how many in one line when the interval
ends (a timer: the summary comes even if the flood stopped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

#: Lines a kind of refusal logs in an interval before the rest are only counted.
FIRST = 10
#: Seconds of an interval.
INTERVAL = 60.0


class ThrottledLog:
    """`log(level, msg, *args)`: as `logger.log` for the first `first` calls of each
    `interval`; the others are counted, and said in one line (`summary % count`) at the
    interval's end, at the level of the loudest one not logged."""

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        *,
        first: int = FIRST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._summary = summary
        self.first = first
        self.interval = interval
        self._clock = clock
        self._window_end = float("-inf")
        self._logged = 0
        self._held = 0
        self._held_level = logging.DEBUG
        self._timer: asyncio.TimerHandle | None = None

    def log(self, level: int, msg: str, *args: object) -> None:
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        if now >= self._window_end:
            self.flush()
            self._window_end = now + self.interval
            self._logged = 0
        if self._logged < self.first:
            self._logged += 1
            self._logger.log(level, msg, *args)
            return
        self._held += 1
        self._held_level = max(self._held_level, level)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # (said by the next call after the interval, or `flush`)
            self._timer = loop.call_later(max(0.0, self._window_end - now), self.flush)

    def flush(self) -> None:
        """Say how many were not logged (if any) and start counting afresh."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held:
            self._logger.log(self._held_level, self._summary, self._held)
        self._held = 0
        self._held_level = logging.DEBUG

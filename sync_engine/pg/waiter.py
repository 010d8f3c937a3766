"""Waiting on a non-blocking libpq connection through the running event loop.

psycopg's async connection waits for us when it runs a query, but the engine also drives libpq
by hand where psycopg's per-call overhead or its blocking COPY API would cost too much: the
snapshot batches (`snapshot/batch.py`) and the replication stream. Both wait on the socket
here, the one place that registers it with the event loop.
"""

from __future__ import annotations

import asyncio

from psycopg import pq


class SocketWaiter:
    """Waits for a libpq connection's socket to turn readable or writable.

    The socket stays registered for reading between waits: a storm's batches wait for rows
    thousands of times, and registering and unregistering each time costs two `epoll_ctl`
    calls. It is unregistered when it turns readable while nobody waits (the caller is
    writing a chunk, say), else the level-triggered loop would spin on it meanwhile, and by
    `unwatch`, which the owner calls when it is done with the connection.

    libpq closes the socket itself when it finds the connection lost (in `consume_input`),
    and the kernel hands its number to the next socket opened: often an accepted HTTP
    connection. A registration left on the old number would then fire for that client's
    socket (uvloop cannot even remove it once a transport owns the number) and spin the
    loop. So a failed `consume_input` unwatches at once, before anything else runs on the
    loop, and owners that drive libpq themselves call `lost` when one of their calls fails.
    """

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        self.pgconn = pgconn
        self.fd = pgconn.socket
        self.loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._watching = False

    def unwatch(self) -> None:
        """Stop watching the socket (before the connection is closed or handed on)."""
        if self._watching:
            self._watching = False
            try:
                self.loop.remove_reader(self.fd)
            except (RuntimeError, ValueError, OSError):  # the number was reused meanwhile
                pass

    def lost(self) -> None:
        """The connection failed (libpq may have closed the socket): stop watching now."""
        self.unwatch()

    def abort(self, exc: BaseException) -> None:
        """Wake a pending `wait_readable` with `exc` (the connection is being closed)."""
        waiter, self._waiter = self._waiter, None
        self.unwatch()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self.unwatch()
        elif not waiter.done():
            waiter.set_result(None)

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Wait until the socket is readable (True) or `timeout` seconds pass (False).

        Reads nothing: the caller consumes the input (see `readable`).
        """
        if not self._watching:
            self.loop.add_reader(self.fd, self._wake)
            self._watching = True
        waiter = self._waiter = self.loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                async with asyncio.timeout(timeout):
                    await waiter
            return True
        except TimeoutError:
            return False
        finally:
            if self._waiter is waiter:
                self._waiter = None

    async def readable(self) -> None:
        """Wait until the socket is readable, then let libpq read what arrived."""
        await self.wait_readable()
        try:
            self.pgconn.consume_input()
        except BaseException:
            self.lost()
            raise

    async def writable(self) -> None:
        """Wait until the socket takes more output (a separate registration: writes never
        disturb a reader's)."""
        fut: asyncio.Future[None] = self.loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        self.loop.add_writer(self.fd, ready)
        try:
            await fut
        finally:
            self.loop.remove_writer(self.fd)

    async def flush(self) -> None:
        """Send everything libpq has queued."""
        while self.pgconn.flush():
            await self.writable()

    async def result(self) -> pq.abc.PGresult | None:
        """The query's next result; None once every result was read."""
        while self.pgconn.is_busy():
            await self.readable()
        return self.pgconn.get_result()

    async def drain(self) -> pq.abc.PGresult | None:
        """Read every remaining result of the query; returns the first error, if any."""
        error = None
        while (res := await self.result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = res
        return error

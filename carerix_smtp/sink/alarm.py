"""The sink's clock for ``latency_ms``: wakes a connection's reply at the time it is
due to within about 0.1 ms.

asyncio's own timers wait in epoll, whose timeout is rounded up to whole
milliseconds: a reply due in 49.3 ms would leave 50 ms later, on average 0.5 ms
late, 1 % of a 50 ms round trip, which a benchmark of pipelining counts against
the client on every message.  So a thread sleeps until the earliest due time
(a condition wait: nanosecond timeouts) and hands the wake-up to the loop.

Waking a thread, then the loop's, takes a few hundred microseconds each on a
virtual machine (measured here: a median of 0.46 ms late in all).  So the thread
wakes the loop EARLY before the due time, and the waiting coroutine spins the
rest, blocking the loop for at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time

# How long before its due time a wait is handed to the loop, which spins the rest.
EARLY = 0.0008


class Alarm:
    """Wakes coroutines of ``loop`` at a ``loop.time()``; one thread, started on the
    first wait, ended by :meth:`close`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def sleep_until(self, when: float) -> None:
        """Return at ``when`` (the loop's clock: time.monotonic), not before."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            closed = self._closed
            if not closed:
                heapq.heappush(self._due, (when - EARLY, next(self._order), waiter))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="cxsmtp-sink-alarm", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
        if closed:  # the sink is stopping: asyncio's timer will do
            await asyncio.sleep(max(0.0, when - self._loop.time()))
            return
        await waiter
        while time.monotonic() < when:  # woken up to EARLY before: never early
            pass

    def close(self) -> None:
        """End the thread (the waits still pending are the loop's to cancel)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._due:
                    self._cond.wait()
                    continue
                left = self._due[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                _, _, waiter = heapq.heappop(self._due)
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # not cancelled (the connection ended)
        waiter.set_result(None)

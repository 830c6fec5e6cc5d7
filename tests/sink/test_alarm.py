"""carerix_smtp.sink.alarm: the latency clock -- never early, in order, and its thread
ends with the sink."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time

from carerix_smtp.sink.alarm import Alarm
from carerix_smtp.sink.config import SinkConfig
from carerix_smtp.sink.server import Sink


def alarm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cxsmtp-sink-alarm"]


def test_wakes_in_order_and_never_early() -> None:
    async def run() -> list[tuple[int, float, float]]:
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop)
        woken: list[tuple[int, float, float]] = []

        async def wait(index: int, when: float) -> None:
            await alarm.sleep_until(when)
            woken.append((index, when, loop.time()))

        # Due times from one base (each task reading the clock itself would let a
        # slow start reorder them); given out of order, the later ones first.
        base = loop.time() + 0.005
        try:
            await asyncio.gather(*(wait(i, base + 0.002 * (5 - i)) for i in range(5)))
        finally:
            alarm.close()
        return woken

    woken = asyncio.run(run())
    assert [index for index, _, _ in woken] == [4, 3, 2, 1, 0]
    assert all(at >= when for _, when, at in woken)
    assert alarm_threads() == []


def test_a_cancelled_wait_leaves_the_others_alone() -> None:
    async def run() -> bool:
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop)
        try:
            cancelled = asyncio.create_task(alarm.sleep_until(loop.time() + 0.01))
            await asyncio.sleep(0)
            cancelled.cancel()
            await alarm.sleep_until(loop.time() + 0.02)
            return cancelled.cancelled()
        finally:
            alarm.close()

    assert asyncio.run(run())


def test_after_close_a_wait_still_waits() -> None:
    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop)
        alarm.close()
        when = loop.time() + 0.01
        await alarm.sleep_until(when)
        return when, loop.time()

    when, at = asyncio.run(run())
    assert at >= when
    assert alarm_threads() == []


def test_the_sink_with_latency_ends_its_alarm_thread() -> None:
    with Sink(SinkConfig(latency_ms=5, out_dir=None)) as sink:
        started = time.monotonic()
        with smtplib.SMTP(sink.host, sink.port, local_hostname="client.test", timeout=5) as smtp:
            assert smtp.noop()[0] == 250
        assert time.monotonic() - started >= 0.015  # greeting, NOOP, QUIT: 5 ms each
        assert len(alarm_threads()) == 1
    assert alarm_threads() == []

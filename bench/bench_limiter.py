"""Limiter accuracy: simulated days of sending through the real ledger code path.

Run: ``python bench/bench_limiter.py`` (part of ``make bench``).

Each scenario drives :class:`carerix_smtp.limits.sqlite.Ledger` (a throw-away SQLite
file, fsync off) with an injected clock and an unlimited queue, the way the
sender does: ``open_batch`` -> ``admit``/``confirm`` per message -> ``close``,
sleeping (by moving the fake clock) until each ``Wait`` ends.  A message takes
5 ms plus 20 ns per byte (50 MB/s).  The report gives the messages per hour
and per 5-minute slot, the maximum over ANY rolling window (must equal the
limit, never exceed it), and the utilisation: messages sent divided by the
most the limits allow in the period with messages always waiting (target 100 %).
Exit status 1 on any overshoot or a utilisation under 99.5 %.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import target

from carerix_smtp.limits.ledger import BatchGrant
from carerix_smtp.limits.rule import Limits
from carerix_smtp.limits.sqlite import Ledger

START = 1_700_000_000.0  # any epoch second; the ledger does not care


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass
class Scenario:
    name: str
    limits: Limits
    hours: int
    sizes: Callable[[random.Random], int]
    seed: int = 1


@dataclass
class Result:
    sends: list[float] = field(default_factory=list)
    batches: list[tuple[float, int, int]] = field(default_factory=list)  # start, count, bytes
    seconds: float = 0.0


def message_seconds(size: int) -> float:
    return 0.005 + size * 20e-9


def size_stream(scenario: Scenario) -> Iterator[int]:
    rng = random.Random(scenario.seed)
    while True:
        yield scenario.sizes(rng)


def simulate(scenario: Scenario, directory: Path) -> Result:
    limits = scenario.limits
    clock = FakeClock(START)
    end = START + scenario.hours * 3600.0
    ledger = Ledger(
        directory / f"{scenario.name}.sqlite3",
        clock=clock,
        sleep=clock.sleep,
        durable=False,
        retention=scenario.hours * 3600.0 + 86_400.0,
    )
    stream = size_stream(scenario)
    head: deque[int] = deque(next(stream) for _ in range(limits.batch_count_cap + 1))
    result = Result()
    began = time.perf_counter()
    number = 0
    while clock.now < end:
        answer = ledger.open_batch("bench", limits, list(head))
        if not isinstance(answer, BatchGrant):
            clock.now = max(clock.now, answer.until)
            continue
        with answer as grant:
            while head and grant.admit(head[0]):
                size = head.popleft()
                head.append(next(stream))
                clock.now += message_seconds(size)
                number += 1
                stamp = grant.confirm(f"<{number}@bench>", size)
                if stamp < end:
                    result.sends.append(stamp)
            if grant.sent and grant.opened_at < end:
                result.batches.append((grant.opened_at, grant.sent, grant.sent_bytes))
    ledger.close()
    result.seconds = time.perf_counter() - began
    return result


def max_in_window(times: list[float], window: float) -> int:
    """Most sends in any [s, s + window): every window worth checking starts at a send."""
    return max((bisect.bisect_left(times, s + window) - i for i, s in enumerate(times)), default=0)


def upper_bound(scenario: Scenario) -> int:
    """The most messages the limits let through in the period with a queue that never empties."""
    limits = scenario.limits
    period = scenario.hours * 3600.0
    by_rate = math.ceil(period / limits.rate_window) * limits.rate_per_hour
    by_day = math.ceil(period / limits.send_limit_window) * limits.email_send_limit
    # Batches: one per interval, each packed FIFO up to the count and byte caps.
    stream = size_stream(scenario)
    by_batches = 0
    pending = next(stream)
    for _ in range(math.ceil(period / limits.batch_interval)):
        count, total = 0, 0
        while count < limits.batch_count_cap and (
            count == 0 or total + pending <= limits.batch_max_bytes
        ):
            count += 1
            total += pending
            pending = next(stream)
        by_batches += count
        if by_batches > min(by_rate, by_day):
            break
    return min(by_rate, by_day, by_batches)


def report(scenario: Scenario, result: Result) -> bool:
    limits = scenario.limits
    times = sorted(result.sends)
    ok = True
    print(f"\n== {scenario.name}")
    print(
        f"   limits: {limits.rate_per_hour}/{limits.rate_window:g} s, batch <= "
        f"{limits.batch_count_cap} msgs / {limits.batch_max_bytes:,} B every "
        f"{limits.batch_interval:g} s within {limits.batch_deadline:g} s, "
        f"email-send-limit {limits.email_send_limit}/{limits.send_limit_window:g} s"
    )
    hours = [0] * scenario.hours
    slots = [0] * (scenario.hours * 12)
    for t in times:
        hours[int((t - START) // 3600)] += 1
        slots[int((t - START) // 300)] += 1
    print(f"   sent per clock hour: {' '.join(str(h) for h in hours)}")
    busy = [s for s in slots if s]
    print(
        f"   per 5-minute slot: max {max(slots)}, min {min(busy) if busy else 0} over "
        f"{len(busy)} slots that sent anything ({len(slots) - len(busy)} idle)"
    )
    for label, window, limit in (
        ("rolling rate window", limits.rate_window, limits.rate_per_hour),
        ("rolling send-limit window", limits.send_limit_window, limits.email_send_limit),
    ):
        worst = max_in_window(times, window)
        verdict = "ok" if worst <= limit else "OVERSHOOT"
        if worst > limit:
            ok = False
        print(f"   max in any {label} ({window:g} s): {worst} (limit {limit}) {verdict}")
    worst_batch = max((c for _, c, _ in result.batches), default=0)
    over_bytes = [b for _, c, b in result.batches if c > 1 and b > limits.batch_max_bytes]
    starts = [s for s, _, _ in result.batches]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    min_gap = min(gaps, default=math.inf)
    batch_ok = (
        worst_batch <= limits.batch_count_cap
        and not over_bytes
        and min_gap >= limits.batch_interval - 1e-6
    )
    ok = ok and batch_ok
    mean_batch = sum(c for _, c, _ in result.batches) / max(1, len(result.batches))
    print(
        f"   batches: {len(result.batches)}, largest {worst_batch} msgs, mean {mean_batch:.1f}, "
        f"largest {max((b for _, _, b in result.batches), default=0):,} B, "
        f"closest starts {min_gap:g} s {'ok' if batch_ok else 'VIOLATION'}"
    )
    bound = upper_bound(scenario)
    utilisation = len(times) / bound if bound else 1.0
    if utilisation < 0.995:
        ok = False
    print(
        f"   utilisation: {len(times)} sent / {bound} allowed = {utilisation:.2%} "
        f"(simulated in {result.seconds:.1f} s)"
    )
    return ok


SCENARIOS = [
    Scenario(
        "seed defaults, 2 days, 2-50 KB messages",
        Limits(),
        hours=48,
        sizes=lambda rng: rng.randint(2_000, 50_000),
    ),
    Scenario(
        "accepts large amounts (6,000/h), 2 days, 160 KB-2 MB messages",
        Limits(rate_per_hour=6000),
        hours=48,
        sizes=lambda rng: rng.randint(160_000, 2_000_000),
        seed=2,
    ),
    Scenario(
        "seed hourly rate alone (email-send-limit lifted), 1 day",
        Limits(email_send_limit=1_000_000),
        hours=24,
        sizes=lambda rng: rng.randint(2_000, 50_000),
        seed=3,
    ),
]


def main() -> int:
    print("limiter accuracy: real Ledger (SQLite, temp file) under an injected clock")
    ok = True
    with tempfile.TemporaryDirectory(prefix="cxsmtp-bench-") as tmp:
        for scenario in SCENARIOS:
            ok = report(scenario, simulate(scenario, Path(tmp))) and ok
    print()
    target(
        "limiter accuracy",
        f"{len(SCENARIOS)} scenarios: "
        + ("no window overshot, utilisation >= 99.5 %" if ok else "see the scenarios above"),
        ok,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

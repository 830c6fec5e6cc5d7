"""Schedules (ETA, dry run): the admission rule of :mod:`carerix_smtp.limits.rule` played forward.

Pure like the rule: no I/O, no clock.  :func:`simulate_schedule` answers
"which batches would send these queues at current limits, and when"; the
ledger's ``plan`` feeds it the recorded state.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from carerix_smtp.limits.rule import (
    Decision,
    Limits,
    TimingModel,
    WindowState,
    next_batch,
    plan_batch_size,
)

__all__ = [
    "PlannedBatch",
    "Schedule",
    "ServerQueue",
    "simulate_schedule",
]


@dataclass(frozen=True)
class PlannedBatch:
    server: str
    start: float
    count: int
    bytes: int
    last_at: float  # expected time of the batch's last message


@dataclass(frozen=True)
class Schedule:
    """The batches that would send the queues at current limits, in time order.

    ``last_at``: when the last queued message is expected to go (None when
    nothing is queued, ``math.inf`` when it never will: email_send_limit 0).
    """

    batches: tuple[PlannedBatch, ...]
    last_at: float | None
    messages: int
    bytes: int

    def for_server(self, server: str) -> tuple[PlannedBatch, ...]:
        return tuple(b for b in self.batches if b.server == server)


@dataclass
class ServerQueue:
    """One server's part of a :func:`simulate_schedule` run."""

    limits: Limits
    sizes: Sequence[int]
    sends: list[float] = field(default_factory=list)  # sorted; recent sends of this server
    last_batch_start: float | None = None
    timing: TimingModel | None = None
    _seconds: list[float] | None = field(default=None, init=False, repr=False, compare=False)

    def seconds(self, start: int, stop: int) -> list[float] | None:
        """The timing model's seconds for ``sizes[start:stop]`` (None: no model),
        predicted once for the whole queue: batch sizing and playing read them both."""
        if self.timing is None or self.timing.empty:
            return None
        if self._seconds is None:
            self._seconds = self.timing.seconds(self.sizes)
        return self._seconds[start:stop]


# Per server while simulating: its sends, its last batch start, its position in sizes.
_QueueState = tuple[list[float], float | None, int]


def simulate_schedule(
    queues: Mapping[str, ServerQueue],
    all_sends: Sequence[float],
    now: float,
    *,
    max_batches: int = 1_000_000,
) -> Schedule:
    """Play the admission rule forward: which batches send the queues, and when.

    Every server's next batch is decided by :func:`next_batch`; the earliest
    one goes first (they share the email_send_limit window).  Inside a batch the
    messages are spread by the timing model (all at the start when none is
    known).  ``all_sends`` are every server's recent sends (sorted); each
    queue's ``sends`` and ``last_batch_start`` describe its server.  The inputs
    are not modified.
    """
    every = sorted(all_sends)
    state: dict[str, _QueueState] = {
        name: (list(q.sends), q.last_batch_start, 0) for name, q in queues.items()
    }  # sends, last start, position in sizes
    batches: list[PlannedBatch] = []
    total_bytes = 0
    total = 0
    last_at: float | None = None
    clock = now
    for _ in range(max_batches):
        best = _earliest_batch(queues, state, every, clock)
        if best is None:
            break
        decision, name = best
        if math.isinf(decision.at):
            last_at = math.inf
            break
        q = queues[name]
        sends, _last, pos = state[name]
        batch = _play_batch(name, q, decision, pos, sends, every)
        batches.append(batch)
        total += batch.count
        total_bytes += batch.bytes
        last_at = batch.last_at if last_at is None else max(last_at, batch.last_at)
        _forget_old_sends(sends, every, batch.start, q, queues)
        state[name] = (sends, batch.start, pos + batch.count)
        clock = batch.start
    return Schedule(tuple(batches), last_at, total, total_bytes)


def _earliest_batch(
    queues: Mapping[str, ServerQueue],
    state: Mapping[str, _QueueState],
    every: Sequence[float],
    clock: float,
) -> tuple[Decision, str] | None:
    """The next batch of every server with messages left; the earliest one (None: all sent)."""
    best: tuple[Decision, str] | None = None
    for name, q in queues.items():
        sends, last_start, pos = state[name]
        if pos >= len(q.sizes):
            continue
        stop = pos + q.limits.batch_count_cap + 1  # all plan_batch_size reads
        size = plan_batch_size(q.sizes[pos:stop], q.limits, q.timing, q.seconds(pos, stop))
        window = WindowState(sends, every, 0, 0, last_start, None)
        decision = next_batch(window, q.limits, clock, size.count)
        if best is None or decision.at < best[0].at:
            best = (decision, name)
    return best


def _play_batch(
    name: str,
    q: ServerQueue,
    decision: Decision,
    pos: int,
    sends: list[float],
    every: list[float],
) -> PlannedBatch:
    """Send ``decision``'s batch from ``pos`` in the queue: its messages join both send lists."""
    start = decision.at
    model = q.timing if q.timing is not None and not q.timing.empty else None
    t = start + (model.setup if model else 0.0)
    taken = q.sizes[pos : pos + decision.count]
    seconds = q.seconds(pos, pos + decision.count) or [0.0] * len(taken)
    # Each message follows the one before: ends[j] is when message j - 1 ends.
    ends = list(itertools.accumulate(seconds, initial=t))
    if all(map(operator.le, decision.release, ends)):
        # Every message is released by the time the one before ends (the usual case,
        # also when this batch follows the last one's pace): no message waits.
        times = ends[1:]
    else:  # some wait for their release time too; the same steps, made by accumulate
        times = list(
            itertools.accumulate(zip(decision.release, seconds, strict=True), _after, initial=t)
        )[1:]
    t = times[-1] if times else t
    # One merge instead of an insort per message (status plays 100,000 forward):
    # ``times`` is sorted, so the sort only merges two runs.
    for known in (sends, every):
        known.extend(times)
        known.sort()
    batch_bytes = sum(taken)
    return PlannedBatch(name, start, len(taken), batch_bytes, t)


def _after(t: float, slot: tuple[float, float]) -> float:
    """When a message ends that starts at its release time or after the one before."""
    release, seconds = slot
    return max(t, release) + seconds


def _forget_old_sends(
    sends: list[float],
    every: list[float],
    start: float,
    q: ServerQueue,
    queues: Mapping[str, ServerQueue],
) -> None:
    # Forget sends that no window can count any more (keeps the lists short).
    del sends[: bisect.bisect_right(sends, start - q.limits.server_window)]
    oldest = start - max(x.limits.send_limit_window for x in queues.values())
    del every[: bisect.bisect_right(every, oldest)]

"""Sending limits as pure policy: no I/O, no clock, no sleeping.

Every function here takes the current time (``now``) and the state it needs as
arguments and returns data; the ledger (:mod:`carerix_smtp.limits.sqlite`) supplies
that state from its SQLite file and an injected clock, the tests and the benchmark
from a fake clock.  Playing the rule forward (ETA, dry run) is
:mod:`carerix_smtp.limits.schedule`.  The numbers are the seed's ("Conditions/restrictions"):

* at most ``rate_per_hour`` messages per server in ANY rolling ``rate_window``
  (seed: 1,200 an hour, 6,000 with "Accepts large amounts of email");
* per server, one batch every ``batch_interval`` (seed: "every 5 minutes"), of at
  most ``batch_max_messages`` (seed: 500) and at most the batch's share of the
  rate, ``rate_per_hour * batch_interval / rate_window`` (= rate/12 with 300 s and
  3,600 s: 100 at 1,200/h, 500 at 6,000/h), and at most ``batch_max_bytes``
  (seed: 80 MB) -- a message larger than that goes alone in its own batch;
* a batch must finish within ``batch_deadline`` (seed: 1 minute): batches are
  sized from the measured time per message and per byte (:class:`TimingModel`);
* at most ``email_send_limit`` messages over ALL servers in any rolling
  ``send_limit_window`` (seed: emailSendLimit, 10,000; 24 hours).

The windows are "rolling": a message counts from the moment its data was
accepted until ``window`` seconds later.  See :func:`next_batch` for why the
admission rule can never let any window overshoot, not even by one message.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from carerix_smtp.limits.windows import (
    count_in_window,
    earliest_with_room,
    window_allowance,
    window_slots,
)

if TYPE_CHECKING:  # rule.py stays importable without the config machinery
    from carerix_smtp.config.file import ServerEntry, Settings

__all__ = [
    "RESERVATION_POLL",
    "BatchSize",
    "Decision",
    "Limits",
    "TimingModel",
    "WaitKind",
    "WindowState",
    "count_in_window",
    "earliest_with_room",
    "format_duration",
    "next_batch",
    "plan_batch_size",
    "release_times",
    "window_allowance",
]

# When only other runs' live reservations stand in the way and their batch
# deadline has already passed (a message still in flight), ask again this often.
RESERVATION_POLL = 1.0


@dataclass(frozen=True)
class Limits:
    """Every number the limiter needs, for one server (plus the global send limit).

    Defaults are the seed's.  :meth:`from_entry` builds one from the config.
    """

    rate_per_hour: int = 1200  # messages per rate_window (seed: 1,200 an hour)
    rate_window: float = 3600.0
    batch_max_messages: int = 500  # seed: "every 5 minutes 500 emails"
    batch_max_bytes: int = 80_000_000  # seed: "if the batch is maximum 80 Mb"
    batch_interval: float = 300.0  # seed: "every 5 minutes"
    batch_deadline: float = 60.0  # seed: "send every batch within 1 minute"
    email_send_limit: int = 10_000  # seed: emailSendLimit "default setting 10.000"
    send_limit_window: float = 86_400.0
    # issue 14: a provider's daily limit for this server alone (Gmail 500 a day...):
    # at most ``daily_limit`` per rolling ``daily_window``; None = none.
    daily_limit: int | None = None
    daily_window: float = 86_400.0
    # How long after its deadline a reservation of an owner that cannot be checked
    # stays counted (ledger.py): one message still in flight may take this long.
    # RFC 5321 §4.5.3.2: 10 minutes for the reply to the final ".", 5 for a command.
    lease_grace: float = 900.0
    # Plan batches to use at most this fraction of the deadline (estimates are noisy).
    deadline_safety: float = 0.8

    def __post_init__(self) -> None:
        if self.rate_per_hour < 1:
            raise ValueError(f"rate_per_hour must be at least 1, not {self.rate_per_hour}")
        if self.batch_max_messages < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_messages and batch_max_bytes must be at least 1")
        if self.email_send_limit < 0:
            raise ValueError(f"email_send_limit must be 0 or more, not {self.email_send_limit}")
        if self.rate_window <= 0 or self.send_limit_window <= 0:
            raise ValueError("rate_window and send_limit_window must be positive")
        if self.batch_interval < 0 or self.batch_deadline <= 0 or self.lease_grace < 0:
            raise ValueError("batch_interval, lease_grace >= 0 and batch_deadline > 0 needed")
        if not 0 < self.deadline_safety <= 1:
            raise ValueError("deadline_safety must be in (0, 1]")
        if (self.daily_limit is not None and self.daily_limit < 1) or self.daily_window <= 0:
            raise ValueError("daily_limit must be at least 1 and daily_window positive")

    @classmethod
    def from_entry(cls, entry: ServerEntry, settings: Settings) -> Limits:
        """The limits of one configured server (and the global emailSendLimit)."""
        return cls(
            rate_per_hour=entry.effective_rate_per_hour,
            rate_window=entry.rate_window,
            batch_max_messages=entry.batch_max_messages,
            batch_max_bytes=entry.batch_max_bytes,
            batch_interval=entry.batch_interval,
            batch_deadline=entry.batch_deadline,
            email_send_limit=settings.email_send_limit,
            send_limit_window=settings.send_limit_window,
            lease_grace=entry.data_timeout + entry.command_timeout,
            daily_limit=entry.daily_limit,
        )

    @property
    def server_window(self) -> float:
        """How far back this server's own sends count: its rate window, or its daily
        window when it has a daily limit (the ledger reads that much)."""
        if self.daily_limit is None:
            return self.rate_window
        return max(self.rate_window, self.daily_window)

    @property
    def rate_share(self) -> int | None:
        """A batch's share of the rate: rate * interval / window (seed: rate/12).

        Spreads the hour's allowance over the hour's batches instead of sending
        500 in the first five minutes and nothing for 55.  None without batching
        (interval 0).
        """
        if self.batch_interval <= 0:
            return None
        # +1e-9: 1200 * 300 / 3600 must be 100, not 99.99999999.
        return max(
            1, math.floor(self.rate_per_hour * self.batch_interval / self.rate_window + 1e-9)
        )

    @property
    def batch_count_cap(self) -> int:
        """The most messages one batch may hold, before bytes and the deadline."""
        cap = min(
            self.batch_max_messages, self.rate_per_hour, self.daily_limit or self.rate_per_hour
        )
        share = self.rate_share
        if share is not None:
            cap = min(cap, share)
        if self.email_send_limit > 0:
            cap = min(cap, self.email_send_limit)
        return max(1, cap)


def format_duration(seconds: float) -> str:
    """300 -> "5 min", 3600 -> "1 h", 86400 -> "24 h", 2.5 -> "2.5 s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


# --- timing model ----------------------------------------------------------


@dataclass(frozen=True)
class TimingModel:
    """Exponentially weighted estimate of how long a message takes to send.

    ``seconds(size) = per_message + per_byte * size``, fitted by weighted least
    squares over (size, seconds) observations.  Each batch contributes a total
    weight of 1 and older batches decay by :attr:`DECAY` per batch, so the model
    follows a server that slows down within a batch or two.  When the sizes
    hardly vary, the split between per-message and per-byte time cannot be
    told apart; :meth:`predict` then scales the mean time up for larger
    messages and never down for smaller ones (conservative both ways).

    ``setup`` is the weighted mean time from the grant to the first message
    (connect, TLS, AUTH), which eats into the deadline as well.
    """

    DECAY = 0.5

    weight: float = 0.0
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_xx: float = 0.0
    sum_xy: float = 0.0
    setup: float = 0.0
    batches: int = 0

    @property
    def empty(self) -> bool:
        return self.weight <= 0.0

    def add_batch(
        self, observations: Sequence[tuple[int, float]], setup: float | None = None
    ) -> TimingModel:
        """The model after one more batch: ``observations`` are (size, seconds) pairs."""
        obs = [(float(x), max(0.0, float(y))) for x, y in observations]
        if not obs and setup is None:
            return self
        d = self.DECAY if not self.empty else 0.0
        w = 1.0 / len(obs) if obs else 0.0
        new_setup = self.setup
        if setup is not None:
            new_setup = max(0.0, setup) if self.batches == 0 else d * self.setup + (1 - d) * setup
        return TimingModel(
            weight=d * self.weight + w * len(obs),
            sum_x=d * self.sum_x + w * sum(x for x, _ in obs),
            sum_y=d * self.sum_y + w * sum(y for _, y in obs),
            sum_xx=d * self.sum_xx + w * sum(x * x for x, _ in obs),
            sum_xy=d * self.sum_xy + w * sum(x * y for x, y in obs),
            setup=new_setup,
            batches=self.batches + 1,
        )

    def _fit(self) -> tuple[float, float] | None:
        """(per_message, per_byte) when the data tell them apart, else None."""
        if self.empty:
            return None
        mx = self.sum_x / self.weight
        my = self.sum_y / self.weight
        var = self.sum_xx / self.weight - mx * mx
        cov = self.sum_xy / self.weight - mx * my
        # Sizes must vary by about 10 % (coefficient of variation) to fit a slope.
        if mx <= 0 or var <= 0.01 * mx * mx:
            return None
        per_byte = cov / var
        per_message = my - per_byte * mx
        if per_byte < 0:  # bigger is not slower: all time is per message
            return my, 0.0
        if per_message < 0:  # all time is per byte
            return 0.0, my / mx
        return per_message, per_byte

    @property
    def per_message(self) -> float | None:
        if self.empty:
            return None
        fit = self._fit()
        return fit[0] if fit is not None else self.sum_y / self.weight

    @property
    def per_byte(self) -> float | None:
        if self.empty:
            return None
        fit = self._fit()
        return fit[1] if fit is not None else 0.0

    def predict(self, size: int) -> float:
        """Expected seconds to send a message of ``size`` bytes (0 when nothing is known)."""
        return self.predictor()(size)

    def predictor(self) -> Callable[[int], float]:
        """``predict`` with the fit made once: schedules call it per message (status
        plays 100,000 forward)."""
        if self.empty:
            return _no_time
        fit = self._fit()
        if fit is not None:
            per_message, per_byte = fit
            return lambda size: per_message + per_byte * size
        mx = self.sum_x / self.weight
        my = self.sum_y / self.weight
        if mx <= 0:
            return lambda size: my
        return lambda size: my * max(1.0, size / mx)

    def seconds(self, sizes: Sequence[int]) -> list[float]:
        """``predict`` of each size, the fit made once and the same arithmetic done by
        ``map`` in C (a schedule's whole queue: 100,000 sizes for ``cxsmtp status``)."""
        if self.empty:
            return [0.0] * len(sizes)
        fit = self._fit()
        if fit is not None:
            per_message, per_byte = fit
            times = map(operator.mul, itertools.repeat(per_byte), sizes)
            return list(map(operator.add, itertools.repeat(per_message), times))
        mx = self.sum_x / self.weight
        my = self.sum_y / self.weight
        if mx <= 0 or max(sizes, default=0) <= mx:
            return [my] * len(sizes)  # my * max(1.0, size / mx) is my when size <= mx
        if min(sizes) > mx:  # the quotients are all at least 1.0
            quotients = map(operator.truediv, sizes, itertools.repeat(mx))
            return list(map(operator.mul, itertools.repeat(my), quotients))
        return [my if size <= mx else my * (size / mx) for size in sizes]


def _no_time(size: int) -> float:
    return 0.0


# --- batch sizing ----------------------------------------------------------


@dataclass(frozen=True)
class BatchSize:
    """How many of the queued messages the next batch should take, and why no more."""

    count: int
    bytes: int  # of those messages (0 when the sizes are unknown)
    limited_by: str  # "count", "bytes", "deadline", "queue"
    expected_seconds: float  # by the timing model (0 when unknown)


def plan_batch_size(
    queued_sizes: Iterable[int],
    limits: Limits,
    timing: TimingModel | None = None,
    seconds: Sequence[float] | None = None,
) -> BatchSize:
    """Size the next batch from the queue head (FIFO), before the rolling windows.

    Takes messages in order while the count stays within
    :attr:`Limits.batch_count_cap`, the bytes within ``batch_max_bytes`` and the
    expected time within ``deadline_safety * batch_deadline`` (minus the setup
    time).  Never less than one message: a message over the byte cap or the time
    budget goes alone rather than waiting forever.  With no sizes given (not
    known yet) only the count cap applies.  ``seconds``: ``timing``'s predictions
    for the sizes when the caller has them already (a schedule).
    """
    cap = limits.batch_count_cap
    model = timing if timing is not None and not timing.empty else None
    budget = limits.deadline_safety * limits.batch_deadline - (model.setup if model else 0.0)
    head = list(itertools.islice(queued_sizes, max(0, cap) + 1))  # what a loop would read
    if not head:  # sizes unknown: the count cap alone
        return BatchSize(cap, 0, "count", 0.0)
    if cap < 1:
        return BatchSize(0, 0, "count", 0.0)
    taken = head[:cap]
    # Running totals (sizes and seconds are never negative, so both only grow): the
    # first message past a cap is found by bisection, the sums made in C, in the
    # order and with the additions of a loop (status sizes 100,000 at a time).
    totals = list(itertools.accumulate(taken))
    if model is None:
        seconds = [0.0] * len(taken)
    elif seconds is None:
        seconds = model.seconds(taken)
    elapsed = list(itertools.accumulate(itertools.islice(seconds, len(taken))))
    stop = min(
        bisect.bisect_right(totals, limits.batch_max_bytes), bisect.bisect_right(elapsed, budget)
    )
    count = max(1, stop)  # never less than one message
    if count < len(taken):
        limited_by = "bytes" if totals[count] > limits.batch_max_bytes else "deadline"
    else:
        limited_by = "count" if len(head) > cap else "queue"
    return BatchSize(count, totals[count - 1], limited_by, elapsed[count - 1])


class WaitKind(str, Enum):
    """What holds the next batch back."""

    INTERVAL = "interval"  # one batch per batch_interval
    RATE = "rate"  # rate_per_hour in the rolling rate_window
    SEND_LIMIT = "send-limit"  # email_send_limit over all servers
    DAILY = "daily"  # the server's own daily_limit in its rolling daily_window
    RESERVED = "reserved"  # other runs hold the rest of the allowance


@dataclass(frozen=True)
class WindowState:
    """What the ledger knows at one moment about one server, for :func:`next_batch`.

    ``server_sends`` / ``all_sends``: sorted acceptance times of this server's
    sends within ``Limits.server_window`` and of every server's sends within
    ``send_limit_window`` (older ones may be included; they do not count).
    ``server_reserved`` / ``all_reserved``: unconfirmed slots of live batches on
    this server / on all servers (``all_reserved`` includes ``server_reserved``).
    ``reservations_end``: the earliest deadline of those live batches.
    """

    server_sends: Sequence[float] = ()
    all_sends: Sequence[float] = ()
    server_reserved: int = 0
    all_reserved: int = 0
    last_batch_start: float | None = None
    reservations_end: float | None = None


@dataclass(frozen=True)
class Decision:
    """When the next batch may start, how many messages it may hold, and when each may go.

    ``kind is None``: start now (``at == now``).  Otherwise wait until ``at``;
    ``kind`` and ``reason`` say why, ``count`` is what the batch may hold then.
    ``release[j]`` is the earliest time the batch's message ``j`` may be sent
    (empty while waiting): usually all ``at``, later while the sends of the
    batch one window ago are still leaving the window.  ``at`` is ``math.inf``
    (``count`` 0) when nothing can ever be sent (email_send_limit 0).
    """

    at: float
    count: int
    kind: WaitKind | None = None
    reason: str = ""
    release: tuple[float, ...] = ()


def _reason(kind: WaitKind, limits: Limits) -> str:
    if kind is WaitKind.INTERVAL:
        return f"next batch window (one batch every {format_duration(limits.batch_interval)})"
    if kind is WaitKind.RATE:
        return f"rate {limits.rate_per_hour} per {format_duration(limits.rate_window)} reached"
    if kind is WaitKind.DAILY:
        return (
            f"daily limit {limits.daily_limit} per {format_duration(limits.daily_window)} reached"
        )
    if kind is WaitKind.SEND_LIMIT:
        if limits.email_send_limit == 0:
            return "email-send-limit is 0: sending is switched off"
        window = format_duration(limits.send_limit_window)
        return f"email-send-limit {limits.email_send_limit} per {window} reached"
    return "other cxsmtp runs hold the rest of the allowance"


def release_times(
    state: WindowState, limits: Limits, at: float, count: int
) -> list[tuple[float, WaitKind]]:
    """For j < ``count``: the earliest time >= ``at`` a batch's (j+1)-th message may go.

    That is when both windows have room for j + 1 more messages, given the
    recorded sends and live reservations (nothing else changes).  ``math.inf``
    where they never will.  Each time comes with the window that sets it (the
    first of rate, send limit, daily limit when two agree).  The times only grow
    with j.
    """
    columns = _window_columns(state, limits, at, count)
    if columns is None:
        return [(at, WaitKind.RATE)] * count
    times = list(map(max, *(column for column, _ in columns)))
    return [
        (r, next(kind for column, kind in columns if column[j] == r)) for j, r in enumerate(times)
    ]


def _release(state: WindowState, limits: Limits, at: float, count: int) -> list[float]:
    """The times of :func:`release_times` alone, the later of the windows' made by
    ``map`` in C (status plays 100,000 messages forward, a batch at a time)."""
    columns = _window_columns(state, limits, at, count)
    if columns is None:
        return [at] * count
    return list(map(max, *(column for column, _ in columns)))


def _window_columns(
    state: WindowState, limits: Limits, at: float, count: int
) -> list[tuple[list[float], WaitKind]] | None:
    """Each window's slots for the ``count`` messages (limits/windows.py), in the
    order rate, send limit, daily limit; None when every window has room for all
    of them at ``at`` (every slot is ``at``)."""
    if (
        count_in_window(state.server_sends, at, limits.rate_window)
        <= limits.rate_per_hour - state.server_reserved - count
        and count_in_window(state.all_sends, at, limits.send_limit_window)
        <= limits.email_send_limit - state.all_reserved - count
        and (
            limits.daily_limit is None
            or count_in_window(state.server_sends, at, limits.daily_window)
            <= limits.daily_limit - state.server_reserved - count
        )
    ):
        return None
    server, every = state.server_sends, state.all_sends
    columns = [
        (
            window_slots(
                server, limits.rate_window, limits.rate_per_hour, state.server_reserved, at, count
            ),
            WaitKind.RATE,
        ),
        (
            window_slots(
                every,
                limits.send_limit_window,
                limits.email_send_limit,
                state.all_reserved,
                at,
                count,
            ),
            WaitKind.SEND_LIMIT,
        ),
    ]
    if limits.daily_limit is not None:  # a third window, the same rule (proof below)
        daily = window_slots(
            server, limits.daily_window, limits.daily_limit, state.server_reserved, at, count
        )
        columns.append((daily, WaitKind.DAILY))
    return columns


def next_batch(state: WindowState, limits: Limits, now: float, wanted: int) -> Decision:
    """The admission rule: when the next batch may start, its size, and its pacing.

    ``wanted`` is what :func:`plan_batch_size` made of the queue.  The batch
    starts at ``t``, no earlier than ``last_batch_start + batch_interval``, and
    its message ``j`` may go from ``r_j`` (:func:`release_times`): the first
    time both windows have room for ``j + 1`` more, i.e.
    ``limit - (sends s with s > r_j - window) - (live reserved slots) >= j + 1``.
    The batch takes the slots with ``r_j <= t + deadline_safety *
    batch_deadline``: all of them when the windows have room now; when the
    batch of one window ago is still leaving the window, the new one follows it
    at its pace (no drift, no lost capacity).  When not even the first slot
    frees up within that horizon the batch waits until it does.

    Why no rolling window can ever overshoot (W the window, L its limit).
    Grants are serialised (one SQLite write transaction each); message ``j`` of
    a grant is sent no earlier than ``r_j`` and stamped with its acceptance
    time ``s_j >= r_j``; a grant counts as a live reservation of its unconfirmed
    slots until it is closed or its owner can send no more.  Take any window
    ``[a, a + W)`` and the LAST grant ``g*`` (in transaction order) with a send
    in it; let ``j`` be the highest index of its sends in the window, so
    ``r_j <= s_j < a + W``, i.e. ``r_j - W < a``.  Every other send in the
    window belongs to an earlier grant.  If it was recorded before ``g*``'s
    transaction, its time ``s >= a > r_j - W``: ``g*`` counted it in ``r_j``'s
    window.  If it was recorded later, its grant was still open at ``g*``'s
    transaction and ``g*`` counted it among the reserved slots.  And ``g*``
    itself has at most ``j + 1`` sends in the window.  So the window holds at
    most ``counted + reserved + j + 1 <= L``.  The argument needs neither the
    batch duration nor a monotonic clock (sends stamped in the "future" are
    counted too, :func:`count_in_window`).  It needs two promises from the
    ledger: a message is stamped no earlier than its release time, and a grant
    is only released when its owner can send no more (or after a lease long
    enough for any message in flight, see ledger.py).
    """
    if wanted < 1:
        raise ValueError("wanted must be at least 1")
    horizon = limits.deadline_safety * limits.batch_deadline
    t = now
    kind: WaitKind | None = None
    if state.last_batch_start is not None:
        opens = state.last_batch_start + limits.batch_interval
        if opens > now:
            t, kind = opens, WaitKind.INTERVAL
    # Two rounds at most: if the first slot frees up too late, start when it does.
    for _ in range(2):
        # The first slot alone says whether the batch can start at ``t`` at all.
        first, first_kind = release_times(state, limits, t, 1)[0]
        if first <= t + horizon:
            times = _release(state, limits, t, wanted)
            # Release times only grow with j: the slots within the horizon are a prefix.
            release = tuple(times[: bisect.bisect_right(times, t + horizon)])
            return Decision(t, len(release), kind, _reason(kind, limits) if kind else "", release)
        if state.all_reserved > 0:
            # Live batches of other runs hold part of the allowance; they end (and give
            # back what they did not use) by their deadline: ask again then if that is sooner.
            due = state.reservations_end if state.reservations_end is not None else t
            wake = max(t, due)
            if wake <= now:
                wake = now + RESERVATION_POLL
            if wake < first:
                return Decision(wake, 0, WaitKind.RESERVED, _reason(WaitKind.RESERVED, limits))
        if math.isinf(first):  # no reservations: the limit itself is 0
            return Decision(math.inf, 0, WaitKind.SEND_LIMIT, _reason(WaitKind.SEND_LIMIT, limits))
        t, kind = first, first_kind
    raise AssertionError("next_batch did not settle")  # pragma: no cover

"""Rolling windows: how many recorded sends a window counts at a moment, and when
it has room for more (the arithmetic under limits/rule.py's admission rule).

A send at ``s`` counts in a window of length ``w`` at time ``t`` while
``s > t - w``; sends stamped later than ``t`` count too (a clock stepped back can
make cxsmtp wait, never overshoot)."""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Sequence


def count_in_window(times: Sequence[float], at: float, window: float) -> int:
    """How many of the sorted ``times`` count against a window at time ``at``.

    A send at ``s`` counts while ``s > at - window``.  Sends stamped later than
    ``at`` (another process's clock ran ahead, or the clock was stepped back)
    count as well: a clock going backwards can make cxsmtp wait, never overshoot.
    """
    return len(times) - bisect.bisect_right(times, at - window)


def window_allowance(
    times: Sequence[float], at: float, window: float, limit: int, reserved: int
) -> int:
    """Messages a window still allows at ``at``: limit - counted sends - live reservations."""
    return limit - reserved - count_in_window(times, at, window)


def earliest_with_room(
    times: Sequence[float], window: float, limit: int, reserved: int, need: int, not_before: float
) -> float:
    """The earliest ``t >= not_before`` at which the window allows ``need`` messages.

    Assumes no new sends and the reservations unchanged, so the answer only moves
    as old sends leave the window.  ``math.inf`` when ``limit - reserved < need``.
    """
    keep = limit - reserved - need  # sends that may still be in the window
    if keep < 0:
        return math.inf
    inside = count_in_window(times, not_before, window)
    if inside <= keep:
        return not_before
    # The oldest (inside - keep) of the sends in the window must have left it.
    first = len(times) - inside
    t = times[first + inside - keep - 1] + window
    # (s + w) - w can round below s: step until the count really drops.
    while count_in_window(times, t, window) > keep:
        t = math.nextafter(t, math.inf)
    return max(t, not_before)


def window_slots(
    times: Sequence[float], window: float, limit: int, reserved: int, at: float, count: int
) -> list[float]:
    """``earliest_with_room(times, window, limit, reserved, j + 1, at)`` for every
    j < ``count``, without a search per j (status plays 100,000 messages forward).

    The first ``limit - reserved - inside`` slots are ``at``.  After them slot j waits
    for the send at index ``len(times) - keep - 1`` (``keep = limit - reserved - j - 1``)
    to leave the window: consecutive indexes, one slice of ``times``; ``math.inf`` once
    ``keep`` is negative.  ``(s + w) - w`` can round below ``s``: such a slot steps up
    as earliest_with_room does.
    """
    inside = count_in_window(times, at, window)
    free = max(0, min(count, limit - reserved - inside))
    slots = [at] * free
    if free == count:
        return slots
    waiting = min(count, limit - reserved)  # slots with keep >= 0
    first = len(times) - limit + reserved  # index of the send slot j waits for, minus j
    leaving = times[first + free : first + waiting]
    ends = list(map(operator.add, leaving, itertools.repeat(window)))
    short = list(map(operator.lt, map(operator.sub, ends, itertools.repeat(window)), leaving))
    if any(short):
        for i in itertools.compress(range(len(ends)), short):
            ends[i] = _step_past(leaving[i], window)
    slots += map(max, ends, itertools.repeat(at))
    slots.extend([math.inf] * (count - len(slots)))
    return slots


def _step_past(s: float, window: float) -> float:
    """The least float ``t`` with ``t - window >= s``, from ``s + window`` up."""
    t = s + window
    while t - window < s:
        t = math.nextafter(t, math.inf)
    return t

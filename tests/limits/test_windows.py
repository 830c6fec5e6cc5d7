"""limits/windows.py: the slots of a whole batch made from one slice of the sends
are the slots a search per message finds; release_times combines them as before."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from carerix_smtp.limits.rule import Limits, WaitKind, WindowState, release_times
from carerix_smtp.limits.windows import earliest_with_room, window_slots

sends = st.lists(st.floats(0.0, 200.0, allow_nan=False), max_size=40).map(sorted)


@settings(max_examples=400, deadline=None)
@given(
    times=sends,
    window=st.sampled_from([0.1, 1.0, 60.0, 100.0, 86_400.0]),
    limit=st.integers(0, 45),
    reserved=st.integers(0, 10),
    at=st.floats(0.0, 300.0, allow_nan=False),
    count=st.integers(0, 60),
)
def test_window_slots_are_earliest_with_room_for_each_message(
    times: list[float], window: float, limit: int, reserved: int, at: float, count: int
) -> None:
    expected = [earliest_with_room(times, window, limit, reserved, j + 1, at) for j in range(count)]
    assert window_slots(times, window, limit, reserved, at, count) == expected


def test_a_send_whose_window_end_rounds_down_steps_up_as_the_search_does() -> None:
    """(s + w) - w < s for these floats: the slot is the next float up, in both."""
    s, window = 0.2, 3_600.0
    assert (s + window) - window < s
    slots = window_slots([s], window, 1, 0, 0.0, 2)
    assert slots == [earliest_with_room([s], window, 1, 0, 1, 0.0), math.inf]
    assert slots[0] > s + window and slots[0] - window >= s


def reference_release_times(
    state: WindowState, limits: Limits, at: float, count: int
) -> list[tuple[float, WaitKind]]:
    """release_times as it was: a search per message and window (the reference)."""
    out = []
    for j in range(count):
        rate = earliest_with_room(
            state.server_sends, limits.rate_window, limits.rate_per_hour,
            state.server_reserved, j + 1, at,
        )  # fmt: skip
        day = earliest_with_room(
            state.all_sends, limits.send_limit_window, limits.email_send_limit,
            state.all_reserved, j + 1, at,
        )  # fmt: skip
        slot = (rate, WaitKind.RATE) if rate >= day else (day, WaitKind.SEND_LIMIT)
        if limits.daily_limit is not None:
            daily = earliest_with_room(
                state.server_sends, limits.daily_window, limits.daily_limit,
                state.server_reserved, j + 1, at,
            )  # fmt: skip
            slot = max(slot, (daily, WaitKind.DAILY), key=lambda s: s[0])
        out.append(slot)
    return out


@settings(max_examples=300, deadline=None)
@given(
    server=sends,
    others=sends,
    at=st.floats(0.0, 300.0, allow_nan=False),
    count=st.integers(1, 50),
    rate=st.integers(1, 30),
    send_limit=st.integers(0, 40),
    daily=st.none() | st.integers(1, 30),
    reserved=st.integers(0, 5),
)
def test_release_times_are_what_a_search_per_message_found(
    server: list[float],
    others: list[float],
    at: float,
    count: int,
    rate: int,
    send_limit: int,
    daily: int | None,
    reserved: int,
) -> None:
    limits = Limits(
        rate_per_hour=rate,
        rate_window=60.0,
        email_send_limit=send_limit,
        send_limit_window=100.0,
        daily_limit=daily,
        daily_window=150.0,
    )
    state = WindowState(server, sorted(server + others), reserved, reserved + 1)
    assert release_times(state, limits, at, count) == reference_release_times(
        state, limits, at, count
    )

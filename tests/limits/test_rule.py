"""limits/rule.py: batch sizing and the timing model's predictions made for a whole
queue at once (running totals, a comprehension) give what a loop per message gave."""

from __future__ import annotations

from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from carerix_smtp.limits.rule import BatchSize, Limits, TimingModel, plan_batch_size
from carerix_smtp.limits.schedule import ServerQueue, simulate_schedule


def loop_batch_size(
    queued_sizes: Iterable[int], limits: Limits, timing: TimingModel | None
) -> BatchSize:
    """plan_batch_size as it was: one message at a time (the reference)."""
    cap = limits.batch_count_cap
    model = timing if timing is not None and not timing.empty else None
    budget = limits.deadline_safety * limits.batch_deadline - (model.setup if model else 0.0)
    count, total, elapsed, limited_by = 0, 0, 0.0, "queue"
    for size in queued_sizes:
        if count >= cap:
            limited_by = "count"
            break
        seconds = model.predict(size) if model else 0.0
        if count > 0 and total + size > limits.batch_max_bytes:
            limited_by = "bytes"
            break
        if count > 0 and elapsed + seconds > budget:
            limited_by = "deadline"
            break
        count += 1
        total += size
        elapsed += seconds
    else:
        if count == 0:
            return BatchSize(cap, 0, "count", 0.0)
    return BatchSize(count, total, limited_by, elapsed)


sizes = st.lists(st.integers(min_value=0, max_value=5_000_000), max_size=60)
observations = st.lists(
    st.tuples(st.integers(0, 5_000_000), st.floats(-1.0, 30.0, allow_nan=False)), max_size=6
)


@st.composite
def models(draw: st.DrawFn) -> TimingModel | None:
    if draw(st.booleans()):
        return None
    model = TimingModel()
    for batch in draw(st.lists(observations, max_size=4)):
        model = model.add_batch(batch, draw(st.none() | st.floats(0.0, 20.0)))
    return model


limit_sets = st.builds(
    Limits,
    batch_max_messages=st.integers(1, 80),
    batch_max_bytes=st.integers(1, 40_000_000),
    batch_deadline=st.floats(0.5, 120.0),
)


@settings(max_examples=400, deadline=None)
@given(sizes, limit_sets, models())
def test_plan_batch_size_is_what_a_loop_per_message_gave(
    queue: list[int], limits: Limits, model: TimingModel | None
) -> None:
    assert plan_batch_size(queue, limits, model) == loop_batch_size(queue, limits, model)
    assert plan_batch_size(iter(queue), limits, model) == loop_batch_size(queue, limits, model)
    if model is not None:  # a schedule hands over the predictions it made for the queue
        given_seconds = plan_batch_size(queue, limits, model, model.seconds(queue))
        assert given_seconds == loop_batch_size(queue, limits, model)


@settings(max_examples=200, deadline=None)
@given(sizes, models())
def test_seconds_of_a_queue_are_each_prediction_never_negative(
    queue: list[int], model: TimingModel | None
) -> None:
    model = model or TimingModel()
    expected = [model.predict(size) for size in queue]
    assert model.seconds(queue) == expected
    assert all(seconds >= 0.0 for seconds in expected)  # what the running totals rely on


def test_a_schedule_of_100000_plays_every_message_in_order() -> None:
    """The batch's send times are the running sum of the predictions (the same
    additions as one message at a time), with the sizes alternating so that the
    byte-based fit is used."""
    model = TimingModel().add_batch([(1_000, 0.01), (100_000, 0.5)], setup=0.25)
    queue = [1_000 if n % 2 else 100_000 for n in range(100_000)]
    limits = Limits(
        rate_per_hour=10**8,
        batch_max_messages=10**6,
        batch_max_bytes=10**11,
        batch_deadline=10**6,
        email_send_limit=10**8,
    )
    schedule = simulate_schedule({"s": ServerQueue(limits, queue, timing=model)}, [], 1000.0)
    t = 1000.0 + model.setup
    for size in queue:
        t += model.predict(size)
    assert [(b.count, b.bytes) for b in schedule.batches] == [(100_000, sum(queue))]
    assert schedule.last_at == t

"""limits/schedule.py: a batch played forward gives, to the last bit, the times a
loop per message gives (``max(end of the one before, release) + its seconds``),
whether its messages wait for their release times or not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carerix_smtp.limits.rule import Decision, Limits, TimingModel
from carerix_smtp.limits.schedule import ServerQueue, _play_batch


def loop_times(t: float, release: tuple[float, ...], seconds: list[float]) -> list[float]:
    times = []
    for r, s in zip(release, seconds, strict=True):
        t = max(t, r) + s
        times.append(t)
    return times


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[int], Decision, TimingModel]:
    sizes = draw(st.lists(st.integers(1, 200_000), min_size=1, max_size=40))
    start = draw(st.floats(0.0, 1e6, allow_nan=False))
    gaps = draw(
        st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=len(sizes), max_size=len(sizes))
    )
    release, r = [], start - draw(st.floats(0.0, 3.0))
    for gap in gaps:
        r += gap
        release.append(max(r, start))
    model = TimingModel().add_batch(
        [(size, draw(st.floats(0.001, 2.0))) for size in sizes[:3]], draw(st.floats(0.0, 1.0))
    )
    return sizes, Decision(start, len(sizes), None, "", tuple(release)), model


@settings(max_examples=300, deadline=None)
@given(batch=batches())
def test_a_batch_plays_as_a_loop_per_message_did(
    batch: tuple[list[int], Decision, TimingModel],
) -> None:
    sizes, decision, model = batch
    queue = ServerQueue(Limits(), sizes, timing=model)
    sends: list[float] = []
    every: list[float] = []
    played = _play_batch("s", queue, decision, 0, sends, every)
    expected = loop_times(
        decision.at + (model.setup if not model.empty else 0.0),
        decision.release,
        queue.seconds(0, len(sizes)) or [0.0] * len(sizes),
    )
    assert sends == every == sorted(expected)
    assert played.last_at == expected[-1] and played.count == len(sizes)

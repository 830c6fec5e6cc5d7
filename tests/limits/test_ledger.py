"""The ledger stores (ledger.py, sqlite*.py, postgres*.py, owner.py): grants, waits, crashes,
many processes at once.  Tests taking ``store`` or ``ledger`` run against both stores
(conftest.py); the rest are SQLite's own (its file, its errors)."""

from __future__ import annotations

import bisect
import itertools
import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_server import StoreFactory

from carerix_smtp.errors import CxsmtpError
from carerix_smtp.limits.ledger import (
    BatchGrant,
    GrantExceededError,
    LedgerBusyError,
    LedgerError,
    Wait,
)
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.rule import Limits, WaitKind
from carerix_smtp.limits.sqlite import Ledger

# The subprocess scripts below open the store their first argument names.
OPEN_STORE = """
from carerix_smtp.limits.sqlite import Ledger
if sys.argv[1].startswith("postgresql://"):
    from carerix_smtp.limits.postgres import PostgresLedger as Ledger
"""

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(store: StoreFactory, clock: FakeClock) -> Iterator[Ledger]:
    with store(clock=clock, sleep=clock.sleep) as led:
        yield led


def grant_of(result: BatchGrant | Wait) -> BatchGrant:
    assert isinstance(result, BatchGrant), result
    return result


def wait_of(result: BatchGrant | Wait) -> Wait:
    assert isinstance(result, Wait), result
    return result


def send_all(grant: BatchGrant, sizes: list[int], clock: FakeClock, each: float = 0.01) -> int:
    """What the sender does: admit, 'send', confirm; returns how many went."""
    sent = 0
    with grant:
        for n, size in enumerate(sizes):
            if not grant.admit(size):
                break
            clock.now += each
            grant.confirm(f"<{n}@test>", size)
            sent += 1
    return sent


SMALL = Limits(
    rate_per_hour=10,
    rate_window=100.0,
    batch_max_messages=4,
    batch_max_bytes=10_000,
    batch_interval=40.0,
    batch_deadline=5.0,
    email_send_limit=15,
    send_limit_window=400.0,
    lease_grace=30.0,
)


# --- basics -----------------------------------------------------------------------


def test_file_is_private_wal_and_lives_in_the_state_dir(tmp_path: Path) -> None:
    with Ledger.in_state_dir(tmp_path / "state") as led:
        assert led.path == tmp_path / "state" / "ledger.sqlite3"
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "ledger.sqlite3").st_mode)
    assert mode == 0o600
    conn = sqlite3.connect(tmp_path / "state" / "ledger.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_batch_records_each_send_at_its_acceptance_time(ledger: Ledger, clock: FakeClock) -> None:
    grant = grant_of(ledger.open_batch("a", Limits(), [1000, 2000, 3000]))
    assert (grant.max_messages, grant.max_bytes, grant.deadline_at) == (3, 80_000_000, T0 + 60)
    assert send_all(grant, [1000, 2000, 3000], clock, each=0.5) == 3
    sends = ledger.sends("a")
    assert [(s.time - T0, s.bytes, s.message_id) for s in sends] == [
        (0.5, 1000, "<0@test>"),
        (1.0, 2000, "<1@test>"),
        (1.5, 3000, "<2@test>"),
    ]
    assert not any(s.presumed for s in sends)


def test_the_ledger_survives_runs(store: StoreFactory, clock: FakeClock) -> None:
    with store(clock=clock) as first:
        send_all(grant_of(first.open_batch("a", SMALL, [1] * 4)), [1] * 4, clock)
    clock.now += 1
    with store(clock=clock) as second:
        wait = wait_of(second.open_batch("a", SMALL, [1] * 4))
        assert wait.kind is WaitKind.INTERVAL
        assert wait.until == T0 + 40
        assert len(second.sends()) == 4


def test_interval_rate_share_and_partial_batch(ledger: Ledger, clock: FakeClock) -> None:
    # rate 10 per 100 s, one batch every 40 s: a batch's share is 10 * 40 / 100 = 4.
    assert SMALL.batch_count_cap == 4
    sizes = []
    for start in (0, 40, 80):
        clock.now = T0 + start
        grant = grant_of(ledger.open_batch("a", SMALL, [1] * 50))
        sizes.append(grant.max_messages)
        send_all(grant, [1] * 50, clock)
        wait = wait_of(ledger.open_batch("a", SMALL, [1] * 50))
        assert wait.kind is WaitKind.INTERVAL and wait.until == T0 + start + 40
        assert wait.reason == "next batch window (one batch every 40 s)"
    # The third batch only got what was left of the window.
    assert sizes == [4, 4, 2]


def test_daily_limit_per_server_across_runs(ledger: Ledger, clock: FakeClock) -> None:
    # issue 14: a server's own daily limit (a preset's Gmail 500 a day), counted over
    # its rolling day by the ledger, while the hour still allows more.
    limits = Limits(**{**SMALL.__dict__, "batch_interval": 0.0, "daily_limit": 6})
    sent = 0
    for _ in range(3):
        result = ledger.open_batch("a", limits, [1] * 50)
        if isinstance(result, Wait):
            break
        sent += result.max_messages
        send_all(result, [1] * 50, clock)
    assert sent == 6
    wait = wait_of(ledger.open_batch("a", limits, [1] * 50))
    assert wait.kind is WaitKind.DAILY
    assert wait.reason == "daily limit 6 per 24 h reached"
    assert wait.until == pytest.approx(T0 + 86_400.01)  # the first send leaves the day
    assert grant_of(ledger.open_batch("b", limits, [1] * 50)).max_messages == 4  # its own day
    clock.now = T0 + 86_400.02
    assert grant_of(ledger.open_batch("a", limits, [1] * 50)).max_messages >= 1


def test_rate_then_send_limit(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits(**{**SMALL.__dict__, "batch_interval": 0.0})  # no batching: rate and limit
    for expected in (4, 4, 2):
        grant = grant_of(ledger.open_batch("a", limits, [1] * 50))
        assert grant.max_messages == expected
        send_all(grant, [1] * 50, clock)
    wait = wait_of(ledger.open_batch("a", limits, [1] * 50))
    assert wait.kind is WaitKind.RATE
    assert wait.reason == "rate 10 per 100 s reached"
    assert wait.until == pytest.approx(T0 + 100.01)  # when the first send leaves the window
    assert wait.batch_size == 4  # the sends of 0.01 .. 0.04 leave within the horizon
    # Another server shares the send limit: 5 left of 15.
    grant = grant_of(ledger.open_batch("b", limits, [1] * 50))
    assert grant.max_messages == 4
    send_all(grant, [1] * 50, clock)
    grant = grant_of(ledger.open_batch("b", limits, [1] * 50))
    assert grant.max_messages == 1
    send_all(grant, [1] * 50, clock)
    wait = wait_of(ledger.open_batch("b", limits, [1] * 50))
    assert wait.kind is WaitKind.SEND_LIMIT
    assert wait.reason == "email-send-limit 15 per 400 s reached"
    assert wait.until == pytest.approx(T0 + 400.01)


def test_acquire_sleeps_through_short_waits_only(ledger: Ledger, clock: FakeClock) -> None:
    send_all(grant_of(ledger.open_batch("a", SMALL, [1] * 4)), [1] * 4, clock)
    clock.now = T0 + 37  # 3 s before the next batch window: the deadline (5 s) covers it
    grant = grant_of(ledger.acquire("a", SMALL, [1] * 4, sleep=clock.sleep))
    assert clock.slept == [pytest.approx(3.0)]
    send_all(grant, [1] * 4, clock)
    result = ledger.acquire("a", SMALL, [1] * 4, sleep=clock.sleep)  # 40 s away: too long
    assert wait_of(result).kind is WaitKind.INTERVAL
    assert len(clock.slept) == 1
    grant_of(ledger.acquire("a", SMALL, [1] * 4, sleep=clock.sleep, max_wait=math.inf)).close()
    assert clock.now >= T0 + 80


# --- the batch caps --------------------------------------------------------------------


def test_bytes_cap_and_a_message_larger_than_the_cap_goes_alone(
    ledger: Ledger, clock: FakeClock
) -> None:
    limits = Limits(batch_max_bytes=10_000, batch_interval=0)
    grant = grant_of(ledger.open_batch("a", limits, [4000, 4000, 4000]))
    assert grant.max_messages == 2 and grant.planned.limited_by == "bytes"
    assert send_all(grant, [4000, 4000, 4000], clock) == 2
    assert grant.stop_reason == "count"
    grant = grant_of(ledger.open_batch("a", limits, [50_000, 10]))
    assert grant.max_messages == 1
    assert send_all(grant, [50_000, 10], clock) == 1  # alone, not stuck for ever
    # A grant for unknown sizes still stops at the byte cap.
    grant = grant_of(ledger.open_batch("a", limits))
    assert send_all(grant, [6000, 6000], clock) == 1
    assert grant.stop_reason == "bytes"


def test_release_gives_a_refused_message_slot_back(ledger: Ledger, clock: FakeClock) -> None:
    with grant_of(ledger.open_batch("a", SMALL, [1] * 4)) as grant:
        assert grant.admit(10)
        grant.release(10)  # e.g. 550 for every recipient
        for n in range(4):
            assert grant.admit(10)
            grant.confirm(f"<{n}>", 10)
        assert not grant.admit(10)
    assert len(ledger.sends()) == 4


def test_confirm_beyond_the_grant_is_recorded_and_raises(ledger: Ledger, clock: FakeClock) -> None:
    with grant_of(ledger.open_batch("a", SMALL, [1])) as grant:
        grant.confirm("<1>", 1)
        with pytest.raises(GrantExceededError, match="beyond its batch of 1"):
            grant.confirm("<2>", 1)
    assert len(ledger.sends()) == 2  # the truth is kept: both were accepted


def test_closing_releases_the_unused_slots(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits(rate_per_hour=8, batch_interval=0, batch_max_messages=8)
    grant = grant_of(ledger.open_batch("a", limits, [1] * 8))
    assert ledger.usage("a", limits).reserved == 8
    grant.admit(1)
    grant.confirm("<1>", 1)
    assert wait_of(ledger.open_batch("a", limits, [1])).kind is WaitKind.RESERVED
    grant.close()
    usage = ledger.usage("a", limits)
    assert (usage.reserved, usage.sent_hour, usage.window_allows) == (0, 1, 7)
    assert grant_of(ledger.open_batch("a", limits, [1] * 20)).max_messages == 7


def test_a_batch_that_sent_nothing_does_not_start_the_interval(
    ledger: Ledger, clock: FakeClock
) -> None:
    grant_of(ledger.open_batch("a", SMALL, [1])).close()  # e.g. the connection failed
    assert isinstance(ledger.open_batch("a", SMALL, [1]), BatchGrant)


# --- the deadline ------------------------------------------------------------------------


def test_deadline_cuts_a_batch_and_the_next_one_is_sized_to_fit(
    ledger: Ledger, clock: FakeClock
) -> None:
    limits = Limits(batch_interval=0)  # 100 per batch, 60 s deadline
    grant = grant_of(ledger.open_batch("a", limits, [1000] * 100))
    assert grant.max_messages == 100
    sent = send_all(grant, [1000] * 100, clock, each=2.0)  # a slow server: 2 s a message
    assert grant.cut_by_deadline and grant.stop_reason == "deadline"
    assert sent == 30  # stops at the deadline, not after it
    assert clock.now <= grant.deadline_at
    model = ledger.timing("a")
    assert model.predict(1000) == pytest.approx(2.0)
    grant = grant_of(ledger.open_batch("a", limits, [1000] * 100))
    assert grant.max_messages == 24  # 80 % of 60 s at 2 s each
    assert grant.planned.limited_by == "deadline"
    assert send_all(grant, [1000] * 100, clock, each=2.0) == 24
    assert not grant.cut_by_deadline


def test_admit_checks_the_time_a_message_needs(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits(batch_interval=0)
    send_all(grant_of(ledger.open_batch("a", limits, [1000] * 2)), [1000] * 2, clock, each=10.0)
    with grant_of(ledger.open_batch("a", limits, [1000] * 100)) as grant:
        assert grant.admit(1000)
        clock.now += 55  # 5 s left, a message takes 10: do not start it
        grant.confirm("<x>", 1000)
        assert not grant.admit(1000)
        assert grant.cut_by_deadline


# --- status, ETA, pruning ---------------------------------------------------------------


def test_usage_for_status(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits()
    send_all(grant_of(ledger.open_batch("a", limits, [5000] * 100)), [5000] * 100, clock)
    clock.now = T0 + 100
    usage = ledger.usage("a", limits)
    assert (usage.sent_hour, usage.bytes_hour) == (100, 500_000)
    assert (usage.sent_day, usage.sent_day_all) == (100, 100)
    assert usage.window_allows == 1100
    assert usage.last_batch_at == T0
    assert usage.next_batch_at == T0 + 300
    assert usage.waiting_for is WaitKind.INTERVAL
    assert usage.seconds_per_message == pytest.approx(0.01)
    assert ledger.next_window_at("a", limits) == T0 + 300


def test_eta_starts_from_the_ledger_state(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits()
    send_all(grant_of(ledger.open_batch("a", limits, [1] * 100)), [1] * 100, clock, each=0)
    schedule = ledger.eta("a", limits, [1] * 250)
    assert [(b.start - T0, b.count) for b in schedule.batches] == [
        (300, 100),
        (600, 100),
        (900, 50),
    ]
    assert schedule.last_at == T0 + 900
    assert ledger.eta("a", limits, []).last_at is None


def test_plan_over_two_servers_shares_the_send_limit(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits(email_send_limit=150)
    schedule = ledger.plan({"a": (limits, [1] * 100), "b": (limits, [1] * 100)})
    assert sum(b.count for b in schedule.batches if b.start < T0 + 86_400) == 150
    assert schedule.last_at is not None and schedule.last_at >= T0 + 86_400


def test_old_rows_are_pruned(store: StoreFactory, clock: FakeClock) -> None:
    with store(clock=clock, retention=1000.0) as led:
        send_all(grant_of(led.open_batch("a", SMALL, [1] * 4)), [1] * 4, clock)
        clock.now = T0 + 999
        grant_of(led.open_batch("a", SMALL, [1])).close()
        assert len(led.sends()) == 4
        clock.now = T0 + 1001  # retention (longer than both windows) is over
        grant_of(led.open_batch("a", SMALL, [1])).close()
        assert led.sends() == []


def test_a_clock_stepped_back_makes_it_wait_not_overshoot(ledger: Ledger, clock: FakeClock) -> None:
    limits = Limits(rate_per_hour=5, batch_interval=0, batch_max_messages=5)
    send_all(grant_of(ledger.open_batch("a", limits, [1] * 5)), [1] * 5, clock)
    clock.now -= 7200  # NTP stepped the clock back two hours
    wait = wait_of(ledger.open_batch("a", limits, [1]))
    assert wait.kind is WaitKind.RATE
    assert wait.until > T0 + 3600


# --- errors -------------------------------------------------------------------------------


def test_not_a_database(tmp_path: Path) -> None:
    """More damage, symlinks and repairs: test_ledger_repair.py."""
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="is damaged \\(file is not a database\\)") as info:
        Ledger(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, CxsmtpError)


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LedgerError, match=f"cannot create the state dir {blocker}: File exists"):
        Ledger(blocker / "ledger.sqlite3")


def test_busy_ledger_times_out_with_a_clear_error(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path, clock=clock, busy_timeout=0.05) as led:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LedgerBusyError, match="busy"):
                led.open_batch("a", SMALL, [1])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert isinstance(led.open_batch("a", SMALL, [1]), BatchGrant)


# --- owners that are gone ------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from carerix_smtp.limits.rule import Limits
    OPEN_STORE
    ledger = Ledger(sys.argv[1], confirm_group=2, confirm_group_seconds=3600.0)
    limits = Limits(rate_per_hour=10, rate_window=3600, batch_interval=0, batch_max_messages=6)
    grant = ledger.open_batch("a", limits, [1] * 6)
    grant.admit(1)
    grant.confirm("<held-1>", 1)
    assert grant.unwritten == 1  # waits in memory for its group
    print("holding", flush=True)
    sys.stdin.read()
    """
).replace("OPEN_STORE", OPEN_STORE)


def test_a_killed_holder_does_not_block(store: StoreFactory) -> None:
    path = store.target
    store().close()  # the file or schema exists, as after a first run
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10)
        with store() as led:
            usage = led.usage("a", limits)
            # The live holder is respected: its unwritten send still holds its slot.
            assert (usage.sent_hour, usage.reserved) == (0, 6)
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
            grant = grant_of(led.open_batch("a", limits, [1] * 10))
            # Released at once; one message in flight and a group of two may have been
            # sent unwritten: counted as sent (the one real send among them).
            assert grant.max_messages == 7
            grant.close()
            presumed = [s for s in led.sends("a") if s.presumed]
            assert len(presumed) == 3
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_run_that_exits_without_closing_its_grant_releases_it(store: StoreFactory) -> None:
    path = store.target
    store().close()
    script = HOLDER.replace("sys.stdin.read()", "")  # exits normally, grant still open
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, capture_output=True)
    with store() as led:
        usage = led.usage("a", Limits())
        assert (usage.sent_hour, usage.reserved) == (1, 0)
        assert not any(s.presumed for s in led.sends())


@pytest.mark.parametrize(
    ("other", "presumed"),
    [
        pytest.param(
            Owner("elsewhere", "another-boot", "pid:[1]", 4242, "123"), 9, id="other-machine"
        ),
        pytest.param(None, 3, id="other-container-same-kernel"),
    ],
)
def test_an_owner_that_cannot_be_checked_holds_until_its_lease_expires(
    tmp_path: Path, clock: FakeClock, other: Owner | None, presumed: int
) -> None:
    me = Owner.current()
    if other is None:
        if not me.boot:
            pytest.skip("needs /proc")
        other = Owner("container-7", me.boot, "pid:[999]", 1, "55")
    path = tmp_path / "ledger.sqlite3"
    limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10, lease_grace=30.0)
    foreign = Ledger(path, clock=clock, owner=other, confirm_group=2)
    grant = grant_of(foreign.open_batch("a", limits, [1] * 10))
    grant.admit(1)
    grant.confirm("<1>", 1)
    grant.flush()
    with Ledger(path, clock=clock) as led:
        wait = wait_of(led.open_batch("a", limits, [1]))
        assert wait.kind is WaitKind.RESERVED
        clock.now = T0 + 60 + 30 - 0.001  # deadline + grace, minus a hair: still held
        assert wait_of(led.open_batch("a", limits, [1])).kind is WaitKind.RESERVED
        clock.now = T0 + 60 + 30
        result = led.open_batch("a", limits, [1] * 10)
        # Other machine: unsynced confirmations may be lost, so all unconfirmed slots count;
        # same kernel: the message that may have been in flight and an unwritten group (2).
        assert len([s for s in led.sends() if s.presumed]) == presumed
        if presumed == 9:
            assert wait_of(result).kind is WaitKind.RATE
        else:
            assert grant_of(result).max_messages == 10 - 1 - presumed
            result.close()
    foreign._grants.clear()  # it stays 'crashed': nothing released on close
    foreign.close()


def test_a_reboot_releases_at_once_and_counts_every_unconfirmed_slot(
    tmp_path: Path, clock: FakeClock
) -> None:
    me = Owner.current()
    if not me.boot:
        pytest.skip("needs /proc")
    before = Owner(me.host, "boot-before-the-power-cut", me.pidns, 77, "1")
    path = tmp_path / "ledger.sqlite3"
    limits = Limits(rate_per_hour=6, batch_interval=0, batch_max_messages=6)
    foreign = Ledger(path, clock=clock, owner=before)
    grant_of(foreign.open_batch("a", limits, [1] * 3))
    foreign._grants.clear()  # it stays 'crashed': nothing released on close
    foreign.close()
    with Ledger(path, clock=clock) as led:
        assert grant_of(led.open_batch("a", limits, [1] * 6)).max_messages == 3


# --- many processes at once ------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from carerix_smtp.limits.ledger import BatchGrant
    from carerix_smtp.limits.rule import Limits, WaitKind
    OPEN_STORE
    path, server, start_at, kwargs = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    limits = Limits(**json.loads(kwargs))
    ledger = Ledger(path)
    while time.time() < start_at:
        time.sleep(0.001)
    stop = time.time() + float(json.loads(sys.argv[5]))
    sent = 0
    while time.time() < stop:
        result = ledger.open_batch(server, limits, [100] * 50)
        if not isinstance(result, BatchGrant):
            usage = ledger.usage(server, limits)
            if result.kind is not WaitKind.INTERVAL and usage.reserved_all == 0 and (
                result.until - time.time() > 60
            ):
                break  # the windows are full and nobody holds slots: done
            time.sleep(0.001)
            continue
        with result as grant:
            while grant.admit(100):
                grant.confirm(f"<{sent}.{server}>", 100)
                sent += 1
    print(sent)
    """
).replace("OPEN_STORE", OPEN_STORE)


def run_workers(store: StoreFactory, jobs: list[tuple[str, dict[str, float], float]]) -> list[int]:
    store().close()  # create the file once, as a first run would
    path = store.target
    start_at = time.time() + 0.5
    import json

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), server, str(start_at), json.dumps(kw),
             json.dumps(duration)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for server, kw, duration in jobs
    ]  # fmt: skip
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        counts.append(int(out))
    return counts


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, s + window) - i for i, s in enumerate(times)), default=0)


def test_six_processes_together_hit_the_limits_exactly(store: StoreFactory) -> None:
    """Demand (6 x unlimited) exceeds both limits: the totals equal them, not one more."""
    kw = {
        "rate_per_hour": 25,
        "batch_interval": 0.0,
        "batch_max_messages": 3,
        "email_send_limit": 40,
    }
    counts = run_workers(store, [(s, kw, 20.0) for s in "ababab"])
    with store() as led:
        sends = led.sends()
        per_server = {s: [r.time for r in sends if r.server == s] for s in "ab"}
    assert sum(counts) == len(sends) == 40
    assert all(len(times) <= 25 for times in per_server.values())
    assert max_in_window([r.time for r in sends], 86_400) == 40


@pytest.mark.slow
def test_soak_eight_processes_for_ten_seconds(store: StoreFactory) -> None:
    """Eight processes over two servers, 1 s rate windows and a 3 s send-limit window."""
    kw = {
        "rate_per_hour": 9,
        "rate_window": 1.0,
        "batch_interval": 0.05,
        "batch_max_messages": 3,
        "batch_deadline": 0.5,
        "email_send_limit": 20,
        "send_limit_window": 3.0,
    }
    counts = run_workers(store, [(s, kw, 10.0) for s in "abababab"])
    with store() as led:
        sends = led.sends()
    assert sum(counts) == len(sends)
    for server in "ab":
        assert max_in_window([r.time for r in sends if r.server == server], 1.0) <= 9
    assert max_in_window([r.time for r in sends], 3.0) == 20


def test_processes_with_a_short_rolling_window_never_overshoot_it(store: StoreFactory) -> None:
    """Real clock, a 1 s window of 6 and batches every 0.1 s, 4 processes for 1.2 s:
    the stamps never put more than 6 in any 1 s window, and the window fills."""
    kw = {
        "rate_per_hour": 6,
        "rate_window": 1.0,
        "batch_interval": 0.1,
        "batch_max_messages": 2,
        "batch_deadline": 0.5,
    }
    counts = run_workers(store, [("a", kw, 1.2)] * 4)
    with store() as led:
        times = [r.time for r in led.sends("a")]
    assert sum(counts) == len(times)
    assert max_in_window(times, 1.0) == 6
    assert len(times) >= 6


# --- hypothesis: overlapping batches of several servers through the real ledger ---------------


@dataclass
class Sender:
    name: str
    limits: Limits
    arrivals: list[tuple[float, int]]
    queue: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)


def run_sender(sender: Sender, ledger: Ledger, clock: FakeClock, speed: float, refuse: int):  # type: ignore[no-untyped-def]
    """A sender as a generator: yields the time it wants to run again (its sleeps)."""
    n = 0
    while sender.queue or sender.arrivals:
        while sender.arrivals and sender.arrivals[0][0] <= clock.now:
            sender.queue.append(sender.arrivals.pop(0)[1])
        if not sender.queue:
            yield sender.arrivals[0][0]
            continue
        result = ledger.open_batch(sender.name, sender.limits, sender.queue)
        if isinstance(result, Wait):
            assert not math.isinf(result.until)
            yield result.until
            continue
        with result as grant:
            while sender.queue:
                # Pace through the scheduler instead of admit's sleep, so others run meanwhile.
                index = min(grant.sent + len(grant._claims), len(grant.release_at) - 1)
                if grant.release_at[index] > clock.now:
                    yield grant.release_at[index]
                if not grant.admit(sender.queue[0]):
                    break
                size = sender.queue.pop(0)
                n += 1
                yield clock.now + speed * (1 + n % 3)  # the SMTP transaction
                if n % 7 == refuse:
                    grant.release(size)
                else:
                    grant.confirm(f"<{n}.{sender.name}>", size)
            if grant.sent:
                sender.starts.append(grant.opened_at)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_concurrent_senders_through_the_ledger_never_overshoot(data: st.DataObject) -> None:
    """Several servers' senders interleave their batches (live reservations), messages arrive
    at random and some are refused: no rolling window of either limit ever overshoots, and
    batches respect their caps and the interval."""
    concurrent_run(data)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_concurrent_senders_soak(data: st.DataObject) -> None:
    concurrent_run(data)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_concurrent_senders_through_the_postgres_ledger_never_overshoot(
    pg_store: StoreFactory, data: st.DataObject
) -> None:
    """The same run through the PostgreSQL store (emptied before each example)."""
    import psycopg

    with psycopg.connect(pg_store.target) as conn:
        conn.execute("TRUNCATE cxsmtp_sends, cxsmtp_reservations, cxsmtp_timing")

    def open_postgres(clock: FakeClock) -> Any:
        return pg_store(clock=clock, sleep=clock.sleep)

    concurrent_run(data, open_postgres)


@contextmanager
def _open_sqlite(clock: FakeClock) -> Iterator[Ledger]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Ledger(Path(tmp) / "ledger.sqlite3", clock=clock, sleep=clock.sleep, durable=False) as led,
    ):
        yield led


def concurrent_run(data: st.DataObject, open_ledger: Any = _open_sqlite) -> None:
    shared = data.draw(st.integers(1, 30))
    day_window = data.draw(st.floats(100, 600))
    senders = []
    for n in range(data.draw(st.integers(1, 3))):
        window = data.draw(st.floats(20, 200))
        limits = Limits(
            rate_per_hour=data.draw(st.integers(1, 12)),
            rate_window=window,
            batch_max_messages=data.draw(st.integers(1, 5)),
            batch_max_bytes=data.draw(st.integers(1000, 8000)),
            batch_interval=data.draw(st.sampled_from([0.0, window / 12, window / 3])),
            batch_deadline=data.draw(st.floats(2, 20)),
            email_send_limit=shared,
            send_limit_window=day_window,
        )
        arrivals = sorted(
            (T0 + data.draw(st.floats(0, 2 * day_window)), data.draw(st.integers(1, 5000)))
            for _ in range(data.draw(st.integers(1, 40)))
        )
        senders.append(Sender(f"s{n}", limits, arrivals))
    speed = data.draw(st.floats(0.0, 3.0))
    refuse = data.draw(st.integers(-1, 6))
    clock = FakeClock()
    with open_ledger(clock) as ledger:
        runs = {s.name: run_sender(s, ledger, clock, speed, refuse) for s in senders}
        wake = dict.fromkeys(runs, T0)
        for _ in range(20_000):
            if not runs:
                break
            name = min(runs, key=lambda k: wake[k])
            clock.now = max(clock.now, wake[name])
            try:
                wake[name] = next(runs[name])
            except StopIteration:
                del runs[name]
        assert not runs, "the senders did not finish"
        assert clock.slept == []  # pacing went through the scheduler above
        sends = ledger.sends()
    assert len(sends) == sum(1 for _ in sends)
    for sender in senders:
        times = [s.time for s in sends if s.server == sender.name]
        assert max_in_window(times, sender.limits.rate_window) <= sender.limits.rate_per_hour
        for a, b in itertools.pairwise(sender.starts):
            assert b >= a + sender.limits.batch_interval
    assert max_in_window([s.time for s in sends], day_window) <= shared

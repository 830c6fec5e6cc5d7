"""Confirmed sends written in groups (ledger.py, sqlite.py, postgres.py): one transaction per
group, never a send missing from what this process reads, never an overshoot after a crash.
Tests taking ``store`` run against both stores (conftest.py)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from pg_server import StoreFactory
from test_ledger import OPEN_STORE, T0, FakeClock, grant_of, wait_of

from carerix_smtp.limits.ledger import CONFIRM_GROUP, BatchGrant, LedgerBusyError
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.rule import Limits, WaitKind
from carerix_smtp.limits.sqlite import Ledger

LIMITS = Limits(rate_per_hour=100, batch_interval=0, batch_max_messages=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(store: StoreFactory) -> StoreFactory:
    """The store to open more ledgers on (the name kept from the SQLite-only days);
    written() and used() read its file or database behind its back."""
    return store


@pytest.fixture
def ledger(store: StoreFactory, clock: FakeClock) -> Iterator[Ledger]:
    with store(clock=clock, sleep=clock.sleep, confirm_group=4) as led:
        yield led


def _query(store: StoreFactory, sql: str) -> list[tuple[object, ...]]:
    """Rows read by a connection of its own (what another process sees)."""
    if store.kind == "postgres":
        import psycopg

        sql = sql.replace(" sends", " cxsmtp_sends").replace(
            " reservations", " cxsmtp_reservations"
        )
        with psycopg.connect(store.target) as pg:
            return [tuple(row) for row in pg.execute(sql)]  # type: ignore[arg-type]
    conn = sqlite3.connect(store.target)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def written(store: StoreFactory) -> list[tuple[float, str | None]]:
    """The sends written, oldest first: (stamp, message id)."""
    rows = _query(store, "SELECT time, message_id FROM sends ORDER BY id")
    return [(float(t), m) for t, m in rows]  # type: ignore[arg-type, misc]


def used(store: StoreFactory) -> int:
    return int(_query(store, "SELECT sum(used) FROM reservations")[0][0] or 0)  # type: ignore[call-overload]


def confirm(grant: BatchGrant, clock: FakeClock, n: int, step: float = 1 / 1024) -> None:
    for _ in range(n):
        assert grant.admit(1)
        clock.now += step
        grant.confirm(f"<{grant.sent}@g>", 1)


def test_confirms_wait_in_memory_until_their_group_is_full(
    ledger: Ledger, path: StoreFactory, clock: FakeClock
) -> None:
    grant = grant_of(ledger.open_batch("a", LIMITS, [1] * 10))
    confirm(grant, clock, 3)
    assert (written(path), grant.unwritten, grant.sent) == ([], 3, 3)
    confirm(grant, clock, 1)  # the fourth fills the group: one transaction, own stamps kept
    rows = written(path)
    assert [message_id for _, message_id in rows] == ["<0@g>", "<1@g>", "<2@g>", "<3@g>"]
    assert [stamp - T0 for stamp, _ in rows] == [1 / 1024, 2 / 1024, 3 / 1024, 4 / 1024]
    assert (grant.unwritten, used(path)) == (0, 4)
    grant.close()


def test_a_confirm_50_ms_after_the_previous_write_writes_the_group(
    path: StoreFactory, clock: FakeClock
) -> None:
    with path(clock=clock) as led:
        grant = grant_of(led.open_batch("a", LIMITS, [1] * 10))  # a write: the reservation
        # steps of 1/64 s and 1/256 s: exact in binary, even added to T0
        confirm(grant, clock, 1, step=0)
        confirm(grant, clock, 1, step=3 / 64)  # 46.9 ms after the reservation's write
        assert written(path) == []
        confirm(grant, clock, 1, step=1 / 256)  # 50.8 ms: checked at this confirm
        assert [stamp - T0 for stamp, _ in written(path)] == [0, 3 / 64, 3 / 64 + 1 / 256]
        confirm(grant, clock, 1, step=1 / 64)  # 15.6 ms after that write: waits
        assert (len(written(path)), grant.unwritten) == (3, 1)
        grant.close()


def test_a_slow_batch_writes_each_send_at_once(path: StoreFactory, clock: FakeClock) -> None:
    with path(clock=clock) as led:
        grant = grant_of(led.open_batch("a", LIMITS, [1] * 10))
        for n in range(1, 4):
            confirm(grant, clock, 1, step=0.5)  # a message every half second
            assert (len(written(path)), grant.unwritten) == (n, 0)
        grant.close()


def test_reads_in_the_same_process_see_the_sends_waiting_in_memory(
    ledger: Ledger, path: StoreFactory, clock: FakeClock
) -> None:
    grant = grant_of(ledger.open_batch("a", LIMITS, [1] * 10))
    confirm(grant, clock, 3)
    with path(clock=clock) as other:  # another process: still reserved slots
        usage = other.usage("a", LIMITS)
        assert (usage.sent_hour, usage.reserved, usage.window_allows) == (0, 10, 90)
    usage = ledger.usage("a", LIMITS)
    assert (usage.sent_hour, usage.reserved, usage.window_allows) == (3, 7, 90)
    confirm(grant, clock, 2)
    assert len(ledger.sends("a")) == 5
    confirm(grant, clock, 1)
    assert ledger.plan({"a": (LIMITS, [1])}).last_at is not None
    assert len(written(path)) == 6
    confirm(grant, clock, 1)
    grant_of(ledger.open_batch("b", LIMITS, [1])).close()  # the next batch, any server
    assert len(written(path)) == 7
    grant.close()


def test_close_writes_the_last_group(ledger: Ledger, path: StoreFactory, clock: FakeClock) -> None:
    grant = grant_of(ledger.open_batch("a", LIMITS, [1] * 10))
    confirm(grant, clock, 2)
    assert written(path) == []
    grant.close()
    assert (len(written(path)), used(path)) == (2, 2)
    with path(clock=clock) as other:
        usage = other.usage("a", LIMITS)
        assert (usage.sent_hour, usage.reserved) == (2, 0)


def test_a_ledger_closed_with_a_grant_open_writes_its_group(
    path: StoreFactory, clock: FakeClock
) -> None:
    led = path(clock=clock)
    confirm(grant_of(led.open_batch("a", LIMITS, [1] * 10)), clock, 2)
    led.close()  # also what happens at interpreter exit
    assert len(written(path)) == 2


def block_writes(store: StoreFactory) -> Any:
    """Another process holding what a group's write needs (SQLite: the file's write lock;
    PostgreSQL: the reservation rows); ``.rollback()`` lets go."""
    if store.kind == "postgres":
        import psycopg

        pg = psycopg.connect(store.target)  # a transaction until rollback
        pg.execute("SELECT id FROM cxsmtp_reservations FOR UPDATE")
        return pg
    conn = sqlite3.connect(store.target, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")

    class Blocker:
        def rollback(self) -> None:
            conn.execute("ROLLBACK")

        def close(self) -> None:
            conn.close()

    return Blocker()


def test_a_failed_write_keeps_the_group_for_the_next(path: StoreFactory, clock: FakeClock) -> None:
    with path(clock=clock, busy_timeout=0.05, confirm_group=4) as led:
        grant = grant_of(led.open_batch("a", LIMITS, [1] * 10))
        confirm(grant, clock, 3)
        blocker = block_writes(path)
        try:
            with pytest.raises(LedgerBusyError):
                confirm(grant, clock, 1)
            assert grant.unwritten == 4
            # No more messages until it is written: a crash now must stay within the
            # bound the reservation records (a group and one message per connection).
            assert not grant.admit(1) and grant.stop_reason == "ledger"
        finally:
            blocker.rollback()
            blocker.close()
        grant.flush()
        assert len(written(path)) == 4
        assert grant.admit(1)  # written: the batch goes on
        grant.close()


def test_a_group_written_after_its_reservation_was_released_warns_and_counts(
    path: StoreFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = Owner("elsewhere", "another-boot", "pid:[1]", 4242, "123")
    limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10, lease_grace=30.0)
    lease = {"lease": 30.0} if path.kind == "postgres" else {}  # SQLite: limits.lease_grace
    foreign = path(clock=clock, owner=elsewhere, **lease)
    grant = grant_of(foreign.open_batch("a", limits, [1] * 10))
    confirm(grant, clock, 1)
    clock.now = T0 + 60 + 30  # the lease expired: released, every unconfirmed slot presumed
    with path(clock=clock) as led:
        assert wait_of(led.open_batch("a", limits, [1])).kind is WaitKind.RATE
        with caplog.at_level(logging.WARNING):
            grant.flush()  # the owner was only stopped: its send comes after all
        assert "was released before 1 send(s) were recorded" in caplog.text
        sends = led.sends("a")
        assert (len(sends), len([s for s in sends if s.presumed])) == (11, 10)
    foreign.close()


# --- a crash with sends waiting in memory ------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from carerix_smtp.limits.rule import Limits
    OPEN_STORE
    options = {"confirm_group": int(sys.argv[2])} if sys.argv[2] != "default" else {}
    # no write for the time: only the count decides what is written when
    ledger = Ledger(sys.argv[1], confirm_group_seconds=3600.0, **options)
    limits = Limits(rate_per_hour=41, batch_interval=0, batch_max_messages=41)
    grant = ledger.open_batch("a", limits, [100] * 41)
    for n in range(40):
        assert grant.admit(100)
        grant.confirm(f"<{n}@crash>", 100)
    assert grant.admit(100)  # the 41st is in flight: maybe accepted, never confirmed
    print(grant.unwritten, flush=True)
    sys.stdin.read()
    """
).replace("OPEN_STORE", OPEN_STORE)


@pytest.mark.parametrize(
    ("group", "unwritten"),
    [pytest.param("default", 40, id="all-in-memory"), pytest.param("16", 8, id="groups-of-16")],
)
def test_a_killed_holder_with_unwritten_sends_leaves_its_window_full(
    path: StoreFactory, group: str, unwritten: int
) -> None:
    """SIGKILL with confirmed sends in memory: every admitted message counts as sent."""
    assert CONFIRM_GROUP >= 40  # "default" keeps all 40 in memory
    limits = Limits(rate_per_hour=41, batch_interval=0, batch_max_messages=41)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path.target, group],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) == unwritten
        assert len(written(path)) == 40 - unwritten
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        with path() as led:
            usage = led.usage("a", limits)  # releases the dead holder's reservation
            # 40 confirmed and one in flight: the window is full, as if all 41 went.
            assert (usage.sent_hour, usage.reserved, usage.window_allows) == (41, 0, 0)
            assert wait_of(led.open_batch("a", limits, [100])).kind is WaitKind.RATE
            presumed = [s for s in led.sends("a") if s.presumed]
            assert len(presumed) == unwritten + 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

"""What only the PostgreSQL ledger has (postgres.py, postgres_schema.py, postgres_rows.py):
hosts asking at the same moment, leases, the versioned schema, an unreachable server.
The semantics it shares with SQLite are tested against both in test_ledger*.py."""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest
from pg_server import PgServer, StoreFactory
from test_ledger import T0, FakeClock, grant_of, wait_of

from carerix_smtp.errors import (
    ExitCode,
    LedgerBusyError,
    LedgerSchemaError,
    LedgerUnavailableError,
)
from carerix_smtp.limits.ledger import BatchGrant
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.postgres import DEFAULT_LEASE, PostgresLedger, init_schema
from carerix_smtp.limits.postgres_schema import (
    ADMISSION_LOCK,
    IDLE_IN_TRANSACTION,
    SCHEMA_VERSION,
)
from carerix_smtp.limits.rule import Limits, WaitKind

ELSEWHERE = Owner("web-2", "another-boot", "pid:[1]", 4242, "123")


def host(n: int) -> Owner:
    return Owner(f"host-{n}", f"boot-{n}", "pid:[1]", 1000 + n, "1")


# --- admission across hosts ------------------------------------------------------------------


class SlowClock(FakeClock):
    """A clock that takes 10 ms to read: the admission reads it between reading the
    windows and recording its grant, so without the lock every host of a round would
    decide on the same state (checked: without the lock this test fails)."""

    def __call__(self) -> float:
        time.sleep(0.01)  # widens the race window; nothing is waited for
        return self.now


def ask(
    ledger: PostgresLedger,
    account: str,
    limits: Limits,
    barrier: threading.Barrier,
    granted: list[int],
) -> None:
    """One host: wait for the others, then ask for a batch of 10 at once."""
    barrier.wait(timeout=10)
    result = ledger.open_batch(account, limits, [1] * 10)
    granted.append(result.max_messages if isinstance(result, BatchGrant) else 0)


def test_hosts_asking_at_the_same_moment_never_exceed_a_window(pg_store: StoreFactory) -> None:
    """Four hosts (own connections, own owners) ask for a batch at once, 10 rounds on
    fresh accounts: the grants of a round together never exceed the window of 10."""
    clock = SlowClock()
    limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10)
    hosts = [pg_store(clock=clock, owner=host(n)) for n in range(4)]
    for ledger in hosts:
        ledger.open_batch("warm-up", limits, [1]).close()  # connections made before the race
    for round_ in range(10):
        barrier = threading.Barrier(len(hosts))
        granted: list[int] = []
        threads = [
            threading.Thread(target=ask, args=(led, f"acct-{round_}", limits, barrier, granted))
            for led in hosts
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(granted) == 4
        assert sum(granted) == 10, granted  # all of the window, never more
        assert granted.count(0) == 3  # one grant; the others saw its reservation
    for ledger in hosts:
        ledger._grants.clear()  # the grants stay open: nothing to release at close
        ledger.close()


def test_a_grant_is_counted_by_every_other_host(pg_store: StoreFactory) -> None:
    clock = FakeClock()
    limits = Limits(rate_per_hour=6, batch_interval=0, batch_max_messages=6)
    web1, web2 = pg_store(clock=clock, owner=host(1)), pg_store(clock=clock, owner=host(2))
    with grant_of(web1.open_batch("shared", limits, [1] * 4)) as grant:
        for n in range(4):
            assert grant.admit(1)
            grant.confirm(f"<{n}>", 1)
    assert grant_of(web2.open_batch("shared", limits, [1] * 6)).max_messages == 2
    assert wait_of(web1.open_batch("shared", limits, [1])).kind is WaitKind.RESERVED
    web2.close()
    web1.close()


def test_a_host_holding_the_admission_lock_too_long_is_busy_not_a_hang(
    pg_store: StoreFactory,
) -> None:
    clock = FakeClock()
    with pg_store(clock=clock, busy_timeout=0.05) as led:
        with psycopg.connect(pg_store.target) as other:  # a host inside its admission
            other.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
            with pytest.raises(LedgerBusyError, match="busy: other hosts held its locks") as info:
                led.open_batch("a", Limits(), [1])
            assert info.value.exit_code == ExitCode.TEMPFAIL
        assert isinstance(led.open_batch("a", Limits(), [1]), BatchGrant)  # released: goes on
        # A host that vanishes inside a transaction loses the lock after this long.
        row = led._db._open().execute("SHOW idle_in_transaction_session_timeout").fetchone()
        assert row == (f"{IDLE_IN_TRANSACTION}s",)


# --- leases ----------------------------------------------------------------------------------


def test_an_expired_lease_counts_every_unconfirmed_slot_as_sent(pg_store: StoreFactory) -> None:
    clock = FakeClock()
    limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10)
    crashed = pg_store(clock=clock, owner=ELSEWHERE, lease=30.0, confirm_group=2)
    grant = grant_of(crashed.open_batch("a", limits, [1] * 10))
    for n in range(3):  # two written (a group), one waiting in memory when it crashed
        assert grant.admit(1)
        grant.confirm(f"<{n}>", 1)
    with pg_store(clock=clock) as led:
        clock.now = T0 + 60 + 30 - 0.001  # deadline + lease, minus a hair: still held
        assert wait_of(led.open_batch("a", limits, [1])).kind is WaitKind.RESERVED
        clock.now = T0 + 60 + 30
        wait = wait_of(led.open_batch("a", limits, [1]))
        assert wait.kind is WaitKind.RATE  # 2 written + 8 presumed: the window is full
        sends = led.sends("a")
        assert (len(sends), len([s for s in sends if s.presumed])) == (10, 8)
        assert all(s.time == T0 + 90 for s in sends if s.presumed)
    crashed._grants.clear()  # it stays 'crashed'
    crashed.close()


def test_each_group_written_renews_the_lease(pg_store: StoreFactory) -> None:
    clock = FakeClock()
    limits = Limits(rate_per_hour=10, batch_interval=0, batch_max_messages=10, batch_deadline=60)
    slow = pg_store(clock=clock, owner=ELSEWHERE, lease=30.0, confirm_group=1)
    grant = grant_of(slow.open_batch("a", limits, [1] * 10))
    clock.now = T0 + 59
    assert grant.admit(1)
    clock.now = T0 + 85  # the reply came late; its write renews the lease to T0 + 115
    grant.confirm("<late>", 1)
    with pg_store(clock=clock) as led:
        clock.now = T0 + 100  # past deadline + lease of the opening: still held
        assert wait_of(led.open_batch("a", limits, [1])).kind is WaitKind.RESERVED
        clock.now = T0 + 115
        assert wait_of(led.open_batch("a", limits, [1])).kind is WaitKind.RATE
        assert len([s for s in led.sends("a") if s.presumed]) == 9
    slow._grants.clear()
    slow.close()


def test_the_default_lease_and_a_negative_one(pg_store: StoreFactory) -> None:
    assert DEFAULT_LEASE == 120.0
    with pytest.raises(ValueError, match="lease must be 0 or more seconds"):
        pg_store(lease=-1.0)


# --- schema ----------------------------------------------------------------------------------


def test_init_schema_is_idempotent_and_records_its_version(pg: PgServer) -> None:
    url = pg.create_database()
    try:
        assert init_schema(url) == SCHEMA_VERSION
        assert init_schema(url) == SCHEMA_VERSION
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM cxsmtp_meta WHERE key = 'schema_version'")
            assert row.fetchone() == (str(SCHEMA_VERSION),)
        with PostgresLedger(url) as led:
            assert led.usage("a", Limits()).sent_hour == 0
    finally:
        pg.drop_database(url)


def test_a_database_without_the_schema_says_how_to_make_it(pg: PgServer) -> None:
    url = pg.create_database()
    try:
        with pytest.raises(LedgerSchemaError) as info:
            PostgresLedger(url)
        message = str(info.value)
        assert message.endswith("has no cxsmtp ledger schema; run: cxsmtp ledger init URL")
        assert f"127.0.0.1:{pg.port}/" in message and "\n" not in message
        assert info.value.exit_code is ExitCode.CONFIG
    finally:
        pg.drop_database(url)


def test_a_newer_schema_is_refused_naming_both_versions(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE cxsmtp_meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(LedgerSchemaError, match="has schema version 7, this cxsmtp knows up to"):
        PostgresLedger(pg_url)
    with pytest.raises(LedgerSchemaError, match=f"knows up to version {SCHEMA_VERSION}"):
        init_schema(pg_url)


# --- an unreachable server -------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_an_unreachable_database_names_host_and_port_never_the_password() -> None:
    port = _closed_port()
    with pytest.raises(LedgerUnavailableError) as info:
        PostgresLedger(f"postgresql://cx:s3cret-pw@127.0.0.1:{port}/ledger")
    message = str(info.value)
    assert message.startswith(f"ledger database 127.0.0.1:{port} unreachable: ")
    assert "Connection refused" in message
    assert "s3cret-pw" not in message and "\n" not in message
    assert info.value.exit_code == ExitCode.TEMPFAIL == 75


def test_the_database_going_away_mid_run_fails_closed_then_recovers(
    pg: PgServer, pg_url: str
) -> None:
    """The server stops between two batches: 75, nothing granted; it comes back: the
    same ledger reconnects and still counts what was sent before."""
    clock = FakeClock()
    limits = Limits(rate_per_hour=6, batch_interval=0, batch_max_messages=6)
    with PostgresLedger(pg_url, clock=clock) as led:
        with grant_of(led.open_batch("a", limits, [1] * 2)) as grant:
            for n in range(2):
                assert grant.admit(1)
                grant.confirm(f"<{n}>", 1)
        pg.stop()
        try:
            with pytest.raises(LedgerUnavailableError, match=f"127.0.0.1:{pg.port} unreachable"):
                led.open_batch("a", limits, [1] * 6)
        finally:
            pg.start()
        assert grant_of(led.open_batch("a", limits, [1] * 6)).max_messages == 4


def test_clock_skew_gives_the_host_clock_and_the_database_clock(pg_store: StoreFactory) -> None:
    clock = FakeClock(T0)
    with pg_store(clock=clock) as led:
        host_time, db_time = led.clock_skew()
    assert host_time == T0  # the injected clock: what the windows use
    assert abs(db_time - time.time()) < 5

"""The shared rate ledger on PostgreSQL: :class:`PostgresLedger`, for several hosts.

Several hosts sending through one provider account share its limits; each
keeps its own spool, and they share this ledger in a PostgreSQL database
(``pip install 'carerix-smtp[postgres]'``, ``cxsmtp ledger init URL``).  It
implements :class:`~carerix_smtp.limits.ledger.LedgerStore` with the SQLite
store's semantics (:mod:`carerix_smtp.limits.ledger`), keyed by the account
string the caller passes as ``server``; the schema and connection are in
:mod:`~carerix_smtp.limits.postgres_schema`, the rows in
:mod:`~carerix_smtp.limits.postgres_rows`.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from carerix_smtp.limits.ledger import (
    CONFIRM_GROUP,
    CONFIRM_GROUP_SECONDS,
    BatchGrant,
    Clock,
    LedgerError,
    SendRecord,
    Usage,
    Wait,
)
from carerix_smtp.limits.owner import Owner
from carerix_smtp.limits.postgres_rows import (
    close_reservation,
    count_sent,
    insert_reservation,
    insert_sends,
    list_sends,
    load_state,
    prune,
    read_timing,
    reclaim,
    save_timing,
)
from carerix_smtp.limits.postgres_schema import PostgresDatabase, init_schema
from carerix_smtp.limits.rule import Limits, TimingModel, next_batch, plan_batch_size
from carerix_smtp.limits.schedule import Schedule
from carerix_smtp.limits.store import StoreBase, schedule_from_state, usage_from_state

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_LEASE", "PostgresLedger", "init_schema"]

# How long a reservation of an owner on another host stays counted after its batch
# deadline, and after each group of sends it writes.  Safety does not depend on it
# (an expired lease counts all unconfirmed slots as sent); it decides how long a
# crashed host's batch blocks the account (short: less than a 5-minute batch
# interval, so the next cron run is not held up) against how long a live host
# stuck in one message (RFC 5321 §4.5.3.2: up to 10 minutes for the reply to the
# final ".") keeps its unused slots (long).  Two minutes covers the usual stalls.
DEFAULT_LEASE = 120.0

_OPEN: weakref.WeakSet[PostgresLedger] = weakref.WeakSet()


@atexit.register
def _close_open_ledgers() -> None:
    for ledger in list(_OPEN):
        if ledger._pid == os.getpid():  # never from a forked child
            ledger.close()


class PostgresLedger(StoreBase):
    """The ledger in the PostgreSQL database at ``url`` (its schema made by :func:`init_schema`).

    Admission is atomic across hosts: reclaiming, reading the windows,
    :func:`~carerix_smtp.limits.rule.next_batch` and inserting the reservation
    run in ONE transaction that first takes a transaction-level advisory lock
    (``pg_advisory_xact_lock`` on one fixed key).  Every admission of every host
    takes the same lock, so admissions are serialised exactly as SQLite's
    ``BEGIN IMMEDIATE`` serialises them on one machine; the transaction runs at
    READ COMMITTED, so each statement after the lock sees every admission
    committed before it (a REPEATABLE READ snapshot would be taken before the
    lock wait and could miss one).  Two hosts asking at the same moment
    therefore decide one after the other, the second counting the first's
    reservation, and :func:`~carerix_smtp.limits.rule.next_batch` proves that
    the grants together never exceed a window.  One lock for all accounts,
    not one per account: the email_send_limit window spans every account in
    the database.  The lock is released by COMMIT or ROLLBACK, also when the
    connection dies (a host that vanishes without closing it: after
    ``IDLE_IN_TRANSACTION`` seconds, :mod:`~carerix_smtp.limits.postgres_schema`).  Groups of sends (:meth:`record_sends`) need no lock:
    each turns reserved slots into sends in one transaction, so an admission
    sees either before or after.

    Time: every window is measured on the sending host's ``clock`` (as with
    SQLite; never the database's ``now()``); :meth:`clock_skew` gives both
    clocks so the caller can warn when they differ.

    Reservations carry a lease (``lease`` seconds, :data:`DEFAULT_LEASE`):
    until the batch deadline plus ``lease``, renewed to the newest send plus
    ``lease`` by each group written.  An owner on the same host is checked by
    its pid as with SQLite (:mod:`~carerix_smtp.limits.owner`); one elsewhere
    holds its reservation until the lease expires, and then all its
    unconfirmed slots count as sent (:mod:`~carerix_smtp.limits.postgres_rows`).

    The other parameters are :class:`~carerix_smtp.limits.sqlite.Ledger`'s;
    ``busy_timeout`` bounds the wait for the admission lock
    (:class:`~carerix_smtp.errors.LedgerBusyError`).  An unreachable database
    raises :class:`~carerix_smtp.errors.LedgerUnavailableError` (exit 75).
    """

    NOUN = "account"  # what the log lines call a grant's key

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        busy_timeout: float = 30.0,
        retention: float = 2 * 86_400.0,
        owner: Owner | None = None,
        lease: float = DEFAULT_LEASE,
        confirm_group: int = CONFIRM_GROUP,
        confirm_group_seconds: float = CONFIRM_GROUP_SECONDS,
    ) -> None:
        if lease < 0:
            raise ValueError(f"lease must be 0 or more seconds, not {lease}")
        self.clock = clock
        self.sleep = sleep
        self.retention = retention
        self.lease = lease
        self.confirm_group = max(1, confirm_group)
        self.confirm_group_seconds = confirm_group_seconds
        self._owner = owner
        self._owner_pid = -1
        self._current_owner: Owner | None = None
        self._grants: list[BatchGrant] = []
        self._pid = os.getpid()
        self._db = PostgresDatabase(url, busy_timeout=busy_timeout)
        self.where = self._db.where
        _OPEN.add(self)

    def close(self) -> None:
        """Close open grants (releasing their slots) and the connection."""
        for grant in list(self._grants):
            try:
                grant.close()
            except LedgerError as exc:  # best effort: the lease covers what stays open
                log.info("account %s: batch left open: %s", grant.server, exc)
        self._db.close()
        _OPEN.discard(self)

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def clock_skew(self) -> tuple[float, float]:
        """(this host's clock, the database server's clock), epoch seconds, read together."""
        db_time = self._db.server_time()
        return self.clock(), db_time

    # public API ---------------------------------------------------------------------

    def open_batch(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """Start a batch of account ``server`` now if the limits allow it, else say until when."""
        self.flush()
        with self._db.transaction(admission=True) as cur:
            now = self.clock()
            reclaim(cur, now, self.owner)
            prune(cur, now, limits, self.retention)
            loaded = load_state(cur, server, limits, now)
            size = plan_batch_size(queued_sizes, limits, loaded.timing)
            decision = next_batch(loaded.state, limits, now, size.count)
            if decision.kind is not None:
                log.debug("account %s: wait until %.3f: %s", server, decision.at, decision.reason)
                return Wait(server, decision.at, decision.kind, decision.reason, decision.count)
            unwritten = max(1, connections) + self.confirm_group
            rid = insert_reservation(
                cur, server, now, limits, decision.count, unwritten, self.owner, self.lease
            )
        return self._grant(server, limits, now, rid, decision, size, loaded)

    def usage(self, server: str, limits: Limits) -> Usage:
        """Sent in the last hour / day, what the windows still allow, the next batch."""
        self.flush()
        with self._db.transaction(admission=True) as cur:
            now = self.clock()
            reclaim(cur, now, self.owner)
            loaded = load_state(cur, server, limits, now)
            sent_hour, bytes_hour = count_sent(cur, server, now - limits.rate_window)
            sent_day, bytes_day = count_sent(cur, server, now - limits.send_limit_window)
        return usage_from_state(
            server, limits, now, loaded, (sent_hour, bytes_hour, sent_day, bytes_day)
        )

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        """The schedule that would send ``{account: (limits, queued sizes)}`` at current limits."""
        if not queues:
            return Schedule((), None, 0, 0)
        self.flush()
        with self._db.transaction(admission=True) as cur:
            now = self.clock()
            reclaim(cur, now, self.owner)
            loaded = {name: load_state(cur, name, lim, now) for name, (lim, _) in queues.items()}
        return schedule_from_state(queues, loaded, now)

    def sends(self, server: str | None = None, since: float | None = None) -> list[SendRecord]:
        """The recorded sends, oldest first (status and tests)."""
        self.flush()
        with self._db.transaction() as cur:
            return list_sends(cur, server, since)

    def timing(self, server: str) -> TimingModel:
        with self._db.transaction() as cur:
            return read_timing(cur, server)

    # the groups of BatchGrant -------------------------------------------------------------

    def record_sends(
        self, grant: BatchGrant, sends: Sequence[tuple[float, str | None, int]]
    ) -> None:
        if not sends:
            return
        newest = max(stamp for stamp, _, _ in sends)
        with self._db.transaction() as cur:
            released = insert_sends(
                cur, grant.server, grant.reservation_id, sends, newest + self.lease
            )
        if released and not grant.closed:
            log.warning(
                "account %s: batch reservation %d was released before %d send(s) were recorded "
                "(its lease expired: a clock skew, or stopped longer than %g s?)",
                grant.server,
                grant.reservation_id,
                len(sends),
                self.lease,
            )

    def close_reservation(
        self,
        grant: BatchGrant,
        observations: Sequence[tuple[int, float]],
        setup: float | None,
    ) -> None:
        with self._db.transaction() as cur:
            now = self.clock()
            close_reservation(cur, grant.reservation_id, now)
            if observations:
                model = read_timing(cur, grant.server).add_batch(observations, setup)
                save_timing(cur, grant.server, model, now)
        self._closed(grant)

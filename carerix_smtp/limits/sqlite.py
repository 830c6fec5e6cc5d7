"""The SQLite rate ledger: :class:`Ledger`, today's :class:`~carerix_smtp.limits.ledger.LedgerStore`.

One SQLite file, ``STATE_DIR/ledger.sqlite3``, shared by every run, every spool
and every process (WAL mode, a busy timeout, and every decision inside one
``BEGIN IMMEDIATE`` write transaction, so grants are serialised across
processes).  The policy itself is pure and lives in :mod:`carerix_smtp.limits.rule`;
this module feeds it the ledger's state and records what it decided.  How it is
used, reservations and what a crash may cost: :mod:`carerix_smtp.limits.ledger`.

The jobs: :class:`Ledger` (here) opens batches and answers usage and plans;
:mod:`~carerix_smtp.limits.sqlite_connection` holds the file, its schema and
its transactions; :mod:`~carerix_smtp.limits.sqlite_reservations` the batch
reservations and releasing those whose owner is gone;
:mod:`~carerix_smtp.limits.sqlite_state` reads the windows' state and timing.

Processes: one :class:`Ledger` per process (it may be shared by threads);
never carry one across ``fork``.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from carerix_smtp.errors import StorageError
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
from carerix_smtp.limits.rule import (
    Limits,
    TimingModel,
    next_batch,
    plan_batch_size,
)
from carerix_smtp.limits.schedule import Schedule
from carerix_smtp.limits.sqlite_connection import LedgerDatabase
from carerix_smtp.limits.sqlite_reservations import (
    close_reservation,
    insert_reservation,
    insert_sends,
    reclaim,
)
from carerix_smtp.limits.sqlite_state import (
    count_sent,
    list_sends,
    load_state,
    prune,
    read_timing,
    save_timing,
)
from carerix_smtp.limits.store import StoreBase, schedule_from_state, usage_from_state

log = logging.getLogger(__name__)

__all__ = ["Ledger"]

_OPEN_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _close_open_ledgers() -> None:
    for ledger in list(_OPEN_LEDGERS):
        if ledger._pid == os.getpid():  # never from a forked child
            ledger.close()


class Ledger(StoreBase):
    """The SQLite ledger at ``path`` (created with its directory when missing, mode 0600).

    ``clock``: epoch seconds (``time.time`` in the CLI, a fake in tests);
    ``sleep``: used only by :meth:`BatchGrant.admit` to pace a batch (seconds).
    ``busy_timeout``: how long to wait for other processes' transactions.
    ``retention``: sends and batches are kept this long, or the largest window
    if that is longer (for ``status``), then pruned.
    ``owner``: who this process is (tests pass a fake one); ``durable``: fsync
    each new reservation (turn off only for benchmarks on throw-away files).
    ``confirm_group`` / ``confirm_group_seconds``: confirmed sends are written
    in groups, when this many wait or at a confirm this long after the previous
    write (:meth:`BatchGrant.confirm`); a crash may count up to
    ``confirm_group`` more slots as possibly sent.
    """

    FILENAME = "ledger.sqlite3"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        busy_timeout: float = 30.0,
        retention: float = 2 * 86_400.0,
        owner: Owner | None = None,
        durable: bool = True,
        confirm_group: int = CONFIRM_GROUP,
        confirm_group_seconds: float = CONFIRM_GROUP_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.sleep = sleep
        self.busy_timeout = busy_timeout
        self.retention = retention
        self.confirm_group = max(1, confirm_group)
        self.confirm_group_seconds = confirm_group_seconds
        self._owner = owner
        self._owner_pid = -1
        self._current_owner: Owner | None = None
        self._grants: list[BatchGrant] = []
        self._pid = os.getpid()
        self._db = LedgerDatabase(self.path, busy_timeout=busy_timeout, durable=durable)
        _OPEN_LEDGERS.add(self)

    @classmethod
    def in_state_dir(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        busy_timeout: float = 30.0,
    ) -> Ledger:
        """The ledger of a state dir: ``STATE_DIR/ledger.sqlite3``."""
        return cls(
            Path(state_dir) / cls.FILENAME, clock=clock, sleep=sleep, busy_timeout=busy_timeout
        )

    def close(self) -> None:
        """Close open grants (releasing their slots) and the database.

        Also done at interpreter exit, so a run that forgets a grant does not
        cost a slot the way a crash does.
        """
        for grant in list(self._grants):
            try:
                grant.close()
            except (LedgerError, StorageError) as exc:  # best effort (after an error, at exit)
                # Safe: the reservation stays open with its last group unwritten, and
                # the next process to read the ledger counts those as possibly sent.
                # Not a warning: the error that stopped the run is reported already.
                log.info("server %s: batch left open: %s", grant.server, exc)
        self._db.close()
        _OPEN_LEDGERS.discard(self)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # public API -------------------------------------------------------------------

    def open_batch(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """Start a batch now if the limits allow it, else say until when to wait.

        ``queued_sizes``: sizes in bytes of the queue head, in sending order
        (only the first ``batch_count_cap + 1`` are read; empty = unknown).
        ``connections``: how many messages may be in flight at once under this
        grant (what a crash may leave unrecorded).
        """
        self.flush()
        with self._db.write(durable=True) as conn:
            now = self.clock()
            reclaim(conn, now, self.owner)
            prune(conn, now, limits, self.retention)
            loaded = load_state(conn, server, limits, now)
            size = plan_batch_size(queued_sizes, limits, loaded.timing)
            decision = next_batch(loaded.state, limits, now, size.count)
            if decision.kind is not None:
                log.debug("server %s: wait until %.3f: %s", server, decision.at, decision.reason)
                return Wait(server, decision.at, decision.kind, decision.reason, decision.count)
            if decision.release[-1] > now:
                log.debug(
                    "server %s: batch paced until %.3f (previous sends leaving the window)",
                    server,
                    decision.release[-1],
                )
            # What a crash may leave unwritten: a message in flight per connection
            # and a group of confirmed sends still in memory.
            unwritten = max(1, connections) + self.confirm_group
            rid = insert_reservation(
                conn, server, now, limits, decision.count, unwritten, self.owner
            )
        return self._grant(server, limits, now, rid, decision, size, loaded)

    def usage(self, server: str, limits: Limits) -> Usage:
        """Sent in the last hour / day, what the windows still allow, the next batch."""
        self.flush()
        with self._db.write() as conn:
            now = self.clock()
            reclaim(conn, now, self.owner)
            loaded = load_state(conn, server, limits, now)
            sent_hour, bytes_hour = count_sent(conn, server, now - limits.rate_window)
            sent_day, bytes_day = count_sent(conn, server, now - limits.send_limit_window)
        return usage_from_state(
            server, limits, now, loaded, (sent_hour, bytes_hour, sent_day, bytes_day)
        )

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        """The schedule that would send ``{server: (limits, queued sizes)}`` at current
        limits, from the ledger's state (:func:`~carerix_smtp.limits.store.schedule_from_state`)."""
        if not queues:
            return Schedule((), None, 0, 0)
        self.flush()
        with self._db.write() as conn:
            now = self.clock()
            reclaim(conn, now, self.owner)
            loaded = {name: load_state(conn, name, lim, now) for name, (lim, _) in queues.items()}
        return schedule_from_state(queues, loaded, now)

    def sends(self, server: str | None = None, since: float | None = None) -> list[SendRecord]:
        """The recorded sends, oldest first (status and tests)."""
        self.flush()
        with self._db.read() as conn:
            return list_sends(conn, server, since)

    def timing(self, server: str) -> TimingModel:
        with self._db.read() as conn:
            return read_timing(conn, server)

    # the groups of BatchGrant ------------------------------------------------------------

    def record_sends(
        self, grant: BatchGrant, sends: Sequence[tuple[float, str | None, int]]
    ) -> None:
        if not sends:
            return
        newest = max(stamp for stamp, _, _ in sends)
        with self._db.write() as conn:
            released = insert_sends(
                conn,
                grant.server,
                grant.reservation_id,
                sends,
                newest + grant.limits.lease_grace,
            )
        if released and not grant.closed:
            log.warning(
                "server %s: batch reservation %d was released before %d send(s) were recorded "
                "(the process was stopped longer than its lease?)",
                grant.server,
                grant.reservation_id,
                len(sends),
            )

    def close_reservation(
        self,
        grant: BatchGrant,
        observations: Sequence[tuple[int, float]],
        setup: float | None,
    ) -> None:
        with self._db.write() as conn:
            now = self.clock()
            close_reservation(conn, grant.reservation_id, now)
            if observations:
                model = read_timing(conn, grant.server).add_batch(observations, setup)
                save_timing(conn, grant.server, model, now)
        self._closed(grant)

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
import math
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
    WindowState,
    next_batch,
    plan_batch_size,
    window_allowance,
)
from carerix_smtp.limits.schedule import Schedule, ServerQueue, simulate_schedule
from carerix_smtp.limits.sqlite_connection import LedgerDatabase
from carerix_smtp.limits.sqlite_reservations import (
    close_reservation,
    insert_reservation,
    insert_sends,
    reclaim,
)
from carerix_smtp.limits.sqlite_state import (
    LoadedState,
    count_sent,
    list_sends,
    load_state,
    prune,
    read_timing,
    save_timing,
)

log = logging.getLogger(__name__)

__all__ = ["Ledger"]

_OPEN_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _close_open_ledgers() -> None:
    for ledger in list(_OPEN_LEDGERS):
        if ledger._pid == os.getpid():  # never from a forked child
            ledger.close()


class Ledger:
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

    @property
    def owner(self) -> Owner:
        if self._owner is not None:
            return self._owner
        pid = os.getpid()
        if self._current_owner is None or self._owner_pid != pid:
            self._current_owner = Owner.current()
            self._owner_pid = pid
        return self._current_owner

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
        grant = BatchGrant(
            self,
            rid,
            server,
            limits,
            now,
            decision.count,
            size,
            loaded.timing,
            decision.release,
            group_max=self.confirm_group,
            group_seconds=self.confirm_group_seconds,
        )
        self._grants.append(grant)
        log.info(
            "server %s: batch of up to %d message(s) (planned %d, limited by %s)",
            server,
            decision.count,
            size.count,
            size.limited_by,
        )
        return grant

    def acquire(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        sleep: Callable[[float], None],
        max_wait: float | None = None,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """:meth:`open_batch`, sleeping (with the injected ``sleep``) through short waits.

        Waits longer than ``max_wait`` (default: the batch deadline) are
        returned to the caller; ``math.inf`` sleeps until a batch is granted.
        """
        limit = limits.batch_deadline if max_wait is None else max_wait
        while True:
            result = self.open_batch(server, limits, queued_sizes, connections=connections)
            if isinstance(result, BatchGrant):
                return result
            delay = result.until - self.clock()
            if math.isinf(result.until) or delay > limit:
                return result
            sleep(max(0.0, delay))

    def usage(self, server: str, limits: Limits) -> Usage:
        """Sent in the last hour / day, what the windows still allow, the next batch."""
        self.flush()
        with self._db.write() as conn:
            now = self.clock()
            reclaim(conn, now, self.owner)
            loaded = load_state(conn, server, limits, now)
            sent_hour, bytes_hour = count_sent(conn, server, now - limits.rate_window)
            sent_day, bytes_day = count_sent(conn, server, now - limits.send_limit_window)
        return _usage(server, limits, now, loaded, (sent_hour, bytes_hour, sent_day, bytes_day))

    def next_window_at(self, server: str, limits: Limits) -> float:
        """When the next batch of ``server`` may start (now if now; ``math.inf``: never)."""
        return self.usage(server, limits).next_batch_at

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        """The schedule that would send ``{server: (limits, queued sizes)}`` at current limits.

        Starts from the ledger's state (live reservations of other runs count as
        sends at their deadline) and plays :func:`~carerix_smtp.limits.schedule.simulate_schedule`
        forward; the servers share the email_send_limit window.
        """
        if not queues:
            return Schedule((), None, 0, 0)
        widest_name = max(queues, key=lambda name: queues[name][0].send_limit_window)
        self.flush()
        with self._db.write() as conn:
            now = self.clock()
            reclaim(conn, now, self.owner)
            loaded = {name: load_state(conn, name, lim, now) for name, (lim, _) in queues.items()}
        widest_state = loaded[widest_name].state
        all_sends = list(widest_state.all_sends)
        pending_at = max(now, widest_state.reservations_end or now)
        all_sends.extend([pending_at] * widest_state.all_reserved)
        server_queues = {}
        for name, (lim, sizes) in queues.items():
            state = loaded[name].state
            sends = list(state.server_sends)
            sends.extend([pending_at] * state.server_reserved)
            server_queues[name] = ServerQueue(
                lim, sizes, sorted(sends), state.last_batch_start, loaded[name].timing
            )
        return simulate_schedule(server_queues, sorted(all_sends), now)

    def eta(self, server: str, limits: Limits, queued_sizes: Sequence[int]) -> Schedule:
        """:meth:`plan` for one server: ``.last_at`` is when the last message should go."""
        return self.plan({server: (limits, queued_sizes)})

    def sends(self, server: str | None = None, since: float | None = None) -> list[SendRecord]:
        """The recorded sends, oldest first (status and tests)."""
        self.flush()
        with self._db.read() as conn:
            return list_sends(conn, server, since)

    def timing(self, server: str) -> TimingModel:
        with self._db.read() as conn:
            return read_timing(conn, server)

    # the groups of BatchGrant ------------------------------------------------------------

    def flush(self) -> None:
        """Write the confirmed sends that this process's open grants still hold in memory.

        Done before every read of the windows, so this process always sees its
        own sends (another process counts them as reserved slots meanwhile).
        """
        for grant in list(self._grants):
            grant.flush()

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
        if grant in self._grants:
            self._grants.remove(grant)
        log.info(
            "server %s: batch done: %d message(s), %d bytes%s",
            grant.server,
            grant.sent,
            grant.sent_bytes,
            " (cut short by the deadline)" if grant.cut_by_deadline else "",
        )


def _usage(
    server: str, limits: Limits, now: float, loaded: LoadedState, counts: tuple[int, int, int, int]
) -> Usage:
    """:meth:`Ledger.usage` from the state read; ``counts``: sent, bytes in the hour, the day."""
    state = loaded.state
    size = plan_batch_size((), limits, loaded.timing)
    decision = next_batch(state, limits, now, size.count)
    timing = loaded.timing
    per_byte = timing.per_byte
    sent_hour, bytes_hour, sent_day, bytes_day = counts
    return Usage(
        server=server,
        at=now,
        limits=limits,
        sent_hour=sent_hour,
        bytes_hour=bytes_hour,
        sent_day=sent_day,
        bytes_day=bytes_day,
        sent_day_all=len(state.all_sends),
        reserved=state.server_reserved,
        reserved_all=state.all_reserved,
        window_allows=max(0, _window_allows(state, limits, now)),
        last_batch_at=state.last_batch_start,
        next_batch_at=decision.at,
        next_batch_size=decision.count,
        waiting_for=decision.kind,
        reason=decision.reason,
        seconds_per_message=timing.per_message,
        seconds_per_megabyte=None if per_byte is None else per_byte * 1_000_000,
    )


def _window_allows(state: WindowState, limits: Limits, now: float) -> int:
    """Messages the windows still allow at ``now`` (the batch interval aside)."""
    daily = (
        window_allowance(
            state.server_sends, now, limits.daily_window, limits.daily_limit, state.server_reserved
        )
        if limits.daily_limit is not None
        else limits.rate_per_hour
    )
    return min(
        daily,
        window_allowance(
            state.server_sends,
            now,
            limits.rate_window,
            limits.rate_per_hour,
            state.server_reserved,
        ),
        window_allowance(
            state.all_sends,
            now,
            limits.send_limit_window,
            limits.email_send_limit,
            state.all_reserved,
        ),
    )

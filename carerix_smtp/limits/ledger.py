"""The rate ledger's interface: what was sent, through which server, and when.

The ledger feeds the pure policy (:mod:`carerix_smtp.limits.rule`) the state
it needs and records what it decided.  This module holds what every ledger
store shares: the :class:`LedgerStore` protocol (what send/ and cli/ use), the
results it hands out (:class:`BatchGrant`, :class:`Wait`, :class:`Usage`,
:class:`SendRecord`) and its errors.  The one store today is
:class:`carerix_smtp.limits.sqlite.Ledger`: one SQLite file in the state dir,
shared by every run, every spool and every process.

How the sender uses it (one batch; the clock is injected, ``time.time`` in the CLI)::

    ledger = Ledger.in_state_dir(state_dir)            # Ledger(path, clock=time.time)
    limits = Limits.from_entry(entry, config.settings)
    result = ledger.acquire(entry.name, limits, queued_sizes, sleep=sleep)
    if isinstance(result, Wait):                        # "limit reached, next window at HH:MM"
        ...  # result.until (epoch seconds; math.inf = never), result.reason, result.kind
    else:
        with result as grant:                           # close() releases the unused rest
            for message in queue:
                if not grant.admit(message.size):       # count, bytes or deadline: batch over
                    break
                outcome = session.send(...)
                if data_accepted_or_unknown(outcome):   # a loss after the final "." counts too
                    grant.confirm(message.message_id, message.size)
                else:
                    grant.release(message.size)         # refused/deferred: slot back
        # grant.cut_by_deadline -> "the deadline cut the batch short"

``admit`` may sleep a little (the ledger's injected ``sleep``, never past the
deadline) when the batch of one window ago is still leaving the rolling window:
the new batch then follows it at its pace instead of waiting for all of it.
``open_batch`` answers at once (a :class:`BatchGrant` or a :class:`Wait`);
``acquire`` sleeps through waits of at most ``max_wait`` seconds (default: the
batch deadline, which covers "the previous batch is still leaving the rolling
window" and a cron run that starts a moment before the 5-minute mark); pass
``max_wait=math.inf`` for ``--loop``.  ``usage`` gives the numbers of
``cxsmtp status``, ``eta``/``plan`` the schedule of ``--dry-run``.

Reservations.  A grant is recorded as a reservation of N slots that counts
against the windows until it is closed, so several processes can never
together overshoot (the proof is in :func:`carerix_smtp.limits.rule.next_batch`).
A process that dies holding one must not block the others for ever, and a
reservation must never be released while its owner can still send, or the
proof breaks.  So the owner is recorded (host name, kernel boot id, pid
namespace, pid and the process start time, which defeats pid reuse; see
:mod:`carerix_smtp.limits.owner`):

* same machine and pid namespace: the owner is checked directly; a dead owner's
  reservation is released at once;
* otherwise (another container or machine sharing the state dir, or a system
  without ``/proc``) the reservation holds until its lease expires:
  ``deadline + lease_grace`` after opening, extended by every group of
  confirmed messages written.  The grant admits no message after its
  deadline, so what remains is at most one message in flight per connection,
  and ``lease_grace`` (data + command timeout, RFC 5321 §4.5.3.2) covers that.

Confirmations are written in groups: :class:`BatchGrant` keeps confirmed
sends in memory and writes them in one transaction when :data:`CONFIRM_GROUP`
wait, at a confirm :data:`CONFIRM_GROUP_SECONDS` or more after the previous
write (so a slow batch writes each send at once), when the batch closes, and
before this process reads the ledger (a batch, ``usage``, ``plan``,
``sends``: the same process always sees its own sends).  Until its
group is written a send's slot stays reserved, so other processes count it
all the same.

When a reservation is released this way its unused slots are freed, but the
owner may have had messages accepted that it never wrote: those in flight
(killed between the server's "250" and the confirm, RFC 1047; one per
connection) and those waiting in memory for their group.  So the reservation
records ``connections + CONFIRM_GROUP`` as what may be unwritten at once
(column ``in_flight``), and that many (at most the unconfirmed slots) are
counted as sent at release time ("presumed" rows) when the machine has not
rebooted since; all the unconfirmed slots when it may have -- groups are
committed without fsync (cheap; they survive a crash of the process, not of
the machine), while the reservation itself is fsynced.  Stamping them later
than they can have happened only makes them count longer.  A crash therefore
costs at most one group and one message per connection of one window's
slots, never an overshoot.  A run that exits normally with a grant still open
closes it (writing its last group) at exit.

The second store, :class:`carerix_smtp.limits.postgres.PostgresLedger` (several hosts
sharing one account's limits), implements :class:`LedgerStore`
and reuses :class:`BatchGrant` (the in-process bookkeeping of one batch, which
calls back ``record_sends`` / ``close_reservation``) and
:mod:`carerix_smtp.limits.owner`.  It must keep these semantics:

* serialised admission: reading the windows, :func:`~carerix_smtp.limits.rule.next_batch`
  and recording the reservation happen in ONE transaction that excludes every
  other admission of every process sharing the store (SQLite: ``BEGIN
  IMMEDIATE``); the reservation is durable (fsynced) before the grant is used;
* rolling windows: a send counts from its acceptance stamp until ``window``
  seconds later (also when stamped in the future), and a live reservation
  counts with its unconfirmed slots on its server and on the all-server
  email_send_limit window; the last batch start is the newest reservation that
  is live or sent something (the batch interval);
* reservations are released only when their owner is gone or their lease has
  expired, as above, with the presumed sends recorded in the same transaction;
  the count presumed must cover every send the owner may have left unwritten:
  the grant's in-flight messages (``connections``) plus its unwritten group
  (:attr:`BatchGrant.group_max`, which the store chooses when it creates the
  grant and records with the reservation, so that any process -- of any
  version -- releasing it knows the bound).  A crash never causes an overshoot;
* ``record_sends`` writes one group atomically (all or none), each send with
  the stamp :class:`BatchGrant` gave it (never before the slot's release time;
  the stamps are what the windows count, so they are never merged), counts
  them as used slots of the reservation and extends the lease to the newest
  stamp + ``lease_grace``; it warns when the reservation was released
  meanwhile, and records the sends anyway (counted twice: safe);
* every read of the windows (a new batch, ``usage``, ``plan``, ``sends``)
  first writes the open grants' groups of the same process
  (:meth:`BatchGrant.flush`); ``close_reservation`` closes the
  reservation (its unused slots are free again) and folds the batch's
  (size, seconds) observations into the server's
  :class:`~carerix_smtp.limits.rule.TimingModel`;
* one injected clock for stamps and decisions; sends and closed reservations
  are pruned only when no window can count them any more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from carerix_smtp.errors import GrantExceededError, LedgerBusyError, StateError
from carerix_smtp.limits.rule import BatchSize, Limits, TimingModel, WaitKind
from carerix_smtp.limits.schedule import Schedule

__all__ = [
    "CONFIRM_GROUP",
    "CONFIRM_GROUP_SECONDS",
    "BatchGrant",
    "Clock",
    "GrantExceededError",
    "LedgerBusyError",
    "LedgerError",
    "LedgerStore",
    "SendRecord",
    "Usage",
    "Wait",
]

Clock = Callable[[], float]

# Confirmed sends are written in groups, one transaction each (issue 12: a
# transaction per message cost more than the rest of the bookkeeping): when this
# many wait, or at a confirm this long after the previous write (so no send waits
# longer than that, unless no confirm follows it).  The count also bounds what a
# crash can leave unwritten, and so what releasing a dead owner's reservation
# counts as possibly sent: a larger group saves little more (the transaction is
# already shared by 64) and costs more slots after a crash.
CONFIRM_GROUP = 64
CONFIRM_GROUP_SECONDS = 0.05

LedgerError = StateError  # the ledger's errors live in errors.py


# --- results ----------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """No batch now.  ``until``: epoch seconds when one may start (``math.inf``: never)."""

    server: str
    until: float
    kind: WaitKind
    reason: str  # e.g. "rate 1200 per 1 h reached"
    batch_size: int  # messages the batch may hold then (0 when unknown)


@dataclass(frozen=True)
class SendRecord:
    server: str
    time: float
    bytes: int
    message_id: str | None
    presumed: bool
    reservation: int | None


@dataclass(frozen=True)
class Usage:
    """Status of one server.  "hour" is ``rate_window``, "day" ``send_limit_window``."""

    server: str
    at: float
    limits: Limits
    sent_hour: int
    bytes_hour: int
    sent_day: int  # this server
    bytes_day: int
    sent_day_all: int  # all servers (what email_send_limit counts)
    reserved: int  # unconfirmed slots of live batches on this server
    reserved_all: int
    window_allows: int  # messages the windows still allow right now (interval aside)
    last_batch_at: float | None
    next_batch_at: float  # when the next full batch may start (== at: now; inf: never)
    next_batch_size: int
    waiting_for: WaitKind | None
    reason: str
    seconds_per_message: float | None  # timing model (None before the first batch)
    seconds_per_megabyte: float | None


# --- the grant ----------------------------------------------------------------


class BatchGrant:
    """Permission to send one batch: at most ``max_messages`` / ``max_bytes`` by ``deadline_at``.

    Thread-safe, so parallel connections may share it.  ``admit(size)`` takes a
    slot if the message still fits (count, bytes, and -- after the first message
    -- the time left by the timing model); ``confirm`` records the send (call it
    when the data was accepted, and also when the connection was lost after the
    final "." -- possibly sent counts as sent; written to the store in groups,
    see :meth:`confirm`); ``release`` gives an admitted
    message's slot back when it was not accepted.  ``close`` (or leaving the
    ``with`` block) releases the rest and updates the timing model.
    """

    def __init__(
        self,
        ledger: LedgerStore,
        reservation_id: int,
        server: str,
        limits: Limits,
        opened_at: float,
        max_messages: int,
        planned: BatchSize,
        timing: TimingModel,
        release: Sequence[float] = (),
        group_max: int = CONFIRM_GROUP,
        group_seconds: float = CONFIRM_GROUP_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.reservation_id = reservation_id
        self.server = server
        self.limits = limits
        self.opened_at = opened_at
        self.max_messages = max_messages
        self.max_bytes = limits.batch_max_bytes
        self.deadline_at = opened_at + limits.batch_deadline
        self.planned = planned
        self.timing = timing
        # release[j]: message j may not go before this (limits.next_batch pacing)
        self.release_at = tuple(release) or (opened_at,) * max_messages
        self.sent = 0
        self.sent_bytes = 0
        self.cut_by_deadline = False
        # "count", "bytes", "deadline", "closed"; "ledger": a group could not be written
        self.stop_reason: str | None = None
        self.closed = False
        self._claims: list[int] = []
        self._observations: list[tuple[int, float]] = []
        self._setup: float | None = None
        self._mark: float | None = None
        # Confirmed sends not written yet (stamp, message id, bytes), and the clock
        # at the previous write (the reservation's): written in groups (see confirm).
        self.group_max = max(1, group_max)
        self.group_seconds = group_seconds
        self._unwritten: list[tuple[float, str | None, int]] = []
        self._written_at = opened_at
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"<BatchGrant {self.server} #{self.reservation_id} {self.sent}/{self.max_messages}"
            f"{' closed' if self.closed else ''}>"
        )

    @property
    def unwritten(self) -> int:
        """Confirmed sends still waiting in memory for their group's write."""
        return len(self._unwritten)

    @property
    def remaining(self) -> int:
        """Slots neither confirmed nor admitted."""
        return max(0, self.max_messages - self.sent - len(self._claims))

    def admit(self, size: int) -> bool:
        """Take a slot for a message of ``size`` bytes if it still fits in this batch.

        False means the batch is over (keep FIFO order: stop, the rest stays
        queued); :attr:`stop_reason` says why.  A message larger than the byte
        cap is admitted when it is the batch's first, and then alone.

        While the batch of one window ago is still leaving the rolling window,
        a slot may only be usable a little later: ``admit`` then sleeps (the
        ledger's injected ``sleep``) until it is, never past the deadline.
        """
        with self._lock:
            if self.closed:
                self.stop_reason = "closed"
                return False
            if len(self._unwritten) >= self.group_max:
                # A group could not be written (the error went to its confirm): admit
                # no more, so what a crash leaves unwritten stays within the bound
                # the reservation records (a group and one message per connection).
                self.stop_reason = "ledger"
                return False
            now = self.ledger.clock()
            used = self.sent + len(self._claims)
            if used >= self.max_messages:
                self.stop_reason = "count"
                return False
            if used > 0 and self.sent_bytes + sum(self._claims) + size > self.max_bytes:
                self.stop_reason = "bytes"
                return False
            start = max(now, self.release_at[min(used, len(self.release_at) - 1)])
            late = start >= self.deadline_at
            if not late and used > 0 and not self.timing.empty:
                late = start + self.timing.predict(size) > self.deadline_at
            if late:
                self.stop_reason = "deadline"
                self.cut_by_deadline = True
                return False
            self._claims.append(size)
            if self._mark is None:
                self._mark = start
                self._setup = start - self.opened_at
        if start > now:
            self.ledger.sleep(start - now)
        return True

    def release(self, size: int) -> None:
        """An admitted message was not accepted: its slot is free again."""
        with self._lock:
            self._unclaim(size)

    def confirm(self, message_id: str | None, size: int) -> float:
        """The server accepted the data: record the send, stamped now.  Returns the stamp.

        The send is written with others in one group (one transaction): when
        :attr:`group_max` sends wait, when this confirm comes
        :attr:`group_seconds` or more after the previous write (so the oldest
        waits no longer than that, unless no confirm follows it), at
        :meth:`flush` and :meth:`close`, and before the store reads its state
        (the store calls :meth:`flush`).  Until then its slot stays reserved,
        and a crash counts it as possibly sent (module docstring).
        """
        with self._lock:
            over = not self._unclaim(size) and self.sent + len(self._claims) >= self.max_messages
            # Never stamped before the slot's release time (the proof in limits.next_batch).
            release = self.release_at[min(self.sent, len(self.release_at) - 1)]
            clock = self.ledger.clock()
            now = max(clock, release, self.opened_at)
            self._unwritten.append((now, message_id, size))
            self.sent += 1
            self.sent_bytes += size
            if self._mark is not None:
                self._observations.append((size, max(0.0, now - max(self._mark, release))))
            self._mark = now
            if (
                over
                or len(self._unwritten) >= self.group_max
                or clock - self._written_at >= self.group_seconds
            ):
                self._write_unwritten()
        if over:
            raise GrantExceededError(
                f"server {self.server}: message {message_id} was sent beyond its batch of "
                f"{self.max_messages}; call admit() before sending (the send was recorded)"
            )
        return now

    def flush(self) -> None:
        """Write the confirmed sends that wait in memory (one transaction)."""
        with self._lock:
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        # Under self._lock.  Kept in memory when the write fails: the next one retries.
        if self._unwritten:
            self.ledger.record_sends(self, list(self._unwritten))
            self._unwritten.clear()
            self._written_at = self.ledger.clock()

    def _unclaim(self, size: int) -> bool:
        if size in self._claims:
            self._claims.remove(size)
            return True
        if self._claims:
            self._claims.pop(0)
            return True
        return False

    def close(self) -> None:
        """Release the unused slots and fold this batch's timing into the model."""
        with self._lock:
            if self.closed:
                return
            self._write_unwritten()
            self.closed = True
            self._claims.clear()
            observations = list(self._observations)
            setup = self._setup
        self.ledger.close_reservation(self, observations, setup)

    def __enter__(self) -> BatchGrant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- the interface ----------------------------------------------------------------


class LedgerStore(Protocol):
    """What send/ and cli/ use of a rate ledger, and what :class:`BatchGrant` calls back.

    Semantics in the module docstring.  Construction is the store's own
    (``Ledger(path)`` / ``Ledger.in_state_dir(state_dir)`` for SQLite).
    """

    clock: Clock  # epoch seconds: stamps the sends and decides the windows
    sleep: Callable[[float], None]  # used only by BatchGrant.admit to pace a batch

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
        """Grant a batch now, sleeping (with ``sleep``) through waits up to ``max_wait``.

        ``queued_sizes``: the queue head's sizes in sending order (empty =
        unknown); ``connections``: messages that may be in flight at once under
        the grant (what a crash may leave unrecorded).  ``max_wait`` defaults to
        the batch deadline; ``math.inf`` sleeps until a batch is granted.
        """
        ...

    def usage(self, server: str, limits: Limits) -> Usage:
        """Sent in the last hour / day, what the windows still allow, the next batch."""
        ...

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        """The schedule that would send ``{server: (limits, queued sizes)}`` at current limits."""
        ...

    def close(self) -> None:
        """Close open grants (releasing their slots) and the store."""
        ...

    def record_sends(
        self, grant: BatchGrant, sends: Sequence[tuple[float, str | None, int]]
    ) -> None:
        """Called by :class:`BatchGrant`: a group of sends ``(stamp, message id, bytes)``.

        All of them in one transaction (all or none), each with its own stamp;
        the lease is extended once, to the newest stamp plus ``lease_grace``.
        Logs a warning when the reservation had been released meanwhile.
        """
        ...

    def close_reservation(
        self,
        grant: BatchGrant,
        observations: Sequence[tuple[int, float]],
        setup: float | None,
    ) -> None:
        """Called by :meth:`BatchGrant.close`: free the unused slots, update the timing model."""
        ...

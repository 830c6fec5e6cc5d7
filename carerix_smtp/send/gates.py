"""Batch gates: per-server admission for one pass (the seam for rate limits and
batch sizing).  ``BatchGate`` is the protocol, ``CountGate`` a plain cap and
``LedgerGate`` one batch of one server granted by the rate ledger.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from carerix_smtp.limits.ledger import BatchGrant, LedgerStore, Usage, Wait
from carerix_smtp.limits.rule import Limits, WaitKind, format_duration
from carerix_smtp.send.report import BatchReport

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry

log = logging.getLogger(__name__)


class BatchGate(Protocol):
    """Per-server admission control for one pass (:class:`LedgerGate` is the real one).

    ``admit(size)`` before each message: False ends this server's batch and leaves
    the message (and the rest) queued.  ``confirm(message_id, size)`` after the
    server accepted the data (or the connection was lost after the final ".").
    ``close()`` at the end of the pass, also after an error.  An admitted message
    may get no ``confirm`` (refused, deferred, server unusable, run stopped): the
    sender then calls ``release(size)`` if the gate has it, and a gate that
    reserves budget in ``admit`` releases the unconfirmed rest in ``close``.
    ``size`` is the file's size in bytes.
    """

    def admit(self, size: int) -> bool: ...

    def confirm(self, message_id: str, size: int) -> None: ...

    def close(self) -> None: ...


class CountGate:
    """At most N messages admitted (None: no cap); share one instance to cap a whole run."""

    def __init__(self, max_messages: int | None = None) -> None:
        self.max_messages = max_messages
        self.admitted = 0
        self.confirmed = 0
        self._lock = threading.Lock()  # confirm() comes from the connections' threads

    def admit(self, size: int) -> bool:
        if self.max_messages is not None and self.admitted >= self.max_messages:
            return False
        self.admitted += 1
        return True

    def confirm(self, message_id: str, size: int) -> None:
        with self._lock:
            self.confirmed += 1

    def close(self) -> None:
        return None


def release_admission(gate: BatchGate, size: int) -> None:
    release = getattr(gate, "release", None)
    if release is not None:
        release(size)


class LedgerGate:
    """One batch of one server from the rate ledger (the sender side of limits/ledger.py).

    The grant is asked for on the first :meth:`admit` (or by :meth:`prepare`),
    sized from the server's queue head (``queued_sizes(n)``: the sizes of its
    next ``n`` due messages, in sending order).  A wait shorter than the batch
    deadline is slept through (``pause``, which raises when the run is being
    stopped); a longer one ends the batch before it began (:attr:`wait`).
    """

    def __init__(
        self,
        ledger: LedgerStore,
        entry: ServerEntry,
        limits: Limits,
        queued_sizes: Callable[[int], list[int]],
        pause: Callable[[float], None],
        finishing: Callable[[], int] = lambda: 0,
    ) -> None:
        self.ledger = ledger
        self.finishing = finishing  # admitted messages whose data is out already
        self.entry = entry
        self.limits = limits
        self.queued_sizes = queued_sizes
        self.pause = pause
        self.grant: BatchGrant | None = None
        self.wait: Wait | None = None
        self.refused = False  # a message was turned away: the batch is over, messages left
        self.stop_reason: str | None = None
        # Admitted, neither confirmed nor released: in flight, or read ahead and held
        # (the sender admits a message or two before the one on the wire is done).
        self.pending = 0
        self._lock = threading.Lock()  # pending: confirm/release come from any thread

    def __repr__(self) -> str:
        return f"<LedgerGate {self.entry.name} {self.grant or self.wait}>"

    def prepare(self) -> bool:
        """Open the batch now if the limits allow it; False: not now (see :attr:`wait`)."""
        if self.grant is not None:
            return not self.grant.closed
        if self.wait is not None:
            return False
        result = self.ledger.acquire(
            self.entry.ledger_key,  # the account: hosts and entries sharing it share limits
            self.limits,
            self.queued_sizes(self.limits.batch_count_cap + 1),
            sleep=self.pause,
            # At most one message in flight per connection (what a crash can leave
            # unrecorded).  admit/prepare/report run in the dispatching thread only;
            # confirm/release come from the connections' threads (BatchGrant locks).
            connections=max(1, self.entry.connections),
        )
        if isinstance(result, Wait):
            log.info("server %s: no batch now: %s", self.entry.name, result.reason)
            self.wait = result
            self.stop_reason = result.kind.value
            return False
        self.grant = result
        return True

    def admit(self, size: int) -> bool:
        if not self.prepare():
            self.refused = True
            return False
        grant = self.grant
        assert grant is not None
        if self._too_late(grant, size):
            # The grant checks one message against its deadline; this one goes only
            # after those admitted before it, on as many connections as there are.
            self.refused = True
            self.stop_reason = grant.stop_reason = "deadline"
            grant.cut_by_deadline = True
            return False
        if grant.admit(size):
            with self._lock:
                self.pending += 1
            return True
        self.refused = True
        self.stop_reason = grant.stop_reason
        return False

    def _too_late(self, grant: BatchGrant, size: int) -> bool:
        with self._lock:
            ahead = self.pending
        if not ahead or grant.timing.empty:
            return False
        # messages to go through before this one is done, per connection: those ahead
        # (less one whose data is out, answered any moment now), and this one
        waiting = max(1, ahead + 1 - self.finishing())
        rounds = math.ceil(waiting / max(1, self.entry.connections))
        return self.ledger.clock() + rounds * grant.timing.predict(size) > grant.deadline_at

    def _done(self) -> None:
        with self._lock:
            self.pending = max(0, self.pending - 1)

    def confirm(self, message_id: str, size: int) -> None:
        self._done()
        if self.grant is not None:
            self.grant.confirm(message_id, size)

    def release(self, size: int) -> None:
        self._done()
        if self.grant is not None:
            self.grant.release(size)

    def close(self) -> None:
        if self.grant is not None:
            self.grant.close()

    def report(self, pending: bool) -> BatchReport:
        """What this batch did; ``pending``: the server still has due messages."""
        grant = self.grant
        report = BatchReport(self.entry.name)
        if grant is not None:
            report.started_at = grant.opened_at
            report.sent = grant.sent
            report.bytes = grant.sent_bytes
            report.max_messages = grant.max_messages
            report.planned = grant.planned.count
            report.planned_by = grant.planned.limited_by
            report.deadline_cut = grant.cut_by_deadline
        if not pending and not self.refused:
            return report
        if self.wait is not None:
            report.limited_by = self.wait.kind.value
            report.next_window_at = self.wait.until
            report.reason = self.wait.reason
            return report
        usage = self.ledger.usage(self.entry.ledger_key, self.limits)
        report.next_window_at = usage.next_batch_at
        report.reason = usage.reason
        reason = self.stop_reason or "count"
        if grant is not None and reason == "count":
            if grant.max_messages < grant.planned.count:  # the rolling windows cut it
                reason = _window_kind(usage).value
            elif grant.planned.limited_by != "queue":
                reason = grant.planned.limited_by
        report.limited_by = reason
        if reason == "deadline" and not report.reason:
            report.reason = f"batch deadline {format_duration(self.limits.batch_deadline)}"
        return report


def _window_kind(usage: Usage) -> WaitKind:
    if usage.waiting_for in (WaitKind.RATE, WaitKind.SEND_LIMIT):
        return usage.waiting_for
    limits = usage.limits
    if usage.sent_day_all + usage.reserved_all >= limits.email_send_limit:
        return WaitKind.SEND_LIMIT
    return WaitKind.RATE


GateFactory = Callable[["ServerEntry"], BatchGate]
LedgerSource = LedgerStore | Callable[[], LedgerStore | None]


def open_ledger(source: LedgerSource | None) -> tuple[LedgerStore | None, bool]:
    """(ledger, ours): a factory is called (and its ledger closed by us), an instance used.

    A store is told from a factory by its ``acquire`` (stores are not callable)."""
    if source is None or hasattr(source, "acquire"):
        return cast("LedgerStore | None", source), False
    return source(), True

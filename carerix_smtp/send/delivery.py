"""One message on its connection and what comes of it (``Delivery``): send it
(under the run's stop rules), confirm or release its batch slot, and record the
outcome -- journal, record, move through the Spool, the delivery log, the run's
counters and progress events.  A file that cannot be sent goes to failed/.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from carerix_smtp.errors import Interrupted, SmtpAuthError, SmtpPolicyError
from carerix_smtp.send.connection import Connection, ServerUnusable
from carerix_smtp.send.gates import BatchGate, release_admission
from carerix_smtp.send.outcome import (
    ACCEPTED,
    FAILED,
    Attempt,
    delivery_log,
    last_reply,
    pending_for,
    record_attempt,
    state_for,
)
from carerix_smtp.send.report import ProgressEvent
from carerix_smtp.send.stopping import Stopping, cleanup, stop_for
from carerix_smtp.spool.records import MessageState

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.send.pool import Job
    from carerix_smtp.send.report import RunSummary, SendOptions
    from carerix_smtp.send.servers import Servers
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.message import Message
    from carerix_smtp.spool.spool import Spool

log = logging.getLogger(__name__)


class Delivery:
    """Sends one message at a time on a connection and books its outcome; any thread."""

    def __init__(
        self,
        spool: Spool,
        options: SendOptions,
        servers: Servers,
        *,
        clock: Callable[[], float],
        progress: Callable[[ProgressEvent], None] | None,
        summary: RunSummary,
        lock: threading.RLock,
    ) -> None:
        self.spool = spool
        self.options = options
        self.servers = servers
        self.clock = clock
        self.progress = progress
        self.summary = summary
        self.lock = lock  # the summary and counters, from any thread
        self.done = 0
        self.total = 0

    def deliver(
        self,
        claim: Claim,
        message: Message,
        entry: ServerEntry,
        conn: Connection,
        gate: BatchGate,
        then: Job | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        state = state_for(claim, message)
        recipients = list(state.pending)
        following = None
        if then is not None:
            following = (then.message, pending_for(then.claim, then.message))
        start = self.clock()
        counted = False  # the data may have been accepted: the limits count it

        def settle() -> None:
            if counted:
                gate.confirm(message.message_id or claim.name, message.size)
            else:
                release_admission(gate, message.size)

        # After an error (the spool's disk is full...) that error is the one reported.
        with cleanup(settle):
            try:
                with self.servers.network():
                    attempt = conn.deliver(message, recipients, self.clock, following, meanwhile)
            except Stopping:
                self.spool.requeue(claim)
                conn.unchain(message)
                return
            except (SmtpAuthError, SmtpPolicyError) as exc:  # on a reconnect
                self.spool.requeue(claim)
                raise stop_for(exc) from None
            except ServerUnusable as exc:
                self.spool.requeue(claim)
                self.servers.note_unusable(conn, str(exc))
                return
            except Interrupted:
                counted = True  # stopped somewhere in the transaction: maybe delivered
                conn.abandon()
                back = self.spool.requeue(claim)
                self.summary.possible_duplicates.append(back.name)
                raise
            if attempt.connection_lost and self.servers.aborting.is_set():
                # Our own abort cut it (another thread was interrupted): back to the
                # queue unchanged, as the one-connection run does.
                counted = True
                back = self.spool.requeue(claim)
                self.summary.possible_duplicates.append(back.name)
                return
            # Accepted by someone, or lost after the final ".": possibly delivered.
            counted = bool(attempt.recipients(ACCEPTED)) or attempt.unknown
            self.apply(claim, message, state, entry, attempt, start)
        if attempt.connection_lost:
            log.warning("%s: %s", entry.name, attempt.error)
        self.count_deferrals(conn, entry, attempt)

    def count_deferrals(self, conn: Connection, entry: ServerEntry, attempt: Attempt) -> None:
        """A server that defers ``stop_after_deferrals`` whole messages in a row is
        left alone for the rest of the run."""
        if attempt.local:
            return
        if attempt.recipients(ACCEPTED) or attempt.recipients(FAILED):
            conn.consecutive_deferrals = 0
        else:
            conn.consecutive_deferrals += 1
            limit = self.options.stop_after_deferrals
            if limit and conn.consecutive_deferrals >= limit and conn.unusable is None:
                conn.unusable = (
                    f"server {entry.name}: {limit} messages in a row deferred "
                    f"(last: {attempt.error or last_reply(attempt)}); the rest is left "
                    "for the next run"
                )
                self.servers.note_unusable(conn, conn.unusable)
                conn.close()

    def apply(
        self,
        claim: Claim,
        message: Message,
        state: MessageState,
        entry: ServerEntry,
        attempt: Attempt,
        start: float,
    ) -> None:
        record_attempt(state, entry, attempt, start, self.clock())
        if attempt.unknown:
            log.warning(
                "%s: connection lost after the data was sent; it may have been delivered "
                "(possible duplicate on retry)",
                claim.name,
            )
        self.spool.record_outcome(claim, state)
        self.spool.log_delivery(delivery_log(claim, message, entry, state, attempt))
        self.tally(claim, message, state)

    def tally(self, claim: Claim, message: Message, state: MessageState) -> None:
        """The summary's counters and failures, and the progress event, for one outcome."""
        with self.lock:
            refused = _refusal(state)
            if refused:
                self.summary.failures.append(f"{claim.name}: {refused}")
            # partial: sent to some, others still pending; sent-with-failures: none pending
            partial = state.status == "deferred" and bool(state.accepted)
            self._count(state.status, message.size, partial)  # (the lock is held)
            if state.status == "sent" and state.server:  # per server (issue 14: fallbacks)
                self.summary.server_use(state.server).sent += 1
            if state.status == "sent":
                self.summary.recipients_failed += len(state.failed)
            if self.progress is None:  # no bar (not a terminal): no event to make
                return
            self.emit(
                ProgressEvent(
                    "message",
                    self.total,
                    self.done,
                    claim.name,
                    state.status,
                    message.size,
                    server=state.server or "",
                )
            )

    def count(self, outcome: str, size: int, *, partial: bool = False) -> None:
        with self.lock:
            self._count(outcome, size, partial)

    def _count(self, outcome: str, size: int, partial: bool) -> None:
        self.done += 1
        self.summary.partial += int(partial)
        if outcome == "sent":
            self.summary.sent += 1
            self.summary.bytes += size
        elif outcome == "deferred":
            self.summary.deferred += 1
        else:
            self.summary.failed += 1

    def fail_file(self, claim: Claim, reason: str) -> None:
        """An unusable file: to failed/ with the reason; the run goes on."""
        reason = reason.removeprefix(f"{claim.name}: ")
        now = self.clock()
        state = claim.state or MessageState(name=claim.name, queued_at=claim.mtime)
        state.pending = {}
        state.size = claim.size
        state.reason = reason
        state.last_attempt = now
        log.info("%s: %s", claim.name, reason)
        self.summary.failures.append(f"{claim.name}: {reason}")
        self.spool.record_outcome(claim, state)
        self.spool.log_delivery({"file": claim.name, "outcome": "failed", "error": reason})
        self.count("failed", claim.size)
        self.emit(ProgressEvent("message", self.total, self.done, claim.name, "failed", claim.size))

    def emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            with self.lock:
                self.progress(event)


def _refusal(state: MessageState) -> str:
    """What the summary lists for a message that failed or was sent with refused
    recipients ("" for the others): the message's reply when MAIL FROM was refused."""
    if not (state.status == "failed" or (state.status == "sent" and state.failed)):
        return ""
    if state.reason.startswith("too old"):
        return state.reason
    if state.reply is not None:
        return f"MAIL FROM refused: {state.reply.describe()}"
    refused = ", ".join(f"{r}: {res.describe()}" for r, res in state.failed.items())
    return f"sent, but refused for {refused}" if state.status == "sent" else refused

"""``cxsmtp send SPOOL``: one batch per server within the sending limits, or ``--loop``.

The shape is django-mailer's ``send_all`` (lock, one pass, reuse the connection,
stop at limits, defer known failures, one summary), with per-recipient outcomes,
a crash-safe spool (see spool.py) and the rate ledger (ledger.py, limits.py):

1. take the spool lock (another run holds it -> status "locked", exit 0);
2. recover what a killed run left behind;
3. one pass: for each due message, oldest first, pick the server (``--server``,
   else the From's per-user choice, else the default), ask that server's batch
   gate, claim the message, send it on that server's connection, journal the
   per-recipient result and move it to sent/, deferred/ or failed/;
4. without ``--loop``: exit.  With it: close the connections, sleep (on the
   stop event, so SIGTERM ends the sleep at once) until the next window opens,
   and make another pass, until nothing is due.

Limits (SPEC §3, issue 5).  With a :class:`~carerix_smtp.limits.ledger.Ledger` every
server gets one :class:`LedgerGate` per pass: the ledger's grant for one batch,
sized from that server's queue head (count, bytes, and the time the last
batches took, so that it ends within the batch deadline), taken on the server's
first message (for a single-server run: before connecting, so a run that may
send nothing does not connect).  A message counts when the server accepted its
data -- and also when the connection was lost after the final "." (it may have
been delivered, RFC 1047).  The grant admits no message after its deadline;
the rest stays queued and the summary says the deadline cut the batch short.
When nothing is allowed yet the summary says when the next window opens and
why.  ``--max-messages N`` is an extra cap on the whole run.  Without a ledger
(library use, tests) only the gates of ``gate_factory`` and ``max_messages``
apply.

Per recipient (SPEC §3): 2xx to RCPT and to the data -> accepted, never sent
again; 5xx -> failed; 4xx -> retried later alone.  A 4xx to MAIL or the data, a
421, a lost connection or a timeout defer the whole message with exponential
backoff (``retry_initial`` doubling to ``retry_max``) until ``max_queue_age``,
then it fails.  An authentication failure stops the run before any message is
changed (exit 77).  Servers that cannot be reached leave their messages where
they are (exit 75); a connection lost mid-run is reopened at most
``max_reconnects`` times.

Speed (SPEC "Non-functional targets").  On one connection the messages are
pipelined (RFC 2920): the next message's MAIL/RCPT/DATA go out in the same write
as the current one's data, and the one after that is claimed and read while the
server works on the current one -- one round trip and no idle CPU per message.
A server entry with ``connections`` = N > 1 gets N connections, each driven by a
thread (``_Pool``), fed in order by the run's thread.  Either way a message's
data goes out only after the outcome of the one before it on that connection is
journaled: a crash leaves at most one possible duplicate per connection.

Seams:

- ``BatchGate``: per-server admission (``admit`` before each message,
  ``confirm`` after each accepted data, ``release`` for an admitted message that
  was not accepted, ``close``); :class:`LedgerGate` is the real one.
- ``Connection`` owns one ``SmtpSession`` and turns one message into a pure
  ``Attempt`` (per-recipient outcomes); the spool bookkeeping happens outside it,
  in the connection's thread (the spool's journal and log take turns).
- ``deadline`` / ``stop``: the run ends cleanly between messages; the rest stays queued.
- ``clock`` / ``sleep``: injected (the loop's sleeps and the ledger's clock).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from carerix_smtp.errors import (
    ConfigError,
    ExitCode,
    Interrupted,
    MessageError,
    SmtpAuthError,
    SmtpError,
    SmtpPolicyError,
    SmtpReplyError,
)
from carerix_smtp.limits.ledger import BatchGrant, Ledger, Usage, Wait
from carerix_smtp.limits.rule import (
    RESERVATION_POLL,
    Limits,
    Schedule,
    ServerQueue,
    WaitKind,
    format_duration,
    simulate_schedule,
)
from carerix_smtp.spool.message import Message, read_message
from carerix_smtp.spool.spool import (
    DEFAULT_CANDIDATE_LIMIT,
    Candidate,
    Claim,
    MessageState,
    RecipientResult,
    Spool,
    backoff,
    iso,
)

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.smtp.transport import Reply, SendResult, SmtpSession, Transaction

log = logging.getLogger(__name__)

DEFAULT_MAX_RECONNECTS = 3
# A server that defers this many whole messages in a row (451 "try later", rate
# limited) is left alone for the rest of the run; its messages stay queued.
DEFAULT_STOP_AFTER_DEFERRALS = 5


# --- the seam for rate limits and batch sizing ----------------------------------------


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


def _release(gate: BatchGate, size: int) -> None:
    release = getattr(gate, "release", None)
    if release is not None:
        release(size)


class LedgerGate:
    """One batch of one server from the rate ledger (ledger.py's sender loop).

    The grant is asked for on the first :meth:`admit` (or by :meth:`prepare`),
    sized from the server's queue head (``queued_sizes(n)``: the sizes of its
    next ``n`` due messages, in sending order).  A wait shorter than the batch
    deadline is slept through (``pause``, which raises when the run is being
    stopped); a longer one ends the batch before it began (:attr:`wait`).
    """

    def __init__(
        self,
        ledger: Ledger,
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
            self.entry.name,
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
        usage = self.ledger.usage(self.entry.name, self.limits)
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
SessionFactory = Callable[["ServerEntry", "str | None"], "SmtpSession"]
PasswordSource = Callable[["ServerEntry"], "str | None"]
LedgerSource = Ledger | Callable[[], Ledger]


# --- options, results -----------------------------------------------------------------


@dataclass
class SendOptions:
    server: str | None = None  # --server: every message through this one
    max_messages: int | None = None  # for the whole run (every pass of --loop)
    dry_run: bool = False
    loop: bool = False  # --loop: batch after batch until nothing is due
    deadline: float | None = None  # seconds after the start; the rest stays queued
    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    stop_after_deferrals: int = DEFAULT_STOP_AFTER_DEFERRALS
    local_hostname: str | None = None


@dataclass
class ProgressEvent:
    kind: str  # "start" | "message" | "wait" | "end"
    total: int = 0
    done: int = 0
    name: str = ""
    outcome: str = ""  # sent | deferred | failed | skipped
    size: int = 0
    until: float | None = None  # "wait": sleeping until then (epoch seconds)
    reason: str = ""  # "wait": why


# status -> exit code (SPEC §3; the README lists them).  "locked", "nothing-to-do",
# "limit" (rest later) and "ok" are all 0: nothing is wrong.
STATUS_EXIT = {
    "auth-failed": ExitCode.NOPERM,
    "config-error": ExitCode.CONFIG,
    "interrupted": ExitCode.TEMPFAIL,
    "failed": ExitCode.DATAERR,
    "deferred": ExitCode.TEMPFAIL,
}


@dataclass
class BatchReport:
    """One server's batch in one pass.  ``limited_by``: why it ended with messages left
    ("count", "bytes", "deadline" -- the batch's own limits; "rate", "send-limit",
    "interval", "reserved" -- the windows; None: the server's queue was done)."""

    server: str
    started_at: float | None = None  # None: no batch was granted
    sent: int = 0  # counted in the ledger (accepted, or possibly delivered)
    bytes: int = 0
    max_messages: int = 0  # the grant
    planned: int = 0  # what the batch sizing made of the queue
    planned_by: str = ""  # count | bytes | deadline | queue
    deadline_cut: bool = False
    limited_by: str | None = None
    next_window_at: float | None = None  # math.inf: never (email-send-limit 0)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "started_at": iso(self.started_at),
            "sent": self.sent,
            "bytes": self.bytes,
            "max_messages": self.max_messages,
            "planned": self.planned,
            "planned_by": self.planned_by,
            "deadline_cut": self.deadline_cut,
            "limited_by": self.limited_by,
            "next_window_at": _iso_finite(self.next_window_at),
            "reason": self.reason,
        }


def _iso_finite(ts: float | None) -> str | None:
    return None if ts is None or math.isinf(ts) else iso(ts)


@dataclass
class RunSummary:
    """What one run did.  ``status`` is one word; ``exit_code`` follows SPEC §3."""

    status: str = "ok"
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    remaining: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    partial: int = 0  # sent, but some recipients refused
    possible_duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # run-level: servers, auth, signals
    failures: list[str] = field(default_factory=list)  # "NAME: reason" per failed message
    next_retry: float | None = None
    lock_holder: int | None = None
    # limits: the batches of every pass; what held back the messages still queued
    batches: list[BatchReport] = field(default_factory=list)
    deadline_cut: bool = False  # a batch deadline cut a batch short
    limited_by: str | None = None  # see BatchReport, or "max-messages"
    limit_reason: str = ""
    next_window_at: float | None = None  # math.inf: never

    @property
    def exit_code(self) -> ExitCode:
        """SPEC §3 / sysexits: see ``STATUS_EXIT``."""
        return STATUS_EXIT.get(self.status, ExitCode.OK)

    def settle(self, *, unreachable: bool) -> None:
        """The final status when the run was not stopped by auth or a signal:
        something failed (65) > deferred or unreachable (75) > rest later (0) > ok."""
        if self.status in ("auth-failed", "config-error", "interrupted", "locked", "nothing-to-do"):
            return
        if self.failed or self.partial:
            self.status = "failed"
        elif unreachable or self.deferred:
            self.status = "deferred"
        elif self.remaining:
            self.status = "limit"
        else:
            self.status = "ok"

    def note_limits(self, reports: Sequence[BatchReport], max_hit: int | None) -> None:
        """What held back the rest after a pass: the earliest next window wins."""
        self.limited_by, self.limit_reason, self.next_window_at = None, "", None
        if max_hit is not None:
            self.limited_by, self.limit_reason = "max-messages", f"--max-messages {max_hit}"
            return
        limited = [r for r in reports if r.limited_by is not None]
        if not limited:
            return
        first = min(
            limited, key=lambda r: math.inf if r.next_window_at is None else r.next_window_at
        )
        self.limited_by, self.limit_reason = first.limited_by, first.reason
        self.next_window_at = first.next_window_at

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sent": self.sent,
            "deferred": self.deferred,
            "failed": self.failed,
            "remaining": self.remaining,
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "partial": self.partial,
            "possible_duplicates": self.possible_duplicates,
            "errors": self.errors,
            "failures": self.failures,
            "next_retry": iso(self.next_retry),
            "deadline_cut": self.deadline_cut,
            "limited_by": self.limited_by,
            "limit_reason": self.limit_reason,
            "next_window_at": _iso_finite(self.next_window_at),
            "batches": [b.to_json() for b in self.batches],
        }


@dataclass
class PlannedBatchInfo:
    start: float
    count: int
    bytes: int
    last_at: float  # expected time of its last message

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "messages": self.count,
            "bytes": self.bytes,
            "last_at": iso(self.last_at),
        }


@dataclass
class PlanEntry:
    server: str
    host: str
    messages: int = 0
    bytes: int = 0
    sizes: list[int] = field(default_factory=list, repr=False)  # in sending order
    batches: list[PlannedBatchInfo] = field(default_factory=list)
    last_at: float | None = None  # when the last message should go (inf: never)
    blocked: str = ""  # why not (inf): e.g. email-send-limit 0

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "host": self.host,
            "messages": self.messages,
            "bytes": self.bytes,
            "batches": [b.to_json() for b in self.batches],
            "last_at": _iso_finite(self.last_at),
            "blocked": self.blocked or None,
        }


@dataclass
class Plan:
    """``--dry-run``: what runs would do at current limits (nothing is changed)."""

    messages: int = 0
    bytes: int = 0
    servers: dict[str, PlanEntry] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    waiting: int = 0  # deferred, not due yet
    next_retry: float | None = None
    at: float = 0.0  # when the plan was made
    last_at: float | None = None  # the last message of all (inf: never)

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "at": iso(self.at),
            "last_at": _iso_finite(self.last_at),
            "servers": [e.to_json() for e in self.servers.values()],
            "invalid": [{"file": f, "reason": r} for f, r in self.invalid],
            "waiting": self.waiting,
            "next_retry": iso(self.next_retry),
        }


# --- per-recipient outcome of one transaction (pure) -----------------------------------


ACCEPTED, FAILED, DEFERRED = "accepted", "failed", "deferred"


@dataclass
class Attempt:
    """The outcome of sending one message on one connection; no spool involved."""

    results: dict[str, tuple[str, RecipientResult]]  # rcpt -> (accepted|failed|deferred, reply)
    connection_lost: bool = False
    unknown: bool = False  # lost after the final ".": maybe delivered (RFC 1047)
    error: str = ""

    def recipients(self, outcome: str) -> list[str]:
        return [r for r, (o, _) in self.results.items() if o == outcome]


def _result(reply: Reply, now: float) -> RecipientResult:
    return RecipientResult(reply.code, reply.enhanced, " ".join(reply.text.split()), now)


def classify(result: SendResult, recipients: Sequence[str], now: float) -> Attempt:
    """SendResult -> per-recipient outcome (SPEC §3; RFC 5321 §4.2.1 reply classes).

    MAIL refused: everyone shares its fate (4xx deferred, 5xx failed).  Otherwise a
    recipient refused at RCPT keeps that reply; one accepted at RCPT takes the data
    reply: 2xx accepted, 4xx deferred, 5xx failed.
    """
    out: dict[str, tuple[str, RecipientResult]] = {}
    mail = result.mail_reply
    if not mail.ok:
        outcome = FAILED if mail.permanent else DEFERRED
        return Attempt({r: (outcome, _result(mail, now)) for r in recipients})
    data = result.data_reply
    for rcpt in recipients:
        reply = result.rcpt_replies.get(rcpt)
        if reply is None:
            out[rcpt] = (DEFERRED, RecipientResult(None, None, "no reply to RCPT", now))
        elif reply.permanent:
            out[rcpt] = (FAILED, _result(reply, now))
        elif not reply.ok:
            out[rcpt] = (DEFERRED, _result(reply, now))
        elif data is None:
            out[rcpt] = (DEFERRED, RecipientResult(None, None, "the data was not sent", now))
        elif data.ok:
            out[rcpt] = (ACCEPTED, _result(data, now))
        else:
            out[rcpt] = (FAILED if data.permanent else DEFERRED, _result(data, now))
    return Attempt(out)


def _everyone(
    recipients: Sequence[str], outcome: str, result: RecipientResult, **kw: Any
) -> Attempt:
    return Attempt({r: (outcome, result) for r in recipients}, **kw)


# --- one connection ---------------------------------------------------------------------


class ServerUnusable(Exception):
    """This server cannot be used for the rest of the run (reason in args[0])."""


class Connection:
    """One SMTP session to one server, reopened at most ``max_reconnects`` times.

    ``deliver`` turns a message into an ``Attempt``; it never touches the spool.
    """

    def __init__(
        self,
        entry: ServerEntry,
        password: str | None,
        factory: SessionFactory,
        *,
        max_reconnects: int = DEFAULT_MAX_RECONNECTS,
    ) -> None:
        self.entry = entry
        self._password = password
        self._factory = factory
        self.max_reconnects = max_reconnects
        self.session: SmtpSession | None = None
        self.opened = 0
        self.unusable: str | None = None  # why this server is done for this run
        self.consecutive_deferrals = 0
        # The next message's commands, written behind the last one's data (RFC 2920):
        # the session is in the middle of that transaction until it is delivered.
        self.chained: Transaction | None = None
        self.chained_for: Message | None = None

    def __repr__(self) -> str:  # never the password
        return f"<Connection {self.entry.name} opened={self.opened}>"

    def ensure_open(self) -> SmtpSession:
        """The open session; opens (or reopens) it.  Raises SmtpAuthError and
        SmtpPolicyError as they are, ServerUnusable for anything else that makes the
        server unusable now (unreachable, TLS failure, too many reconnects)."""
        if self.unusable:
            raise ServerUnusable(self.unusable)
        if self.session is not None and not self.session.closed:
            return self.session
        if self.opened > self.max_reconnects:
            self.unusable = (
                f"server {self.entry.name}: connection lost {self.opened} times; "
                "the rest is left for the next run"
            )
            raise ServerUnusable(self.unusable)
        self.opened += 1
        session = self._factory(self.entry, self._password)
        try:
            session.open()
        except (SmtpAuthError, SmtpPolicyError):
            raise  # the run stops: a wrong password or an unsafe setup is not temporary
        except SmtpError as exc:
            self.unusable = f"server {self.entry.name}: {exc}"
            raise ServerUnusable(self.unusable) from None
        self.session = session
        return session

    def refusal(
        self, session: SmtpSession, message: Message, recipients: Sequence[str], now: float
    ) -> Attempt | None:
        """What this server cannot take, told before MAIL (SIZE, SMTPUTF8, 8BITMIME)."""
        limit = session.max_size
        if limit and message.size > limit:
            reason = (
                f"the message ({message.size} bytes) is larger than {session.where} "
                f"accepts (SIZE {limit}, RFC 1870)"
            )
            return _everyone(recipients, FAILED, RecipientResult(552, "5.3.4", reason, now))
        if message.needs_smtputf8 and not session.has_extension("SMTPUTF8"):
            reason = f"a non-ASCII address needs SMTPUTF8 (RFC 6531); {session.where} lacks it"
            return _everyone(recipients, FAILED, RecipientResult(553, "5.6.7", reason, now))
        if message.needs_8bitmime and not session.has_extension("8BITMIME"):
            reason = f"8-bit content needs 8BITMIME (RFC 6152); {session.where} lacks it"
            return _everyone(recipients, FAILED, RecipientResult(554, "5.6.3", reason, now))
        return None

    def _transaction(
        self, session: SmtpSession, message: Message, recipients: Sequence[str], data: Any
    ) -> Transaction | SendResult:
        smtputf8 = message.needs_smtputf8 or (
            message.header_utf8 and session.has_extension("SMTPUTF8")
        )
        return session.transaction(
            message.mail_from,
            recipients,
            data,
            smtputf8=smtputf8,
            eight_bit=message.needs_8bitmime,
        )

    def _next(
        self, session: SmtpSession, then: tuple[Message, Sequence[str]] | None, now: float
    ) -> Transaction | None:
        """The next message's transaction, to be written behind this one's data, if
        this server can take it.  A big message's file is opened now and stays open
        while the transaction waits (closed by ``_close_data``)."""
        from carerix_smtp.smtp.transport import Transaction

        if then is None:
            return None
        message, recipients = then
        if self.refusal(session, message, recipients, now) is not None:
            return None
        data = message.transmitted() if message.raw is not None else message.open_data()
        try:
            tx = self._transaction(session, message, recipients, data)
        except (MessageError, OSError):
            tx = None
        if isinstance(tx, Transaction):
            return tx
        if not isinstance(data, bytes):
            data.close()
        return None

    def deliver(
        self,
        message: Message,
        recipients: Sequence[str],
        now: Callable[[], float],
        then: tuple[Message, Sequence[str]] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Attempt:
        """Send ``message`` to ``recipients`` on the open session; with ``then`` (the
        next message for this connection and its recipients) that one's commands go
        out behind this one's data (see SmtpSession.run)."""
        from carerix_smtp.smtp.transport import SendResult, Transaction

        if self.chained is not None and self.chained_for is not message:
            self.abandon()  # chained for another message: the session is mid-transaction
        session = self.ensure_open()
        chained, self.chained, self.chained_for = self.chained, None, None
        if chained is not None and chained.session is not session:
            _close_data(chained)  # written on a session that is gone: start afresh
            chained = None
        refusal = self.refusal(session, message, recipients, now())
        if refusal is not None:
            if chained is not None:
                _close_data(chained)
                self._drop()  # its commands are on the wire: the session is mid-transaction
            return refusal
        try:
            if chained is not None:
                tx: Transaction | SendResult = chained
            else:
                # A small message is in memory already (message.SMALL_FILE); a big
                # one is streamed from its file.
                data = message.transmitted() if message.raw is not None else message.open_data()
                tx = self._transaction(session, message, recipients, data)
            following: Transaction | None = None
            kept = False
            try:
                if isinstance(tx, SendResult):
                    result = tx
                else:
                    following = self._next(session, then, now())
                    result = session.run(tx, then=following, meanwhile=meanwhile)
                    if following is not None and following.session is session and then:
                        self.chained, self.chained_for = following, then[0]
                        kept = True
            finally:
                if isinstance(tx, Transaction):
                    _close_data(tx)
                if following is not None and not kept:
                    _close_data(following)
        except MessageError as exc:
            return _everyone(recipients, FAILED, RecipientResult(None, None, str(exc), now()))
        except SmtpReplyError as exc:  # 421 and the like: the session is over
            self._drop()
            reply = RecipientResult(exc.code, exc.enhanced, exc.text or str(exc), now())
            permanent = exc.permanent and exc.phase not in ("rset", "quit")
            outcome = FAILED if permanent else DEFERRED
            return _everyone(recipients, outcome, reply, connection_lost=True, error=str(exc))
        except SmtpError as exc:  # lost connection, timeout
            self._drop()
            unknown = exc.phase == "data-end"
            reply = RecipientResult(exc.code, exc.enhanced, str(exc), now())
            return _everyone(
                recipients, DEFERRED, reply, connection_lost=True, unknown=unknown, error=str(exc)
            )
        except OSError as exc:  # the message file went away under us
            return _everyone(
                recipients, DEFERRED, RecipientResult(None, None, f"cannot read: {exc}", now())
            )
        return classify(result, recipients, now())

    def unchain(self, message: Message) -> None:
        """``message`` was chained but will not be sent now: the session is in the
        middle of its transaction, so it is dropped without QUIT."""
        if self.chained_for is message:
            self.abandon()

    def _discard_chain(self) -> Transaction | None:
        chained, self.chained, self.chained_for = self.chained, None, None
        if chained is not None:
            _close_data(chained)
        return chained

    def abandon(self) -> None:
        """Drop the socket without QUIT (interrupted mid-transaction: a QUIT now would
        be taken as message content)."""
        session, self.session = self.session, None
        self._discard_chain()
        if session is not None:
            session.abort()

    def _drop(self) -> None:
        session, self.session = self.session, None
        chained = self._discard_chain()
        if session is not None:
            if chained is not None and chained.session is session:
                session.abort()  # mid-transaction: a QUIT would be taken as its data
            else:
                session.close()

    def close(self) -> None:
        """QUIT; errors are swallowed (data already accepted stays accepted)."""
        self._drop()


def _close_data(tx: Transaction) -> None:
    """Close a transaction's message file (a big message is streamed from it)."""
    if not isinstance(tx.data, bytes | bytearray | memoryview):
        tx.data.close()


def default_session_factory(config: Config, *, local_hostname: str | None = None) -> SessionFactory:
    from carerix_smtp.smtp.resolve import make_resolver
    from carerix_smtp.smtp.transport import SmtpSession

    resolver = make_resolver(config.settings.nameservers)

    def factory(entry: ServerEntry, password: str | None) -> SmtpSession:
        return SmtpSession(entry, password, resolver=resolver, local_hostname=local_hostname)

    return factory


def default_password_source(entry: ServerEntry) -> str | None:
    from carerix_smtp.config.passwords import get_password

    return get_password(entry)


# --- signals ----------------------------------------------------------------------------

# Set while the run's own thread may be interrupted by a second signal: on the wire
# itself (one connection), or waiting for the connections' threads (several).
_in_network = threading.Event()
# A second signal came while that was not so: the dispatcher raises on its next wait.
_abort_requested: list[str] = []  # the signal's name


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``: the run finishes the message in flight, QUITs,
    puts back what it holds and ends (exit 75).  A second signal while a message is
    on the wire abandons it at once (Interrupted); it goes back to the queue.

    Python's default SIGTERM action skips ``finally`` blocks; this handler does not.
    Only usable in the main thread (the CLI); a no-op elsewhere.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    logging_notice = False
    abort_pending = False

    def abort(name: str) -> Interrupted:
        return Interrupted(f"{name} received twice: stopped in the middle of a message")

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal logging_notice, abort_pending
        name = signal.Signals(signum).name
        if stop.is_set():
            if not _abort_requested:
                _abort_requested.append(name)
            if not _in_network.is_set():
                return  # between messages: the run is stopping anyway
            if logging_notice:
                # Raised inside logging's emit() it would be swallowed (handleError):
                # let the first handler raise it once its log call has returned.
                abort_pending = True
                return
            raise abort(name)
        stop.set()
        logging_notice = True
        try:
            log.warning("%s received: finishing the message in flight, then stopping", name)
        finally:
            logging_notice = False
        if abort_pending and _in_network.is_set():
            raise abort(name)

    _abort_requested.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _abort_requested.clear()


# --- the run -----------------------------------------------------------------------------


class _Network:
    """``_Run.network()`` (a class: a few times per message, cheaper than a generator)."""

    __slots__ = ("mine", "run")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.mine = threading.get_ident() == run._dispatcher  # not a connection's thread

    def __enter__(self) -> None:
        if self.mine:
            _in_network.set()
        if self.run.stop.is_set() or self.run.halt.is_set():
            if self.mine:
                _in_network.clear()
            raise _Stopping

    def __exit__(self, *exc: object) -> None:
        if self.mine:
            _in_network.clear()


class _Stopping(Exception):
    """A stop was asked for before a network phase (or during a sleep): do not go on."""


class _Stop(Exception):
    """The run must end now, touching nothing more: ``status`` says why."""

    def __init__(self, status: str, error: SmtpError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


def _stop_for(error: SmtpAuthError | SmtpPolicyError) -> _Stop:
    return _Stop("auth-failed" if isinstance(error, SmtpAuthError) else "config-error", error)


@dataclass
class _Totals:
    """What lives across the passes of one run."""

    admitted: int = 0  # messages let through to the wire (--max-messages counts these)
    passwords: dict[str, str | None] = field(default_factory=dict)


class _Run:
    """One pass through the due messages: at most one batch per server."""

    def __init__(
        self,
        spool: Spool,
        config: Config,
        options: SendOptions,
        *,
        gate_factory: GateFactory | None,
        ledger: Ledger | None,
        session_factory: SessionFactory,
        password_source: PasswordSource,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        stop: threading.Event,
        progress: Callable[[ProgressEvent], None] | None,
        summary: RunSummary,
        totals: _Totals,
        deadline: float | None,
    ) -> None:
        self.spool = spool
        self.config = config
        self.options = options
        self.gate_factory = gate_factory
        self.ledger = ledger
        self.session_factory = session_factory
        self.password_source = password_source
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.stop = stop
        self.progress = progress
        self.summary = summary
        self.totals = totals
        self.deadline = deadline  # monotonic; the rest stays queued after it
        self.connections: dict[str, Connection] = {}
        self.gates: dict[str, BatchGate] = {}
        self.over: set[str] = set()  # servers whose batch is over for this pass
        self.candidates: Sequence[Candidate] = []
        self.pos = 0
        self.routes: dict[tuple[str, str], str | None] = {}
        self.done = 0
        self.total = 0
        self.unreachable = False
        self.max_hit = False
        self._fixed: ServerEntry | None = None
        self._fixed_known = False
        # Servers with ``connections`` > 1: a worker thread per connection.
        self.pools: dict[str, _Pool] = {}
        self._lock = threading.RLock()  # the summary and counters, from any thread
        self.halt = threading.Event()  # a connection's thread failed: start nothing new
        self.aborting = threading.Event()  # stopped mid-transaction (second signal)
        self._dispatcher = threading.get_ident()
        self.finishing = 0  # 1 while reading ahead during a message's final reply

    # -- servers --

    def server_for(self, message: Message) -> ServerEntry:
        if self.options.server:
            return self.config.server(self.options.server)
        return self.config.server_for_sender(message.from_address)

    def fixed_server(self) -> ServerEntry | None:
        """The server every message goes to, when known without reading any."""
        if not self._fixed_known:
            self._fixed_known = True
            if self.options.server:
                self._fixed = self.config.server(self.options.server)
            elif len(self.config.servers) == 1 or not self.config.users:
                # [users] can only name this one / no per-user choice: the default
                with contextlib.suppress(ConfigError):
                    self._fixed = self.config.default()
        return self._fixed

    def possible_servers(self) -> set[str]:
        """Every server a message of this pass can go to."""
        fixed = self.fixed_server()
        if fixed is not None:
            return {fixed.name}
        names = {n for n in self.config.users.values() if n in self.config.servers}
        with contextlib.suppress(ConfigError):
            names.add(self.config.default().name)
        return names or set(self.config.servers)

    def route(self, candidate: Candidate) -> str | None:
        """The server ``candidate`` goes to, reading its header if need be (cached);
        None when that cannot be told (the claim will fail it with the reason)."""
        fixed = self.fixed_server()
        if fixed is not None:
            return fixed.name
        key = (candidate.kind, candidate.name)
        if key not in self.routes:
            name: str | None = None
            if candidate.file_type == "file" and candidate.size > 0:
                directory = self.spool.dir("deferred") if candidate.kind == "deferred" else None
                try:
                    message = read_message((directory or self.spool.path) / candidate.name)
                    name = self.server_for(message).name
                except (MessageError, ConfigError):
                    name = None
            self.routes[key] = name
        return self.routes[key]

    def queued_sizes(self, server: str, count: int) -> list[int]:
        """Sizes of the next ``count`` due messages of ``server``, from the current one on."""
        if self.options.max_messages is not None:
            count = min(count, max(1, self.options.max_messages - self.totals.admitted))
        sizes: list[int] = []
        # A slice: the spool's CandidateList holds a bounded window of the queue; the
        # look-ahead sees what it holds (thousands; a batch needs at most 501).
        for offset, candidate in enumerate(self.candidates[self.pos :]):
            if len(sizes) >= count:
                break
            # The current message (maybe claimed already) is the one the gate is asked about.
            if offset == 0 or self.route(candidate) == server:
                sizes.append(candidate.size)
        return sizes

    def connection(self, entry: ServerEntry) -> Connection:
        conn = self.connections.get(entry.name)
        if conn is None:
            if entry.name not in self.totals.passwords:
                self.totals.passwords[entry.name] = self.password_source(entry)  # SecretError
            conn = Connection(
                entry,
                self.totals.passwords[entry.name],
                self.session_factory,
                max_reconnects=self.options.max_reconnects,
            )
            self.connections[entry.name] = conn
            self.gates[entry.name] = self.make_gate(entry)
        return conn

    def new_connection(self, entry: ServerEntry) -> Connection:
        """Another connection to ``entry`` (a pool's second, third...); not open yet."""
        return Connection(
            entry,
            self.totals.passwords[entry.name],
            self.session_factory,
            max_reconnects=self.options.max_reconnects,
        )

    def make_gate(self, entry: ServerEntry) -> BatchGate:
        if self.gate_factory is not None:
            return self.gate_factory(entry)
        if self.ledger is not None:
            limits = Limits.from_entry(entry, self.config.settings)
            return LedgerGate(
                self.ledger,
                entry,
                limits,
                lambda count: self.queued_sizes(entry.name, count),
                self.pause,
                lambda: self.finishing,
            )
        return CountGate()

    def pause(self, seconds: float) -> None:
        """Sleep (the injected ``sleep``); raise _Stopping when the run is being stopped."""
        if seconds > 0 and not self.stop.is_set():
            self.sleep(seconds)
        if self.stop.is_set():
            raise _Stopping

    def open(self, conn: Connection, claim: Claim | None = None) -> bool:
        """Open ``conn``; False (and an error noted) if the server is unusable.

        A claim held meanwhile goes back unchanged when the run must stop.
        """
        try:
            with self.network():
                conn.ensure_open()
        except _Stopping:
            if claim is not None:
                self.spool.requeue(claim)
            return False
        except (SmtpAuthError, SmtpPolicyError) as exc:
            if claim is not None:
                self.spool.requeue(claim)
            raise _stop_for(exc) from None
        except ServerUnusable as exc:
            if claim is not None:
                self.spool.requeue(claim)
            self.note_unusable(conn, str(exc))
            return False
        except Interrupted:
            conn.abandon()
            if claim is not None:
                self.spool.requeue(claim)
            raise
        return True

    def network(self) -> _Network:
        """Mark a network phase (a second signal aborts it).  Once a stop was asked
        for, no new one starts: marked first, checked second, so no signal slips
        between the check and the start."""
        return _Network(self)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """The dispatcher waits for the connections' threads: a second signal may
        interrupt the wait (then they are cut, see run()).  Marked first, checked
        second, like ``network``."""
        _in_network.set()
        try:
            if _abort_requested:
                raise Interrupted(
                    f"{_abort_requested[0]} received twice: stopped in the middle of a message"
                )
            yield
        finally:
            _in_network.clear()

    def note_unusable(self, conn: Connection, reason: str) -> None:
        pool = self.pools.get(conn.entry.name)
        if pool is not None and not pool.exhausted():
            # One of several connections: the others go on (a server that limits
            # connections per client refuses the extra ones, for instance).
            log.warning("%s; the other connection(s) go on", reason)
            return
        with self._lock:
            if reason not in self.summary.errors:
                self.summary.errors.append(reason)
                log.info("%s", reason)
            self.unreachable = True

    def server_done(self, name: str) -> bool:
        if name in self.over:
            return True
        pool = self.pools.get(name)
        if pool is not None:
            return pool.exhausted()
        conn = self.connections.get(name)
        return conn is not None and conn.unusable is not None

    def all_servers_done(self) -> bool:
        return all(self.server_done(name) for name in self.possible_servers())

    def prepare(self, entry: ServerEntry) -> bool:
        """Open ``entry``'s batch before connecting (LedgerGate); False: no batch now."""
        gate = self.gates[entry.name]
        if not isinstance(gate, LedgerGate):
            return True
        try:
            ready = gate.prepare()
        except _Stopping:
            return False
        if not ready:
            self.over.add(entry.name)
        return ready

    # -- the pass --

    def run(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = candidates
        self.total = len(candidates)
        fixed = self.fixed_server()
        if fixed is not None and candidates:
            # Ask for the batch, then connect, before claiming anything: a run the
            # limits hold back does not connect, and a refused password or an
            # unreachable server leaves every message exactly as it was.
            conn = self.connection(fixed)
            gate = self.gates[fixed.name]
            if isinstance(gate, LedgerGate) and self.prepare(fixed) and gate.grant is not None:
                self.total = min(self.total, gate.grant.max_messages)
            self.emit(ProgressEvent("start", total=self.total))
            if fixed.name in self.over or not self.open(conn):
                if self.stop.is_set():
                    self.summary.status = "interrupted"
                return
        else:
            self.emit(ProgressEvent("start", total=self.total))
        # One-connection servers: messages are held (claimed, read, admitted) a little
        # ahead: the next one's commands follow the current one's data on the wire
        # (SmtpSession.run), and the one after that is read while the server works
        # on the current one (``meanwhile``).  Held messages that will not go are
        # given back.
        self.cut = False
        jobs = self._jobs(candidates)
        held: collections.deque[_Job] = collections.deque()
        exhausted = False
        failures: list[BaseException] = []

        def pull() -> None:
            nonlocal exhausted
            if not exhausted:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                else:
                    held.append(job)

        def meanwhile() -> None:
            if exhausted or len(held) >= 2 or failures:
                return
            _in_network.clear()  # not on the wire now: a second signal is only noted
            self.finishing = 1  # the message on the wire has its data out (LedgerGate)
            try:
                pull()
            except BaseException as exc:  # raised after the send, never into it
                failures.append(exc)
            finally:
                self.finishing = 0
                _in_network.set()
            if _abort_requested and self.stop.is_set():
                raise Interrupted(
                    f"{_abort_requested[0]} received twice: stopped in the middle of a message"
                )

        try:
            pull()
            while held:
                if len(held) < 2:
                    pull()
                if self.cut or self.stop.is_set():
                    break
                current = held.popleft()  # if it fails, deliver() put it back already
                self.send(current, then=held[0] if held else None, meanwhile=meanwhile)
                if failures:
                    raise failures[0]
            while held:  # the pass was cut short (stop, deadline): back to the queue
                self.give_back(held.popleft())
            for pool in self.pools.values():
                with self.waiting():
                    pool.drain()  # the messages in flight finish (or fail) first
            self.check_pools()
        except Interrupted:
            # A second signal: cut what is on the wire; each connection puts its
            # message back to the queue (a possible duplicate), as one connection does.
            while held:
                self.give_back(held.popleft())
            self.aborting.set()
            for pool in self.pools.values():
                pool.abort()
            raise
        except BaseException:
            # A failed connection thread (_Stop: authentication refused on a
            # reconnect...), a configuration error, a bug: start nothing new, let
            # what is in flight finish.
            while held:
                self.give_back(held.popleft())
            self.halt.set()
            for pool in self.pools.values():
                pool.drain()
            raise
        if self.stop.is_set():
            self.summary.status = "interrupted"

    def _jobs(self, candidates: Sequence[Candidate]) -> Iterator[_Job]:
        """The due messages, oldest first, as jobs for one-connection servers (others
        go to their connections' threads in ``one``), until the pass must end."""
        for index, candidate in enumerate(candidates):
            self.pos = index
            if self.stop.is_set():
                self.cut = True
                return
            if self.deadline is not None and self.monotonic() >= self.deadline:
                self.summary.status = "limit"
                log.info("deadline reached; the rest stays queued")
                self.cut = True
                return
            limit = self.options.max_messages
            if limit is not None and self.totals.admitted >= limit:
                self.max_hit = True
                return  # the held ones were admitted: they go
            self.check_pools()
            if self.all_servers_done():
                return  # a held message was admitted: it goes (or meets its error)
            job = self.one(candidate)
            if job is not None:
                yield job

    def check_pools(self) -> None:
        """Raise what a connection's thread failed with (_Stop: auth refused...)."""
        for pool in self.pools.values():
            if pool.failure is not None:
                raise pool.failure

    def pool(self, entry: ServerEntry, conn: Connection, gate: BatchGate) -> _Pool:
        pool = self.pools.get(entry.name)
        if pool is None:
            pool = self.pools[entry.name] = _Pool(self, entry, conn, gate)
        return pool

    def execute(self, worker: _Worker, job: _Job) -> None:
        """One message on a worker's connection (in the worker's thread).  When this
        connection cannot be opened, another one takes the message."""
        pool, conn = worker.pool, worker.conn
        try:
            with self.network():
                conn.ensure_open()
        except _Stopping:
            pool.give_back(job)
            return
        except (SmtpAuthError, SmtpPolicyError) as exc:
            pool.give_back(job)
            raise _stop_for(exc) from None
        except ServerUnusable as exc:
            self.note_unusable(conn, str(exc))
            pool.orphan(job)
            return
        except BaseException:
            pool.give_back(job)
            raise
        self.deliver(job.claim, job.message, pool.entry, conn, pool.gate)

    def one(self, candidate: Candidate) -> _Job | None:
        """Claim, read, route and admit ``candidate``: a job for a one-connection
        server (the caller sends it), None when it was dealt with here (failed,
        put back, or handed to a server's connections)."""
        if self.over or self.unreachable:
            # Some server is done for this pass: leave its messages untouched.
            server = self.route(candidate)
            if server is not None and self.server_done(server):
                return None
        claim = self.spool.claim(candidate)
        if claim is None:
            return None  # gone meanwhile (a producer took it back)
        if claim.file_type != "file":
            self.fail_file(claim, f"{claim.file_type} named *.eml: not followed, not sent")
            return None
        if claim.size == 0:
            self.fail_file(claim, "the file is empty (0 bytes)")
            return None
        try:
            message = read_message(claim.path, name=claim.name)
            head = message.completed_head(now=None)
            if head is not None:
                # Persist Message-ID and Date so that every attempt (and a possible
                # duplicate after a crash) carries the same Message-ID.
                self.spool.rewrite_head(claim, head, message.body_start)
                message = read_message(claim.path, name=claim.name)
        except MessageError as exc:
            self.fail_file(claim, str(exc))
            return None
        try:
            entry = self.server_for(message)
            conn = self.connection(entry)
        except ConfigError:
            self.spool.requeue(claim)
            raise
        if self.server_done(entry.name):
            self.spool.requeue(claim)
            return None
        gate = self.gates[entry.name]
        try:
            admitted = gate.admit(message.size)
        except _Stopping:
            self.spool.requeue(claim)
            return None
        except BaseException:
            self.spool.requeue(claim)
            raise
        if not admitted:
            self.spool.requeue(claim)
            self.over.add(entry.name)
            if self.summary.status == "ok":
                self.summary.status = "limit"
            return None
        self.totals.admitted += 1
        job = _Job(claim, message, entry, conn, gate)
        if entry.connections > 1:
            pool = self.pool(entry, conn, gate)
            pool.add(job)  # pending: an abort gives it back
            with self.waiting():
                pool.dispatch()
            self.check_pools()
            return None
        return job

    def send(
        self, job: _Job, then: _Job | None, meanwhile: Callable[[], None] | None = None
    ) -> None:
        """Deliver ``job`` on its (single) connection; ``then``, the message after it,
        has its commands written behind ``job``'s data when it goes there too."""
        try:
            opened = self.open(job.conn, job.claim)
        except BaseException:
            _release(job.gate, job.message.size)
            raise
        if not opened:
            _release(job.gate, job.message.size)
            job.conn.unchain(job.message)
            return
        chain = then if then is not None and then.conn is job.conn else None
        self.deliver(
            job.claim, job.message, job.entry, job.conn, job.gate, then=chain, meanwhile=meanwhile
        )

    def give_back(self, job: _Job) -> None:
        """A held message that will not go in this pass: back to the queue, unchanged."""
        _release(job.gate, job.message.size)
        self.spool.requeue(job.claim)
        job.conn.unchain(job.message)

    def deliver(
        self,
        claim: Claim,
        message: Message,
        entry: ServerEntry,
        conn: Connection,
        gate: BatchGate,
        then: _Job | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> None:
        state = self.state_for(claim, message)
        recipients = list(state.pending)
        following = None
        if then is not None:
            following = (then.message, list(self.state_for(then.claim, then.message).pending))
        start = self.clock()
        counted = False  # the data may have been accepted: the limits count it
        try:
            try:
                with self.network():
                    attempt = conn.deliver(message, recipients, self.clock, following, meanwhile)
            except _Stopping:
                self.spool.requeue(claim)
                conn.unchain(message)
                return
            except (SmtpAuthError, SmtpPolicyError) as exc:  # on a reconnect
                self.spool.requeue(claim)
                raise _stop_for(exc) from None
            except ServerUnusable as exc:
                self.spool.requeue(claim)
                self.note_unusable(conn, str(exc))
                return
            except Interrupted:
                counted = True  # stopped somewhere in the transaction: maybe delivered
                conn.abandon()
                back = self.spool.requeue(claim)
                self.summary.possible_duplicates.append(back.name)
                raise
            if attempt.connection_lost and self.aborting.is_set():
                # Our own abort cut it (another thread was interrupted): back to the
                # queue unchanged, as the one-connection run does.
                counted = True
                back = self.spool.requeue(claim)
                self.summary.possible_duplicates.append(back.name)
                return
            # Accepted by someone, or lost after the final ".": possibly delivered.
            counted = bool(attempt.recipients(ACCEPTED)) or attempt.unknown
            self.apply(claim, message, state, entry, attempt, start)
        finally:
            if counted:
                gate.confirm(message.message_id or claim.name, message.size)
            else:
                _release(gate, message.size)
        if attempt.connection_lost:
            log.warning("%s: %s", entry.name, attempt.error)
        if attempt.recipients(ACCEPTED) or attempt.recipients(FAILED):
            conn.consecutive_deferrals = 0
        else:
            conn.consecutive_deferrals += 1
            limit = self.options.stop_after_deferrals
            if limit and conn.consecutive_deferrals >= limit and conn.unusable is None:
                conn.unusable = (
                    f"server {entry.name}: {limit} messages in a row deferred "
                    f"(last: {attempt.error or _last_reply(attempt)}); the rest is left "
                    "for the next run"
                )
                self.note_unusable(conn, conn.unusable)
                conn.close()

    def state_for(self, claim: Claim, message: Message) -> MessageState:
        state = claim.state
        if state is None or not state.pending:
            done = set(state.accepted) | set(state.failed) if state else set()
            state = state or MessageState(name=claim.name, queued_at=claim.mtime)
            state.pending = {r: None for r in message.recipients if r not in done}
        state.message_id = message.message_id
        state.mail_from = message.mail_from
        state.size = message.size
        return state

    def apply(
        self,
        claim: Claim,
        message: Message,
        state: MessageState,
        entry: ServerEntry,
        attempt: Attempt,
        start: float,
    ) -> None:
        now = self.clock()
        state.server = entry.name
        state.attempts += 1
        state.first_attempt = state.first_attempt or start
        state.last_attempt = now
        for rcpt, (outcome, result) in attempt.results.items():
            state.pending.pop(rcpt, None)
            if outcome == ACCEPTED:
                state.accepted[rcpt] = result
            elif outcome == FAILED:
                state.failed[rcpt] = result
            else:
                state.pending[rcpt] = result
        state.next_attempt = None
        if state.pending:
            age = now - (state.queued_at or now)
            if age >= entry.max_queue_age:
                for rcpt, last in state.pending.items():
                    state.failed[rcpt] = last or RecipientResult(None, None, "not tried", now)
                state.pending = {}
                state.reason = (
                    f"too old: queued {age / 3600:.0f} h ago, more than max_queue_age "
                    f"{entry.max_queue_age / 3600:.0f} h; last error: {_last_reply(attempt)}"
                )
            else:
                delay = backoff(state.attempts, entry.retry_initial, entry.retry_max)
                state.next_attempt = now + delay
                state.reason = f"deferred: {_last_reply(attempt)}"
        if not state.pending:
            if state.accepted and state.failed:
                state.reason = f"sent; {len(state.failed)} recipient(s) refused"
            elif state.accepted:
                state.reason = "sent"
            elif not state.reason.startswith("too old"):
                state.reason = f"failed: {_last_reply(attempt)}"
        if attempt.unknown:
            log.warning(
                "%s: connection lost after the data was sent; it may have been delivered "
                "(possible duplicate on retry)",
                claim.name,
            )
        dest = self.spool.record_outcome(claim, state)
        self.spool.log_delivery(
            {
                "file": claim.name,
                "message_id": message.message_id,
                "server": entry.name,
                "attempt": state.attempts,
                "accepted": {
                    r: res.describe() for r, (o, res) in attempt.results.items() if o == ACCEPTED
                },
                "refused": {
                    r: res.describe() for r, (o, res) in attempt.results.items() if o == FAILED
                },
                "deferred": {
                    r: res.describe() for r, (o, res) in attempt.results.items() if o == DEFERRED
                },
                "outcome": state.status,
                "moved_to": f"{dest.parent.name}/{dest.name}",
                **({"error": attempt.error} if attempt.error else {}),
                **({"possible_duplicate": True} if attempt.unknown else {}),
            }
        )
        with self._lock:
            if state.status == "failed" or (state.status == "sent" and state.failed):
                refused = ", ".join(f"{r}: {res.describe()}" for r, res in state.failed.items())
                if state.reason.startswith("too old"):
                    refused = state.reason
                elif state.status == "sent":
                    refused = f"sent, but refused for {refused}"
                self.summary.failures.append(f"{claim.name}: {refused}")
            self.count(state.status, message.size, partial=bool(state.accepted and state.failed))
            self.emit(
                ProgressEvent(
                    "message", self.total, self.done, claim.name, state.status, message.size
                )
            )

    def count(self, outcome: str, size: int, *, partial: bool = False) -> None:
        with self._lock:
            self._count(outcome, size, partial)

    def _count(self, outcome: str, size: int, partial: bool) -> None:
        self.done += 1
        if outcome == "sent":
            self.summary.sent += 1
            self.summary.bytes += size
            self.summary.partial += int(partial)
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
            with self._lock:
                self.progress(event)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()  # the threads end; their connections QUIT below
        for pool in self.pools.values():
            for worker in pool.workers:
                if worker.conn is not self.connections.get(pool.entry.name):
                    worker.conn.close()
        for conn in self.connections.values():
            conn.close()
        for gate in self.gates.values():
            gate.close()


@dataclass
class _Job:
    """A claimed, read and admitted message, waiting for its connection."""

    claim: Claim
    message: Message
    entry: ServerEntry
    conn: Connection
    gate: BatchGate


class _Worker:
    """One connection of a server and the thread that drives it, one message at a time."""

    def __init__(self, pool: _Pool, conn: Connection, index: int) -> None:
        self.pool = pool
        self.conn = conn
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self.loop, name=f"cxsmtp-{pool.entry.name}-{index}", daemon=True
        )

    def loop(self) -> None:
        pool = self.pool
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                pool.run.execute(self, job)
            except BaseException as exc:  # handed to the dispatching thread
                with pool.cond:
                    if pool.failure is None:
                        pool.failure = exc
                pool.run.halt.set()
            finally:
                with pool.cond:
                    pool.busy -= 1
                    if self.conn.unusable is None:
                        pool.idle.append(self)
                    pool.cond.notify_all()


class _Pool:
    """The connections of one server with ``connections`` > 1 (ServerEntry): a worker
    thread each, each with its own SmtpSession and at most one message in flight,
    so a crash can leave at most ``connections`` possible duplicates (SPEC §3).

    The dispatching thread keeps the order: it claims, reads and admits messages
    oldest first and hands each to an idle connection, waiting for one when all
    are busy; another connection is opened only when all are busy.  A connection
    that cannot be (re)opened drops out and its message goes to another one; the
    others go on.  The server is done when every connection it may have has
    dropped out; messages left then go back to the queue.
    """

    def __init__(self, run: _Run, entry: ServerEntry, first: Connection, gate: BatchGate) -> None:
        self.run = run
        self.entry = entry
        self.gate = gate
        self.size = max(1, entry.connections)
        self.cond = threading.Condition()
        self.workers: list[_Worker] = []
        self.idle: list[_Worker] = []
        self.pending: collections.deque[_Job] = collections.deque()  # no connection yet
        self.busy = 0
        self.failure: BaseException | None = None
        self._first = first

    def exhausted(self) -> bool:
        with self.cond:
            return self._exhausted()

    def _exhausted(self) -> bool:
        return len(self.workers) >= self.size and all(
            w.conn.unusable is not None for w in self.workers
        )

    def _spawn(self) -> _Worker:
        conn = self._first if not self.workers else self.run.new_connection(self.entry)
        worker = _Worker(self, conn, len(self.workers))
        self.workers.append(worker)
        worker.thread.start()
        return worker

    def _pump(self, *, until_idle: bool) -> None:
        """Hand pending jobs to connections (call with ``cond`` held); wait until none
        is pending (``until_idle``: and none is in flight).  When no connection is
        left, pending jobs go back to the queue."""
        while True:
            while self.pending and self.failure is None:
                if self.idle:
                    worker = self.idle.pop()
                elif len(self.workers) < self.size:
                    worker = self._spawn()
                else:
                    break
                self.busy += 1
                worker.jobs.put(self.pending.popleft())
            if self.pending and (self.failure is not None or self._exhausted()):
                while self.pending:
                    self.give_back(self.pending.popleft())
            if not self.pending and not (until_idle and self.busy):
                return
            self.cond.wait()

    def add(self, job: _Job) -> None:
        with self.cond:
            self.pending.append(job)

    def dispatch(self) -> None:
        """Hand the pending jobs to idle connections, opening another one when all are
        busy (up to ``size``), else wait for one."""
        with self.cond:
            self._pump(until_idle=False)

    def orphan(self, job: _Job) -> None:
        """From a worker whose connection dropped out: another one takes ``job``."""
        with self.cond:
            self.pending.appendleft(job)
            self.cond.notify_all()

    def give_back(self, job: _Job) -> None:
        """``job`` will not be sent in this pass: back to the queue, unchanged."""
        _release(self.gate, job.message.size)
        self.run.spool.requeue(job.claim)

    def drain(self) -> None:
        """Wait until no message is pending or in flight."""
        with self.cond:
            self._pump(until_idle=True)

    def abort(self) -> None:
        """Cut every transaction on the wire (the caller set ``run.aborting``) and wait
        for the threads to put their messages back."""
        with self.cond:
            while self.pending:
                self.give_back(self.pending.popleft())
        for worker in list(self.workers):
            session = worker.conn.session
            if session is not None:
                session.interrupt()
        self.drain()

    def shutdown(self) -> None:
        for worker in self.workers:
            worker.jobs.put(None)
        for worker in self.workers:
            worker.thread.join()


def _last_reply(attempt: Attempt) -> str:
    for _, (_, result) in reversed(list(attempt.results.items())):
        return result.describe()
    return attempt.error or "no reply"


def _listing_limit(options: SendOptions) -> int:
    """How many queue entries a listing holds at a time (spool.CandidateList): no
    more than ``--max-messages`` can use; the rest is listed again if needed."""
    if options.max_messages is not None:
        return max(1, min(options.max_messages, DEFAULT_CANDIDATE_LIMIT))
    return DEFAULT_CANDIDATE_LIMIT


def _open_ledger(source: LedgerSource | None) -> tuple[Ledger | None, bool]:
    """(ledger, ours): a factory is called (and its ledger closed by us), an instance used."""
    if source is None or isinstance(source, Ledger):
        return source, False
    return source(), True


def run_send(
    spool_path: Path,
    config: Config,
    options: SendOptions | None = None,
    *,
    ledger: LedgerSource | None = None,
    gate_factory: GateFactory | None = None,
    session_factory: SessionFactory | None = None,
    password_source: PasswordSource | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    durable: bool = True,
) -> RunSummary:
    """One run: a pass (one batch per server), or with ``options.loop`` passes until
    nothing is due.  Raises ConfigError/SpoolError (exit 78) for setup problems;
    everything about messages and servers is in the summary.

    ``ledger``: the rate ledger (an instance, or a factory called once the spool
    lock is held; its ledger is then closed at the end) -- the limits apply only
    with one.  ``gate_factory`` replaces the ledger's gates (tests).  ``clock``
    must be the ledger's clock; ``sleep`` (default: wait on ``stop``) is used for
    the loop's waits and must return early when ``stop`` is set.
    """
    options = options or SendOptions()
    started = monotonic()
    stop = stop or threading.Event()
    stop_event = stop
    if sleep is None:

        def sleep(seconds: float) -> None:
            stop_event.wait(seconds)

    spool = Spool(spool_path, clock=clock, durable=durable)
    spool.check(writable=True)
    if options.server:
        config.server(options.server)  # an unknown --server is exit 78, before anything
    summary = RunSummary()
    deadline = started + options.deadline if options.deadline is not None else None
    with spool.lock() as locked:
        if not locked:
            summary.status = "locked"
            summary.lock_holder = spool.holder_pid()
            summary.elapsed_s = monotonic() - started
            return summary
        recovery = spool.recover()
        summary.possible_duplicates.extend(Path(p).name for p in recovery.requeued)
        candidates = spool.candidates(limit=_listing_limit(options))
        if not candidates:
            summary.status = "nothing-to-do"
            summary.next_retry = spool.next_retry()
            summary.elapsed_s = monotonic() - started
            return summary
        if not config.servers:
            raise ConfigError(
                f"no server configured in {config.path}; add one with 'cxsmtp server add NAME HOST'"
            )
        the_ledger, ours = _open_ledger(ledger)
        totals = _Totals()
        unreachable = False
        try:
            while True:
                run = _Run(
                    spool,
                    config,
                    options,
                    gate_factory=gate_factory,
                    ledger=the_ledger,
                    session_factory=session_factory
                    or default_session_factory(config, local_hostname=options.local_hostname),
                    password_source=password_source or default_password_source,
                    clock=clock,
                    monotonic=monotonic,
                    sleep=sleep,
                    stop=stop,
                    progress=progress,
                    summary=summary,
                    totals=totals,
                    deadline=deadline,
                )
                ended = False
                try:
                    run.run(candidates)
                except _Stop as exc:
                    summary.status = exc.status
                    summary.errors.append(str(exc.error))
                    ended = True
                except Interrupted as exc:
                    summary.status = "interrupted"
                    summary.errors.append(str(exc))
                    ended = True
                finally:
                    run.close()
                    spool.finish()
                unreachable = unreachable or run.unreachable
                summary.remaining = max(0, len(candidates) - run.done)
                reports = _reports(run)
                summary.batches.extend(reports)
                summary.deadline_cut = summary.deadline_cut or any(r.deadline_cut for r in reports)
                summary.note_limits(reports, options.max_messages if run.max_hit else None)
                if not summary.remaining:
                    summary.limited_by, summary.limit_reason = None, ""
                    summary.next_window_at = None
                if stop.is_set() and summary.status not in ("auth-failed", "config-error"):
                    summary.status = "interrupted"  # SPEC §3: SIGTERM/SIGINT exit 75
                if (
                    ended
                    or not options.loop
                    or stop.is_set()
                    or run.unreachable
                    or run.max_hit
                    or summary.status in ("interrupted", "auth-failed", "config-error")
                ):
                    break
                wake = _next_wake(summary, run, clock())
                if wake is _DONE:
                    candidates = spool.candidates(limit=_listing_limit(options))
                    if not candidates:
                        summary.remaining = 0
                        break
                    if run.done == 0:
                        break  # nothing happened and nothing holds it back: do not spin
                    continue
                if wake is None:
                    break  # never (email-send-limit 0)
                assert isinstance(wake, float)
                delay = wake - clock()
                if deadline is not None and monotonic() + delay >= deadline:
                    log.info("the next window opens after the run's deadline; stopping")
                    break
                log.info(
                    "waiting %.1f s for the next window (%s)", max(0.0, delay), summary.limit_reason
                )
                run.emit(ProgressEvent("wait", until=wake, reason=summary.limit_reason))
                try:
                    run.pause(delay)
                except _Stopping:
                    summary.status = "interrupted"
                    break
                candidates = spool.candidates(limit=_listing_limit(options))
                if not candidates:
                    summary.remaining = 0
                    summary.limited_by, summary.limit_reason = None, ""
                    summary.next_window_at = None
                    break
        finally:
            if ours and the_ledger is not None:
                the_ledger.close()
        summary.settle(unreachable=unreachable)
        summary.next_retry = spool.next_retry()
    summary.elapsed_s = monotonic() - started
    return summary


_DONE = object()  # _next_wake: no limit held anything back


def _next_wake(summary: RunSummary, run: _Run, now: float) -> float | object | None:
    """When the loop's next pass should start: a float, None (never), or _DONE."""
    if summary.limited_by is None:
        return _DONE
    wake = summary.next_window_at
    if wake is None or math.isinf(wake):
        return None
    if wake <= now and run.done == 0:
        wake = now + RESERVATION_POLL  # held back, yet "now": never spin
    return max(wake, now)


def _reports(run: _Run) -> list[BatchReport]:
    """The batches of a pass (after ``run.close()``), for the servers with a ledger gate."""
    reports: list[BatchReport] = []
    for gate in run.gates.values():
        if isinstance(gate, LedgerGate) and (gate.grant is not None or gate.wait is not None):
            reports.append(gate.report(gate.refused or gate.wait is not None))
    return reports


# --- the plan (--dry-run) and the limits part of status ---------------------------------


def _route_candidates(
    spool: Spool,
    config: Config,
    candidates: Sequence[Candidate],
    server: str | None,
    plan: Plan,
    limit: int | None = None,
    *,
    read_all: bool = True,
) -> None:
    """Sort due messages by server into ``plan`` (sizes in sending order), noting the
    unusable ones.  ``read_all`` False: read a message's header only when its server
    depends on it (then unparseable files are not noticed)."""
    fixed: ServerEntry | None = None
    if server:
        fixed = config.server(server)
    elif len(config.servers) == 1 or not config.users:
        with contextlib.suppress(ConfigError):
            fixed = config.default()
    for candidate in candidates:
        if limit is not None and plan.messages >= limit:
            break
        directory = spool.dir("deferred") if candidate.kind == "deferred" else spool.path
        if candidate.file_type != "file":
            plan.invalid.append((candidate.name, f"{candidate.file_type}: not followed"))
            continue
        size = candidate.size
        entry = fixed
        if entry is None or read_all:
            try:
                message = read_message(directory / candidate.name)
            except MessageError as exc:
                plan.invalid.append((candidate.name, str(exc)))
                continue
            size = message.size
            entry = entry or config.server_for_sender(message.from_address)
        item = plan.servers.setdefault(entry.name, PlanEntry(entry.name, entry.host))
        item.messages += 1
        item.bytes += size
        item.sizes.append(size)
        plan.messages += 1
        plan.bytes += size


def _schedule(
    config: Config, queues: Mapping[str, Sequence[int]], ledger: Ledger | None, now: float
) -> tuple[Schedule, dict[str, Limits]]:
    """The batches that would send ``queues`` at current limits (nothing is changed)."""
    limits = {name: Limits.from_entry(config.server(name), config.settings) for name in queues}
    if ledger is not None:
        return ledger.plan({n: (limits[n], sizes) for n, sizes in queues.items()}), limits
    server_queues = {n: ServerQueue(limits[n], sizes) for n, sizes in queues.items()}
    return simulate_schedule(server_queues, [], now), limits


def _fill_plan(plan: Plan, config: Config, ledger: Ledger | None, now: float) -> None:
    queues = {name: entry.sizes for name, entry in plan.servers.items() if entry.sizes}
    if not queues:
        return
    schedule, limits = _schedule(config, queues, ledger, now)
    plan.last_at = schedule.last_at
    for name, entry in plan.servers.items():
        batches = schedule.for_server(name)
        entry.batches = [PlannedBatchInfo(b.start, b.count, b.bytes, b.last_at) for b in batches]
        planned = sum(b.count for b in batches)
        if planned < entry.messages:
            entry.last_at = math.inf
            lim = limits[name]
            entry.blocked = (
                "email-send-limit is 0: sending is switched off"
                if lim.email_send_limit == 0
                else "the limits never allow the rest"
            )
        else:
            entry.last_at = max((b.last_at for b in batches), default=None)


def plan_send(
    spool_path: Path,
    config: Config,
    options: SendOptions | None = None,
    *,
    ledger: LedgerSource | None = None,
    clock: Callable[[], float] = time.time,
) -> Plan:
    """``--dry-run``: read (never claim) the due messages, say where each would go and,
    per server, the batches that would send them at current limits (from the ledger
    when given, else as if nothing had been sent) and when the last one would go."""
    options = options or SendOptions()
    spool = Spool(spool_path, clock=clock)
    spool.check(writable=False)
    if options.server:
        config.server(options.server)
    now = clock()
    plan = Plan(at=now)
    candidates = spool.candidates(now, limit=_listing_limit(options))
    _route_candidates(spool, config, candidates, options.server, plan, options.max_messages)
    the_ledger, ours = _open_ledger(ledger)
    try:
        _fill_plan(plan, config, the_ledger, now)
    finally:
        if ours and the_ledger is not None:
            the_ledger.close()
    deferred = [c for c in spool.scan("deferred") if c.mtime > now]
    plan.waiting = len(deferred)
    plan.next_retry = min((c.mtime for c in deferred), default=None)
    return plan


@dataclass
class ServerLimits:
    """``cxsmtp status``: one server's use of its limits and the ETA of its queue."""

    server: str
    host: str
    limits: Limits
    queued: int = 0  # due messages that go through this server
    queued_bytes: int = 0
    sent_hour: int = 0  # "hour": the rate window; "day": the send-limit window
    bytes_hour: int = 0
    sent_day: int = 0
    bytes_day: int = 0
    sent_day_all: int = 0  # all servers: what email-send-limit counts
    reserved: int = 0  # slots held by batches running now (other runs)
    window_allows: int = 0  # messages the windows allow right now
    next_window_at: float | None = None  # the next batch may start (now: <= at; inf: never)
    reason: str = ""  # why not now
    eta: float | None = None  # the last queued message (inf: never)
    batches_left: int = 0

    def to_json(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "server": self.server,
            "host": self.host,
            "limits": {
                "rate": lim.rate_per_hour,
                "rate_window_s": lim.rate_window,
                "batch_messages": lim.batch_count_cap,
                "batch_bytes": lim.batch_max_bytes,
                "batch_interval_s": lim.batch_interval,
                "batch_deadline_s": lim.batch_deadline,
                "email_send_limit": lim.email_send_limit,
                "send_limit_window_s": lim.send_limit_window,
            },
            "queued": self.queued,
            "queued_bytes": self.queued_bytes,
            "sent_hour": self.sent_hour,
            "bytes_hour": self.bytes_hour,
            "sent_day": self.sent_day,
            "bytes_day": self.bytes_day,
            "sent_day_all_servers": self.sent_day_all,
            "running_batch_slots": self.reserved,
            "window_allows": self.window_allows,
            "next_window_at": _iso_finite(self.next_window_at),
            "reason": self.reason or None,
            "eta": _iso_finite(self.eta),
            "batches_left": self.batches_left,
        }


def limits_status(
    spool_path: Path,
    config: Config,
    *,
    ledger: LedgerSource | None = None,
    clock: Callable[[], float] = time.time,
) -> list[ServerLimits]:
    """Per server with due messages or recent sends: usage, what the window allows
    now, the next window and the ETA of its queue.  Without a ledger (none yet):
    nothing was sent.  Reads the spool (headers only when the server depends on
    them); changes nothing."""
    spool = Spool(spool_path, clock=clock)
    spool.check(writable=False)
    now = clock()
    plan = Plan(at=now)
    _route_candidates(spool, config, spool.candidates(now), None, plan, read_all=False)
    the_ledger, ours = _open_ledger(ledger)
    try:
        out: list[ServerLimits] = []
        queues = {name: entry.sizes for name, entry in plan.servers.items() if entry.sizes}
        schedule, _ = _schedule(config, queues, the_ledger, now)
        for name, entry in config.servers.items():
            lim = Limits.from_entry(entry, config.settings)
            item = ServerLimits(name, entry.host, lim)
            queued = plan.servers.get(name)
            if queued is not None:
                item.queued, item.queued_bytes = queued.messages, queued.bytes
            if the_ledger is not None:
                usage = the_ledger.usage(name, lim)
                item.sent_hour, item.bytes_hour = usage.sent_hour, usage.bytes_hour
                item.sent_day, item.bytes_day = usage.sent_day, usage.bytes_day
                item.sent_day_all = usage.sent_day_all
                item.reserved = usage.reserved
                item.window_allows = usage.window_allows
                item.next_window_at = usage.next_batch_at
                item.reason = usage.reason
            else:
                item.window_allows = min(lim.rate_per_hour, lim.email_send_limit)
                item.next_window_at = now if lim.email_send_limit > 0 else math.inf
            if not (item.queued or item.sent_day or item.reserved):
                continue  # nothing queued for it, nothing sent through it lately
            batches = schedule.for_server(name)
            item.batches_left = len(batches)
            if item.queued:
                planned = sum(b.count for b in batches)
                item.eta = (
                    math.inf
                    if planned < item.queued
                    else max((b.last_at for b in batches), default=None)
                )
            out.append(item)
        return out
    finally:
        if ours and the_ledger is not None:
            the_ledger.close()


__all__ = [
    "Attempt",
    "BatchGate",
    "BatchReport",
    "Connection",
    "CountGate",
    "LedgerGate",
    "Plan",
    "PlanEntry",
    "ProgressEvent",
    "RunSummary",
    "SendOptions",
    "ServerLimits",
    "classify",
    "limits_status",
    "plan_send",
    "run_send",
    "stop_on_signals",
]

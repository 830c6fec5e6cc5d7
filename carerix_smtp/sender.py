"""One run of ``cxsmtp send SPOOL``: one pass through the queue, then exit.

The shape is django-mailer's ``send_all`` (lock, one pass, reuse the connection,
stop at limits, defer known failures, one summary), with per-recipient outcomes
and a crash-safe spool (see spool.py):

1. take the spool lock (another run holds it -> status "locked", exit 0);
2. recover what a killed run left behind;
3. for each due message, oldest first: claim it, read its header block, pick
   the server (``--server``, else the From's per-user choice, else the default),
   ask that server's batch gate, send on that server's connection, journal the
   per-recipient result and move the message to sent/, deferred/ or failed/.

Per recipient (SPEC §3): 2xx to RCPT and to the data -> accepted, never sent
again; 5xx -> failed; 4xx -> retried later alone.  A 4xx to MAIL or the data, a
421, a lost connection or a timeout defer the whole message with exponential
backoff (``retry_initial`` doubling to ``retry_max``) until ``max_queue_age``,
then it fails.  An authentication failure stops the run before any message is
changed (exit 77).  Servers that cannot be reached leave their messages where
they are (exit 75); a connection lost mid-run is reopened at most
``max_reconnects`` times.

Seams for later work:

- ``BatchGate``: the limits issue plugs the rate ledger and batch sizing in here
  (``admit`` before each message, ``confirm`` after each accepted data, ``close``).
- ``Connection`` owns one ``SmtpSession`` and turns one message into a pure
  ``Attempt`` (per-recipient outcomes); the spool bookkeeping happens outside it,
  so several connections per server (a worker each) need no rewrite.
- ``deadline`` / ``stop``: the run ends cleanly between messages; the rest stays queued.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
from carerix_smtp.message import Message, read_message
from carerix_smtp.spool import Candidate, Claim, MessageState, RecipientResult, Spool, backoff

if TYPE_CHECKING:
    from carerix_smtp.config import Config, ServerEntry
    from carerix_smtp.transport import Reply, SendResult, SmtpSession

log = logging.getLogger(__name__)

DEFAULT_MAX_RECONNECTS = 3
# A server that defers this many whole messages in a row (451 "try later", rate
# limited) is left alone for the rest of the run; its messages stay queued.
DEFAULT_STOP_AFTER_DEFERRALS = 5


# --- the seam for rate limits and batch sizing ----------------------------------------


class BatchGate(Protocol):
    """Per-server admission control for one run (limits.py provides the real one).

    ``admit(size)`` before each message: False ends this server's batch and leaves
    the message (and the rest) queued.  ``confirm(message_id, size)`` after the
    server accepted the data.  ``close()`` at the end of the run, also after an
    error.  An admitted message may get no ``confirm`` (refused, deferred, server
    unusable, run stopped): a gate that reserves budget in ``admit`` releases the
    unconfirmed part in ``close``.  ``size`` is the file's size in bytes.
    """

    def admit(self, size: int) -> bool: ...

    def confirm(self, message_id: str, size: int) -> None: ...

    def close(self) -> None: ...


class CountGate:
    """``--max-messages N``: at most N messages admitted in this run (None: no cap).

    One instance is shared by every server, so N is for the whole run.
    """

    def __init__(self, max_messages: int | None = None) -> None:
        self.max_messages = max_messages
        self.admitted = 0
        self.confirmed = 0

    def admit(self, size: int) -> bool:
        if self.max_messages is not None and self.admitted >= self.max_messages:
            return False
        self.admitted += 1
        return True

    def confirm(self, message_id: str, size: int) -> None:
        self.confirmed += 1

    def close(self) -> None:
        return None


GateFactory = Callable[["ServerEntry"], BatchGate]
SessionFactory = Callable[["ServerEntry", "str | None"], "SmtpSession"]
PasswordSource = Callable[["ServerEntry"], "str | None"]


# --- options, results -----------------------------------------------------------------


@dataclass
class SendOptions:
    server: str | None = None  # --server: every message through this one
    max_messages: int | None = None
    dry_run: bool = False
    deadline: float | None = None  # seconds after the start; the rest stays queued
    max_reconnects: int = DEFAULT_MAX_RECONNECTS
    stop_after_deferrals: int = DEFAULT_STOP_AFTER_DEFERRALS
    local_hostname: str | None = None


@dataclass
class ProgressEvent:
    kind: str  # "start" | "message" | "end"
    total: int = 0
    done: int = 0
    name: str = ""
    outcome: str = ""  # sent | deferred | failed | skipped
    size: int = 0


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

    def to_json(self) -> dict[str, Any]:
        from carerix_smtp.spool import iso

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
        }


@dataclass
class PlanEntry:
    server: str
    host: str
    messages: int = 0
    bytes: int = 0


@dataclass
class Plan:
    """``--dry-run``: what a run would do now (nothing is changed)."""

    messages: int = 0
    bytes: int = 0
    servers: dict[str, PlanEntry] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    waiting: int = 0  # deferred, not due yet
    next_retry: float | None = None

    def to_json(self) -> dict[str, Any]:
        from carerix_smtp.spool import iso

        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "servers": [vars(e) for e in self.servers.values()],
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

    def deliver(
        self, message: Message, recipients: Sequence[str], now: Callable[[], float]
    ) -> Attempt:
        """Send ``message`` to ``recipients`` on the open session."""
        session = self.ensure_open()
        limit = session.max_size
        if limit and message.size > limit:
            reason = (
                f"the message ({message.size} bytes) is larger than {session.where} "
                f"accepts (SIZE {limit}, RFC 1870)"
            )
            return _everyone(recipients, FAILED, RecipientResult(552, "5.3.4", reason, now()))
        if message.needs_smtputf8 and not session.has_extension("SMTPUTF8"):
            reason = f"a non-ASCII address needs SMTPUTF8 (RFC 6531); {session.where} lacks it"
            return _everyone(recipients, FAILED, RecipientResult(553, "5.6.7", reason, now()))
        if message.needs_8bitmime and not session.has_extension("8BITMIME"):
            reason = f"8-bit content needs 8BITMIME (RFC 6152); {session.where} lacks it"
            return _everyone(recipients, FAILED, RecipientResult(554, "5.6.3", reason, now()))
        smtputf8 = message.needs_smtputf8 or (
            message.header_utf8 and session.has_extension("SMTPUTF8")
        )
        try:
            with message.open_data() as data:
                result = session.send(
                    message.mail_from,
                    recipients,
                    data,
                    smtputf8=smtputf8,
                    eight_bit=message.needs_8bitmime,
                )
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

    def abandon(self) -> None:
        """Drop the socket without QUIT (interrupted mid-transaction: a QUIT now would
        be taken as message content)."""
        session, self.session = self.session, None
        if session is not None:
            session._abort()  # no public abort() in the transport yet

    def _drop(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None

    def close(self) -> None:
        """QUIT; errors are swallowed (data already accepted stays accepted)."""
        self._drop()


def default_session_factory(config: Config, *, local_hostname: str | None = None) -> SessionFactory:
    from carerix_smtp.resolve import make_resolver
    from carerix_smtp.transport import SmtpSession

    resolver = make_resolver(config.settings.nameservers)

    def factory(entry: ServerEntry, password: str | None) -> SmtpSession:
        return SmtpSession(entry, password, resolver=resolver, local_hostname=local_hostname)

    return factory


def default_password_source(entry: ServerEntry) -> str | None:
    from carerix_smtp.secrets import get_password

    return get_password(entry)


# --- signals ----------------------------------------------------------------------------

_in_network = threading.Event()  # set while a message is on the wire (main thread)


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

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- the run -----------------------------------------------------------------------------


class _Stopping(Exception):
    """A stop was asked for before a network phase began: do not begin it."""


class _Stop(Exception):
    """The run must end now, touching nothing more: ``status`` says why."""

    def __init__(self, status: str, error: SmtpError) -> None:
        super().__init__(str(error))
        self.status = status
        self.error = error


def _stop_for(error: SmtpAuthError | SmtpPolicyError) -> _Stop:
    return _Stop("auth-failed" if isinstance(error, SmtpAuthError) else "config-error", error)


class _Run:
    def __init__(
        self,
        spool: Spool,
        config: Config,
        options: SendOptions,
        *,
        gate_factory: GateFactory,
        session_factory: SessionFactory,
        password_source: PasswordSource,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        stop: threading.Event,
        progress: Callable[[ProgressEvent], None] | None,
        summary: RunSummary,
    ) -> None:
        self.spool = spool
        self.config = config
        self.options = options
        self.gate_factory = gate_factory
        self.session_factory = session_factory
        self.password_source = password_source
        self.clock = clock
        self.monotonic = monotonic
        self.stop = stop
        self.progress = progress
        self.summary = summary
        self.connections: dict[str, Connection] = {}
        self.gates: dict[str, BatchGate] = {}
        self.deadline = monotonic() + options.deadline if options.deadline is not None else None
        self.done = 0
        self.total = 0
        self.unreachable = False

    # -- servers --

    def server_for(self, message: Message) -> ServerEntry:
        if self.options.server:
            return self.config.server(self.options.server)
        return self.config.server_for_sender(message.from_address)

    def fixed_server(self) -> ServerEntry | None:
        """The server every message goes to, when known without reading any."""
        if self.options.server:
            return self.config.server(self.options.server)
        if len(self.config.servers) == 1:  # [users] can only name this one
            return next(iter(self.config.servers.values()))
        return None

    def connection(self, entry: ServerEntry) -> Connection:
        conn = self.connections.get(entry.name)
        if conn is None:
            password = self.password_source(entry)  # SecretError: exit 78
            conn = Connection(
                entry, password, self.session_factory, max_reconnects=self.options.max_reconnects
            )
            self.connections[entry.name] = conn
            self.gates[entry.name] = self.gate_factory(entry)
        return conn

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

    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """Mark a network phase (a second signal aborts it).  Once a stop was asked
        for, no new one starts: marked first, checked second, so no signal slips
        between the check and the start."""
        _in_network.set()
        try:
            if self.stop.is_set():
                raise _Stopping
            yield
        finally:
            _in_network.clear()

    def note_unusable(self, conn: Connection, reason: str) -> None:
        if reason not in self.summary.errors:
            self.summary.errors.append(reason)
            log.info("%s", reason)
        self.unreachable = True

    def all_servers_done(self) -> bool:
        names = [self.options.server] if self.options.server else list(self.config.servers) or [""]
        return all(
            n in self.connections and self.connections[n].unusable is not None for n in names
        )

    # -- the loop --

    def run(self, candidates: list[Candidate]) -> None:
        self.total = len(candidates)
        self.emit(ProgressEvent("start", total=self.total))
        fixed = self.fixed_server()
        # Open before claiming anything: a refused password or an unreachable
        # server then leaves every message exactly as it was.
        if fixed is not None and candidates and not self.open(self.connection(fixed)):
            if self.stop.is_set():
                self.summary.status = "interrupted"
            return
        for candidate in candidates:
            if self.stop.is_set():
                self.summary.status = "interrupted"
                break
            if self.deadline is not None and self.monotonic() >= self.deadline:
                self.summary.status = "limit"
                log.info("deadline reached; the rest stays queued")
                break
            if self.all_servers_done():
                break
            self.one(candidate)
        if self.stop.is_set():
            self.summary.status = "interrupted"

    def one(self, candidate: Candidate) -> None:
        claim = self.spool.claim(candidate)
        if claim is None:
            return  # gone meanwhile (a producer took it back)
        if claim.file_type != "file":
            self.fail_file(claim, f"{claim.file_type} named *.eml: not followed, not sent")
            return
        if claim.size == 0:
            self.fail_file(claim, "the file is empty (0 bytes)")
            return
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
            return
        try:
            entry = self.server_for(message)
            conn = self.connection(entry)
        except ConfigError:
            self.spool.requeue(claim)
            raise
        if conn.unusable is not None:
            self.spool.requeue(claim)
            return
        gate = self.gates[entry.name]
        if not gate.admit(message.size):
            self.spool.requeue(claim)
            conn.unusable = f"server {entry.name}: batch limit reached"
            if self.summary.status == "ok":
                self.summary.status = "limit"
            return
        if not self.open(conn, claim):
            return
        self.deliver(claim, message, entry, conn, gate)

    def deliver(
        self,
        claim: Claim,
        message: Message,
        entry: ServerEntry,
        conn: Connection,
        gate: BatchGate,
    ) -> None:
        state = self.state_for(claim, message)
        recipients = list(state.pending)
        start = self.clock()
        try:
            with self.network():
                attempt = conn.deliver(message, recipients, self.clock)
        except _Stopping:
            self.spool.requeue(claim)
            return
        except (SmtpAuthError, SmtpPolicyError) as exc:  # on a reconnect
            self.spool.requeue(claim)
            raise _stop_for(exc) from None
        except ServerUnusable as exc:
            self.spool.requeue(claim)
            self.note_unusable(conn, str(exc))
            return
        except Interrupted:
            conn.abandon()
            back = self.spool.requeue(claim)
            self.summary.possible_duplicates.append(back.name)
            raise
        self.apply(claim, message, state, entry, attempt, start)
        accepted = attempt.recipients(ACCEPTED)
        if accepted:
            gate.confirm(message.message_id or claim.name, message.size)
        if attempt.connection_lost:
            log.warning("%s: %s", entry.name, attempt.error)
        if accepted or attempt.recipients(FAILED):
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
        if state.status == "failed" or (state.status == "sent" and state.failed):
            refused = ", ".join(f"{r}: {res.describe()}" for r, res in state.failed.items())
            if state.reason.startswith("too old"):
                refused = state.reason
            elif state.status == "sent":
                refused = f"sent, but refused for {refused}"
            self.summary.failures.append(f"{claim.name}: {refused}")
        self.count(state.status, message.size, partial=bool(state.accepted and state.failed))
        self.emit(
            ProgressEvent("message", self.total, self.done, claim.name, state.status, message.size)
        )

    def count(self, outcome: str, size: int, *, partial: bool = False) -> None:
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
            self.progress(event)

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        for gate in self.gates.values():
            gate.close()


def _last_reply(attempt: Attempt) -> str:
    for _, (_, result) in reversed(list(attempt.results.items())):
        return result.describe()
    return attempt.error or "no reply"


def run_send(
    spool_path: Path,
    config: Config,
    options: SendOptions | None = None,
    *,
    gate_factory: GateFactory | None = None,
    session_factory: SessionFactory | None = None,
    password_source: PasswordSource | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    durable: bool = True,
) -> RunSummary:
    """One pass through the spool.  Raises ConfigError/SpoolError (exit 78) for
    setup problems; everything about messages and servers is in the summary."""
    options = options or SendOptions()
    started = monotonic()
    spool = Spool(spool_path, clock=clock, durable=durable)
    spool.check(writable=True)
    if options.server:
        config.server(options.server)  # an unknown --server is exit 78, before anything
    summary = RunSummary()
    if gate_factory is None:
        shared = CountGate(options.max_messages)

        def gate_factory(entry: ServerEntry) -> BatchGate:
            return shared

    with spool.lock() as locked:
        if not locked:
            summary.status = "locked"
            summary.lock_holder = spool.holder_pid()
            summary.elapsed_s = monotonic() - started
            return summary
        recovery = spool.recover()
        summary.possible_duplicates.extend(Path(p).name for p in recovery.requeued)
        candidates = spool.candidates()
        if not candidates:
            summary.status = "nothing-to-do"
        elif not config.servers:
            raise ConfigError(
                f"no server configured in {config.path}; add one with 'cxsmtp server add NAME HOST'"
            )
        run = _Run(
            spool,
            config,
            options,
            gate_factory=gate_factory,
            session_factory=session_factory
            or default_session_factory(config, local_hostname=options.local_hostname),
            password_source=password_source or default_password_source,
            clock=clock,
            monotonic=monotonic,
            stop=stop or threading.Event(),
            progress=progress,
            summary=summary,
        )
        try:
            if candidates:
                run.run(candidates)
        except _Stop as exc:
            summary.status = exc.status
            summary.errors.append(str(exc.error))
        except Interrupted as exc:
            summary.status = "interrupted"
            summary.errors.append(str(exc))
        finally:
            run.close()
            spool.finish()
        summary.remaining = max(
            0, len(candidates) - summary.sent - summary.deferred - summary.failed
        )
        summary.settle(unreachable=run.unreachable)
        summary.next_retry = spool.next_retry()
    summary.elapsed_s = monotonic() - started
    return summary


def plan_send(
    spool_path: Path,
    config: Config,
    options: SendOptions | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Plan:
    """``--dry-run``: read (never claim) the due messages and say where each would go."""
    options = options or SendOptions()
    spool = Spool(spool_path, clock=clock)
    spool.check(writable=False)
    if options.server:
        config.server(options.server)
    plan = Plan()
    now = clock()
    limit = options.max_messages
    for candidate in spool.candidates(now):
        if limit is not None and plan.messages >= limit:
            break
        directory = spool.dir("deferred") if candidate.kind == "deferred" else spool.path
        if candidate.file_type != "file":
            plan.invalid.append((candidate.name, f"{candidate.file_type}: not followed"))
            continue
        try:
            message = read_message(directory / candidate.name)
        except MessageError as exc:
            plan.invalid.append((candidate.name, str(exc)))
            continue
        if options.server:
            entry = config.server(options.server)
        else:
            entry = config.server_for_sender(message.from_address)
        item = plan.servers.setdefault(entry.name, PlanEntry(entry.name, entry.host))
        item.messages += 1
        item.bytes += message.size
        plan.messages += 1
        plan.bytes += message.size
    deferred = [c for c in spool.scan("deferred") if c.mtime > now]
    plan.waiting = len(deferred)
    plan.next_retry = min((c.mtime for c in deferred), default=None)
    return plan


__all__ = [
    "Attempt",
    "BatchGate",
    "Connection",
    "CountGate",
    "Plan",
    "ProgressEvent",
    "RunSummary",
    "SendOptions",
    "classify",
    "plan_send",
    "run_send",
    "stop_on_signals",
]

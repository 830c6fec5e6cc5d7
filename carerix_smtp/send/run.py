"""``cxsmtp send SPOOL``: one batch per server within the sending limits, or ``--loop``.

The shape is django-mailer's ``send_all`` (lock, one pass, reuse the connection,
stop at limits, defer known failures, one summary), with per-recipient outcomes,
a crash-safe spool (the spool package) and the rate ledger (the limits package):

1. take the spool lock (another run holds it -> status "locked", exit 0);
2. recover what a killed run left behind;
3. one pass: for each due message, oldest first, pick the server (``--server``,
   else the From's per-user choice, else the default), ask that server's batch
   gate, claim the message, send it on that server's connection, journal the
   per-recipient result and move it to sent/, deferred/ or failed/;
4. without ``--loop``: exit.  With it: close the connections, sleep (on the
   stop event, so SIGTERM ends the sleep at once) until the next window opens,
   and make another pass, until nothing is due.

Limits (SPEC §3, issue 5).  With a ledger (:class:`~carerix_smtp.limits.ledger.LedgerStore`) every
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
``max_reconnects`` times.  A server that only defers (a provider's "450 4.7.1 too
much mail") is normal operation: the messages wait for their retry, exit 0.

Cron output (issue 11).  The summary says per server what made it unusable
(``ServerFailure``: connect, tls, auth, policy, dropped, deferring) and which servers
were reached; with ``history_dir`` the run is recorded there (send/history.py) and
``summary.notices`` says which server errors to print (``quiet``: an unchanged error
only once a day) and which servers work again.

Speed (SPEC "Non-functional targets").  On one connection the messages are
pipelined (RFC 2920): the next message's MAIL/RCPT/DATA go out in the same write
as the current one's data, and the one after that is claimed and read while the
server works on the current one -- one round trip and no idle CPU per message.
A server entry with ``connections`` = N > 1 gets N connections, each driven by a
thread (``Pool``), fed in order by the run's thread.  Either way a message's
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

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carerix_smtp.errors import (
    ConfigError,
    Interrupted,
    SmtpAuthError,
    SmtpPolicyError,
    SmtpTLSError,
    StorageError,
)
from carerix_smtp.send.history import record_run
from carerix_smtp.send.report import (
    BatchReport,
    ProgressEvent,
    RunSummary,
    SendOptions,
    ServerFailure,
    Totals,
    listing_limit,
)
from carerix_smtp.send.stopping import Stop, Stopping, cleanup
from carerix_smtp.spool.spool import Spool

# The SMTP client, the ledger and the limits are imported once there is something to
# send (``_Passes.send``): cron's runs on an empty spool start fast (issue 12).
if TYPE_CHECKING:
    from carerix_smtp.config.file import Config
    from carerix_smtp.limits.ledger import LedgerStore
    from carerix_smtp.send.connection import Connection, PasswordSource, SessionFactory
    from carerix_smtp.send.dispatch import Pass
    from carerix_smtp.send.gates import GateFactory, LedgerSource
    from carerix_smtp.send.pool import Pool
    from carerix_smtp.spool.listing import Candidate

log = logging.getLogger(__name__)


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
    history_dir: Path | None = None,
    quiet: bool = False,
) -> RunSummary:
    """One run: a pass (one batch per server), or with ``options.loop`` passes until
    nothing is due.  Raises ConfigError/SpoolError (exit 78) for setup problems;
    everything about messages and servers is in the summary.

    ``ledger``: the rate ledger (an instance, or a factory called once the spool
    lock is held; its ledger is then closed at the end) -- the limits apply only
    with one.  ``gate_factory`` replaces the ledger's gates (tests).  ``clock``
    must be the ledger's clock; ``sleep`` (default: wait on ``stop``) is used for
    the loop's waits and must return early when ``stop`` is set.  ``history_dir``
    (the state dir): record the run there and fill ``summary.notices``; ``quiet``: an
    unchanged server error is told only once a day.
    """
    options = options or SendOptions()
    started = monotonic()
    stop = stop or threading.Event()
    passes = _Passes(
        spool_path,
        config,
        options,
        started,
        ledger=ledger,
        gate_factory=gate_factory,
        session_factory=session_factory,
        password_source=password_source,
        clock=clock,
        monotonic=monotonic,
        sleep=sleep if sleep is not None else _waiting_on(stop),
        stop=stop,
        progress=progress,
        durable=durable,
    )
    summary = passes.send()
    if history_dir is not None and summary.status != "locked":
        summary.notices = record_run(history_dir, summary, now=clock(), quiet=quiet)
    return summary


def _nothing() -> None:
    return None


def _waiting_on(stop: threading.Event) -> Callable[[float], None]:
    """``run_send``'s default ``sleep``: wait on ``stop`` (a signal ends it at once)."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


class _Passes:
    """One ``run_send``: under the spool lock, a pass (``Pass``), or with ``--loop``
    passes until nothing is due, sleeping until the next window opens."""

    def __init__(
        self,
        spool_path: Path,
        config: Config,
        options: SendOptions,
        started: float,
        *,
        ledger: LedgerSource | None,
        gate_factory: GateFactory | None,
        session_factory: SessionFactory | None,
        password_source: PasswordSource | None,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        stop: threading.Event,
        progress: Callable[[ProgressEvent], None] | None,
        durable: bool,
    ) -> None:
        self.config = config
        self.options = options
        self.started = started
        self.ledger_source = ledger
        self.ledger: LedgerStore | None = None  # opened under the spool lock
        self.gate_factory = gate_factory
        self.session_factory = session_factory
        self.password_source = password_source
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.stop = stop
        self.progress = progress
        self.spool = Spool(spool_path, clock=clock, durable=durable)
        self.spool.check(writable=True)
        if options.server:
            config.server(options.server)  # an unknown --server is exit 78, before anything
        self.summary = RunSummary()
        self.deadline = started + options.deadline if options.deadline is not None else None
        self.totals = Totals()
        self.unreachable = False

    def send(self) -> RunSummary:
        spool, summary, monotonic, started = self.spool, self.summary, self.monotonic, self.started
        with spool.lock() as locked:
            if not locked:
                summary.status = "locked"
                summary.lock_holder = spool.holder_pid()
                summary.elapsed_s = monotonic() - started
                return summary
            recovery = spool.recover()
            summary.possible_duplicates.extend(Path(p).name for p in recovery.requeued)
            self.retain()
            candidates = spool.candidates(limit=listing_limit(self.options))
            if not candidates:
                summary.status = "nothing-to-do"
                # what waits in deferred/, from the same listing (not listed again)
                summary.left_deferred = candidates.waiting
                summary.next_retry = candidates.next_retry
                summary.elapsed_s = monotonic() - started
                return summary
            from carerix_smtp.send.gates import open_ledger

            if not self.config.servers:
                raise ConfigError(
                    f"no server configured in {self.config.path}; add one with 'cxsmtp server add NAME HOST'"
                )
            the_ledger, ours = open_ledger(self.ledger_source)
            self.ledger = the_ledger
            with cleanup(the_ledger.close if ours and the_ledger is not None else _nothing):
                self.loop(candidates)
            summary.settle(unreachable=self.unreachable)
            summary.note_backlog(spool.scan("queued"), spool.scan("deferred"))
        summary.elapsed_s = monotonic() - started
        return summary

    def retain(self) -> None:
        """Remove sent mail older than ``retain_sent`` (spool/retention.py: at most
        10,000 files per run, sent/ scanned at most once an hour).  A file that
        cannot be removed is logged; sending goes on."""
        from carerix_smtp.spool.retention import retain

        try:
            retain(self.spool.layout, self.config.settings.retain_sent, self.clock())
        except StorageError as exc:
            log.warning("retention of sent mail: %s", exc)

    def loop(self, candidates: Sequence[Candidate]) -> None:
        options, summary, stop = self.options, self.summary, self.stop
        while True:
            run = self.new_pass()
            ended = self.one_pass(run, candidates)
            self.unreachable = self.note_servers(run) or self.unreachable
            self.note(run, candidates)
            if (
                ended
                or not options.loop
                or stop.is_set()
                or run.servers.unreachable
                or run.max_hit
                or summary.status in ("interrupted", "auth-failed", "config-error")
            ):
                break
            following = self.next_candidates(run)
            if following is None:
                break
            candidates = following

    def new_pass(self) -> Pass:
        from carerix_smtp.send.connection import default_password_source, default_session_factory
        from carerix_smtp.send.dispatch import Pass

        config, options = self.config, self.options
        return Pass(
            self.spool,
            config,
            options,
            gate_factory=self.gate_factory,
            ledger=self.ledger,
            session_factory=self.session_factory
            or default_session_factory(config, local_hostname=options.local_hostname),
            password_source=self.password_source
            or functools.partial(default_password_source, config=config),
            clock=self.clock,
            monotonic=self.monotonic,
            sleep=self.sleep,
            stop=self.stop,
            progress=self.progress,
            summary=self.summary,
            totals=self.totals,
            deadline=self.deadline,
        )

    def one_pass(self, run: Pass, candidates: Sequence[Candidate]) -> bool:
        """Run one pass; True: it ended the run (authentication refused, interrupted).

        Any other error (a full disk: StorageError) ends the run too: the pass closes
        its connections (QUIT) and the ledger's batches, and the error propagates
        (the CLI prints it, exit 75 or as its class says).  What a server accepted is
        journaled, or its claim stays for the next run's recovery.
        """
        summary = self.summary
        with cleanup(run.close, self.spool.finish):
            try:
                run.run(candidates)
            except Stop as exc:
                summary.status = exc.status
                summary.errors.append(str(exc.error))
                return True
            except Interrupted as exc:
                summary.status = "interrupted"
                summary.errors.append(str(exc))
                return True
        return False

    def note_servers(self, run: Pass) -> bool:
        """The pass's server failures and reached servers, in the summary; True: a
        server could not be used at all (exit 75).  A server that only deferred is
        no error: its line leaves ``errors`` (the text summary mentions it)."""
        summary = self.summary
        # issue 14: servers whose messages a fallback took, and fallbacks passed over
        # that had no message of their own: not unusable for this run's mail
        instead, spare = run.router.instead, run.router.passed_over
        for name, conns in _connections(run).items():
            reached = any(conn.opened - (conn.failure is not None) > 0 for conn in conns)
            if reached and name not in summary.servers_reached:
                summary.servers_reached.append(name)
            failure = _failure_of(name, conns, run.servers.pools.get(name), self.options)
            if failure is None:
                continue
            if name in instead:
                failure.message += f"; its mail went through fallback {instead[name]}"
            summary.server_failures = [f for f in summary.server_failures if f.server != name] + [
                failure
            ]
            if failure.kind == "deferring" and failure.message in summary.errors:
                summary.errors.remove(failure.message)
            elif failure.kind in ("auth", "policy"):  # Stop noted the bare error: name the server
                bare = failure.message.removeprefix(f"server {name}: ")
                summary.errors = [failure.message if e == bare else e for e in summary.errors]
        return any(
            f.kind in ("connect", "tls", "dropped")
            and f.server not in instead
            and f.server not in spare
            for f in summary.server_failures
        )

    def note(self, run: Pass, candidates: Sequence[Candidate]) -> None:
        """What a pass did, in the summary: what is left and what held it back."""
        summary, options = self.summary, self.options
        summary.remaining = max(0, len(candidates) - run.delivery.done)
        reports = _reports(run)
        summary.batches.extend(reports)
        summary.deadline_cut = summary.deadline_cut or any(r.deadline_cut for r in reports)
        summary.note_limits(reports, options.max_messages if run.max_hit else None)
        if not summary.remaining:
            summary.limited_by, summary.limit_reason = None, ""
            summary.next_window_at = None
        if self.stop.is_set() and summary.status not in ("auth-failed", "config-error"):
            summary.status = "interrupted"  # SPEC §3: SIGTERM/SIGINT exit 75

    def next_candidates(self, run: Pass) -> Sequence[Candidate] | None:
        """``--loop``: the due messages of the next pass, after waiting for the next
        window if the limits held some back; None: the run ends."""
        spool, summary, options, clock = self.spool, self.summary, self.options, self.clock
        wake = _next_wake(summary, run, clock())
        if wake is _DONE:
            candidates = spool.candidates(limit=listing_limit(options))
            if not candidates:
                summary.remaining = 0
                return None
            if run.delivery.done == 0:
                return None  # nothing happened and nothing holds it back: do not spin
            return candidates
        if wake is None:
            return None  # never (email-send-limit 0)
        assert isinstance(wake, float)
        delay = wake - clock()
        if self.deadline is not None and self.monotonic() + delay >= self.deadline:
            log.info("the next window opens after the run's deadline; stopping")
            return None
        log.info("waiting %.1f s for the next window (%s)", max(0.0, delay), summary.limit_reason)
        run.delivery.emit(ProgressEvent("wait", until=wake, reason=summary.limit_reason))
        try:
            run.servers.pause(delay)
        except Stopping:
            summary.status = "interrupted"
            return None
        candidates = spool.candidates(limit=listing_limit(options))
        if not candidates:
            summary.remaining = 0
            summary.limited_by, summary.limit_reason = None, ""
            summary.next_window_at = None
            return None
        return candidates


_DONE = object()  # _next_wake: no limit held anything back


def _connections(run: Pass) -> dict[str, list[Connection]]:
    """Every connection of the pass by server (a pool's too)."""
    servers = run.servers
    found: dict[str, list[Connection]] = {}
    for name, first in servers.connections.items():
        pool = servers.pools.get(name)
        others = [w.conn for w in pool.workers if w.conn is not first] if pool else []
        found[name] = [first, *others]
    return found


def _failure_of(
    name: str, conns: Sequence[Connection], pool: Pool | None, options: SendOptions
) -> ServerFailure | None:
    """What made server ``name`` unusable in a pass, or None."""
    for conn in conns:
        if isinstance(conn.failure, SmtpAuthError | SmtpPolicyError):
            kind = "auth" if isinstance(conn.failure, SmtpAuthError) else "policy"
            return ServerFailure(name, kind, f"server {name}: {conn.failure}")
    if pool is not None and not pool.exhausted():
        return None  # one of several connections gave up; the others went on
    gone = next((c for c in conns if c.unusable is not None), None)
    if gone is None or gone.unusable is None:
        return None
    limit = options.stop_after_deferrals
    if gone.failure is not None:
        kind = "tls" if isinstance(gone.failure, SmtpTLSError) else "connect"
    elif limit and gone.consecutive_deferrals >= limit:
        kind = "deferring"
    else:
        kind = "dropped"
    return ServerFailure(name, kind, gone.unusable)


def _next_wake(summary: RunSummary, run: Pass, now: float) -> float | object | None:
    """When the loop's next pass should start: a float, None (never), or _DONE."""
    if summary.limited_by is None:
        return _DONE
    wake = summary.next_window_at
    if wake is None or math.isinf(wake):
        return None
    if wake <= now and run.delivery.done == 0:
        from carerix_smtp.limits.rule import RESERVATION_POLL

        wake = now + RESERVATION_POLL  # held back, yet "now": never spin
    return max(wake, now)


def _reports(run: Pass) -> list[BatchReport]:
    """The batches of a pass (after ``run.close()``), for the servers with a ledger gate."""
    from carerix_smtp.send.gates import LedgerGate

    reports: list[BatchReport] = []
    for gate in run.servers.gates.values():
        if isinstance(gate, LedgerGate) and (gate.grant is not None or gate.wait is not None):
            reports.append(gate.report(gate.refused or gate.wait is not None))
    return reports

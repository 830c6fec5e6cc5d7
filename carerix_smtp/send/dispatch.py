"""One pass through the due messages (``Pass``), driven by the dispatching thread:
oldest first, claim, read, route and admit each message, then send it on its
server's connection -- pipelined on the server's first connection (``_Feed``
holds the next messages), or, while that one waits on a slow server, handed to
the server's other connections (spread.py).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from carerix_smtp.errors import (
    Interrupted,
    MessageError,
    SmtpAuthError,
    SmtpPolicyError,
)
from carerix_smtp.limits.ledger import LedgerStore
from carerix_smtp.send.connection import PasswordSource, ServerUnusable, SessionFactory
from carerix_smtp.send.delivery import Delivery
from carerix_smtp.send.fallback import Fallbacks
from carerix_smtp.send.gates import GateFactory, LedgerGate, release_admission
from carerix_smtp.send.pool import Job
from carerix_smtp.send.report import ProgressEvent
from carerix_smtp.send.routing import Router
from carerix_smtp.send.servers import Servers
from carerix_smtp.send.spread import Spread
from carerix_smtp.send.stopping import Stopping, abort_requested, in_network, quietly, stop_for
from carerix_smtp.spool.message import read_message

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config
    from carerix_smtp.send.pool import Worker
    from carerix_smtp.send.report import RunSummary, SendOptions, Totals
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.listing import Candidate
    from carerix_smtp.spool.message import Message
    from carerix_smtp.spool.spool import Spool

log = logging.getLogger(__name__)


class _Feed:
    """The messages a pass holds ahead for one-connection servers (see ``Pass.run``):
    ``pull`` takes the next job, ``meanwhile`` reads one while the server works."""

    def __init__(self, jobs: Iterator[Job], servers: Servers, stop: threading.Event) -> None:
        self.jobs = jobs
        self.servers = servers
        self.stop = stop
        self.held: collections.deque[Job] = collections.deque()
        self.exhausted = False
        self.failures: list[BaseException] = []

    def pull(self) -> None:
        if not self.exhausted:
            job = next(self.jobs, None)
            if job is None:
                self.exhausted = True
            else:
                self.held.append(job)

    def meanwhile(self) -> None:
        if self.exhausted or len(self.held) >= 2 or self.failures:
            return
        in_network.clear()  # not on the wire now: a second signal is only noted
        self.servers.finishing = 1  # the message on the wire has its data out (LedgerGate)
        try:
            self.pull()
        except BaseException as exc:  # raised after the send, never into it
            self.failures.append(exc)
        finally:
            self.servers.finishing = 0
            in_network.set()
        if abort_requested and self.stop.is_set():
            raise Interrupted(
                f"{abort_requested[0]} received twice: stopped in the middle of a message"
            )


class Pass:
    """One pass through the due messages: at most one batch per server.

    The dispatching thread's loop; the messages' servers come from ``router``, the
    servers' connections, gates and pools from ``servers``, and ``delivery`` sends
    each message and records its outcome.
    """

    def __init__(
        self,
        spool: Spool,
        config: Config,
        options: SendOptions,
        *,
        gate_factory: GateFactory | None,
        ledger: LedgerStore | None,
        session_factory: SessionFactory,
        password_source: PasswordSource,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        stop: threading.Event,
        progress: Callable[[ProgressEvent], None] | None,
        summary: RunSummary,
        totals: Totals,
        deadline: float | None,
    ) -> None:
        self.spool = spool
        self.options = options
        self.monotonic = monotonic
        self.stop = stop
        self.summary = summary
        self.totals = totals
        self.deadline = deadline  # monotonic; the rest stays queued after it
        self.max_hit = False
        lock = threading.RLock()  # the summary and counters, from any thread
        self.router = Router(spool, config, options, totals)
        self.servers = Servers(
            spool, config, options, self.router,
            gate_factory=gate_factory,
            ledger=ledger,
            session_factory=session_factory,
            password_source=password_source,
            sleep=sleep,
            stop=stop,
            summary=summary,
            totals=totals,
            lock=lock,
        )  # fmt: skip
        self.fallbacks = Fallbacks(self.servers)  # issue 14: who takes an unusable server's mail
        self.spread = Spread(self, self.servers)  # which connection of a server takes a message
        self.delivery = Delivery(
            spool, options, self.servers, clock=clock, progress=progress, summary=summary, lock=lock
        )

    def run(self, candidates: Sequence[Candidate]) -> None:
        self.router.candidates = candidates
        self.delivery.total = len(candidates)
        if not self.start(candidates):
            return
        # One-connection servers: messages are held (claimed, read, admitted) a little
        # ahead: the next one's commands follow the current one's data on the wire
        # (SmtpSession.run), and the one after that is read while the server works
        # on the current one (``meanwhile``).  Held messages that will not go are
        # given back.
        self.cut = False
        feed = _Feed(self._jobs(candidates), self.servers, self.stop)
        try:
            self.loop(feed)
        except Interrupted:
            # A second signal: cut what is on the wire; each connection puts its
            # message back to the queue (a possible duplicate), as one connection does.
            self.give_back_held(feed.held)
            self.servers.aborting.set()
            for pool in self.servers.pools.values():
                pool.abort()
            raise
        except BaseException:
            # A failed connection thread (Stop: authentication refused on a
            # reconnect...), a configuration error, a full disk, a bug: start nothing
            # new, let what is in flight finish.  Only this first error is reported.
            while feed.held:
                quietly(functools.partial(self.give_back, feed.held.popleft()))
            self.servers.halt.set()
            quietly(*(pool.drain for pool in self.servers.pools.values()))
            raise
        if self.stop.is_set():
            self.summary.status = "interrupted"

    def start(self, candidates: Sequence[Candidate]) -> bool:
        """The "start" event; for a single-server run, the batch and the connection
        first.  False: the pass ends here."""
        fixed = self.router.fixed_server()
        if fixed is not None and candidates:
            # The batch, then the connection (of the server chosen, issue 14: fallbacks), before
            # claiming: held back by limits, refused or unreachable, every message stays as it was.
            fixed = self.fallbacks.choose(fixed)
            conn = self.servers.connection(fixed)
            gate = self.servers.gates[fixed.name]
            if (
                isinstance(gate, LedgerGate)
                and self.servers.prepare(fixed)
                and gate.grant is not None
            ):
                self.delivery.total = min(self.delivery.total, gate.grant.max_messages)
            self.delivery.emit(ProgressEvent("start", total=self.delivery.total))
            ahead = min(len(candidates), self.delivery.total)
            if not self.spread.open_first(fixed, conn, gate, ahead):
                if self.stop.is_set():
                    self.summary.status = "interrupted"
                return False
        else:
            self.delivery.emit(ProgressEvent("start", total=self.delivery.total))
        return True

    def loop(self, feed: _Feed) -> None:
        """Send the held messages in order, holding the next ones, until the pass
        ends; then the pools finish what they have."""
        held = feed.held
        feed.pull()
        while held:
            if len(held) < 2:
                feed.pull()
            if self.cut or self.stop.is_set():
                break
            current = held.popleft()  # if it fails, deliver() put it back already
            self.send(current, then=held[0] if held else None, meanwhile=feed.meanwhile)
            if feed.failures:
                raise feed.failures[0]
        self.give_back_held(held)  # the pass was cut short (stop, deadline): back to the queue
        for pool in self.servers.pools.values():
            with self.servers.waiting():
                pool.drain()  # the messages in flight finish (or fail) first
        self.servers.check_pools()

    def give_back_held(self, held: collections.deque[Job]) -> None:
        while held:
            self.give_back(held.popleft())

    def _jobs(self, candidates: Sequence[Candidate]) -> Iterator[Job]:
        """The due messages, oldest first, as jobs for one-connection servers (others
        go to their connections' threads in ``one``), until the pass must end."""
        for index, candidate in enumerate(candidates):
            self.router.pos = index
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
            self.servers.check_pools()
            if self.servers.all_servers_done():
                return  # a held message was admitted: it goes (or meets its error)
            job = self.one(candidate)
            if job is not None:
                yield job

    def execute(
        self, worker: Worker, job: Job, then: Job | None, meanwhile: Callable[[], None]
    ) -> bool:
        """One message (``then`` behind it) on a worker's connection, in its thread.
        False: the connection cannot be opened, another one takes the message."""
        pool, conn = worker.pool, worker.conn
        try:
            with self.servers.network():
                conn.ensure_open()
        except Stopping:
            pool.give_back(job, conn)
            return True
        except (SmtpAuthError, SmtpPolicyError) as exc:
            pool.give_back(job, conn)
            raise stop_for(exc) from None
        except ServerUnusable as exc:
            self.servers.note_unusable(conn, str(exc))
            return False
        except BaseException:
            pool.give_back(job, conn)
            raise
        self.delivery.deliver(
            job.claim, job.message, pool.entry, conn, pool.gate, then=then, meanwhile=meanwhile
        )
        return True

    def one(self, candidate: Candidate) -> Job | None:
        """Claim, read, route and admit ``candidate``: a job for a one-connection
        server (the caller sends it), None when it was dealt with here (failed,
        put back, or handed to a server's connections)."""
        if self.servers.over or self.servers.unreachable:
            # Some server is done for this pass: leave its messages untouched.
            server = self.router.route(candidate)
            if server is not None and self.servers.server_done(server):
                return None
        claim = self.spool.claim(candidate)
        if claim is None:
            return None  # gone meanwhile (a producer took it back)
        try:
            message = self.read(claim)
        except BaseException:  # a full disk on rewrite_head...: unchanged, back to the queue
            quietly(functools.partial(self.spool.requeue, claim))
            raise
        if message is None:
            return None
        return self.admit(claim, message)

    def read(self, claim: Claim) -> Message | None:
        """``claim``'s message, its head completed; None: it went to failed/."""
        if claim.file_type != "file":
            self.delivery.fail_file(claim, f"{claim.file_type} named *.eml: not followed, not sent")
            return None
        if claim.size == 0:
            self.delivery.fail_file(claim, "the file is empty (0 bytes)")
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
            self.delivery.fail_file(claim, str(exc))
            return None
        return message

    def admit(self, claim: Claim, message: Message) -> Job | None:
        """Route ``message`` and ask its server's gate: a job for a one-connection
        server, None when it was put back or handed to a server's connections."""
        try:  # the server, or the fallback taking its messages (may connect: issue 14)
            entry = self.fallbacks.choose(self.router.server_for(message))
            conn = self.servers.connection(entry)
        except BaseException:  # a configuration error, Stop (no server usable)...
            quietly(functools.partial(self.spool.requeue, claim))
            raise
        if self.servers.server_done(entry.name):
            self.spool.requeue(claim)
            return None
        gate = self.servers.gates[entry.name]
        try:
            admitted = gate.admit(message.size)
        except Stopping:
            self.spool.requeue(claim)
            return None
        except BaseException:
            quietly(functools.partial(self.spool.requeue, claim))
            raise
        if not admitted:
            self.spool.requeue(claim)
            self.servers.over.add(entry.name)
            if self.summary.status == "ok":
                self.summary.status = "limit"
            return None
        self.totals.admitted += 1
        conn.prepare(message)  # its wire form, while the connection waits (read ahead)
        job = Job(claim, message, entry, conn, gate)
        if entry.connections > 1 and self.spread.take(job):
            return None  # on another connection of its server
        return job

    def send(self, job: Job, then: Job | None, meanwhile: Callable[[], None] | None = None) -> None:
        """Deliver ``job`` on its (single) connection; ``then``, the message after it,
        has its commands written behind ``job``'s data when it goes there too."""
        try:
            opened = self.servers.open(job.conn, job.claim)
        except BaseException:
            release_admission(job.gate, job.message.size)
            raise
        if not opened:
            release_admission(job.gate, job.message.size)
            job.conn.unchain(job.message)
            return
        chain = then if then is not None and then.conn is job.conn else None
        pace = self.spread.pace(job.entry)
        if pace is not None and meanwhile is not None and pace.due():  # is the server slow?
            meanwhile = pace.watch(job.conn, meanwhile)
        self.delivery.deliver(
            job.claim, job.message, job.entry, job.conn, job.gate, then=chain, meanwhile=meanwhile
        )

    def give_back(self, job: Job) -> None:
        """A held message that will not go in this pass: back to the queue, unchanged."""
        release_admission(job.gate, job.message.size)
        self.spool.requeue(job.claim)
        job.conn.unchain(job.message)

    def close(self) -> None:
        self.servers.close()

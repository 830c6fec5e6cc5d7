"""The connections of a server with ``connections`` > 1: ``Pool`` hands the
dispatcher's messages (``Job``) in order to its connections, each driven by a
thread (``Worker``) with at most one message in flight.  What a pool calls
back, the pass that feeds it, is the protocol ``Dispatcher`` (dispatch.Pass
satisfies it), so this module does not import the pass.
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from carerix_smtp.send.gates import BatchGate, release_admission

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.send.connection import Connection
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.message import Message
    from carerix_smtp.spool.spool import Spool


class PoolServers(Protocol):
    """What a pool uses of the pass's servers (servers.Servers)."""

    @property
    def halt(self) -> threading.Event: ...

    def new_connection(self, entry: ServerEntry) -> Connection: ...


class Dispatcher(Protocol):
    """What a pool and its workers call back: the pass that feeds them (dispatch.Pass)."""

    @property
    def spool(self) -> Spool: ...

    @property
    def servers(self) -> PoolServers: ...

    def execute(self, worker: Worker, job: Job) -> None: ...


@dataclass
class Job:
    """A claimed, read and admitted message, waiting for its connection."""

    claim: Claim
    message: Message
    entry: ServerEntry
    conn: Connection
    gate: BatchGate


class Worker:
    """One connection of a server and the thread that drives it, one message at a time."""

    def __init__(self, pool: Pool, conn: Connection, index: int) -> None:
        self.pool = pool
        self.conn = conn
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
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
                pool.run.servers.halt.set()
            finally:
                with pool.cond:
                    pool.busy -= 1
                    if self.conn.unusable is None:
                        pool.idle.append(self)
                    pool.cond.notify_all()


class Pool:
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

    def __init__(
        self, run: Dispatcher, entry: ServerEntry, first: Connection, gate: BatchGate
    ) -> None:
        self.run = run
        self.entry = entry
        self.gate = gate
        self.size = max(1, entry.connections)
        self.cond = threading.Condition()
        self.workers: list[Worker] = []
        self.idle: list[Worker] = []
        self.pending: collections.deque[Job] = collections.deque()  # no connection yet
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

    def _spawn(self) -> Worker:
        conn = self._first if not self.workers else self.run.servers.new_connection(self.entry)
        worker = Worker(self, conn, len(self.workers))
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

    def add(self, job: Job) -> None:
        with self.cond:
            self.pending.append(job)

    def dispatch(self) -> None:
        """Hand the pending jobs to idle connections, opening another one when all are
        busy (up to ``size``), else wait for one."""
        with self.cond:
            self._pump(until_idle=False)

    def orphan(self, job: Job) -> None:
        """From a worker whose connection dropped out: another one takes ``job``."""
        with self.cond:
            self.pending.appendleft(job)
            self.cond.notify_all()

    def give_back(self, job: Job) -> None:
        """``job`` will not be sent in this pass: back to the queue, unchanged."""
        release_admission(self.gate, job.message.size)
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

"""The other connections of a server with ``connections`` > 1: ``Pool`` hands the
dispatcher's messages (``Job``) in order to its connections, each driven by a
thread (``Worker``); the first connection is the dispatcher's own (spread.py
says which messages go where).  A worker holds the message on the wire and the next one, so
that, as on a single connection, the next message's commands go out behind the
current one's data (RFC 2920) -- but only one message's data is ever in flight
on a connection.  What a pool calls back, the pass that feeds it, is the protocol
``Dispatcher`` (dispatch.Pass satisfies it), so this module does not import the pass.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from carerix_smtp.send.connection import ServerUnusable
from carerix_smtp.send.gates import BatchGate, release_admission
from carerix_smtp.send.stopping import Stopping

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.send.connection import Connection
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.message import Message
    from carerix_smtp.spool.spool import Spool

# Messages a connection holds that have not had their data sent: the one on the
# wire and the next one, whose commands ride behind the current data.  Once the
# current data is out (its reply awaited) one more may come, so that the message
# after the next is ready (read, admitted) when the next one's data goes.
AHEAD = 2

# A connection given one message waits this long for the next one before it starts,
# so that the next one's commands can ride behind the data (the dispatcher reads and
# admits a message in well under a millisecond; with a fast server a connection
# would otherwise start each message alone and pay two round trips for it).
PAIR_WAIT = 0.005

# While a pool's threads run, the interpreter hands the GIL on every 1 ms instead of
# every 5 ms: a connection's thread whose reply has arrived would otherwise wait up to
# 5 ms behind another thread's CPU work (reading, parsing, journaling) per message.
SWITCH_INTERVAL = 0.001
_switching = {"pools": 0, "before": 0.0}  # pools whose threads run; the interval before


def _threads_start() -> None:
    if _switching["pools"] == 0:
        _switching["before"] = sys.getswitchinterval()
        sys.setswitchinterval(min(SWITCH_INTERVAL, _switching["before"]))
    _switching["pools"] += 1


def _threads_end() -> None:
    _switching["pools"] -= 1
    if _switching["pools"] == 0:
        sys.setswitchinterval(_switching["before"])


class PoolServers(Protocol):
    """What a pool uses of the pass's servers (servers.Servers)."""

    @property
    def halt(self) -> threading.Event: ...

    def new_connection(self, entry: ServerEntry) -> Connection: ...

    def network(self) -> contextlib.AbstractContextManager[object]: ...

    def note_unusable(self, conn: Connection, reason: str) -> None: ...


class Dispatcher(Protocol):
    """What a pool and its workers call back: the pass that feeds them (dispatch.Pass)."""

    @property
    def spool(self) -> Spool: ...

    @property
    def servers(self) -> PoolServers: ...

    def execute(
        self, worker: Worker, job: Job, then: Job | None, meanwhile: Callable[[], None]
    ) -> bool:
        """Send ``job`` on ``worker``'s connection (``then`` behind it); False: this
        connection cannot be opened, another one takes ``job``."""


@dataclass
class Job:
    """A claimed, read and admitted message, waiting for its connection."""

    claim: Claim
    message: Message
    entry: ServerEntry
    conn: Connection
    gate: BatchGate


class Worker:
    """One connection of a server and the thread that drives it: ``held`` are its
    messages in order, the first one on the wire (under the pool's lock)."""

    def __init__(self, pool: Pool, conn: Connection, index: int, *, warm: bool = False) -> None:
        self.pool = pool
        self.conn = conn
        self.warm = warm  # open the connection at once, before any message comes
        self.held: collections.deque[Job] = collections.deque()
        self.finishing = False  # the first held message has its data out
        self.ending = False
        self.wake = threading.Condition(pool.lock)  # this thread waits here only
        self.thread = threading.Thread(
            target=self.loop, name=f"cxsmtp-{pool.entry.name}-{index}", daemon=True
        )

    @property
    def load(self) -> int:
        """Held messages whose data has not gone out yet."""
        return len(self.held) - self.finishing

    def loop(self) -> None:
        pool = self.pool
        if self.warm:
            self.open_ahead()
        while True:
            with self.wake:
                while not self.held and not self.ending and not self.steal():
                    self.wake.wait()
                if not self.held:
                    break
                if len(self.held) == 1 and not (self.ending or pool.closing):
                    self.wake.wait(PAIR_WAIT)  # notified when the next one comes
                job = self.held[0]
                then = self.held[1] if len(self.held) > 1 else None
            orphaned = False
            try:
                orphaned = not pool.run.execute(self, job, then, self.data_out)
            except BaseException as exc:
                pool.fail(exc)
            finally:
                self.done(orphaned=orphaned)
        # The end of the pass: QUIT here, each connection in its own thread, so that
        # the QUITs' round trips overlap (Servers.close then finds them closed).
        self.conn.close()

    def open_ahead(self) -> None:
        """Open the connection before its first message (Pool.open_ahead).  One that
        cannot be opened now is unusable, said as when a message meets it (the
        others go on); an error that stops the run (authentication refused...)
        goes to the dispatching thread."""
        servers = self.pool.run.servers
        try:
            with servers.network():
                self.conn.ensure_open()
        except Stopping:
            pass
        except ServerUnusable as exc:
            servers.note_unusable(self.conn, str(exc))
        except BaseException as exc:
            self.pool.fail(exc)

    def steal(self) -> bool:
        """Idle (with the lock held): take a message another connection holds beyond
        the one on the wire and the next one (neither written nor chained yet), so
        that at the end of a pass no connection is left with a queue while another
        has nothing."""
        if self.conn.unusable is not None:
            return False
        for other in self.pool.workers:
            if other is not self and len(other.held) > AHEAD:
                self.held.append(other.held.pop())
                return True
        return False

    def data_out(self) -> None:
        """The current message's data is out, its reply awaited: the dispatcher may
        hand this connection one more message meanwhile (called in this thread)."""
        with self.pool.lock:
            self.finishing = True
            self.pool.ready.notify()

    def done(self, *, orphaned: bool) -> None:
        """The first held message is dealt with (``orphaned``: it goes to another
        connection).  When this connection dropped out, the messages it held go to
        the others, in order, ahead of the pending ones."""
        pool = self.pool
        with pool.lock:
            first = self.held.popleft()
            self.finishing = False
            pool.busy -= 1
            if self.conn.unusable is not None:
                while self.held:
                    job = self.held.pop()  # the last first: appendleft keeps the order
                    pool.busy -= 1
                    self.conn.unchain(job.message)
                    pool.pending.appendleft(job)
            if orphaned:
                pool.pending.appendleft(first)
            pool.ready.notify()


class Pool:
    """The connections of one server with ``connections`` > 1 (ServerEntry) beside
    the dispatcher's own (``first``): a worker thread each, each with its own
    SmtpSession and at most one message's data in flight, so that with the first
    one a crash can leave at most ``connections`` possible duplicates (SPEC §3).

    The dispatching thread keeps the order: it claims, reads and admits messages
    oldest first and offers some to the first connection with room (up to ``AHEAD``
    messages not yet sent each), or waits for room (``dispatch``); another
    connection is opened only when every open one is full.  A connection that cannot be
    (re)opened drops out and its messages go to another one; the others go on.
    The server is done when every connection it may have, the first one too, has
    dropped out; messages left without a connection go back to the queue.

    One lock; the dispatcher waits on ``ready``, each worker on its own condition,
    so that handing over a message wakes one thread, not all of them.
    """

    def __init__(
        self,
        run: Dispatcher,
        entry: ServerEntry,
        first: Connection,
        gate: BatchGate,
        *,
        adopt: bool = False,
    ) -> None:
        self.run = run
        self.entry = entry
        self.gate = gate
        # ``adopt``: the first connection is this pool's first worker's (a server known
        # to be slow from its greeting on); else the dispatcher drives it (spread.py).
        self.adopt = adopt
        self.size = max(1, entry.connections - (not adopt))
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # the dispatcher waits here
        self.workers: list[Worker] = []
        self.pending: collections.deque[Job] = collections.deque()  # no connection yet
        self.busy = 0  # messages held by workers
        self.failure: BaseException | None = None
        self.closing = False  # the dispatcher hands out no more messages
        self._first = first
        self._threads = False  # this pool's threads run (see SWITCH_INTERVAL)

    def exhausted(self) -> bool:
        with self.lock:
            return self._exhausted()

    def _exhausted(self) -> bool:
        return (self.adopt or self._first.unusable is not None) and self._workers_gone()

    def _workers_gone(self) -> bool:
        return len(self.workers) >= self.size and all(
            w.conn.unusable is not None for w in self.workers
        )

    def fail(self, exc: BaseException) -> None:
        """A worker's thread failed with ``exc``: the first such error goes to the
        dispatching thread (``failure``), and nothing new starts."""
        with self.lock:
            if self.failure is None:
                self.failure = exc
        self.run.servers.halt.set()

    def _spawn(self, *, warm: bool = False) -> Worker:
        if not self._threads:
            self._threads = True
            _threads_start()
        if self.adopt and not self.workers:
            conn, warm = self._first, False  # opened by the dispatcher
        else:
            conn = self.run.servers.new_connection(self.entry)
        worker = Worker(self, conn, len(self.workers), warm=warm)
        self.workers.append(worker)
        worker.thread.start()
        return worker

    def open_ahead(self, count: int) -> None:
        """Start ``count`` connections now (at most ``size``), each opened by its own
        thread at once, not when its first message comes: the first connection of a
        server slow to greet is still opening (spread.py), and every message will
        go to this pool."""
        with self.lock:
            while len(self.workers) < min(count, self.size):
                self._spawn(warm=True)

    def _choose(self) -> Worker | None:
        """The connection for the next message: the first one with room, else a new
        one; None: all are full.  A new connection is opened only when every
        open one is full: a server that answers fast keeps one or two connections
        busy, and each extra thread would only cost a hand-over per message."""
        for worker in self.workers:
            if worker.conn.unusable is None and worker.load < AHEAD:
                return worker
        if len(self.workers) < self.size:
            return self._spawn()
        return None

    def _hand_out(self) -> None:
        """Hand pending jobs to connections with room (call with the lock held).  When
        no connection is left, they go back to the queue."""
        while self.pending and self.failure is None:
            worker = self._choose()
            if worker is None:
                break
            self.busy += 1
            worker.held.append(self.pending.popleft())
            worker.wake.notify()
        if self.pending and (self.failure is not None or self._workers_gone()):
            while self.pending:
                self.give_back(self.pending.popleft())

    def _pump(self, *, until_idle: bool) -> None:
        """``_hand_out``, and wait until no job is pending (``until_idle``: and
        none is held)."""
        while True:
            self._hand_out()
            if not self.pending and not (until_idle and self.busy):
                return
            self.ready.wait()

    def offer(self, job: Job) -> bool:
        """Hand ``job`` to a connection with room (opening another one when all are
        full, up to ``size``) without waiting; False: none has room, or the pool
        failed."""
        with self.lock:
            self._hand_out()
            if self.pending or self.failure is not None:
                return False
            worker = self._choose()
            if worker is None:
                return False
            self.busy += 1
            worker.held.append(job)
            worker.wake.notify()
            return True

    def add(self, job: Job) -> None:
        with self.lock:
            self.pending.append(job)

    def dispatch(self) -> None:
        """Hand the pending jobs to connections with room, opening another one when
        all are busy (up to ``size``), else wait for room."""
        with self.lock:
            self._pump(until_idle=False)

    def give_back(self, job: Job, conn: Connection | None = None) -> None:
        """``job`` will not be sent in this pass: back to the queue, unchanged (its
        commands, written on ``conn`` behind another message's data, are dropped)."""
        if conn is not None:
            conn.unchain(job.message)
        release_admission(self.gate, job.message.size)
        self.run.spool.requeue(job.claim)

    def drain(self) -> None:
        """Wait until no message is pending or held (none comes after this)."""
        with self.lock:
            self.closing = True
            for worker in self.workers:
                worker.wake.notify()
            self._pump(until_idle=True)

    def abort(self) -> None:
        """Cut every transaction on the wire (the caller set ``run.aborting``) and wait
        for the threads to put their messages back."""
        with self.lock:
            while self.pending:
                self.give_back(self.pending.popleft())
        for worker in list(self.workers):
            session = worker.conn.session
            if session is not None:
                session.interrupt()
        self.drain()

    def shutdown(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.ending = True
                worker.wake.notify()
        for worker in self.workers:
            worker.thread.join()
        if self._threads:
            self._threads = False
            _threads_end()

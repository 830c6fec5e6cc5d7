"""Which connection of a server with ``connections`` > 1 takes a message (``Spread``),
and how long that server keeps its first connection waiting (``Pace``).

The dispatching thread drives a server's first connection itself, pipelined, as it
does for a one-connection server: against a server that answers at once the work
per message is CPU under one GIL, and handing a message to another thread costs
more than the overlap gains.  Messages go to the other connections (the server's
``Pool``, a thread each) only while the first one waits on the server -- its data
out, the reply awaited -- longer than it takes to prepare a message, and only as
many as those connections have room for; the message after them stays on the
first connection.  So a fast server keeps one connection, a slow one all of them.
A server already slow to greet gets the pool's design from the start: every
message handed to its connections' threads, the first connection among them, and
the other connections opened while the first one still does EHLO (and TLS, AUTH).
"""

from __future__ import annotations

import functools
import logging
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from carerix_smtp.send.pool import Dispatcher, Job, Pool

if TYPE_CHECKING:
    from carerix_smtp.config.file import ServerEntry
    from carerix_smtp.send.connection import Connection
    from carerix_smtp.send.gates import BatchGate
    from carerix_smtp.send.servers import Servers

log = logging.getLogger(__name__)

# The first connection waited at least this long for its greeting (the connect
# and the greeting, two round trips: 10 ms or more each, a server far away): all
# its connections are the pool's from the first message on, and the others open at
# once.  (As much waiting as OPEN_WAIT: a busy machine's hiccup rarely reaches it.)
GREETING_WAIT = 0.020
# Opening the first connection (the greeting and EHLO, two round trips or more;
# TLS, AUTH) waited at least this long on the server: all its connections are the
# pool's from the first message on (opened as messages come).
OPEN_WAIT = 0.020
# The weight of a new sample in the running averages.  The server counts as slow
# when about six replies in a row came late (``LATE``: a hiccup of a fast server,
# another process on the CPU, is not enough) and the first connection waited more
# than ``WAIT`` per message on average.
WEIGHT = 0.25
LATE = 0.8
WAIT = 0.001
# Waits longer than this count as this long (the reply is read with its own timeout).
WAIT_CAP = 0.5
# A sample costs a system call and a few calls, as much as 1-2 % of a small
# message's work: once a server has answered in time for WARM samples and its late
# average has decayed below CALM (16 in-time replies after a late one), only every
# STRIDE-th message is sampled.  A late sample makes every message sampled again,
# so a server that turns slow is seen at most STRIDE - 1 messages later.
WARM = 16
CALM = 0.01
STRIDE = 8


class Pace:
    """How a server keeps its first connection waiting: running averages of whether,
    once the data is out and the dispatching thread has read ahead meanwhile, the
    reply had not arrived yet (1) or had (0), and of how long it then took to come.
    Asked of the socket, not of a clock around the whole message: that would count
    the GIL held by the other connections' threads as the server's time, and keep a
    fast server spread once it was."""

    __slots__ = ("_cpu0", "_skipped", "_wall0", "late", "samples", "wait")

    def __init__(self) -> None:
        self.late = self.wait = 0.0
        self.samples = self._skipped = 0
        self._wall0 = self._cpu0 = 0.0

    def begin(self) -> None:
        """Before opening the first connection (the first sample: ``opened``)."""
        self._wall0, self._cpu0 = time.perf_counter(), time.thread_time()

    def waited(self) -> float:
        """Seconds the first connection has waited on the server since ``begin``."""
        return time.perf_counter() - self._wall0 - (time.thread_time() - self._cpu0)

    def opened(self) -> None:
        wait = self.waited()
        self.note(wait / 2 if wait > OPEN_WAIT else 0.0)

    def note(self, wait: float) -> None:
        late = float(wait > 0)
        if self.samples:
            self.late += WEIGHT * (late - self.late)
            self.wait += WEIGHT * (wait - self.wait)
        else:
            self.late, self.wait = late, wait
        self.samples += 1

    def due(self) -> bool:
        """Whether the next message's reply is sampled (``watch``): every one while
        the server is new or was late lately, else every STRIDE-th."""
        if self.samples < WARM or self.late > CALM:
            return True
        self._skipped += 1
        if self._skipped < STRIDE:
            return False
        self._skipped = 0
        return True

    def watch(self, conn: Connection, meanwhile: Callable[[], None]) -> Callable[[], None]:
        """``meanwhile``, then a sample: how long ``conn``'s reply is still awaited."""

        def watched() -> None:
            meanwhile()
            self.note(awaited(conn))

        return watched

    @property
    def slow(self) -> bool:
        """The first connection's replies come after the dispatching thread has
        nothing left to do: other connections would overlap those waits."""
        return self.late > LATE and self.wait > WAIT


def awaited(conn: Connection) -> float:
    """Seconds until a reply arrives on ``conn`` (0: bytes from the server wait there
    now: read already, in the TLS layer or in the socket), waiting at most WAIT_CAP.
    The reply awaited now: the data's, as the commands' were read before the data."""
    if answered(conn):
        return 0.0
    session = conn.session
    start = time.perf_counter()
    if session is not None and session.channel.sock is not None:
        try:
            select.select([session.channel.sock], [], [], WAIT_CAP)
        except (OSError, ValueError):
            return 0.0
    return time.perf_counter() - start


def answered(conn: Connection) -> bool:
    """Bytes from the server wait on ``conn``: read already, in the TLS layer or in
    the socket (or it has no socket: nothing to wait for)."""
    session = conn.session
    sock = session.channel.sock if session is not None else None
    if sock is None or session is None or session.channel.rbuf:
        return True
    pending = getattr(sock, "pending", None)  # ssl.SSLSocket: decrypted, unread
    if pending is not None and pending():
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Spread:
    """The pools and paces of one pass's servers with ``connections`` > 1."""

    def __init__(self, run: Dispatcher, servers: Servers) -> None:
        self.run = run
        self.servers = servers
        self.paces: dict[str, Pace] = {}
        # Servers slow from their greeting on: all their connections are the pool's,
        # the first one too, and every message is handed to them.
        self.pooled: set[str] = set()

    def pace(self, entry: ServerEntry) -> Pace | None:
        """``entry``'s pace (None for a one-connection server: nothing to decide)."""
        if entry.connections <= 1:
            return None
        pace = self.paces.get(entry.name)
        if pace is None:
            pace = self.paces[entry.name] = Pace()
        return pace

    def open_first(self, entry: ServerEntry, conn: Connection, gate: BatchGate, ahead: int) -> bool:
        """Open ``entry``'s first connection before any message (``ahead``: how many
        there are to send), timed by its pace when it has more than one (``greeted``,
        ``opened``).  False: it cannot be, and no connection opened ahead can take
        the messages either (the pass ends)."""
        pace = self.pace(entry)
        if pace is not None:  # the round trips of the greeting and EHLO: a first sample
            pace.begin()
            conn.on_greeting = functools.partial(self.greeted, entry, conn, gate, pace, ahead)
        try:
            opened = entry.name not in self.servers.over and self.servers.open(conn)
        finally:
            conn.on_greeting = None
        if opened:
            if pace is not None:
                self.opened(entry, pace)
            return True
        # Connections opened ahead (``greeted``) take the messages while not all failed.
        pool = self.servers.pools.get(entry.name)
        stopped = entry.name in self.servers.over or self.servers.stop.is_set()
        return pool is not None and not stopped and not pool.exhausted()

    def greeted(
        self, entry: ServerEntry, conn: Connection, gate: BatchGate, pace: Pace, ahead: int
    ) -> None:
        """``entry``'s first connection, opened before any message, has its greeting
        (``pace`` times it; called from inside its open, before EHLO).  A server
        slow to greet has its connections all in its pool, and up to ``ahead`` - 1
        others (the messages there are to send) open now, while this one goes on."""
        if pace.waited() > GREETING_WAIT:
            self.pooled.add(entry.name)
            self._pool(entry, conn, gate).open_ahead(ahead)

    def opened(self, entry: ServerEntry, pace: Pace) -> None:
        """``entry``'s first connection was opened before any message (``pace`` timed
        it): a slow server's connections all go to its pool."""
        pace.opened()
        if pace.slow:
            self.pooled.add(entry.name)

    def pool(self, job: Job) -> Pool:
        return self._pool(job.entry, job.conn, job.gate)

    def _pool(self, entry: ServerEntry, conn: Connection, gate: BatchGate) -> Pool:
        pool = self.servers.pools.get(entry.name)
        if pool is None:
            adopt = entry.name in self.pooled
            pool = Pool(self.run, entry, conn, gate, adopt=adopt)
            self.servers.pools[entry.name] = pool
            log.info(
                "server %s: %s; up to %d connections",
                entry.name,
                "slow to open a connection" if adopt else "its replies come late",
                entry.connections,
            )
        return pool

    def take(self, job: Job) -> bool:
        """True: ``job`` (of a server with ``connections`` > 1) went to another
        connection of its server; False: it stays on the first one (the caller
        sends it there, pipelined).

        It goes elsewhere, on a slow server, if another connection has room and
        the first one has no reply waiting: while the first connection waits for
        its reply (the dispatcher reads ahead meanwhile), and before its first
        message (the others open meanwhile).  And always when the first
        connection is unusable or the pool's (then this waits for room)."""
        if job.conn.unusable is None and job.entry.name not in self.pooled:
            pace = self.paces.get(job.entry.name)
            if pace is None or not pace.slow or answered(job.conn):
                return False  # (answered: the reply came, this message goes there next)
            return self.pool(job).offer(job)
        pool = self.pool(job)
        pool.add(job)
        with self.servers.waiting():
            pool.dispatch()
        self.servers.check_pools()
        return True

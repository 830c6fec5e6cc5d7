"""The servers of one pass (``Servers``): each one's connection and batch gate
(its ``Pool`` of connections when ``connections`` > 1), opening them, the
network phases a second signal may cut, and which servers are done.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from carerix_smtp.errors import Interrupted, SmtpAuthError, SmtpPolicyError
from carerix_smtp.limits.ledger import LedgerStore
from carerix_smtp.limits.rule import Limits
from carerix_smtp.send.connection import (
    Connection,
    PasswordSource,
    ServerUnusable,
    SessionFactory,
)
from carerix_smtp.send.gates import BatchGate, CountGate, GateFactory, LedgerGate
from carerix_smtp.send.stopping import (
    Stopping,
    abort_requested,
    close_all,
    in_network,
    stop_for,
)

if TYPE_CHECKING:
    from carerix_smtp.config.file import Config, ServerEntry
    from carerix_smtp.send.pool import Pool
    from carerix_smtp.send.report import RunSummary, SendOptions, Totals
    from carerix_smtp.send.routing import Router
    from carerix_smtp.send.signing import Signer
    from carerix_smtp.spool.claims import Claim
    from carerix_smtp.spool.spool import Spool

log = logging.getLogger(__name__)


class _Network:
    """``Servers.network()`` (a class: a few times per message, cheaper than a generator)."""

    __slots__ = ("mine", "servers")

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.mine = threading.get_ident() == servers.dispatcher  # not a connection's thread

    def __enter__(self) -> None:
        if self.mine:
            in_network.set()
        if self.servers.stop.is_set() or self.servers.halt.is_set():
            if self.mine:
                in_network.clear()
            raise Stopping

    def __exit__(self, *exc: object) -> None:
        if self.mine:
            in_network.clear()


class Servers:
    """The connections, gates and pools of one pass, by server name."""

    def __init__(
        self,
        spool: Spool,
        config: Config,
        options: SendOptions,
        router: Router,
        *,
        gate_factory: GateFactory | None,
        ledger: LedgerStore | None,
        session_factory: SessionFactory,
        password_source: PasswordSource,
        sleep: Callable[[float], None],
        stop: threading.Event,
        summary: RunSummary,
        totals: Totals,
        lock: threading.RLock,
    ) -> None:
        self.spool = spool
        self.config = config
        self.options = options
        self.router = router
        self.gate_factory = gate_factory
        self.ledger = ledger
        self.session_factory = session_factory
        self.password_source = password_source
        self.sleep = sleep
        self.stop = stop
        self.summary = summary
        self.totals = totals
        self.lock = lock  # the summary and counters, from any thread
        self.connections: dict[str, Connection] = {}
        self.gates: dict[str, BatchGate] = {}
        self.over: set[str] = set()  # servers whose batch is over for this pass
        self.unreachable = False
        self._noted: set[Connection] = set()  # connections found unusable: told once
        # Servers with ``connections`` > 1: a worker thread per connection.
        self.pools: dict[str, Pool] = {}
        self.halt = threading.Event()  # a connection's thread failed: start nothing new
        self.aborting = threading.Event()  # stopped mid-transaction (second signal)
        self.dispatcher = threading.get_ident()  # the dispatching thread
        self.finishing = 0  # 1 while reading ahead during a message's final reply
        self.signer = _signer(config)  # DKIM keys, each loaded once per run

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
                signer=self.signer,
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
            signer=self.signer,
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
                lambda count: self.router.queued_sizes(entry.name, count),
                self.pause,
                lambda: self.finishing,
            )
        return CountGate()

    def pause(self, seconds: float) -> None:
        """Sleep (the injected ``sleep``); raise Stopping when the run is being stopped."""
        if seconds > 0 and not self.stop.is_set():
            self.sleep(seconds)
        if self.stop.is_set():
            raise Stopping

    def open(self, conn: Connection, claim: Claim | None = None) -> bool:
        """Open ``conn``; False (and an error noted) if the server is unusable.

        A claim held meanwhile goes back unchanged when the run must stop.
        """
        try:
            with self.network():
                conn.ensure_open()
        except Stopping:
            if claim is not None:
                self.spool.requeue(claim)
            return False
        except (SmtpAuthError, SmtpPolicyError) as exc:
            if claim is not None:
                self.spool.requeue(claim)
            raise stop_for(exc) from None
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
        interrupt the wait (then they are cut, see Pass.run()).  Marked first, checked
        second, like ``network``."""
        in_network.set()
        try:
            if abort_requested:
                raise Interrupted(
                    f"{abort_requested[0]} received twice: stopped in the middle of a message"
                )
            yield
        finally:
            in_network.clear()

    def note_unusable(self, conn: Connection, reason: str) -> None:
        """``conn`` cannot be used (``reason``): said once per connection, whichever
        thread finds it first (opening ahead, or its first message)."""
        with self.lock:
            if conn in self._noted:
                return
            self._noted.add(conn)
        pool = self.pools.get(conn.entry.name)
        if pool is not None and not pool.exhausted():
            # One of several connections: the others go on (a server that limits
            # connections per client refuses the extra ones, for instance).
            log.warning("%s; the other connection(s) go on", reason)
            return
        with self.lock:
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
        return all(self.server_done(name) for name in self.router.possible_servers())

    def prepare(self, entry: ServerEntry) -> bool:
        """Open ``entry``'s batch before connecting (LedgerGate); False: no batch now."""
        gate = self.gates[entry.name]
        if not isinstance(gate, LedgerGate):
            return True
        try:
            ready = gate.prepare()
        except Stopping:
            return False
        if not ready:
            self.over.add(entry.name)
        return ready

    # -- the pass --

    def check_pools(self) -> None:
        """Raise what a connection's thread failed with (Stop: auth refused...)."""
        for pool in self.pools.values():
            if pool.failure is not None:
                raise pool.failure

    def close(self) -> None:
        """End the threads, QUIT every connection, close every batch (each one even
        when another fails, e.g. the ledger on a full disk)."""
        steps: list[Callable[[], object]] = [pool.shutdown for pool in self.pools.values()]
        for pool in self.pools.values():
            first = self.connections.get(pool.entry.name)
            steps += [w.conn.close for w in pool.workers if w.conn is not first]
        steps += [conn.close for conn in self.connections.values()]
        steps += [gate.close for gate in self.gates.values()]
        close_all(*steps)


def _signer(config: Config) -> Signer | None:
    """A DKIM signer when any key is configured (send/signing.py)."""
    if not getattr(config, "dkim", None):
        return None
    from carerix_smtp.send.signing import Signer

    return Signer(config)

"""The persistent rate ledger: what was sent, through which server, and when.

One SQLite file, ``STATE_DIR/ledger.sqlite3``, shared by every run, every spool
and every process (WAL mode, a busy timeout, and every decision inside one
``BEGIN IMMEDIATE`` write transaction, so grants are serialised across
processes).  The policy itself is pure and lives in :mod:`carerix_smtp.limits.rule`;
this module feeds it the ledger's state and records what it decided.

How the sender uses it (one batch; the clock is injected, ``time.time`` in the CLI)::

    ledger = Ledger.in_state_dir(state_dir)            # Ledger(path, clock=time.time)
    limits = Limits.from_entry(entry, config.settings)
    result = ledger.acquire(entry.name, limits, queued_sizes, sleep=sleep)
    if isinstance(result, Wait):                        # "limit reached, next window at HH:MM"
        ...  # result.until (epoch seconds; math.inf = never), result.reason, result.kind
    else:
        with result as grant:                           # close() releases the unused rest
            for message in queue:
                if not grant.admit(message.size):       # count, bytes or deadline: batch over
                    break
                outcome = session.send(...)
                if data_accepted_or_unknown(outcome):   # a loss after the final "." counts too
                    grant.confirm(message.message_id, message.size)
                else:
                    grant.release(message.size)         # refused/deferred: slot back
        # grant.cut_by_deadline -> "the deadline cut the batch short"

``admit`` may sleep a little (the ledger's injected ``sleep``, never past the
deadline) when the batch of one window ago is still leaving the rolling window:
the new batch then follows it at its pace instead of waiting for all of it.
``open_batch`` answers at once (a :class:`BatchGrant` or a :class:`Wait`);
``acquire`` sleeps through waits of at most ``max_wait`` seconds (default: the
batch deadline, which covers "the previous batch is still leaving the rolling
window" and a cron run that starts a moment before the 5-minute mark); pass
``max_wait=math.inf`` for ``--loop``.  ``usage`` gives the numbers of
``cxsmtp status``, ``eta``/``plan`` the schedule of ``--dry-run``.

Reservations.  A grant is recorded as a reservation of N slots that counts
against the windows until it is closed, so several processes can never
together overshoot (the proof is in :func:`carerix_smtp.limits.rule.next_batch`).
A process that dies holding one must not block the others for ever, and a
reservation must never be released while its owner can still send, or the
proof breaks.  So the owner is recorded (host name, kernel boot id, pid
namespace, pid and the process start time, which defeats pid reuse):

* same machine and pid namespace: the owner is checked directly; a dead owner's
  reservation is released at once;
* otherwise (another container or machine sharing the state dir, or a system
  without ``/proc``) the reservation holds until its lease expires:
  ``deadline + lease_grace`` after opening, extended by every confirmed
  message.  The grant admits no message after its deadline, so what remains is
  at most one message in flight per connection, and ``lease_grace`` (data +
  command timeout, RFC 5321 §4.5.3.2) covers that.

When a reservation is released this way its unused slots are freed, but the
owner may have had messages accepted that it never recorded (killed between
the server's "250" and the ledger write, RFC 1047).  Those are counted as sent
at release time ("presumed" rows): at most ``connections`` of them when the
machine has not rebooted since, all the unconfirmed slots when it may have --
confirmations are committed without fsync (cheap; they survive a crash of the
process, not of the machine), while the reservation itself is fsynced.
Stamping them later than they can have happened only makes them count
longer.  A crash therefore costs at most a few slots of one window, never an
overshoot.  A run that exits normally with a grant still open closes it at exit.

Processes: one :class:`Ledger` per process (it may be shared by threads);
never carry one across ``fork``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

from carerix_smtp.errors import GrantExceededError, LedgerBusyError, StateError
from carerix_smtp.limits.rule import (
    BatchSize,
    Limits,
    Schedule,
    ServerQueue,
    TimingModel,
    WaitKind,
    WindowState,
    next_batch,
    plan_batch_size,
    simulate_schedule,
    window_allowance,
)

log = logging.getLogger(__name__)

__all__ = [
    "BatchGrant",
    "GrantExceededError",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "Owner",
    "SendRecord",
    "Usage",
    "Wait",
]

Clock = Callable[[], float]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    time REAL NOT NULL,              -- when the server accepted the data
    bytes INTEGER NOT NULL,
    message_id TEXT,                 -- NULL for presumed sends
    presumed INTEGER NOT NULL DEFAULT 0,
    reservation INTEGER
);
CREATE INDEX IF NOT EXISTS sends_by_server_time ON sends (server, time);
CREATE INDEX IF NOT EXISTS sends_by_time ON sends (time);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    opened_at REAL NOT NULL,         -- the batch start
    deadline_at REAL NOT NULL,
    expires_at REAL NOT NULL,        -- lease, for owners that cannot be checked
    slots INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    presumed INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL,      -- connections: messages that can be in flight at once
    owner_host TEXT NOT NULL,
    owner_boot TEXT NOT NULL,
    owner_pidns TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start TEXT NOT NULL,
    closed_at REAL                   -- NULL while live
);
CREATE INDEX IF NOT EXISTS reservations_by_server ON reservations (server, opened_at);
CREATE INDEX IF NOT EXISTS reservations_live ON reservations (closed_at);
CREATE TABLE IF NOT EXISTS timing (
    server TEXT PRIMARY KEY,
    weight REAL NOT NULL,
    sum_x REAL NOT NULL,
    sum_y REAL NOT NULL,
    sum_xx REAL NOT NULL,
    sum_xy REAL NOT NULL,
    setup REAL NOT NULL,
    batches INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


LedgerError = StateError  # the ledger's errors live in errors.py


# --- owners ---------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot) or None if it is gone or a zombie."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie cannot send
        return None
    return fields[19]  # field 22 of proc(5); fields[0] is field 3


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a reservation; empty strings where the platform cannot tell."""

    host: str
    boot: str
    pidns: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = ""
        return cls(
            host=socket.gethostname(),
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pidns=pidns,
            pid=pid,
            start=_process_start(pid) or "",
        )


class _OwnerState(Enum):
    ALIVE = "alive"  # keep the reservation
    GONE = "gone"  # dead, machine not rebooted: presume messages in flight
    GONE_UNSURE = "gone-unsure"  # dead, may have lost unsynced rows: presume all
    UNKNOWN = "unknown"  # cannot check: keep until the lease expires


def _owner_state(owner: Owner, me: Owner) -> _OwnerState:
    if owner.boot and me.boot:
        if owner.boot != me.boot:
            # Same host name, other boot id: the machine rebooted since.
            return _OwnerState.GONE_UNSURE if owner.host == me.host else _OwnerState.UNKNOWN
        if not owner.pidns or owner.pidns != me.pidns or not owner.start:
            return _OwnerState.UNKNOWN
        start = _process_start(owner.pid)
        return _OwnerState.ALIVE if start == owner.start else _OwnerState.GONE
    if owner.host == me.host and not owner.boot and not me.boot:
        # No /proc: a pid that is gone is proof; a pid that exists may be reused.
        return _OwnerState.UNKNOWN if _pid_exists(owner.pid) else _OwnerState.GONE_UNSURE
    return _OwnerState.UNKNOWN


# --- results ----------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """No batch now.  ``until``: epoch seconds when one may start (``math.inf``: never)."""

    server: str
    until: float
    kind: WaitKind
    reason: str  # e.g. "rate 1200 per 1 h reached"
    batch_size: int  # messages the batch may hold then (0 when unknown)


@dataclass(frozen=True)
class SendRecord:
    server: str
    time: float
    bytes: int
    message_id: str | None
    presumed: bool
    reservation: int | None


@dataclass(frozen=True)
class Usage:
    """Status of one server.  "hour" is ``rate_window``, "day" ``send_limit_window``."""

    server: str
    at: float
    limits: Limits
    sent_hour: int
    bytes_hour: int
    sent_day: int  # this server
    bytes_day: int
    sent_day_all: int  # all servers (what email_send_limit counts)
    reserved: int  # unconfirmed slots of live batches on this server
    reserved_all: int
    window_allows: int  # messages the windows still allow right now (interval aside)
    last_batch_at: float | None
    next_batch_at: float  # when the next full batch may start (== at: now; inf: never)
    next_batch_size: int
    waiting_for: WaitKind | None
    reason: str
    seconds_per_message: float | None  # timing model (None before the first batch)
    seconds_per_megabyte: float | None


# --- the grant ----------------------------------------------------------------


class BatchGrant:
    """Permission to send one batch: at most ``max_messages`` / ``max_bytes`` by ``deadline_at``.

    Thread-safe, so parallel connections may share it.  ``admit(size)`` takes a
    slot if the message still fits (count, bytes, and -- after the first message
    -- the time left by the timing model); ``confirm`` records the send (call it
    when the data was accepted, and also when the connection was lost after the
    final "." -- possibly sent counts as sent); ``release`` gives an admitted
    message's slot back when it was not accepted.  ``close`` (or leaving the
    ``with`` block) releases the rest and updates the timing model.
    """

    def __init__(
        self,
        ledger: Ledger,
        reservation_id: int,
        server: str,
        limits: Limits,
        opened_at: float,
        max_messages: int,
        planned: BatchSize,
        timing: TimingModel,
        release: Sequence[float] = (),
    ) -> None:
        self.ledger = ledger
        self.reservation_id = reservation_id
        self.server = server
        self.limits = limits
        self.opened_at = opened_at
        self.max_messages = max_messages
        self.max_bytes = limits.batch_max_bytes
        self.deadline_at = opened_at + limits.batch_deadline
        self.planned = planned
        self.timing = timing
        # release[j]: message j may not go before this (limits.next_batch pacing)
        self.release_at = tuple(release) or (opened_at,) * max_messages
        self.sent = 0
        self.sent_bytes = 0
        self.cut_by_deadline = False
        self.stop_reason: str | None = None  # "count", "bytes", "deadline", "closed"
        self.closed = False
        self._claims: list[int] = []
        self._observations: list[tuple[int, float]] = []
        self._setup: float | None = None
        self._mark: float | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"<BatchGrant {self.server} #{self.reservation_id} {self.sent}/{self.max_messages}"
            f"{' closed' if self.closed else ''}>"
        )

    @property
    def remaining(self) -> int:
        """Slots neither confirmed nor admitted."""
        return max(0, self.max_messages - self.sent - len(self._claims))

    def time_left(self) -> float:
        return self.deadline_at - self.ledger.clock()

    def admit(self, size: int) -> bool:
        """Take a slot for a message of ``size`` bytes if it still fits in this batch.

        False means the batch is over (keep FIFO order: stop, the rest stays
        queued); :attr:`stop_reason` says why.  A message larger than the byte
        cap is admitted when it is the batch's first, and then alone.

        While the batch of one window ago is still leaving the rolling window,
        a slot may only be usable a little later: ``admit`` then sleeps (the
        ledger's injected ``sleep``) until it is, never past the deadline.
        """
        with self._lock:
            if self.closed:
                self.stop_reason = "closed"
                return False
            now = self.ledger.clock()
            used = self.sent + len(self._claims)
            if used >= self.max_messages:
                self.stop_reason = "count"
                return False
            if used > 0 and self.sent_bytes + sum(self._claims) + size > self.max_bytes:
                self.stop_reason = "bytes"
                return False
            start = max(now, self.release_at[min(used, len(self.release_at) - 1)])
            late = start >= self.deadline_at
            if not late and used > 0 and not self.timing.empty:
                late = start + self.timing.predict(size) > self.deadline_at
            if late:
                self.stop_reason = "deadline"
                self.cut_by_deadline = True
                return False
            self._claims.append(size)
            if self._mark is None:
                self._mark = start
                self._setup = start - self.opened_at
        if start > now:
            self.ledger.sleep(start - now)
        return True

    def release(self, size: int) -> None:
        """An admitted message was not accepted: its slot is free again."""
        with self._lock:
            self._unclaim(size)

    def confirm(self, message_id: str | None, size: int) -> float:
        """The server accepted the data: record the send, stamped now.  Returns the stamp."""
        with self._lock:
            if not self._unclaim(size) and self.sent + len(self._claims) >= self.max_messages:
                over = True
            else:
                over = False
            # Never stamped before the slot's release time (the proof in limits.next_batch).
            release = self.release_at[min(self.sent, len(self.release_at) - 1)]
            now = max(self.ledger.clock(), release, self.opened_at)
            self.ledger._record_send(self, now, message_id, size)
            self.sent += 1
            self.sent_bytes += size
            if self._mark is not None:
                self._observations.append((size, max(0.0, now - max(self._mark, release))))
            self._mark = now
        if over:
            raise GrantExceededError(
                f"server {self.server}: message {message_id} was sent beyond its batch of "
                f"{self.max_messages}; call admit() before sending (the send was recorded)"
            )
        return now

    def _unclaim(self, size: int) -> bool:
        if size in self._claims:
            self._claims.remove(size)
            return True
        if self._claims:
            self._claims.pop(0)
            return True
        return False

    def close(self) -> None:
        """Release the unused slots and fold this batch's timing into the model."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._claims.clear()
            observations = list(self._observations)
            setup = self._setup
        self.ledger._close_reservation(self, observations, setup)

    def __enter__(self) -> BatchGrant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- the ledger -----------------------------------------------------------------

_OPEN_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()


@atexit.register
def _close_open_ledgers() -> None:
    for ledger in list(_OPEN_LEDGERS):
        if ledger._pid == os.getpid():  # never from a forked child
            ledger.close()


@dataclass
class _Loaded:
    state: WindowState
    timing: TimingModel


class Ledger:
    """The SQLite ledger at ``path`` (created with its directory when missing, mode 0600).

    ``clock``: epoch seconds (``time.time`` in the CLI, a fake in tests);
    ``sleep``: used only by :meth:`BatchGrant.admit` to pace a batch (seconds).
    ``busy_timeout``: how long to wait for other processes' transactions.
    ``retention``: sends and batches are kept this long, or the largest window
    if that is longer (for ``status``), then pruned.
    ``owner``: who this process is (tests pass a fake one); ``durable``: fsync
    each new reservation (turn off only for benchmarks on throw-away files).
    """

    FILENAME = "ledger.sqlite3"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        busy_timeout: float = 30.0,
        retention: float = 2 * 86_400.0,
        owner: Owner | None = None,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.sleep = sleep
        self.busy_timeout = busy_timeout
        self.retention = retention
        self._owner = owner
        self._owner_pid = -1
        self._current_owner: Owner | None = None
        self._durable = durable
        self._synchronous = ""
        self._lock = threading.RLock()
        self._grants: list[BatchGrant] = []
        self._pid = os.getpid()
        self._conn = self._connect()
        _OPEN_LEDGERS.add(self)

    @classmethod
    def in_state_dir(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        sleep: Callable[[float], None] = time.sleep,
        busy_timeout: float = 30.0,
    ) -> Ledger:
        """The ledger of a state dir: ``STATE_DIR/ledger.sqlite3``."""
        return cls(
            Path(state_dir) / cls.FILENAME, clock=clock, sleep=sleep, busy_timeout=busy_timeout
        )

    # connection ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # sqlite would use 0644
            os.close(fd)
        except OSError as exc:
            raise LedgerError(
                f"{self.path}: cannot create the rate ledger: {exc.strerror}",
                hint="check --state-dir / CXSMTP_STATE_DIR and its permissions",
            ) from None
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._synchronous = "NORMAL"
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version == 0:
                        for statement in SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    elif version != SCHEMA_VERSION:
                        raise LedgerError(
                            f"{self.path}: rate ledger of an unknown version {version} "
                            f"(this cxsmtp writes version {SCHEMA_VERSION})"
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, exc: sqlite3.Error) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerBusyError(
                f"{self.path}: the rate ledger stayed busy for {self.busy_timeout:g} s "
                "(other cxsmtp processes are using it); try again"
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return LedgerError(
                f"{self.path}: not a cxsmtp rate ledger (SQLite says: {text})",
                hint="move the file away; cxsmtp then starts a new, empty ledger",
            )
        return LedgerError(f"{self.path}: rate ledger: {text}")

    @property
    def owner(self) -> Owner:
        if self._owner is not None:
            return self._owner
        pid = os.getpid()
        if self._current_owner is None or self._owner_pid != pid:
            self._current_owner = Owner.current()
            self._owner_pid = pid
        return self._current_owner

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: serialised across processes)."""
        with self._lock:
            conn = self._conn
            wanted = "FULL" if durable and self._durable else "NORMAL"
            try:
                if wanted != self._synchronous:
                    conn.execute(f"PRAGMA synchronous = {wanted}")
                    self._synchronous = wanted
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):  # already rolled back
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._error(exc) from None

    def close(self) -> None:
        """Close open grants (releasing their slots) and the database.

        Also done at interpreter exit, so a run that forgets a grant does not
        cost a slot the way a crash does.
        """
        for grant in list(self._grants):
            try:
                grant.close()
            except LedgerError as exc:  # pragma: no cover - best effort at exit
                log.warning("%s", exc)
        with self._lock:
            self._conn.close()
        _OPEN_LEDGERS.discard(self)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # the state the policy needs ---------------------------------------------------

    def _reclaim(self, conn: sqlite3.Connection, now: float) -> None:
        """Release live reservations whose owner can send no more (see module docstring)."""
        me = self.owner
        rows = conn.execute(
            "SELECT id, server, slots, used, in_flight, expires_at, owner_host, owner_boot,"
            " owner_pidns, owner_pid, owner_start FROM reservations WHERE closed_at IS NULL"
        ).fetchall()
        for rid, server, slots, used, in_flight, expires_at, host, boot, pidns, pid, start in rows:
            owner = Owner(host, boot, pidns, pid, start)
            state = _owner_state(owner, me)
            if state is _OwnerState.ALIVE:
                continue
            if state is _OwnerState.UNKNOWN and now < expires_at:
                continue
            remaining = max(0, slots - used)
            same_boot = bool(boot) and boot == me.boot
            if state is _OwnerState.GONE or (state is _OwnerState.UNKNOWN and same_boot):
                presumed = min(in_flight, remaining)
            else:
                presumed = remaining
            conn.executemany(
                "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
                " VALUES (?, ?, 0, NULL, 1, ?)",
                [(server, now, rid)] * presumed,
            )
            conn.execute(
                "UPDATE reservations SET closed_at = ?, presumed = ? WHERE id = ?",
                (now, presumed, rid),
            )
            why = "its lease expired" if state is _OwnerState.UNKNOWN else "its owner is gone"
            log.warning(
                "server %s: released the batch reservation of pid %d on %s (%s); "
                "%d unconfirmed message(s) counted as possibly sent",
                server,
                pid,
                host,
                why,
                presumed,
            )

    def _prune(self, conn: sqlite3.Connection, now: float, limits: Limits) -> None:
        horizon = now - max(self.retention, limits.rate_window, limits.send_limit_window)
        conn.execute("DELETE FROM sends WHERE time < ?", (horizon,))
        conn.execute(
            "DELETE FROM reservations WHERE closed_at IS NOT NULL AND opened_at < ?", (horizon,)
        )

    def _load(self, conn: sqlite3.Connection, server: str, limits: Limits, now: float) -> _Loaded:
        server_sends = [
            row[0]
            for row in conn.execute(
                "SELECT time FROM sends WHERE server = ? AND time > ? ORDER BY time",
                (server, now - limits.rate_window),
            )
        ]
        all_sends = [
            row[0]
            for row in conn.execute(
                "SELECT time FROM sends WHERE time > ? ORDER BY time",
                (now - limits.send_limit_window,),
            )
        ]
        server_reserved = 0
        all_reserved = 0
        ends: float | None = None
        for name, left, deadline_at in conn.execute(
            "SELECT server, slots - used, deadline_at FROM reservations WHERE closed_at IS NULL"
        ):
            left = max(0, left)
            all_reserved += left
            if name == server:
                server_reserved += left
            if left > 0:
                ends = deadline_at if ends is None else min(ends, deadline_at)
        last = conn.execute(
            "SELECT max(opened_at) FROM reservations WHERE server = ?"
            " AND (closed_at IS NULL OR used > 0 OR presumed > 0)",
            (server,),
        ).fetchone()[0]
        state = WindowState(server_sends, all_sends, server_reserved, all_reserved, last, ends)
        return _Loaded(state, self._timing(conn, server))

    @staticmethod
    def _timing(conn: sqlite3.Connection, server: str) -> TimingModel:
        row = conn.execute(
            "SELECT weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches FROM timing"
            " WHERE server = ?",
            (server,),
        ).fetchone()
        if row is None:
            return TimingModel()
        weight, sum_x, sum_y, sum_xx, sum_xy, setup, batches = row
        return TimingModel(weight, sum_x, sum_y, sum_xx, sum_xy, setup, int(batches))

    # public API -------------------------------------------------------------------

    def open_batch(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """Start a batch now if the limits allow it, else say until when to wait.

        ``queued_sizes``: sizes in bytes of the queue head, in sending order
        (only the first ``batch_count_cap + 1`` are read; empty = unknown).
        ``connections``: how many messages may be in flight at once under this
        grant (what a crash may leave unrecorded).
        """
        with self._write(durable=True) as conn:
            now = self.clock()
            self._reclaim(conn, now)
            self._prune(conn, now, limits)
            loaded = self._load(conn, server, limits, now)
            size = plan_batch_size(queued_sizes, limits, loaded.timing)
            decision = next_batch(loaded.state, limits, now, size.count)
            if decision.kind is not None:
                log.debug("server %s: wait until %.3f: %s", server, decision.at, decision.reason)
                return Wait(server, decision.at, decision.kind, decision.reason, decision.count)
            if decision.release[-1] > now:
                log.debug(
                    "server %s: batch paced until %.3f (previous sends leaving the window)",
                    server,
                    decision.release[-1],
                )
            owner = self.owner
            deadline_at = now + limits.batch_deadline
            cursor = conn.execute(
                "INSERT INTO reservations (server, opened_at, deadline_at, expires_at, slots,"
                " in_flight, owner_host, owner_boot, owner_pidns, owner_pid, owner_start)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    server,
                    now,
                    deadline_at,
                    deadline_at + limits.lease_grace,
                    decision.count,
                    max(1, connections),
                    owner.host,
                    owner.boot,
                    owner.pidns,
                    owner.pid,
                    owner.start,
                ),
            )
            rid = cursor.lastrowid
            assert rid is not None
        grant = BatchGrant(
            self, rid, server, limits, now, decision.count, size, loaded.timing, decision.release
        )
        self._grants.append(grant)
        log.info(
            "server %s: batch of up to %d message(s) (planned %d, limited by %s)",
            server,
            decision.count,
            size.count,
            size.limited_by,
        )
        return grant

    def acquire(
        self,
        server: str,
        limits: Limits,
        queued_sizes: Sequence[int] = (),
        *,
        sleep: Callable[[float], None],
        max_wait: float | None = None,
        connections: int = 1,
    ) -> BatchGrant | Wait:
        """:meth:`open_batch`, sleeping (with the injected ``sleep``) through short waits.

        Waits longer than ``max_wait`` (default: the batch deadline) are
        returned to the caller; ``math.inf`` sleeps until a batch is granted.
        """
        limit = limits.batch_deadline if max_wait is None else max_wait
        while True:
            result = self.open_batch(server, limits, queued_sizes, connections=connections)
            if isinstance(result, BatchGrant):
                return result
            delay = result.until - self.clock()
            if math.isinf(result.until) or delay > limit:
                return result
            sleep(max(0.0, delay))

    def usage(self, server: str, limits: Limits) -> Usage:
        """Sent in the last hour / day, what the windows still allow, the next batch."""
        with self._write() as conn:
            now = self.clock()
            self._reclaim(conn, now)
            loaded = self._load(conn, server, limits, now)
            sent_hour, bytes_hour = conn.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM sends WHERE server = ? AND time > ?",
                (server, now - limits.rate_window),
            ).fetchone()
            sent_day, bytes_day = conn.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM sends WHERE server = ? AND time > ?",
                (server, now - limits.send_limit_window),
            ).fetchone()
        state = loaded.state
        allows = min(
            window_allowance(
                state.server_sends,
                now,
                limits.rate_window,
                limits.rate_per_hour,
                state.server_reserved,
            ),
            window_allowance(
                state.all_sends,
                now,
                limits.send_limit_window,
                limits.email_send_limit,
                state.all_reserved,
            ),
        )
        size = plan_batch_size((), limits, loaded.timing)
        decision = next_batch(state, limits, now, size.count)
        timing = loaded.timing
        per_byte = timing.per_byte
        return Usage(
            server=server,
            at=now,
            limits=limits,
            sent_hour=sent_hour,
            bytes_hour=bytes_hour,
            sent_day=sent_day,
            bytes_day=bytes_day,
            sent_day_all=len(state.all_sends),
            reserved=state.server_reserved,
            reserved_all=state.all_reserved,
            window_allows=max(0, allows),
            last_batch_at=state.last_batch_start,
            next_batch_at=decision.at,
            next_batch_size=decision.count,
            waiting_for=decision.kind,
            reason=decision.reason,
            seconds_per_message=timing.per_message,
            seconds_per_megabyte=None if per_byte is None else per_byte * 1_000_000,
        )

    def next_window_at(self, server: str, limits: Limits) -> float:
        """When the next batch of ``server`` may start (now if now; ``math.inf``: never)."""
        return self.usage(server, limits).next_batch_at

    def plan(self, queues: Mapping[str, tuple[Limits, Sequence[int]]]) -> Schedule:
        """The schedule that would send ``{server: (limits, queued sizes)}`` at current limits.

        Starts from the ledger's state (live reservations of other runs count as
        sends at their deadline) and plays :func:`limits.simulate_schedule`
        forward; the servers share the email_send_limit window.
        """
        if not queues:
            return Schedule((), None, 0, 0)
        widest_name = max(queues, key=lambda name: queues[name][0].send_limit_window)
        with self._write() as conn:
            now = self.clock()
            self._reclaim(conn, now)
            loaded = {name: self._load(conn, name, lim, now) for name, (lim, _) in queues.items()}
        widest_state = loaded[widest_name].state
        all_sends = list(widest_state.all_sends)
        pending_at = max(now, widest_state.reservations_end or now)
        all_sends.extend([pending_at] * widest_state.all_reserved)
        server_queues = {}
        for name, (lim, sizes) in queues.items():
            state = loaded[name].state
            sends = list(state.server_sends)
            sends.extend([pending_at] * state.server_reserved)
            server_queues[name] = ServerQueue(
                lim, sizes, sorted(sends), state.last_batch_start, loaded[name].timing
            )
        return simulate_schedule(server_queues, sorted(all_sends), now)

    def eta(self, server: str, limits: Limits, queued_sizes: Sequence[int]) -> Schedule:
        """:meth:`plan` for one server: ``.last_at`` is when the last message should go."""
        return self.plan({server: (limits, queued_sizes)})

    def sends(self, server: str | None = None, since: float | None = None) -> list[SendRecord]:
        """The recorded sends, oldest first (status and tests)."""
        query = "SELECT server, time, bytes, message_id, presumed, reservation FROM sends"
        clauses: list[str] = []
        args: list[object] = []
        if server is not None:
            clauses.append("server = ?")
            args.append(server)
        if since is not None:
            clauses.append("time > ?")
            args.append(since)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._lock:
            try:
                rows = self._conn.execute(query + " ORDER BY time, id", args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        return [SendRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def timing(self, server: str) -> TimingModel:
        with self._lock:
            try:
                return self._timing(self._conn, server)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    # called by BatchGrant --------------------------------------------------------------

    def _record_send(
        self, grant: BatchGrant, now: float, message_id: str | None, size: int
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sends (server, time, bytes, message_id, presumed, reservation)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (grant.server, now, size, message_id, grant.reservation_id),
            )
            conn.execute(
                "UPDATE reservations SET used = used + 1, expires_at = max(expires_at, ?)"
                " WHERE id = ?",
                (now + grant.limits.lease_grace, grant.reservation_id),
            )
            row = conn.execute(
                "SELECT closed_at FROM reservations WHERE id = ?", (grant.reservation_id,)
            ).fetchone()
        if row is not None and row[0] is not None and not grant.closed:
            log.warning(
                "server %s: batch reservation %d was released before this send was recorded "
                "(the process was stopped longer than its lease?)",
                grant.server,
                grant.reservation_id,
            )

    def _close_reservation(
        self,
        grant: BatchGrant,
        observations: Sequence[tuple[int, float]],
        setup: float | None,
    ) -> None:
        with self._write() as conn:
            now = self.clock()
            conn.execute(
                "UPDATE reservations SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                (now, grant.reservation_id),
            )
            if observations:
                model = self._timing(conn, grant.server).add_batch(observations, setup)
                conn.execute(
                    "INSERT OR REPLACE INTO timing (server, weight, sum_x, sum_y, sum_xx,"
                    " sum_xy, setup, batches, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        grant.server,
                        model.weight,
                        model.sum_x,
                        model.sum_y,
                        model.sum_xx,
                        model.sum_xy,
                        model.setup,
                        model.batches,
                        now,
                    ),
                )
        if grant in self._grants:
            self._grants.remove(grant)
        log.info(
            "server %s: batch done: %d message(s), %d bytes%s",
            grant.server,
            grant.sent,
            grant.sent_bytes,
            " (cut short by the deadline)" if grant.cut_by_deadline else "",
        )

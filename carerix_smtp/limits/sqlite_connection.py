"""The SQLite ledger's database: the file, its schema, its errors and its transactions.

One SQLite file (``STATE_DIR/ledger.sqlite3``, mode 0600) in WAL mode with a
busy timeout; every decision runs inside one ``BEGIN IMMEDIATE`` write
transaction, so grants are serialised across processes.  A new file gets the
schema below (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`); a file of
another version is refused.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from carerix_smtp.limits.ledger import LedgerBusyError, LedgerError

__all__ = ["SCHEMA", "SCHEMA_VERSION", "LedgerDatabase"]

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


class LedgerDatabase:
    """The ledger's one connection, guarded by a lock (threads may share it).

    ``busy_timeout``: how long to wait for other processes' transactions;
    ``durable``: fsync what :meth:`write` is asked to make durable (turn off
    only for benchmarks on throw-away files).
    """

    def __init__(self, path: Path, *, busy_timeout: float, durable: bool) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._durable = durable
        self._synchronous = ""
        self._lock = threading.RLock()
        self._conn = self._connect()

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
            raise self.error(exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._synchronous = "NORMAL"
            self._migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
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

    def error(self, exc: sqlite3.Error) -> LedgerError:
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

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
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
                raise self.error(exc) from None
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
                raise self.error(exc) from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for a plain read (no transaction); SQLite errors become LedgerErrors."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self.error(exc) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

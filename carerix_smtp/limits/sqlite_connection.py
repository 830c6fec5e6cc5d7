"""The SQLite ledger's database: the file, its schema, its errors and its transactions.

One SQLite file (``STATE_DIR/ledger.sqlite3``, mode 0600) in WAL mode with a
busy timeout; every decision runs inside one ``BEGIN IMMEDIATE`` write
transaction, so grants are serialised across processes.  A new file gets the
schema below (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`); a file of
another version is refused.  An existing file gets ``PRAGMA quick_check`` on
open (milliseconds for two days of sends), so a damaged ledger is reported
before anything is sent, with the way out (``cxsmtp doctor``); the files are
never used through a symlink (:mod:`~carerix_smtp.limits.sqlite_files`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from carerix_smtp.errors import StorageError
from carerix_smtp.limits.ledger import LedgerError
from carerix_smtp.limits.sqlite_files import (
    corrupt_error,
    ledger_error,
    prepare_ledger_file,
    refuse_symlinks,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "LedgerDatabase", "create_schema", "integrity_problem"]

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
    in_flight INTEGER NOT NULL,      -- sends that may be made but unwritten at once (ledger.py)
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
        prepare_ledger_file(self.path)  # state dir 0700, file 0600, no symlinks
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
            refuse_symlinks(self.path)  # again, now that SQLite has opened -wal and -shm
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
        if version == SCHEMA_VERSION:
            problem = integrity_problem(conn)
            if problem:
                raise corrupt_error(self.path, problem)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                create_schema(conn)
            elif version != SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: rate ledger of an unknown version {version} "
                    f"(this cxsmtp writes version {SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def error(self, exc: sqlite3.Error) -> LedgerError | StorageError:
        return ledger_error(exc, self.path, self.busy_timeout)

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
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):  # already rolled back
                    conn.execute("ROLLBACK")
                raise self.error(exc) from None
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


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables of a new ledger, inside the caller's transaction."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def integrity_problem(conn: sqlite3.Connection) -> str:
    """SQLite's ``quick_check`` on one line, or "" when the file is sound.

    quick_check reads every page (O(size), no index-to-table cross check); an
    error that SQLite raises while reading is left to the caller.
    """
    rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    if [tuple(row) for row in rows] == [("ok",)]:
        return ""
    text = "; ".join(str(row[0]) for row in rows).replace("\n", " ")
    return f"integrity check: {text[:160]}"

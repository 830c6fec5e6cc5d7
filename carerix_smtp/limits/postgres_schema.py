"""The PostgreSQL ledger's database: connecting, the versioned schema, errors, transactions.

The tables carry a ``cxsmtp_`` prefix so the ledger may share a database with
other things.  ``cxsmtp_meta`` holds ``schema_version``; :func:`init_schema`
(``cxsmtp ledger init URL``) creates or completes the schema and is idempotent;
:class:`PostgresDatabase` refuses a database without the schema ("run: cxsmtp
ledger init URL") or with a newer version than :data:`SCHEMA_VERSION`.

Errors name the server as host:port (and the database), never the URL: it may
hold a password.  A server that cannot be reached, or that goes away mid-run,
is :class:`~carerix_smtp.errors.LedgerUnavailableError` (exit 75: the run
sends nothing more; fail closed).  The connect timeout is short
(:data:`CONNECT_TIMEOUT`): a cron run should fail fast, not hang.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from carerix_smtp.errors import (
    LedgerBusyError,
    LedgerSchemaError,
    LedgerUnavailableError,
    StateError,
)

__all__ = [
    "ADMISSION_LOCK",
    "CONNECT_TIMEOUT",
    "IDLE_IN_TRANSACTION",
    "SCHEMA_VERSION",
    "PostgresDatabase",
    "Where",
    "init_schema",
    "where_of",
]

SCHEMA_VERSION = 1
CONNECT_TIMEOUT = 5  # seconds (libpq connect_timeout; whole seconds)
IDLE_IN_TRANSACTION = 10  # seconds: the server ends a transaction of a vanished host
# The key of the transaction-level advisory lock every admission takes (postgres.py).
ADMISSION_LOCK = int.from_bytes(b"cxsmtp-l", "big")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cxsmtp_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cxsmtp_sends (
    id BIGSERIAL PRIMARY KEY,
    account TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,      -- the sending host's clock at acceptance
    bytes BIGINT NOT NULL,
    message_id TEXT,                     -- NULL for presumed sends
    presumed BOOLEAN NOT NULL DEFAULT FALSE,
    reservation BIGINT
);
CREATE INDEX IF NOT EXISTS cxsmtp_sends_by_account_time ON cxsmtp_sends (account, time);
CREATE INDEX IF NOT EXISTS cxsmtp_sends_by_time ON cxsmtp_sends (time);
CREATE TABLE IF NOT EXISTS cxsmtp_reservations (
    id BIGSERIAL PRIMARY KEY,
    account TEXT NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    deadline_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,  -- the lease, renewed by each group written
    slots INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    presumed INTEGER NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL,
    owner_host TEXT NOT NULL,
    owner_boot TEXT NOT NULL,
    owner_pidns TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start TEXT NOT NULL,
    closed_at DOUBLE PRECISION            -- NULL while live
);
CREATE INDEX IF NOT EXISTS cxsmtp_reservations_by_account
    ON cxsmtp_reservations (account, opened_at);
CREATE INDEX IF NOT EXISTS cxsmtp_reservations_live
    ON cxsmtp_reservations (id) WHERE closed_at IS NULL;
CREATE TABLE IF NOT EXISTS cxsmtp_timing (
    account TEXT PRIMARY KEY,
    weight DOUBLE PRECISION NOT NULL,
    sum_x DOUBLE PRECISION NOT NULL,
    sum_y DOUBLE PRECISION NOT NULL,
    sum_xx DOUBLE PRECISION NOT NULL,
    sum_xy DOUBLE PRECISION NOT NULL,
    setup DOUBLE PRECISION NOT NULL,
    batches INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)
"""


@dataclass(frozen=True)
class Where:
    """Where a ledger database is, for messages: never the password."""

    host: str
    port: str
    dbname: str
    password: str | None  # only to scrub it from a server's message

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.dbname}" if self.dbname else f"{host}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def where_of(url: str) -> Where:
    """host, port and database of a libpq URL or key=value string (libpq's defaults)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise LedgerSchemaError(
            "ledger URL is not a PostgreSQL URL; accepted: postgresql://user@host[:port]/database"
        ) from None
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    password = parts.get("password")
    return Where(host, port, str(parts.get("dbname") or ""), str(password) if password else None)


def _reason(exc: BaseException, where: Where) -> str:
    # libpq: 'connection to server at "h", port 5432 failed: Connection refused\n\tIs the...'
    first = (str(exc).strip().splitlines() or [""])[0]
    text = first.rsplit(" failed: ", 1)[-1].strip() or type(exc).__name__
    if where.password:
        text = text.replace(where.password, "***")
    return text[:200]


def unavailable(exc: BaseException, where: Where) -> LedgerUnavailableError:
    return LedgerUnavailableError(
        f"ledger database {where.host_port} unreachable: {_reason(exc, where)}"
        " (nothing sent; the next run retries)"
    )


def connect(url: str, where: Where) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are explicit), or the error to report."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise unavailable(exc, where) from None


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The version in ``cxsmtp_meta``; None when the database has no cxsmtp schema."""
    found = conn.execute("SELECT to_regclass('cxsmtp_meta') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute("SELECT value FROM cxsmtp_meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(str(row[0]))


def newer_error(where: Where, version: int) -> LedgerSchemaError:
    return LedgerSchemaError(
        f"ledger database {where} has schema version {version}, this cxsmtp knows up to "
        f"version {SCHEMA_VERSION}: upgrade cxsmtp on this host"
    )


def init_schema(url: str) -> int:
    """Create (or complete) the ledger's tables in the database at ``url``; the version.

    Idempotent; several hosts may run it at once (an advisory lock orders them).
    A database with a newer schema is refused with :class:`LedgerSchemaError`.
    """
    where = where_of(url)
    conn = connect(url, where)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
            version = schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise newer_error(where, version)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO cxsmtp_meta (key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
    except psycopg.OperationalError as exc:
        raise unavailable(exc, where) from None
    except psycopg.Error as exc:
        raise StateError(f"ledger database {where}: {_reason(exc, where)}") from None
    finally:
        conn.close()
    return SCHEMA_VERSION


class PostgresDatabase:
    """The ledger's one connection, guarded by a lock (threads may share it).

    Opened lazily again after the server went away (the call that saw it go
    raised :class:`LedgerUnavailableError`; a later one may succeed).
    ``busy_timeout``: how long an admission waits for the others' lock.
    """

    def __init__(self, url: str, *, busy_timeout: float) -> None:
        self.url = url
        self.where = where_of(url)
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._open()

    def _open(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = connect(self.url, self.where)
        try:
            # Every wait for a lock (admission, a reservation row) ends after busy_timeout.
            timeout = f"{max(1, int(self.busy_timeout * 1000))}ms"
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (timeout,))
            # A host that dies inside a transaction (power cut: no FIN, so the server
            # would only notice after TCP keepalive, hours) must not hold the admission
            # lock: our transactions never idle, so the server ends one that does.
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{IDLE_IN_TRANSACTION * 1000}ms",),
            )
            version = schema_version(conn)
        except psycopg.Error as exc:
            conn.close()
            raise unavailable(exc, self.where) from None
        if version is None or version < SCHEMA_VERSION:
            conn.close()
            what = "has no cxsmtp ledger schema" if version is None else f"has schema {version}"
            raise LedgerSchemaError(
                f"ledger database {self.where} {what}; run: cxsmtp ledger init URL"
            )
        if version > SCHEMA_VERSION:
            conn.close()
            raise newer_error(self.where, version)
        self._conn = conn
        return conn

    @contextmanager
    def transaction(self, *, admission: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction (READ COMMITTED); ``admission``: first take the admission lock."""
        with self._lock:
            conn = self._open()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if admission:
                        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADMISSION_LOCK,))
                    yield cur
            except pg_errors.LockNotAvailable:
                raise LedgerBusyError(
                    f"ledger database {self.where} busy: other hosts held its locks longer"
                    f" than {self.busy_timeout:g} s; try again"
                ) from None
            except psycopg.OperationalError as exc:
                self._drop()
                raise unavailable(exc, self.where) from None
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._drop()
                    raise unavailable(exc, self.where) from None
                raise StateError(
                    f"ledger database {self.where}: {_reason(exc, self.where)}"
                ) from None

    def server_time(self) -> float:
        """The database server's clock (``clock_timestamp()``), epoch seconds."""
        with self.transaction() as cur:
            row = cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(str(row[0]))

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

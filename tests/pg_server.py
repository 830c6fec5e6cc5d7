"""A throw-away PostgreSQL server in a temporary directory, for the ledger's tests.

    with pg_server() as pg:                       # initdb + pg_ctl start (about a second)
        url = pg.create_database()                # a fresh database: postgresql://postgres@127.0.0.1:PORT/t1
        ...
        pg.stop()                                 # the database goes away mid-run (16B's tests)
        pg.start()                                # and comes back on the same port

It listens on 127.0.0.1 only (and a unix socket in its directory), trusts every
local connection (no password: tests only), and runs with fsync off (speed; the
data is thrown away).  initdb refuses to run as root, so as root the server runs
as the ``postgres`` user in a directory it owns.  :func:`find_initdb` says where
the binaries are (None: not installed; the fixture then skips, or fails on CI).
:class:`StoreFactory` opens ledgers (SQLite or PostgreSQL) on one file or database.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["PgServer", "StoreFactory", "find_initdb", "pg_server"]

_BIN_DIRS = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
)


def find_initdb() -> Path | None:
    """The directory holding initdb and pg_ctl (``PG_BIN``, Debian's, or on PATH)."""
    candidates = [os.environ.get("PG_BIN", ""), *_BIN_DIRS]
    for directory in candidates:
        if directory and (Path(directory) / "initdb").is_file():
            return Path(directory)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster in ``base`` (created by :meth:`init`), started and stopped at will."""

    def __init__(self, bin_dir: Path, base: Path) -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = _free_port()
        self.user = "postgres"
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> None:
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "--no-sync",
            "--no-instructions", "-E", "UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        result = self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()}\n{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: like a crash; ``fast``: clients disconnected)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def create_database(self, template: str | None = None) -> str:
        """A fresh, empty database (or a copy of ``template``); its URL."""
        import psycopg  # the tests that need no server need no psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        copy = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}{copy}")  # type: ignore[arg-type]
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@contextmanager
def pg_server(bin_dir: Path | None = None) -> Iterator[PgServer]:
    """Start a server in a new temporary directory; stop it and delete everything after."""
    found = bin_dir or find_initdb()
    if found is None:
        raise RuntimeError("PostgreSQL's initdb was not found (install postgresql, or set PG_BIN)")
    # Not under pytest's tmp_path: that is private to root, and the server may run as postgres.
    base = Path(tempfile.mkdtemp(prefix="cxsmtp-pg-"))
    server = PgServer(found, base)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


class StoreFactory:
    """Opens ledgers of one kind on one backing (file or database)."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.opened: list[Any] = []

    def __call__(self, **options: Any) -> Any:
        if self.kind == "sqlite":
            from carerix_smtp.limits.sqlite import Ledger

            ledger: Any = Ledger(self.target, **options)
        else:
            from carerix_smtp.limits.postgres import PostgresLedger

            ledger = PostgresLedger(self.target, **options)
        self.opened.append(ledger)
        return ledger

    def __repr__(self) -> str:
        return f"<StoreFactory {self.kind}>"

"""Open the rate ledger this host is configured for: the one place that does (issue 16).

``sqlite`` (the default): ``STATE_DIR/ledger.sqlite3``, as before.  A PostgreSQL
URL (setting ``ledger`` or ``CXSMTP_LEDGER_URL``, see
:mod:`carerix_smtp.config.ledger_url`): the shared store of
:mod:`carerix_smtp.limits.postgres`, whose limits every host using that
database shares.  The PostgreSQL store fails closed: when the database cannot be
reached opening it raises :class:`~carerix_smtp.errors.LedgerUnavailableError`
(exit 75, naming the host), and the run sends nothing -- sending without the
ledger could break the account's limits.

Windows are measured on this host's clock (so faketime moves them, as with
SQLite); a host whose clock differs from the database's ``now()`` by more than
:data:`SKEW_WARNING` seconds shares the windows unevenly with the others, so
opening logs a warning naming both times.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carerix_smtp.config.ledger_url import LedgerChoice, choose_ledger
from carerix_smtp.limits.ledger import Clock, LedgerStore

if TYPE_CHECKING:
    from carerix_smtp.config.file import Settings

log = logging.getLogger(__name__)

SKEW_WARNING = 5.0  # seconds (issue 16: "differ by more than 5 s")


def ledger_choice(settings: Settings, env: Mapping[str, str] | None = None) -> LedgerChoice:
    """Which ledger: ``CXSMTP_LEDGER_URL``, else the setting ``ledger``, else SQLite."""
    return choose_ledger(settings.ledger, os.environ if env is None else env)


def open_ledger(
    settings: Settings,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Clock = time.time,
    existing_only: bool = False,
) -> LedgerStore | None:
    """The configured ledger, open.  ``existing_only`` (read-only commands): None when
    the SQLite file does not exist yet (a shared ledger is always opened)."""
    choice = ledger_choice(settings, env)
    if choice.url is None:
        from carerix_smtp.limits.sqlite import Ledger

        if existing_only and not (Path(state_dir) / Ledger.FILENAME).exists():
            return None
        return Ledger.in_state_dir(state_dir, sleep=sleep, clock=clock)
    from carerix_smtp.limits.postgres import PostgresLedger

    store: LedgerStore = PostgresLedger(
        with_password(choice.url, ledger_password(settings)), clock=clock, sleep=sleep
    )
    warn_on_clock_skew(store)
    return store


def ledger_password(settings: Settings) -> str | None:
    """The setting ``ledger_password_command``'s first output line, if set; else None
    (libpq then reads PGPASSWORD, PGPASSFILE or ~/.pgpass itself)."""
    if not settings.ledger_password_command:
        return None
    from carerix_smtp.config.passwords import run_password_command

    return run_password_command("ledger", settings.ledger_password_command)


def with_password(url: str, password: str | None) -> str:
    """The connection string with ``password`` added (libpq key=value form), else ``url``.

    The stores scrub the password from their messages and never show the string."""
    if password is None:
        return url
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, password=password)


def warn_on_clock_skew(store: Any) -> float | None:
    """Log a warning naming both clocks when they differ by more than SKEW_WARNING.

    Returns the difference (host minus database, seconds), or None when the
    store has no clock of its own (SQLite)."""
    check = getattr(store, "clock_skew", None)
    if check is None:
        return None
    host, database = check()
    skew = float(host) - float(database)
    if abs(skew) > SKEW_WARNING:
        log.warning(
            "this host's clock (%s) differs from the ledger database's (%s) by %+.1f s: "
            "hosts sharing the ledger count the windows unevenly; synchronise the clocks (NTP)",
            _utc(host),
            _utc(database),
            skew,
        )
    return skew


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def init_shared_ledger(url: str, settings: Settings) -> int:
    """``cxsmtp ledger init URL``: create or upgrade the schema; the schema version.

    The URL is a command-line word, so it may not hold a password (argv is visible
    to every user of the machine): PGPASSWORD, PGPASSFILE or the setting
    ``ledger_password_command`` give it.  A newer schema than this cxsmtp knows
    is refused (LedgerSchemaError, exit 78)."""
    from carerix_smtp.config.ledger_url import SQLITE, check_ledger_url
    from carerix_smtp.errors import ConfigError, UsageError

    try:
        checked = check_ledger_url(url, "URL")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if checked == SQLITE:
        raise UsageError(
            "URL: the SQLite ledger needs no init (it is created in the state dir); "
            "give a PostgreSQL URL like postgresql://USER@HOST[:PORT]/DBNAME"
        )
    from carerix_smtp.limits.postgres_schema import init_schema

    return init_schema(with_password(checked, ledger_password(settings)))

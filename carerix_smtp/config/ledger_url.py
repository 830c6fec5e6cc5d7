"""Which rate ledger a host uses: the setting ``ledger`` and ``CXSMTP_LEDGER_URL``.

``sqlite`` (the default) is the file in the state dir; a PostgreSQL URL
(``postgresql://cxsmtp@db.example/cxsmtp``) is a ledger that several hosts share,
so that the limits of one provider account hold for all of them together (issue 16).
``CXSMTP_LEDGER_URL`` wins over the setting.

The password never goes into the config file (a URL with one is refused there).
It comes, in this order, from the URL in ``CXSMTP_LEDGER_URL`` (an environment
the operator controls), from the setting ``ledger_password_command`` (a command
that prints it, like a server's ``password_command``; for cron without secrets in
its environment), else from libpq itself: ``PGPASSWORD``, ``PGPASSFILE`` or
``~/.pgpass``.  Anything shown to a person (``settings show``, ``ledger show``,
errors, logs) goes through :func:`mask_url`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from carerix_smtp.errors import ConfigError

LEDGER_ENV = "CXSMTP_LEDGER_URL"
SQLITE = "sqlite"
SCHEMES = ("postgresql", "postgres")
ACCEPTED = "sqlite or a PostgreSQL URL like postgresql://USER@HOST[:PORT]/DBNAME"


@dataclass(frozen=True)
class LedgerChoice:
    """The ledger to open: ``url`` None is SQLite; ``source`` says where it was chosen."""

    url: str | None
    source: str  # "default", "settings" or LEDGER_ENV

    @property
    def shared(self) -> bool:
        return self.url is not None

    @property
    def shown(self) -> str:
        return SQLITE if self.url is None else mask_url(self.url)


def check_ledger_url(value: str, where: str = "ledger", *, allow_password: bool = False) -> str:
    """``sqlite`` or a PostgreSQL URL with a host; else a ConfigError naming both forms."""
    text = value.strip()
    if text.lower() == SQLITE:
        return SQLITE
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise ConfigError(f"{where}: {mask_url(text)!r} is not a ledger; use {ACCEPTED}")
    if parts.password is not None and not allow_password:
        raise ConfigError(
            f"{where}: {mask_url(text)!r} holds a password, which is never stored or given "
            "as an argument: use PGPASSWORD, PGPASSFILE (~/.pgpass) or the setting "
            "ledger-password-command"
        )
    return text


def mask_url(url: str) -> str:
    """The URL with its password (if any) as ``***``: safe to print and log."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def ledger_host(url: str) -> str:
    """``HOST:PORT`` of a ledger URL, for one-line errors (5432 when not given)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 5432}"


def choose_ledger(setting: str, env: Mapping[str, str]) -> LedgerChoice:
    """``CXSMTP_LEDGER_URL`` (may carry a password), else the setting, else SQLite."""
    given = env.get(LEDGER_ENV, "").strip()
    if given:
        url = check_ledger_url(given, LEDGER_ENV, allow_password=True)
        return LedgerChoice(None if url == SQLITE else url, LEDGER_ENV)
    if setting.strip().lower() != SQLITE:
        return LedgerChoice(check_ledger_url(setting, "setting ledger"), "settings")
    return LedgerChoice(None, "default")
